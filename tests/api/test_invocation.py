"""POST /cds-services/{id}: requests in, cards or well-formed errors out."""

from __future__ import annotations

import copy
import json
import logging
import re
from typing import Any

import httpx
import pytest
import respx
from fastapi.testclient import TestClient

from cds_service.prefetch import TYPE_BY_KEY
from cds_service.services import build_services
from cds_service.settings import Settings
from tests.cards_shown import shown_rules
from tests.support import NOW, ROOT, hook_request, patient_resources, searchset
from tests.unit.test_cards import no_empty_values

SPEC = ROOT / "tests" / "spec_examples"
PATIENT = "als-riluzole-lft-overdue"
SERVER = "https://ehr.example.org/fhir/r4"


def rule_ids(body: dict[str, Any]) -> list[str]:
    return shown_rules(body)


def issues(response: httpx.Response) -> list[dict[str, Any]]:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"]


def mock_fhir_server(router: respx.MockRouter, resources: list[dict[str, Any]], base: str = SERVER) -> None:
    """A FHIR server holding `resources`: reads of the Patient, searches of any type by patient."""

    def search(request: httpx.Request) -> httpx.Response:
        rtype = request.url.path.rsplit("/", 1)[-1]
        return httpx.Response(200, json=searchset([r for r in resources if r["resourceType"] == rtype]))

    patient = next(r for r in resources if r["resourceType"] == "Patient")
    router.get(f"{base}/Patient/{patient['id']}").mock(return_value=httpx.Response(200, json=patient))
    router.get(url__regex=rf"^{re.escape(base)}/[A-Za-z]+\?").mock(side_effect=search)


def patient_view_keys() -> list[str]:
    return list(build_services()["als-patient-view"].prefetch(Settings(_env_file=None), NOW.date()))


#: What the quickstart patient gets at tests.support.NOW: the riluzole warning, then the infos.
QUICKSTART_CARDS = [
    "riluzole-lft-due",
    # The three reminders come as one care review card (issue 12), listed with its items.
    "care-review-digest",
    "respiratory-assessment-due",
    "mdt-review-overdue",
    "advance-care-planning",
]


# -- cards ------------------------------------------------------------------------------------


def test_quickstart_request_gets_the_riluzole_card(client: TestClient) -> None:
    response = client.post(
        "/cds-services/als-patient-view", json=hook_request("patient-view-als-riluzole-lft-overdue")
    )
    assert response.status_code == 200
    body = response.json()
    assert rule_ids(body) == QUICKSTART_CARDS
    assert no_empty_values(body) == []
    card = body["cards"][0]
    assert card["indicator"] == "warning"
    assert len(card["summary"]) < 140
    assert card["source"]["label"]
    state = client.app.state.als  # type: ignore[attr-defined]
    assert state.issued.flush(5)  # issued-card records are written behind the answer (store/writer.py)
    assert state.store.issued_card_rule(card["uuid"]) == "riluzole-lft-due"


def test_patient_without_als_gets_no_card(client: TestClient) -> None:
    response = client.post(
        "/cds-services/als-patient-view", json=hook_request("patient-view-no-als-on-riluzole")
    )
    assert response.status_code == 200
    assert response.json() == {"cards": []}


def test_epic_shaped_request_is_understood(client: TestClient) -> None:
    response = client.post("/cds-services/als-patient-view", json=hook_request("patient-view-epic-style"))
    assert response.status_code == 200
    assert rule_ids(response.json()) == QUICKSTART_CARDS


@pytest.mark.parametrize(
    ("service", "fixture"),
    [("als-order-select", "order-select-riluzole"), ("als-order-sign", "order-sign-riluzole")],
)
def test_order_hooks_accept_their_contexts(client: TestClient, service: str, fixture: str) -> None:
    response = client.post(f"/cds-services/{service}", json=hook_request(fixture))
    assert response.status_code == 200
    # The draft: 100 mg every 12 hours; the renewal while the yearly ALT is overdue (last: 2025-01-10).
    assert rule_ids(response.json()) == ["riluzole-order-dose", "riluzole-order-monitoring"]


def test_dstu2_draft_orders_get_an_empty_answer_not_an_error(client: TestClient) -> None:
    request = hook_request("order-select-riluzole")
    request["context"]["draftOrders"]["entry"] = [
        {"resource": {"resourceType": "MedicationOrder", "id": "x", "status": "draft"}}
    ]
    request["context"]["selections"] = ["MedicationOrder/x"]
    response = client.post("/cds-services/als-order-select", json=request)
    assert response.status_code == 200 and response.json() == {"cards": []}


def test_unknown_fields_and_extensions_are_tolerated(client: TestClient) -> None:
    request = hook_request("patient-view-als-riluzole-lft-overdue")
    request["extension"] = {"com.example.flag": True}
    request["futureField"] = [1, 2]
    request["context"]["somethingNew"] = "x"
    assert client.post("/cds-services/als-patient-view", json=request).status_code == 200


# -- the spec's own examples -----------------------------------------------------------------


def test_spec_example_patient_view_request_is_accepted(client: TestClient) -> None:
    request = json.loads((SPEC / "request-patient-view-cds-hooks-2.0.1.json").read_text())
    with respx.mock(assert_all_called=False) as router:
        router.get(url__regex=r".*").mock(side_effect=lambda req: httpx.Response(200, json=searchset([])))
        response = client.post("/cds-services/als-patient-view", json=request)
    assert response.status_code == 200, response.text
    assert response.json() == {"cards": []}


@pytest.mark.parametrize(
    ("hook", "service"), [("order-select", "als-order-select"), ("order-sign", "als-order-sign")]
)
def test_spec_library_order_contexts_are_accepted(client: TestClient, hook: str, service: str) -> None:
    context = json.loads((SPEC / f"context-{hook}-cds-hooks-library-1.0.1.json").read_text())["context"]
    keys = build_services()[service].prefetch(Settings(_env_file=None), NOW.date())
    request = {
        "hook": hook,
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": context,
        "prefetch": dict.fromkeys(keys),  # every key queried, nothing found
    }
    response = client.post(f"/cds-services/{service}", json=request)
    assert response.status_code == 200, response.text


# -- client errors ----------------------------------------------------------------------------


def test_unknown_service_is_404_with_a_json_body(client: TestClient) -> None:
    response = client.post(
        "/cds-services/no-such-service", json=hook_request("patient-view-als-riluzole-lft-overdue")
    )
    assert response.status_code == 404
    assert "no-such-service" in issues(response)[0]["diagnostics"]


def test_hook_that_does_not_match_the_service_is_400(client: TestClient) -> None:
    response = client.post(
        "/cds-services/als-order-sign", json=hook_request("patient-view-als-riluzole-lft-overdue")
    )
    assert response.status_code == 400
    assert issues(response)[0]["expression"] == ["hook"]


def test_malformed_json_is_400_saying_where(client: TestClient) -> None:
    response = client.post(
        "/cds-services/als-patient-view",
        content=b'{"hook": "patient-view",, }',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    [issue] = issues(response)
    assert issue["code"] == "structure" and "character 24" in issue["diagnostics"]


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda r: r["context"].pop("patientId"), "context.patientId"),
        (lambda r: r.pop("hookInstance"), "hookInstance"),
        (lambda r: r.__setitem__("hookInstance", 5), "hookInstance"),
        (lambda r: r.__setitem__("context", "x"), "context"),
        (lambda r: r.__setitem__("fhirServer", "ftp://x"), "fhirServer"),
        (lambda r: r.__setitem__("fhirAuthorization", {"access_token": "t", "token_type": "Bearer"}), ""),
        (lambda r: r["prefetch"].__setitem__("conditions", [1, 2]), "prefetch.conditions"),
        (lambda r: r["prefetch"]["patient"].__setitem__("id", "someone-else"), "prefetch.patient"),
    ],
)
def test_invalid_request_is_400_naming_the_field(client: TestClient, change: Any, where: str) -> None:
    request = hook_request("patient-view-als-riluzole-lft-overdue")
    change(request)
    response = client.post("/cds-services/als-patient-view", json=request)
    assert response.status_code == 400, response.text
    found = issues(response)
    if where:
        assert [where] in [i.get("expression") for i in found], found
    assert all("Traceback" not in i["diagnostics"] for i in found)


def test_order_select_without_selections_is_400(client: TestClient) -> None:
    request = hook_request("order-select-riluzole")
    del request["context"]["selections"]
    response = client.post("/cds-services/als-order-select", json=request)
    assert response.status_code == 400
    assert ["context.selections"] in [i.get("expression") for i in issues(response)]


def test_error_bodies_never_echo_patient_data(client: TestClient) -> None:
    request = hook_request("patient-view-als-riluzole-lft-overdue")
    request["context"]["patientId"] = 12345678  # wrong type, distinctive value
    response = client.post("/cds-services/als-patient-view", json=request)
    assert response.status_code == 400
    assert "12345678" not in response.text


# -- prefetch and the FHIR server -------------------------------------------------------------


def test_412_names_every_key_that_could_not_be_had(client: TestClient) -> None:
    request = hook_request("patient-view-als-riluzole-lft-overdue")
    del request["prefetch"]
    response = client.post("/cds-services/als-patient-view", json=request)
    assert response.status_code == 412
    where = [i["expression"][0] for i in issues(response)]
    assert where == [f"prefetch.{key}" for key in patient_view_keys()]
    assert all("no fhirServer" in i["diagnostics"] for i in issues(response))


def test_null_prefetch_means_nothing_found_not_412(client: TestClient) -> None:
    request = hook_request("patient-view-als-riluzole-lft-overdue")
    request["prefetch"]["observations"] = None  # recent results: none
    request["prefetch"]["observation-history"] = None  # lifelong results (ALT, genetics): none
    response = client.post("/cds-services/als-patient-view", json=request)
    assert response.status_code == 200
    card = response.json()["cards"][0]
    assert card["source"]["topic"]["code"] == "riluzole-lft-due"
    assert "none in the data received" in card["summary"]  # no ALT data: the check is due, not assumed done


def test_everything_fetched_from_the_fhir_server_gives_the_same_cards(client: TestClient) -> None:
    with_prefetch = client.post(
        "/cds-services/als-patient-view", json=hook_request("patient-view-als-riluzole-lft-overdue")
    ).json()
    with respx.mock(assert_all_called=True) as router:
        mock_fhir_server(router, patient_resources(PATIENT))
        response = client.post(
            "/cds-services/als-patient-view", json=hook_request("patient-view-fetch-from-fhir-server")
        )
        sent = [call.request for call in router.calls]
    assert response.status_code == 200, response.text
    fetched = response.json()
    assert rule_ids(fetched) == rule_ids(with_prefetch)
    assert fetched["cards"][0]["summary"] == with_prefetch["cards"][0]["summary"]
    assert {r.headers["Authorization"] for r in sent} == {"Bearer opaque-test-access-token-not-a-secret"}
    assert len(sent) == len(patient_view_keys())  # one request per key, no paging needed


def test_partial_prefetch_fetches_only_the_missing_keys(client: TestClient) -> None:
    request = hook_request("patient-view-fetch-from-fhir-server")
    full = hook_request("patient-view-als-riluzole-lft-overdue")["prefetch"]
    request["prefetch"] = {"patient": full["patient"], "conditions": full["conditions"]}
    with respx.mock(assert_all_called=False) as router:
        mock_fhir_server(router, patient_resources(PATIENT))
        response = client.post("/cds-services/als-patient-view", json=request)
        paths = sorted(call.request.url.path.rsplit("/", 1)[-1] for call in router.calls)
    assert response.status_code == 200
    assert rule_ids(response.json()) == QUICKSTART_CARDS
    fetched_types = {TYPE_BY_KEY[key] for key in patient_view_keys()} - {"Patient", "Condition"}
    assert sorted(set(paths)) == sorted(fetched_types)


def test_operation_outcome_prefetch_is_refetched(client: TestClient) -> None:
    request = hook_request("patient-view-fetch-from-fhir-server")
    full = hook_request("patient-view-als-riluzole-lft-overdue")["prefetch"]
    request["prefetch"] = dict(full)
    request["prefetch"]["medications"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout"}],
    }
    with respx.mock(assert_all_called=False) as router:
        mock_fhir_server(router, patient_resources(PATIENT))
        response = client.post("/cds-services/als-patient-view", json=request)
        assert [c.request.url.path.rsplit("/", 1)[-1] for c in router.calls] == ["MedicationRequest"]
    assert rule_ids(response.json()) == QUICKSTART_CARDS


def test_paged_prefetch_bundle_is_completed_from_the_server(client: TestClient) -> None:
    request = hook_request("patient-view-fetch-from-fhir-server")
    full = copy.deepcopy(hook_request("patient-view-als-riluzole-lft-overdue")["prefetch"])
    observations = full["observations"]["entry"]
    newest = next(e for e in observations if e["resource"]["id"] == "alt-5")
    first_page = searchset([e["resource"] for e in observations if e is not newest])
    first_page["link"] = [{"relation": "next", "url": f"{SERVER}/Observation?page=2"}]
    full["observations"] = first_page
    request["prefetch"] = full
    with respx.mock(assert_all_called=True) as router:
        router.get(f"{SERVER}/Observation?page=2").mock(
            return_value=httpx.Response(200, json=searchset([newest["resource"]]))
        )
        response = client.post("/cds-services/als-patient-view", json=request)
    assert response.status_code == 200
    [card] = [c for c in response.json()["cards"] if c["source"]["topic"]["code"] == "riluzole-lft-due"]
    assert "38 U/L on 2025-01-10" in card["detail"]  # from page 2


@pytest.mark.parametrize(
    ("answer", "issue_code"),
    [
        (httpx.Response(401, json={"resourceType": "OperationOutcome", "issue": []}), "security"),
        (httpx.Response(403), "security"),
        (httpx.Response(500, text="Internal error"), "incomplete"),
        (httpx.Response(200, text="<html>login</html>"), "incomplete"),
        (httpx.ConnectError("refused"), "incomplete"),
        (httpx.ReadTimeout("slow"), "timeout"),
    ],
)
def test_fhir_server_faults_give_412_with_a_reason_and_no_token(
    client: TestClient, answer: Any, issue_code: str
) -> None:
    with respx.mock(assert_all_called=False) as router:
        route = router.get(url__startswith=SERVER)
        if isinstance(answer, Exception):
            route.mock(side_effect=answer)
        else:
            route.mock(return_value=answer)
        response = client.post(
            "/cds-services/als-patient-view", json=hook_request("patient-view-fetch-from-fhir-server")
        )
    assert response.status_code == 412
    assert {i["code"] for i in issues(response)} == {issue_code}
    assert "opaque-test-access-token" not in response.text
    assert PATIENT not in response.text


def test_slow_fhir_server_is_cut_off_by_the_time_budget(client: TestClient) -> None:
    import asyncio
    import time

    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        return httpx.Response(200, json=searchset([]))

    with respx.mock(assert_all_called=False) as router:
        router.get(url__startswith=SERVER).mock(side_effect=never)
        started = time.monotonic()
        response = client.post(
            "/cds-services/als-patient-view", json=hook_request("patient-view-fetch-from-fhir-server")
        )
        elapsed = time.monotonic() - started
    assert response.status_code == 412
    assert {i["code"] for i in issues(response)} == {"timeout"}
    assert elapsed < 2.0 + 3.0  # the budget is 2 s in these tests; generous slack for a busy machine


def test_call_log_line_has_no_patient_data_or_token(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), respx.mock(assert_all_called=False) as router:
        mock_fhir_server(router, patient_resources(PATIENT))
        client.post(
            "/cds-services/als-patient-view", json=hook_request("patient-view-fetch-from-fhir-server")
        )
        client.post(
            "/cds-services/als-patient-view", json=hook_request("patient-view-als-riluzole-lft-overdue")
        )
    text = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    calls = [r for r in caplog.records if r.getMessage() == "hook call"]
    assert len(calls) == 2 and all(r.rule_ids == QUICKSTART_CARDS for r in calls)  # type: ignore[attr-defined]
    for secret in (PATIENT, "Hartley", "Margaret", "1961-05-14", "opaque-test-access-token", "E1001"):
        assert secret not in text


# -- after the answer ---------------------------------------------------------------------------


async def test_the_body_and_record_of_a_call_are_freed_only_after_its_answer_is_sent(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """app.invoke: freeing a large chart's objects is a twentieth of its call; the EHR does not wait
    for it. They are held until the answer's body is sent, then let go (nothing kept after)."""
    import gc
    import weakref

    from cds_service import app as app_module
    from cds_service.engine import HookOutcome
    from cds_service.hooks import CDSRequest

    events: list[str] = []
    held: list[weakref.ref[Any]] = []

    async def freed_after_sending(*objects: object) -> None:
        events.append("released")
        assert [type(o) for o in objects] == [CDSRequest, HookOutcome]
        held.append(weakref.ref(objects[1].record))  # type: ignore[attr-defined]

    monkeypatch.setattr(app_module, "_freed_after_sending", freed_after_sending)
    app = app_module.create_app(settings, clock=lambda: NOW)
    body = json.dumps(hook_request("patient-view-als-riluzole-lft-overdue")).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/cds-services/als-patient-view",
        "raw_path": b"/cds-services/als-patient-view", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
    }  # fmt: skip
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    answer = bytearray()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            events.append(f"status {message['status']}")
        elif message["type"] == "http.response.body":
            answer.extend(message.get("body", b""))
            if not message.get("more_body"):
                events.append("answer sent")

    async with app.router.lifespan_context(app):
        await app(scope, receive, send)
        gc.collect()
        assert events == ["status 200", "answer sent", "released"]
        assert json.loads(answer)["cards"]
        assert held and held[0]() is None  # let go once the answer was sent: nothing keeps it

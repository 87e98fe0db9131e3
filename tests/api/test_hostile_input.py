"""Hostile and broken input through the API (issue 4): every case gets a 4xx that names the problem,
or a normal answer, and never a 500.

Cases already covered elsewhere are not repeated here: body size and content type in
test_limits.py; malformed JSON, a missing field, `hookInstance` as a number, `context` as a string,
an `ftp://` fhirServer and a prefetch key holding a list in test_invocation.py.

The crashes these tests first found (broken Bundle/OperationOutcome shapes, codings that are not
objects, a fhirServer with user information or no host) are fixed; the tests keep them fixed.
"""

from __future__ import annotations

import copy
import gc
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from fastapi.testclient import TestClient

from cds_service import wire
from cds_service.app import create_app
from cds_service.bundles import request_from_bundle
from cds_service.hooks import MAX_FEEDBACK_ITEMS, CDSResponse
from cds_service.services import build_services
from cds_service.settings import Settings
from tests.cards_shown import shown_rules
from tests.support import NOW, hook_request, patient_bundle

INVOKE = "/cds-services/als-patient-view"
FEEDBACK = "/cds-services/als-patient-view/feedback"
SERVER = "https://ehr.example.org/fhir/r4"
PATIENT = "als-riluzole-lft-overdue"
QUICKSTART = "patient-view-als-riluzole-lft-overdue"
#: What the quickstart patient gets at tests.support.NOW (as in test_invocation.py).
QUICKSTART_CARDS = [
    "riluzole-lft-due",
    # The three reminders come as one care review card (issue 12), listed with its items.
    "care-review-digest",
    "respiratory-assessment-due",
    "mdt-review-overdue",
    "advance-care-planning",
]
#: Wall-clock bound for the huge-array cases: about 3 s on a loaded 2-core machine; slack for CI.
SECONDS = 10.0


def _settings(url: str, **overrides: Any) -> Settings:
    return Settings(
        _env_file=None, database_url=url, auth_required=False, fhir_budget_seconds=2.0, **overrides
    )


@pytest.fixture(params=["read whole", "read entry by entry"])
def api(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    """The app on SQLite; unexpected exceptions become the 500 an EHR would see, not a test error.

    Each case twice: decoded in one pass (a typical body) and entry by entry, each resource kept
    in its bytes until read (a body over 2 MB, `wire.py`): a hostile shape must cost no more there.
    """
    if request.param == "read entry by entry":
        monkeypatch.setattr(wire, "ALWAYS_WHOLE_BYTES", 0)
        monkeypatch.setattr(wire, "WHOLE_BODY_BYTES", 0)
    app = create_app(_settings(f"sqlite:///{tmp_path / 'als-cds.db'}"), clock=lambda: NOW)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """The app on each database the service supports (text that one accepts, the other may not)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'als-cds.db'}"
    else:
        url = request.getfixturevalue("postgres_db_url")
    with TestClient(create_app(_settings(url), clock=lambda: NOW), raise_server_exceptions=False) as client:
        yield client


def post(api: TestClient, body: bytes | str, path: str = INVOKE) -> httpx.Response:
    content = body.encode() if isinstance(body, str) else body
    return api.post(path, content=content, headers={"Content-Type": "application/json"})


def post_json(api: TestClient, body: Any, path: str = INVOKE) -> httpx.Response:
    """Serialised by Python's json: NaN, Infinity and lone surrogates (as \\ud800 escapes) go through."""
    return post(api, json.dumps(body), path)


def issues(response: httpx.Response) -> list[dict[str, Any]]:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"] and all(isinstance(i["diagnostics"], str) for i in body["issue"])
    return body["issue"]


def where(response: httpx.Response) -> list[str]:
    return [e for issue in issues(response) for e in issue.get("expression", [])]


def rule_ids(response: httpx.Response) -> list[str]:
    body = response.json()
    CDSResponse.model_validate(body)
    return shown_rules(body)


def strict_json(response: httpx.Response) -> Any:
    """The body parsed as strict JSON: NaN and Infinity are not JSON, so an answer must not hold them."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"the answer holds {constant}, which is not JSON")

    return json.loads(response.text, parse_constant=refuse)


def feedback_item(**changes: Any) -> dict[str, Any]:
    item = {"card": "card-1", "outcome": "overridden", "outcomeTimestamp": "2026-11-22T12:00:00Z"}
    return {**item, **changes}


def quickstart() -> dict[str, Any]:
    return hook_request(QUICKSTART)


def first_resource(request: dict[str, Any], key: str, rtype: str | None = None) -> dict[str, Any]:
    for entry in request["prefetch"][key]["entry"]:
        if rtype is None or entry["resource"]["resourceType"] == rtype:
            return entry["resource"]
    raise AssertionError(f"no {rtype} in prefetch.{key}")


def order_request(fixture: str, hook: str) -> dict[str, Any]:
    service = next(s for s in build_services().values() if s.hook == hook)
    keys = list(service.prefetch(_settings("sqlite://"), NOW.date()))
    return request_from_bundle(patient_bundle(fixture), hook, keys)


# --------------------------------------------------------------------------------------------
# Huge arrays: answered in seconds, not minutes, and without a 500


def test_a_prefetch_bundle_with_200000_entries_is_answered_in_seconds(api: TestClient) -> None:
    request = quickstart()
    junk = [{}, {"resource": 0}, {"resource": {"resourceType": "Observation"}}, {"resource": {"id": "x"}}]
    request["prefetch"]["observations"]["entry"] += [junk[i % len(junk)] for i in range(200_000)]
    body = json.dumps(request, separators=(",", ":"))
    assert len(body) < Settings(_env_file=None).max_body_bytes  # within the default size limit
    started = time.perf_counter()
    response = post(api, body)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text[:500]
    assert rule_ids(response) == QUICKSTART_CARDS  # the junk changed nothing
    assert elapsed < SECONDS


def test_100000_selections_are_answered_in_seconds(api: TestClient) -> None:
    request = order_request("riluzole-naive-eligible", "order-select")
    real = request["context"]["selections"]
    request["context"]["selections"] = [f"MedicationRequest/x{i}" for i in range(100_000)] + real
    started = time.perf_counter()
    response = post_json(api, request, "/cds-services/als-order-select")
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text[:500]
    assert rule_ids(response) == ["riluzole-order-monitoring"]
    assert elapsed < SECONDS


def test_the_largest_chart_that_fits_the_body_limit_is_answered_in_seconds(api: TestClient) -> None:
    request = quickstart()
    alt = copy.deepcopy(first_resource(request, "observations"))
    entries = request["prefetch"]["observations"]["entry"]
    size = len(json.dumps(request))
    one = len(json.dumps({"resource": {**alt, "id": "alt-000000"}})) + 2
    for number in range((Settings(_env_file=None).max_body_bytes - size) // one - 10):
        entries.append({"resource": {**alt, "id": f"alt-{number:06d}"}})
    started = time.perf_counter()
    response = post_json(api, request)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text[:500]
    assert elapsed < 3.0


# --------------------------------------------------------------------------------------------
# NUL, invalid UTF-8, lone surrogates


def test_a_raw_nul_byte_in_a_string_is_400_invalid_json_saying_where(api: TestClient) -> None:
    response = post(api, b'{"hook": "patient-\x00view", "hookInstance": "x", "context": {}}')
    assert response.status_code == 400
    [issue] = issues(response)
    assert issue["code"] == "structure"
    assert "not valid JSON at character 18" in issue["diagnostics"]


def test_an_escaped_nul_in_hook_instance_is_400_naming_it(api: TestClient) -> None:
    request = quickstart()
    request["hookInstance"] = "abc\u0000def"
    response = post_json(api, request)
    assert response.status_code == 400
    assert where(response) == ["hookInstance"]


def test_an_escaped_nul_in_feedback_is_400_naming_it_on_every_database(store_api: TestClient) -> None:
    """PostgreSQL text cannot hold NUL: a 500 there (store.save_feedback) until hooks.py refused it."""
    item = feedback_item(overrideReason={"reason": {"code": "x\u0000"}, "userComment": "a\u0000b"})
    response = post_json(store_api, {"feedback": [item]}, FEEDBACK)
    assert response.status_code == 400
    assert sorted(where(response)) == [
        "feedback.0.overrideReason.reason.code",
        "feedback.0.overrideReason.userComment",
    ]
    assert store_api.app.state.als.store.feedback_rows() == []  # type: ignore[attr-defined]


def test_a_nul_in_the_text_of_a_prefetched_resource_is_harmless_and_accepted(api: TestClient) -> None:
    request = quickstart()
    first_resource(request, "conditions")["code"]["text"] = "Amyotrophic\u0000lateral sclerosis"
    response = post_json(api, request)
    assert response.status_code == 200
    assert rule_ids(response) == QUICKSTART_CARDS


def test_invalid_utf8_in_the_body_is_400(api: TestClient) -> None:
    body = json.dumps(quickstart()).encode()
    body = body.replace(b'"hookInstance": "', b'"hookInstance": "\xff')  # no UTF-8 text holds 0xFF
    response = post(api, body)
    assert response.status_code == 400
    assert issues(response)[0]["diagnostics"] == "The request body is not UTF-8 at byte 42"


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        pytest.param(FEEDBACK, feedback_item(overrideReason={"userComment": "a\ud800b"}),
                     "feedback.0.overrideReason.userComment", id="feedback comment"),
        pytest.param(FEEDBACK, feedback_item(overrideReason={"reason": {"code": "c", "display": "\udfff"}}),
                     "feedback.0.overrideReason.reason.display", id="feedback reason display"),
        pytest.param(FEEDBACK, feedback_item(vendorNote="\ud83d"), "feedback.0", id="feedback unknown field"),
        pytest.param(INVOKE, {"hook": "\ud800"}, "hook", id="hook"),
        pytest.param(INVOKE, {"context": {"encounterId": "e\ud800"}}, "context", id="context field"),
        pytest.param(INVOKE, {"fhirServer": "https://ehr\ud800.example/fhir"}, "fhirServer", id="fhirServer"),
    ],
)  # fmt: skip
def test_a_lone_surrogate_is_400_naming_the_field(
    api: TestClient, path: str, body: dict[str, Any], expected: str
) -> None:
    """JSON may escape a lone surrogate (\\ud800), but it is not Unicode text: it could be neither
    stored nor sent back as UTF-8. Feedback with one was a 500 (store.feedback_dedupe_key)."""
    if path == FEEDBACK:
        request: dict[str, Any] = {"feedback": [body]}
    else:
        request = quickstart()
        for key, value in body.items():
            request[key] = {**request[key], **value} if isinstance(value, dict) else value
    response = post_json(api, request, path)
    assert response.status_code == 400, response.text
    assert expected in where(response)


def test_a_lone_surrogate_in_a_referenced_medication_is_400_not_500(api: TestClient) -> None:
    """Medications are indexed from the raw JSON (record._index_medications), so the name reached
    the card unchecked and the answer could not be encoded: a 500 before hooks.py refused it."""
    request = quickstart()
    order = first_resource(request, "medications", "MedicationRequest")
    medication = {"resourceType": "Medication", "id": "m1", "code": order.pop("medicationCodeableConcept")}
    medication["code"]["text"] = "riluzole \ud800 50 mg"
    order["medicationReference"] = {"reference": "Medication/m1"}
    request["prefetch"]["medications"]["entry"].append({"resource": medication})
    response = post_json(api, request)
    assert response.status_code == 400
    [issue] = issues(response)
    assert issue["expression"] == ["prefetch"]
    assert "medications.entry.2.resource.code.text" in issue["diagnostics"]


def test_an_encoded_surrogate_in_the_raw_bytes_is_400_naming_the_field(api: TestClient) -> None:
    """Python's json reads UTF-8 with 'surrogatepass': the bytes ED A0 80 become a lone surrogate."""
    body = json.dumps({"feedback": [feedback_item(overrideReason={"userComment": "a@b"})]}).encode()
    response = post(api, body.replace(b"a@b", b"a\xed\xa0\x80b"), FEEDBACK)
    assert response.status_code == 400
    assert where(response) == ["feedback.0.overrideReason.userComment"]


# --------------------------------------------------------------------------------------------
# Numbers: 1e999, NaN and Infinity literals, very long integers


def test_1e999_where_a_number_is_expected_is_400_naming_the_field(api: TestClient) -> None:
    request = quickstart()
    request["fhirServer"] = SERVER
    request["fhirAuthorization"] = {"access_token": "t", "token_type": "Bearer", "expires_in": "EXP"}
    response = post(api, json.dumps(request).replace('"EXP"', "1e999"))
    assert response.status_code == 400
    assert where(response) == ["fhirAuthorization.expires_in"]
    assert "finite" in issues(response)[0]["diagnostics"]


def test_1e999_as_a_feedback_timestamp_is_400_naming_it(api: TestClient) -> None:
    body = json.dumps({"feedback": [feedback_item(outcomeTimestamp="TS")]}).replace('"TS"', "1e999")
    response = post(api, body, FEEDBACK)
    assert response.status_code == 400
    assert where(response) == ["feedback.0.outcomeTimestamp"]


def test_nan_where_a_string_is_expected_is_400_naming_the_field(api: TestClient) -> None:
    body = json.dumps(quickstart()).replace('"hookInstance": "', '"hookInstance": NaN, "was": "')
    response = post(api, body)
    assert response.status_code == 400
    assert where(response) == ["hookInstance"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_non_finite_values_in_prefetch_cost_the_value_only_and_the_answer_is_strict_json(
    api: TestClient, literal: str
) -> None:
    request = quickstart()
    for entry in request["prefetch"]["observations"]["entry"]:
        if "valueQuantity" in entry["resource"]:
            entry["resource"]["valueQuantity"]["value"] = "VALUE"
    response = post(api, json.dumps(request).replace('"VALUE"', literal))
    assert response.status_code == 200
    body = strict_json(response)
    CDSResponse.model_validate(body)
    first = body["cards"][0]
    assert first["source"]["topic"]["code"] == "riluzole-lft-due"
    # The results were taken (their dates count), their values are unknown, and the card says so.
    assert "last: 2025-01-10" in first["summary"]
    assert "could not be read" in first["detail"]


def test_an_integer_too_long_for_python_is_400(api: TestClient) -> None:
    """Python's json refuses integers over 4300 digits (a CPU guard) with an error FastAPI turns into 400."""
    request = quickstart()
    request["fhirServer"] = SERVER
    request["fhirAuthorization"] = {"access_token": "t", "expires_in": "EXP"}
    response = post(api, json.dumps(request).replace('"EXP"', "9" * 5000))
    assert response.status_code == 400
    assert issues(response)[0]["diagnostics"] == (
        "The request body holds an integer too long to read (over 4300 digits)"
    )


# --------------------------------------------------------------------------------------------
# Duplicate keys and bodies that are not JSON objects


def test_duplicate_keys_take_the_last_value(api: TestClient) -> None:
    """Python's json keeps the last of repeated keys; the service answers for that value only."""
    body = json.dumps(quickstart())
    first_wrong = '{"hook": "order-sign", ' + body[1:]
    response = post(api, first_wrong)
    assert response.status_code == 200
    assert rule_ids(response) == QUICKSTART_CARDS
    last_wrong = body[:-1] + ', "hook": "order-sign"}'
    response = post(api, last_wrong)
    assert response.status_code == 400
    assert where(response) == ["hook"]


@pytest.mark.parametrize("path", [INVOKE, FEEDBACK])
@pytest.mark.parametrize(
    "body", ["[]", '[{"hook": "patient-view"}]', '"patient-view"', "42", "null", "true", ""]
)
def test_a_body_that_is_not_a_json_object_is_400_naming_the_body(
    api: TestClient, path: str, body: str
) -> None:
    response = post(api, body, path)
    assert response.status_code == 400
    [issue] = issues(response)
    assert issue["diagnostics"].startswith("The request body: ")
    assert "expression" not in issue


# --------------------------------------------------------------------------------------------
# Wrong types at every level


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = document
        for step in parents:
            target = target[int(step)] if isinstance(target, list) else target[step]
        target[int(last) if isinstance(target, list) else last] = value

    return change


WITH_SERVER = {"fhirServer": SERVER, "fhirAuthorization": {"access_token": "t", "token_type": "Bearer"}}


@pytest.mark.parametrize(
    ("base", "path", "value", "expected"),
    [
        ("patient-view", "hook", 7, "hook"),
        ("patient-view", "hookInstance", {"id": "x"}, "hookInstance"),
        ("patient-view", "context", ["userId", "patientId"], "context"),
        ("patient-view", "prefetch", [{"resourceType": "Patient"}], "prefetch"),
        ("patient-view", "fhirServer", 8080, "fhirServer"),
        ("patient-view", "fhirAuthorization", "Bearer t", "fhirAuthorization"),
        ("patient-view", "fhirAuthorization.access_token", 5, "fhirAuthorization.access_token"),
        ("patient-view", "fhirAuthorization.expires_in", "soon", "fhirAuthorization.expires_in"),
        ("patient-view", "context.userId", ["Practitioner/1"], "context.userId"),
        ("patient-view", "context.patientId", {"id": PATIENT}, "context.patientId"),
        ("patient-view", "context.encounterId", 5, "context.encounterId"),
        ("order-select", "context.draftOrders", "Bundle", "context.draftOrders"),
        ("order-select", "context.draftOrders.resourceType", "Parameters",
         "context.draftOrders.resourceType"),
        ("order-select", "context.draftOrders.entry", {"resource": {}}, "context.draftOrders.entry"),
        ("order-select", "context.draftOrders.entry.0", "MedicationRequest/1", "context.draftOrders.entry.0"),
        ("order-select", "context.selections", "MedicationRequest/1", "context.selections"),
        ("order-select", "context.selections", [1], "context.selections.0"),
        ("order-select", "context.selections", [], "context.selections"),
        ("feedback", "feedback", {"card": "c"}, "feedback"),
        ("feedback", "feedback.0", "card-1", "feedback.0"),
        ("feedback", "feedback.0.card", ["card-1"], "feedback.0.card"),
        ("feedback", "feedback.0.outcome", 1, "feedback.0.outcome"),
        ("feedback", "feedback.0.outcomeTimestamp", "yesterday", "feedback.0.outcomeTimestamp"),
        ("feedback", "feedback.0.acceptedSuggestions", "s-1", "feedback.0.acceptedSuggestions"),
        ("feedback", "feedback.0.overrideReason", ["too-busy"], "feedback.0.overrideReason"),
        ("feedback", "feedback.0.overrideReason.reason", "too-busy", "feedback.0.overrideReason.reason"),
    ],
)  # fmt: skip
def test_a_wrong_type_at_any_level_is_400_naming_the_field(
    api: TestClient, base: str, path: str, value: Any, expected: str
) -> None:
    if base == "patient-view":
        request, url = {**quickstart(), **copy.deepcopy(WITH_SERVER)}, INVOKE
    elif base == "order-select":
        request, url = (
            order_request("riluzole-naive-eligible", "order-select"),
            "/cds-services/als-order-select",
        )
    else:
        item = feedback_item(overrideReason={"reason": {"code": "too-busy"}})
        request, url = {"feedback": [item]}, FEEDBACK
    _set(path, value)(request)
    with respx.mock(assert_all_called=False) as router:  # nothing may reach the network
        router.route().mock(return_value=httpx.Response(500))
        response = post_json(api, request, url)
    assert response.status_code == 400, response.text
    assert expected in where(response), issues(response)
    assert "Traceback" not in response.text


# --------------------------------------------------------------------------------------------
# fhirServer: only an http(s) URL of a server


@pytest.mark.parametrize(
    "server",
    [
        "file:///etc/passwd",
        "gopher://ehr.example.org/fhir",
        "ws://ehr.example.org/fhir",
        "javascript:alert(1)",
        "//ehr.example.org/fhir",
        "ehr.example.org/fhir",
        "",
        "/var/run/ehr.sock",
        "unix:///var/run/ehr.sock",
        "http+unix://%2Fvar%2Frun%2Fehr.sock/fhir",
    ],
)
def test_a_fhir_server_that_is_not_an_http_url_is_400_naming_it(api: TestClient, server: str) -> None:
    request = {**quickstart(), **copy.deepcopy(WITH_SERVER), "fhirServer": server}
    response = post_json(api, request)
    assert response.status_code == 400
    assert where(response) == ["fhirServer"]
    assert not server or server not in response.text  # the value is not echoed


@pytest.mark.parametrize(
    "server", ["https://user:secret@ehr.example.org/fhir", "https://ehr.example.org@evil.example/fhir"]
)
def test_a_fhir_server_with_a_userinfo_part_is_400(api: TestClient, server: str) -> None:
    request = {**quickstart(), **copy.deepcopy(WITH_SERVER), "fhirServer": server}
    response = post_json(api, request)
    assert response.status_code == 400
    assert where(response) == ["fhirServer"]


@pytest.mark.parametrize("server", ["http://", "https:///fhir"])
def test_a_fhir_server_without_a_host_is_400(api: TestClient, server: str) -> None:
    request = {**quickstart(), **copy.deepcopy(WITH_SERVER), "fhirServer": server}
    response = post_json(api, request)
    assert response.status_code == 400
    assert where(response) == ["fhirServer"]


@pytest.mark.parametrize("token", ["tök€n", "a\r\nX-Injected: 1", "two words", "tab\there"])
def test_an_access_token_that_cannot_go_in_a_header_is_400_and_not_echoed(
    api: TestClient, token: str
) -> None:
    """Was a 500: httpx refuses a non-ASCII header value (UnicodeEncodeError in fhir_client._get_json)."""
    request = hook_request("patient-view-fetch-from-fhir-server")
    request["fhirAuthorization"]["access_token"] = token
    with respx.mock(assert_all_called=False) as router:
        router.route().mock(return_value=httpx.Response(200, json={"resourceType": "Bundle"}))
        response = post_json(api, request)
    assert response.status_code == 400
    assert where(response) == ["fhirAuthorization.access_token"]
    assert token not in response.text


# --------------------------------------------------------------------------------------------
# Extremely long identifiers


def test_a_hook_instance_of_a_million_characters_is_handled_on_every_database(store_api: TestClient) -> None:
    request = quickstart()
    request["hookInstance"] = "h" * 1_000_000
    response = post_json(store_api, request)
    assert response.status_code == 200
    assert rule_ids(response) == QUICKSTART_CARDS
    card = response.json()["cards"][0]
    state = store_api.app.state.als  # type: ignore[attr-defined]
    assert state.issued.flush(5)  # written behind the answer (store/writer.py)
    assert state.store.issued_card_rule(card["uuid"]) == "riluzole-lft-due"


def test_a_patient_id_of_50000_characters_is_handled(api: TestClient) -> None:
    long_id = "p" * 50_000
    body = json.dumps(quickstart()).replace(PATIENT, long_id)
    assert body.count(long_id) > 10  # context, Patient.id and every subject reference
    response = post(api, body)
    assert response.status_code == 200
    assert rule_ids(response) == QUICKSTART_CARDS


def test_a_patient_id_of_50000_characters_in_fetch_urls_is_handled(api: TestClient) -> None:
    request = hook_request("patient-view-fetch-from-fhir-server")
    request["context"]["patientId"] = "p" * 50_000
    with respx.mock(assert_all_called=False) as router:
        router.route().mock(return_value=httpx.Response(414))
        response = post_json(api, request)
    assert response.status_code == 412
    assert {i["code"] for i in issues(response)} == {"incomplete"}
    assert "p" * 100 not in response.text


# --------------------------------------------------------------------------------------------
# Selections that name no draft order; the feedback cap


def test_selections_naming_orders_not_in_draft_orders_check_every_draft_order(api: TestClient) -> None:
    request = order_request("riluzole-naive-eligible", "order-select")
    expected = rule_ids(post_json(api, request, "/cds-services/als-order-select"))
    assert expected == ["riluzole-order-monitoring"]
    request["context"]["selections"] = ["MedicationRequest/not-a-draft-order", "ServiceRequest/nor-this"]
    response = post_json(api, request, "/cds-services/als-order-select")
    assert response.status_code == 200
    assert rule_ids(response) == expected  # an unknown selection does not hide the orders' cards


def test_feedback_with_500_items_is_stored_and_501_is_400_storing_nothing(api: TestClient) -> None:
    items = [feedback_item(card=f"card-{i}") for i in range(MAX_FEEDBACK_ITEMS + 1)]
    assert MAX_FEEDBACK_ITEMS == 500
    response = post_json(api, {"feedback": items}, FEEDBACK)
    assert response.status_code == 400
    assert where(response) == ["feedback"]
    assert "at most 500" in issues(response)[0]["diagnostics"]
    store = api.app.state.als.store  # type: ignore[attr-defined]
    assert store.feedback_rows() == []
    response = post_json(api, {"feedback": items[:-1]}, FEEDBACK)
    assert response.status_code == 200
    assert response.json() == {"stored": 500, "duplicates": 0, "unknownCards": 500}
    assert len(store.feedback_rows()) == 500


# --------------------------------------------------------------------------------------------
# Broken FHIR shapes: read around, never a 500


def test_an_entry_whose_search_is_not_an_object_is_read_not_a_500(api: TestClient) -> None:
    """Was a 500: record.resources_from_bundle called .get on `search`."""
    request = quickstart()
    request["prefetch"]["conditions"]["entry"][0]["search"] = "match"
    request["prefetch"]["observations"]["entry"][0]["search"] = 5
    response = post_json(api, request)
    assert response.status_code == 200
    assert rule_ids(response) == QUICKSTART_CARDS


def test_contained_and_reaction_that_are_not_arrays_skip_the_resource_not_a_500(api: TestClient) -> None:
    """Was a 500: record._medication_concept and record._concepts iterated a number."""
    request = quickstart()
    order = first_resource(request, "medications", "MedicationRequest")
    order.pop("medicationCodeableConcept")
    order.update(medicationReference={"reference": "#med"}, contained=5)
    allergy = {
        "resourceType": "AllergyIntolerance",
        "patient": {"reference": f"Patient/{PATIENT}"},
        "reaction": True,
    }
    request["prefetch"]["allergies"] = {"resourceType": "Bundle", "entry": [{"resource": allergy}]}
    response = post_json(api, request)
    assert response.status_code == 200
    assert "riluzole-not-prescribed" in rule_ids(response)  # the order without a medication is gone


def test_a_resource_nested_900_levels_deep_is_skipped_not_a_500(api: TestClient) -> None:
    """Was a 500: record._repair deep-copied the resource and hit the recursion limit."""
    request = quickstart()
    first_resource(request, "observations")["extension"] = "DEEP"
    response = post(api, json.dumps(request).replace('"DEEP"', "[" * 900 + "]" * 900))
    assert response.status_code == 200
    assert rule_ids(response) == QUICKSTART_CARDS


# --------------------------------------------------------------------------------------------
# Broken shapes that used to crash the service (fixed; each test keeps the fix in place)


def _prefetch_change(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    request = quickstart()
    change(request["prefetch"])
    return request


_TERMINOLOGY = "terminology.Concept.from_json iterates `coding` and calls str methods on `system` unchecked"


def test_a_coding_that_is_a_number_is_not_a_500(api: TestClient) -> None:
    request = quickstart()
    first_resource(request, "observations")["code"] = {"coding": 5}
    assert post_json(api, request).status_code == 200


def test_a_coding_system_that_is_a_number_is_not_a_500(api: TestClient) -> None:
    request = quickstart()
    first_resource(request, "conditions")["code"]["coding"][0]["system"] = 5
    assert post_json(api, request).status_code == 200


def test_a_prefetch_bundle_whose_entry_is_a_number_is_not_a_500(api: TestClient) -> None:
    request = _prefetch_change(lambda p: p["conditions"].__setitem__("entry", 5))
    assert post_json(api, request).status_code in (200, 400)


def test_a_prefetch_bundle_whose_link_is_a_number_is_not_a_500(api: TestClient) -> None:
    request = _prefetch_change(lambda p: p["conditions"].__setitem__("link", 5))
    assert post_json(api, request).status_code in (200, 400)


def test_an_operation_outcome_entry_whose_issue_is_a_number_is_not_a_500(api: TestClient) -> None:
    outcome = {"resource": {"resourceType": "OperationOutcome", "issue": 5}}
    request = _prefetch_change(lambda p: p["conditions"]["entry"].append(outcome))
    assert post_json(api, request).status_code in (200, 400, 412)


@pytest.mark.parametrize("element", ["entry", "link"])
def test_a_fhir_server_answering_a_broken_bundle_is_not_a_500(api: TestClient, element: str) -> None:
    with respx.mock(assert_all_called=False) as router:
        router.route().mock(return_value=httpx.Response(200, json={"resourceType": "Bundle", element: 5}))
        response = post_json(api, hook_request("patient-view-fetch-from-fhir-server"))
    # The crash leaves the other fetch tasks' exceptions unretrieved; collect them now, so their
    # finalisers do not run inside pytest's report building (CPython 3.11 then fails an AST check).
    gc.collect()
    assert response.status_code in (200, 412)

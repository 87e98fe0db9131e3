"""End to end against a real FHIR server: Medplum's FHIR engine (fhir-server/, see conftest.py).

The service runs in-process (TestClient) and fetches over real HTTP from the loopback FHIR server:
no respx, no fake. What is proven:

* every fixture patient on every hook (the cases of tests/api/test_fixture_expectations.py), called
  with no prefetch and fhirServer + fhirAuthorization, gets exactly the cards it gets with full
  prefetch (every field but the uuids), and the expected ones (a care review's items counted as
  the rules they are); each key was fetched with the token;
* partial prefetch: only the keys that are absent or that the EHR reported an error for are fetched;
* paging: with a page size of 2, `next` links back to the server are followed, also from a
  prefetched first page, and the cards do not change;
* a wrong, expired or missing token: the server answers 401, the service 412 naming every key
  with code `security`, and the token never goes to another origin (a `next` link elsewhere);
* a slow server: 412 `timeout` within the time budget; a server that stops mid-run: 412, no 500.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from cds_service import rules as rules_package
from cds_service.app import create_app
from cds_service.bundles import request_from_bundle, split_bundle
from cds_service.prefetch import TYPE_BY_KEY
from cds_service.services import build_services
from cds_service.settings import Settings
from tests.cards_shown import fired_rules
from tests.integration.conftest import FhirTestServer
from tests.support import FIXTURES, NOW

EXPECTED = sorted((FIXTURES / "expected").glob("*.json"))
SERVICES = {s.hook: s for s in build_services().values()}
BUDGET_SECONDS = 4.0


# ------------------------------------------------------------------------------------------------
# The service, in-process, with authentication of EHR calls off


def _app_client(tmp_path: Path, **settings: Any) -> Iterator[TestClient]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ALS_CDS_AUTH_REQUIRED", "false")
        config = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path / 'als-cds.db'}", **settings)
        with TestClient(create_app(config, clock=lambda: NOW)) as client:
            yield client


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    yield from _app_client(tmp_path_factory.mktemp("e2e-app"), fhir_budget_seconds=BUDGET_SECONDS)


@pytest.fixture(scope="module")
def hook_clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TestClient]]:
    """The service once per hook, each on a database of its own, for the fixture cases. What one
    call leaves in the store changes the next one by design (issue 12: a card shown on order-select
    is not repeated on order-sign for the same patient, a draft order matching what patient-view
    suggested brings back no card about itself), and the fixtures' expectations are each hook's
    cards on its own; tests/api/test_alert_fatigue.py proves the order session."""
    with contextlib.ExitStack() as stack:
        yield {
            hook: stack.enter_context(
                contextlib.contextmanager(_app_client)(
                    tmp_path_factory.mktemp(f"e2e-{hook}"), fhir_budget_seconds=BUDGET_SECONDS
                )
            )
            for hook in SERVICES
        }


@pytest.fixture
def quick_client(tmp_path: Path) -> Iterator[TestClient]:
    """The service with a 1 s FHIR budget."""
    yield from _app_client(tmp_path, fhir_budget_seconds=1.0)


# ------------------------------------------------------------------------------------------------
# Helpers


@cache
def _bundle(fixture: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "patients" / f"{fixture}.json").read_text(encoding="utf-8"))


def _templates(hook: str) -> dict[str, str]:
    return SERVICES[hook].prefetch(Settings(_env_file=None), NOW.date())


def _full_prefetch_request(fixture: str, hook: str) -> dict[str, Any]:
    return request_from_bundle(_bundle(fixture), hook, list(_templates(hook)))


def _fhir_request(
    fixture: str, hook: str, server: FhirTestServer, *, token: str | None = None, prefetch: Any = None
) -> dict[str, Any]:
    """The same hook call with fhirServer and fhirAuthorization; no prefetch unless given."""
    request = _full_prefetch_request(fixture, hook)
    del request["prefetch"]
    if prefetch is not None:
        request["prefetch"] = prefetch
    request["fhirServer"] = server.base(fixture)
    request["fhirAuthorization"] = {
        "access_token": token or server.token,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": " ".join(f"patient/{t}.read" for t in sorted(set(TYPE_BY_KEY.values()))),
        "subject": "als-cds",
    }
    return request


def _call(client: TestClient, hook: str, request: Mapping[str, Any]) -> httpx.Response:
    return client.post(f"/cds-services/{SERVICES[hook].id}", json=request)


def _without_uuids(value: Any) -> Any:
    """Cards without what differs by nature between two calls: the uuids the service makes, and the
    `meta` (versionId, lastUpdated) a FHIR server adds to what it stores, which an update suggestion
    built from the sender's order sends back as it came."""
    if isinstance(value, dict):
        return {k: _without_uuids(v) for k, v in value.items() if k not in ("uuid", "meta")}
    if isinstance(value, list):
        return [_without_uuids(v) for v in value]
    return value


def _cards(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return _without_uuids(response.json()["cards"])


def _summary(cards: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(c["source"]["topic"]["code"], c["indicator"], c["summary"]) for c in cards]


def _path_type(request: Mapping[str, Any]) -> str:
    """The resource type a logged FHIR request was for (`Patient/x` → Patient)."""
    return str(request["path"]).split("/")[0]


def _key_types(keys: list[str]) -> set[str]:
    return {TYPE_BY_KEY[key] for key in keys}


def _module_rule_ids(module: str) -> set[str]:
    return {rule.id for rule in getattr(rules_package, module).RULES}


def _cases() -> list[Any]:
    cases = []
    for path in EXPECTED:
        for fixture, hooks in json.loads(path.read_text()).items():
            for hook, rule_ids in hooks.items():
                cases.append(
                    pytest.param(
                        path.stem, fixture, hook, sorted(rule_ids), id=f"{path.stem}:{fixture}:{hook}"
                    )
                )
    return cases


# ------------------------------------------------------------------------------------------------
# The server itself: what the tests below rely on


def test_server_holds_each_chart_under_its_ids_and_no_draft_order(fhir: FhirTestServer) -> None:
    for fixture in sorted(fhir.loaded):
        chart, drafts = split_bundle(_bundle(fixture))
        base = fhir.base(fixture)
        patient = next(r for r in chart if r["resourceType"] == "Patient")
        read = fhir.http.get(f"{base}/Patient/{patient['id']}", headers=fhir.auth())
        assert read.status_code == 200, read.text
        assert read.json()["id"] == patient["id"]
        for draft in drafts:
            found = fhir.http.get(
                f"{base}/{draft['resourceType']}", params={"status": "draft"}, headers=fhir.auth()
            )
            assert found.status_code == 200
            assert found.json()["total"] == 0, f"{fixture}: a draft order was loaded as chart data"


def test_server_speaks_fhir_at_its_edge(fhir: FhirTestServer) -> None:
    fixture = "als-riluzole-lft-overdue"
    base = fhir.base(fixture)
    metadata = fhir.http.get(f"{base}/metadata")  # public, as on SMART servers
    assert metadata.status_code == 200
    assert metadata.json()["resourceType"] == "CapabilityStatement"
    assert metadata.json()["fhirVersion"] == "4.0.1"

    refused = fhir.http.get(f"{base}/Patient/{fixture}")
    assert refused.status_code == 401
    assert refused.json()["resourceType"] == "OperationOutcome"
    assert refused.headers["www-authenticate"].startswith("Bearer")
    wrong = fhir.http.get(f"{base}/Patient/{fixture}", headers=fhir.auth("not-the-token"))
    assert wrong.status_code == 401
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]

    preflight = fhir.http.options(
        f"{base}/Patient", headers={"Origin": "https://ehr.example", "Access-Control-Request-Method": "GET"}
    )
    assert preflight.status_code == 204
    assert "Authorization" in preflight.headers["access-control-allow-headers"]

    query = {"patient": fixture, "_sort": "-date"}
    by_get = fhir.http.get(f"{base}/Observation", params=query, headers=fhir.auth()).json()
    by_post = fhir.http.post(f"{base}/Observation/_search", data=query, headers=fhir.auth()).json()
    assert [e["resource"]["id"] for e in by_get["entry"]] == [e["resource"]["id"] for e in by_post["entry"]]
    unknown = fhir.http.get(f"{base}/Observation", params={"nonsense": "1"}, headers=fhir.auth())
    assert unknown.status_code == 400  # not silently "no match", as MemoryRepository alone would

    created = fhir.http.post(
        f"{base}/Observation",
        json={"resourceType": "Observation", "status": "final", "code": {"text": "scratch"}},
        headers=fhir.auth(),
    )
    assert created.status_code == 201
    new_id = created.json()["id"]
    assert created.headers["location"].startswith(f"{base}/Observation/{new_id}")
    updated = fhir.http.put(
        f"{base}/Observation/{new_id}",
        json={"resourceType": "Observation", "id": new_id, "status": "amended", "code": {"text": "scratch"}},
        headers=fhir.auth(),
    )
    assert updated.status_code == 200
    assert updated.json()["status"] == "amended"
    assert fhir.http.delete(f"{base}/Observation/{new_id}", headers=fhir.auth()).status_code == 200
    assert fhir.http.get(f"{base}/Observation/{new_id}", headers=fhir.auth()).status_code == 404


# ------------------------------------------------------------------------------------------------
# Every fixture patient and hook: fetched from the FHIR server = full prefetch


@pytest.fixture(scope="module")
def responses() -> dict[tuple[str, str], tuple[list[Any], list[Any]]]:
    """(fixture, hook) → (cards with full prefetch, cards fetched): one pair of calls per pair."""
    return {}


@pytest.mark.parametrize(("module", "fixture", "hook", "expected"), _cases())
def test_fetched_from_the_fhir_server_the_cards_equal_those_from_full_prefetch(
    hook_clients: dict[str, TestClient],
    fhir: FhirTestServer,
    responses: dict[tuple[str, str], tuple[list[Any], list[Any]]],
    module: str,
    fixture: str,
    hook: str,
    expected: list[str],
) -> None:
    if hook != "patient-view" and not split_bundle(_bundle(fixture))[1]:
        assert expected == [], f"{fixture} has no draft orders, so no {hook} card can be expected"
        return
    client = hook_clients[hook]
    if (fixture, hook) not in responses:
        prefetched = _cards(_call(client, hook, _full_prefetch_request(fixture, hook)))
        fhir.clear_requests()
        fetched = _cards(_call(client, hook, _fhir_request(fixture, hook, fhir)))
        # Medications that requests name by reference only are read one by one (404: not there).
        medication_reads = [r for r in fhir.requests() if _path_type(r) == "Medication"]
        assert all(r["auth"] == "ok" and r["status"] in (200, 404) for r in medication_reads)
        served = [r for r in fhir.requests() if _path_type(r) != "Medication"]
        # Every key came from the server, over HTTP, with the token, for this patient only.
        assert {_path_type(r) for r in served} == _key_types(list(_templates(hook)))
        assert all(r["auth"] == "ok" and r["status"] == 200 and r["tenant"] == fixture for r in served)
        responses[(fixture, hook)] = (prefetched, fetched)
    prefetched, fetched = responses[(fixture, hook)]
    # Exactly the same cards, to the letter: an ALT or a genetic result older than the Observation
    # date window is still fetched (those value sets are asked for without a window).
    assert _summary(fetched) == _summary(prefetched)
    assert fetched == prefetched
    ids = fired_rules({"cards": fetched})  # as cards of their own or as items of the care review
    assert sorted(i for i in ids if i in _module_rule_ids(module)) == expected


# ------------------------------------------------------------------------------------------------
# Partial prefetch and paging


def test_partial_prefetch_fetches_only_what_is_missing_or_failed(
    client: TestClient, fhir: FhirTestServer
) -> None:
    fixture, hook = "riluzole-fever-no-count", "patient-view"
    full = _full_prefetch_request(fixture, hook)
    expected = _cards(_call(client, hook, full))
    given = {key: full["prefetch"][key] for key in ("patient", "conditions", "medications")}
    # The EHR could not run this query: an error OperationOutcome means "fetch it yourself".
    given["allergies"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception", "diagnostics": "query failed"}],
    }
    fetched_keys = [key for key in _templates(hook) if key not in ("patient", "conditions", "medications")]

    response = _call(client, hook, _fhir_request(fixture, hook, fhir, prefetch=given))

    assert _cards(response) == expected
    served = fhir.requests()
    assert {_path_type(r) for r in served} == _key_types(fetched_keys)
    assert len(served) == len(fetched_keys)


@cache
def _busiest_patient(origin: str, token: str) -> tuple[str, int]:
    """The fixture patient with the most Observations in the observations template's answer."""
    template = _templates("patient-view")["observations"]
    totals = {}
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        for path in sorted((FIXTURES / "patients").glob("*.json")):
            query = re.sub(r"_count=\d+", "_count=0", template.replace("{{context.patientId}}", path.stem))
            totals[path.stem] = http.get(f"{origin}/tenants/{path.stem}/fhir/{query}").json()["total"]
    fixture = max(totals, key=lambda name: (totals[name], name))
    return fixture, totals[fixture]


def _most_observations(server: FhirTestServer) -> str:
    fixture, total = _busiest_patient(server.origin, server.token)
    assert total >= 5, f"{fixture}: {total} Observations are too few to need several pages of 2"
    return fixture


def test_paged_searches_follow_next_links_back_to_the_server(
    client: TestClient, fhir: FhirTestServer
) -> None:
    fixture = _most_observations(fhir)
    fhir.configure(pageSize=2, maxPageSize=2)  # _count=100 in the templates is lowered to 2

    for hook in ("patient-view", "order-sign"):
        if hook != "patient-view" and not split_bundle(_bundle(fixture))[1]:
            continue
        expected = _cards(_call(client, hook, _full_prefetch_request(fixture, hook)))
        fhir.clear_requests()
        assert _cards(_call(client, hook, _fhir_request(fixture, hook, fhir))) == expected
        pages = [r for r in fhir.requests() if _path_type(r) == "Observation" and "_offset=" in r["query"]]
        assert len(pages) >= 2, "several next links should have been followed"
        assert all(r["auth"] == "ok" and r["status"] == 200 for r in fhir.requests())

    # The links are absolute and point back at the same FHIR base.
    first = fhir.http.get(
        f"{fhir.base(fixture)}/Observation", params={"patient": fixture}, headers=fhir.auth()
    ).json()
    assert len(first["entry"]) == 2
    next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    assert next_url.startswith(f"{fhir.base(fixture)}/Observation?")


def test_a_prefetched_first_page_is_completed_from_the_server(
    client: TestClient, fhir: FhirTestServer
) -> None:
    fixture, hook = _most_observations(fhir), "patient-view"
    expected = _cards(_call(client, hook, _full_prefetch_request(fixture, hook)))
    fhir.configure(pageSize=2, maxPageSize=2)
    templates = _templates(hook)
    # The EHR ran the templates itself and sends first pages only, each with its `next` link.
    prefetch = {}
    for key, template in templates.items():
        url = f"{fhir.base(fixture)}/{template.replace('{{context.patientId}}', fixture)}"
        answer = fhir.http.get(url, headers=fhir.auth())
        assert answer.status_code in (200, 404), answer.text
        prefetch[key] = answer.json() if answer.status_code == 200 else None
    paged = [
        k
        for k, v in prefetch.items()
        if any(link["relation"] == "next" for link in (v or {}).get("link", []))
    ]
    assert "observations" in paged
    fhir.clear_requests()

    response = _call(client, hook, _fhir_request(fixture, hook, fhir, prefetch=prefetch))

    assert _cards(response) == expected
    assert {_path_type(r) for r in fhir.requests()} == _key_types(paged)
    assert all("_offset=" in r["query"] for r in fhir.requests())


# ------------------------------------------------------------------------------------------------
# Tokens


def _assert_412_for_keys(response: httpx.Response, keys: list[str], code: str, token: str) -> None:
    assert response.status_code == 412, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert [issue["expression"] for issue in body["issue"]] == [[f"prefetch.{key}"] for key in keys]
    assert {issue["code"] for issue in body["issue"]} == {code}
    assert token not in response.text


def test_a_wrong_token_is_refused_by_the_server_and_the_service_answers_412(
    client: TestClient, fhir: FhirTestServer
) -> None:
    fixture, hook = "als-riluzole-lft-overdue", "patient-view"
    keys = list(_templates(hook))
    wrong = "wrong-token-not-the-servers"

    response = _call(client, hook, _fhir_request(fixture, hook, fhir, token=wrong))

    _assert_412_for_keys(response, keys, "security", wrong)
    assert all("HTTP 401" in issue["diagnostics"] for issue in response.json()["issue"])
    served = fhir.requests()
    assert len(served) == len(keys)
    assert {(r["auth"], r["status"]) for r in served} == {("invalid", 401)}


def test_an_expired_token_gets_412_and_no_token_at_all_too(client: TestClient, fhir: FhirTestServer) -> None:
    fixture, hook = "riluzole-alt-stop", "patient-view"
    keys = list(_templates(hook))
    request = _fhir_request(fixture, hook, fhir)
    assert _call(client, hook, request).status_code == 200

    fhir.configure(token="rotated-" + fhir.token)  # the EHR's token was valid a moment ago
    _assert_412_for_keys(_call(client, hook, request), keys, "security", fhir.token)

    del request["fhirAuthorization"]
    fhir.clear_requests()
    _assert_412_for_keys(_call(client, hook, request), keys, "security", fhir.token)
    assert {r["auth"] for r in fhir.requests()} == {"missing"}


class _Recorder(BaseHTTPRequestHandler):
    """Another origin: records every request it gets (and answers like a FHIR server would)."""

    seen: list[dict[str, str]]

    def do_GET(self) -> None:
        self.seen.append({"path": self.path, "authorization": self.headers.get("Authorization", "")})
        body = json.dumps({"resourceType": "Bundle", "type": "searchset", "entry": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def other_origin() -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/fhir", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_the_token_never_leaves_the_fhir_servers_origin(
    client: TestClient, fhir: FhirTestServer, other_origin: tuple[str, list[dict[str, str]]]
) -> None:
    elsewhere, seen = other_origin
    fixture, hook = _most_observations(fhir), "patient-view"
    fhir.configure(pageSize=2, maxPageSize=2, nextLinkBase=elsewhere)

    response = _call(client, hook, _fhir_request(fixture, hook, fhir))

    assert response.status_code == 412, response.text
    refused = {issue["expression"][0]: issue["diagnostics"] for issue in response.json()["issue"]}
    assert "prefetch.observations" in refused
    assert all("outside the FHIR server" in why for why in refused.values())
    assert seen == [], "a request went to another origin"
    assert fhir.token not in response.text
    assert {r["auth"] for r in fhir.requests()} == {"ok"}


# ------------------------------------------------------------------------------------------------
# A slow server, a server that stops


def test_a_slow_server_gets_412_timeout_within_the_budget(
    quick_client: TestClient, fhir: FhirTestServer
) -> None:
    fixture, hook = "als-riluzole-lft-overdue", "patient-view"
    fhir.configure(delayMs=3000)

    started = time.monotonic()
    response = _call(quick_client, hook, _fhir_request(fixture, hook, fhir))
    elapsed = time.monotonic() - started

    _assert_412_for_keys(response, list(_templates(hook)), "timeout", fhir.token)
    assert elapsed < 1.0 + 1.5, f"took {elapsed:.1f} s with a 1 s budget"


def test_a_server_that_stops_mid_run_gets_412_not_500(
    quick_client: TestClient, fhir_server_factory: Callable[..., FhirTestServer]
) -> None:
    fixture, hook = "riluzole-fever-no-count", "patient-view"
    server = fhir_server_factory("--page-size", "2", "--max-page-size", "2")
    server.load_patient(fixture)
    keys = list(_templates(hook))
    request = _fhir_request(fixture, hook, server)
    assert _call(quick_client, hook, request).status_code == 200
    server.configure(stopAfter=3)  # three more answers, then it drops the connection and exits

    started = time.monotonic()
    response = _call(quick_client, hook, request)
    elapsed = time.monotonic() - started

    assert response.status_code == 412, response.text
    failed = [issue["expression"][0].removeprefix("prefetch.") for issue in response.json()["issue"]]
    assert failed and set(failed) <= set(keys)
    assert all(
        "unreachable" in issue["diagnostics"] or "timed out" in issue["diagnostics"]
        for issue in response.json()["issue"]
    ), response.text
    assert elapsed < 1.0 + 1.5
    server.process.wait(timeout=10)
    assert server.process.returncode == 0, server.log()

    # Gone for good: every key is unavailable, still a defined 412.
    after = _call(quick_client, hook, request)
    _assert_412_for_keys(after, keys, "incomplete", server.token)
    assert all("unreachable" in issue["diagnostics"] for issue in after.json()["issue"])

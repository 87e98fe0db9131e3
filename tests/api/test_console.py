"""The console (`cds_service/console/`), in process: when it is served, its pages and static files,
and the data behind them (fixture patients, the requests built from them, the rule review).

The console is served only with authentication off: `ALS_CDS_CONSOLE_ENABLED=auto` (the default)
serves it exactly then, `false` never, and `true` with authentication on is a settings error. When
it is not served, /console and everything under it is a 404 and nothing of it is in OpenAPI.
The pages themselves are driven in Chromium by tests/integration/test_console_browser.py.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm
from pydantic import ValidationError

from cds_service import catalogue_doc
from cds_service.app import create_app
from cds_service.bundles import request_from_bundle
from cds_service.cards import load_catalogue
from cds_service.console import STATIC_DIR
from cds_service.console import fixtures as console_fixtures
from cds_service.console.review import word_count
from cds_service.rules import CATALOGUE
from cds_service.services import build_services
from cds_service.settings import Settings
from tests.support import FIXTURES, NOW

CONSOLE_PATHS = [
    "/console",
    "/console/rules",
    "/console/static/console.js",
    "/console/api/fixtures",
    "/console/api/rules",
]
HEPATIC = "riluzole-hepatic-contraindication"  # ALS and cirrhosis, one draft riluzole order
HEPATIC_ORDER = f"{HEPATIC}/MedicationRequest/draft-riluzole-r2"
GABAPENTIN = "muscle-quinine-stopped-spasticity-untreated/MedicationRequest/draft-gabapentin-m3"
SERVICES = {s.hook: s for s in build_services().values()}


def _rule_ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [card["source"]["topic"]["code"] for card in response.json()["cards"]]


def _console_app(tmp_path: Path, **settings: Any) -> TestClient:
    values = {"database_url": f"sqlite:///{tmp_path / 'als-cds.db'}", "auth_required": False, **settings}
    return TestClient(create_app(Settings(_env_file=None, **values), clock=lambda: NOW))


@pytest.fixture
def console(tmp_path: Path) -> Iterator[TestClient]:
    """The app as the quickstart runs it: authentication off, the console setting left alone."""
    with _console_app(tmp_path) as client:
        yield client


def _build(client: TestClient, **spec: Any) -> dict[str, Any]:
    response = client.post("/console/api/request", json=spec)
    assert response.status_code == 200, response.text
    return response.json()


# ------------------------------------------------------------------------------------------------
# The setting


def test_the_quickstart_serves_the_console_and_production_does_not() -> None:
    quickstart = Settings(_env_file=None, auth_required=False)  # the README's one command
    assert (quickstart.console_enabled, quickstart.console_served) == ("auto", True)
    production = Settings(_env_file=None)  # authentication on, the default
    assert production.console_served is False
    assert Settings(_env_file=None, auth_required=False, console_enabled="false").console_served is False
    assert Settings(_env_file=None, auth_required=False, console_enabled="true").console_served is True


def test_console_on_with_authentication_on_is_a_settings_error() -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None, console_enabled="true")
    (error,) = raised.value.errors()
    assert error["loc"] == ("console_enabled",)
    assert "ALS_CDS_AUTH_REQUIRED=false" in error["msg"]


def test_console_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALS_CDS_AUTH_REQUIRED", "false")
    for value, served in [
        ("auto", True),
        ("AUTO", True),
        ("", True),
        ("false", False),
        ("0", False),
        ("on", True),
    ]:
        monkeypatch.setenv("ALS_CDS_CONSOLE_ENABLED", value)
        assert Settings(_env_file=None).console_served is served, value
    monkeypatch.setenv("ALS_CDS_CONSOLE_ENABLED", "maybe")
    with pytest.raises(ValidationError, match="must be auto, true or false"):
        Settings(_env_file=None)


def test_the_command_line_says_why_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cds_service.cli import main

    monkeypatch.chdir(tmp_path)  # no .env file
    for name in [n for n in os.environ if n.startswith("ALS_CDS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ALS_CDS_CONSOLE_ENABLED", "true")  # authentication is on by default
    assert main(["serve"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("als-cds: ALS_CDS_CONSOLE_ENABLED: the console calls the hook and feedback")
    assert line.endswith("(got 'true'); e.g. ALS_CDS_CONSOLE_ENABLED=auto")


def _not_served(client: TestClient) -> None:
    for path in [*CONSOLE_PATHS, "/console/", "/console/static/index.html"]:
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["resourceType"] == "OperationOutcome"
    assert (
        client.post("/console/api/request", json={"hook": "patient-view", "patient": HEPATIC}).status_code
        == 404
    )
    paths = client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith("/console")]


def test_console_switched_off_is_404_and_not_in_openapi(tmp_path: Path) -> None:
    with _console_app(tmp_path, console_enabled="false") as client:
        _not_served(client)
        assert client.get("/cds-services").status_code == 200  # the service itself is unchanged


def test_with_authentication_on_there_is_no_console(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    jwk = {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1"}
    settings = {
        "auth_required": True,
        "trusted_clients": {"https://ehr.example.org": {"jwks": {"keys": [jwk]}}},
    }
    with _console_app(tmp_path, **settings) as client:
        _not_served(client)
        # ... and the hook endpoints the console would call still need the EHR's JWT.
        assert client.post("/cds-services/als-patient-view", json={}).status_code == 401


# ------------------------------------------------------------------------------------------------
# Pages and static files


def test_pages_are_html_with_a_strict_content_security_policy(console: TestClient) -> None:
    for path, title in [("/console", "Fire a hook"), ("/console/rules", "Rule review")]:
        response = console.get(path)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert f"<h1>{title}</h1>" in response.text
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy
        assert "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert response.headers["x-content-type-options"] == "nosniff"
    assert console.get("/console/", follow_redirects=False).status_code in (307, 308)
    for name, media in [
        ("console.js", "javascript"),
        ("markdown.js", "javascript"),
        ("console.css", "text/css"),
    ]:
        response = console.get(f"/console/static/{name}")
        assert response.status_code == 200 and media in response.headers["content-type"], name


def test_static_files_stay_in_their_folder(console: TestClient) -> None:
    for path in [
        "/console/static/../__init__.py",
        "/console/static/%2e%2e/__init__.py",
        "/console/static/nope.js",
    ]:
        assert console.get(path).status_code == 404, path


def test_nothing_is_loaded_from_elsewhere() -> None:
    """Offline: no CDN, no web font, no script or style from another origin; one page per script."""
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), path.name
        assert not re.search(r"url\(\s*['\"]?(https?:)?//|@import|@font-face", text), path.name
        assert "<script>" not in text and " on" + "click=" not in text, path.name  # CSP: no inline script


def test_the_console_api_is_in_openapi_when_served(console: TestClient) -> None:
    paths = console.get("/openapi.json").json()["paths"]
    assert {"/console/api/fixtures", "/console/api/request", "/console/api/rules"} <= set(paths)
    assert "/console" not in paths and "/console/rules" not in paths  # pages, not API


# ------------------------------------------------------------------------------------------------
# Fixture patients and the requests built for them


def test_every_fixture_patient_is_listed_with_its_draft_orders(console: TestClient) -> None:
    listed = console.get("/console/api/fixtures").json()
    assert listed["expectedAt"] == NOW.date().isoformat()  # the tests' clock and the console agree
    names = [p["name"] for p in listed["patients"]]
    assert names == sorted(p.stem for p in (FIXTURES / "patients").glob("*.json"))
    hepatic = next(p for p in listed["patients"] if p["name"] == HEPATIC)
    assert hepatic["patientId"] == HEPATIC
    assert [o["key"] for o in hepatic["draftOrders"]] == [HEPATIC_ORDER]
    assert hepatic["draftOrders"][0]["label"].startswith("Tiglutik 50 mg/10 mL oral suspension")
    assert "riluzole-order-liver" in hepatic["expected"]["order-select"]
    library = listed["orderLibrary"]
    keys = [o["key"] for o in library]
    assert len(keys) == len(set(keys)) and GABAPENTIN in keys
    labels = [(o["resourceType"], o["label"].lower()) for o in library]
    assert len(labels) == len(set(labels)), "each distinct order once"
    assert "data-order-medication-unresolvable/MedicationRequest/draft-unresolvable-1" not in keys


def test_a_fixture_request_gets_the_cards_the_tests_build_it_for(console: TestClient) -> None:
    patient = "als-riluzole-lft-overdue"
    built = _build(console, hook="patient-view", patient=patient)
    assert built["service"] == "als-patient-view"
    request = built["request"]
    assert request["context"] == {"userId": console_fixtures.CONSOLE_USER, "patientId": patient}
    bundle = json.loads((FIXTURES / "patients" / f"{patient}.json").read_text())
    keys = list(SERVICES["patient-view"].prefetch(Settings(_env_file=None), NOW.date()))
    assert sorted(request["prefetch"]) == sorted(keys)
    reference = request_from_bundle(bundle, "patient-view", keys)
    assert _rule_ids(console.post("/cds-services/als-patient-view", json=request)) == _rule_ids(
        console.post("/cds-services/als-patient-view", json=reference)
    )


def test_order_select_sends_every_order_and_selects_the_ticked_ones(console: TestClient) -> None:
    orders = [{"key": HEPATIC_ORDER, "selected": True}, {"key": GABAPENTIN, "selected": False}]
    request = _build(console, hook="order-select", patient=HEPATIC, orders=orders)["request"]
    drafts = [e["resource"] for e in request["context"]["draftOrders"]["entry"]]
    assert [d["id"] for d in drafts] == ["draft-riluzole-r2", "draft-gabapentin-m3"]
    assert request["context"]["selections"] == ["MedicationRequest/draft-riluzole-r2"]
    lent = drafts[1]  # from another fixture: now this patient's, without links into the other chart
    assert lent["subject"] == {"reference": f"Patient/{HEPATIC}"}
    assert "encounter" not in lent and "reasonReference" not in lent
    assert "riluzole-order-liver" in _rule_ids(console.post("/cds-services/als-order-select", json=request))

    orders = [{"key": HEPATIC_ORDER, "selected": False}, {"key": GABAPENTIN, "selected": True}]
    request = _build(console, hook="order-select", patient=HEPATIC, orders=orders)["request"]
    assert request["context"]["selections"] == ["MedicationRequest/draft-gabapentin-m3"]
    assert "riluzole-order-liver" not in _rule_ids(
        console.post("/cds-services/als-order-select", json=request)
    )


def test_order_sign_signs_the_ticked_orders_only(console: TestClient) -> None:
    orders = [{"key": HEPATIC_ORDER, "selected": True}, {"key": GABAPENTIN, "selected": False}]
    request = _build(console, hook="order-sign", patient=HEPATIC, orders=orders)["request"]
    assert [e["resource"]["id"] for e in request["context"]["draftOrders"]["entry"]] == ["draft-riluzole-r2"]
    assert "selections" not in request["context"]
    cards = console.post("/cds-services/als-order-sign", json=request).json()["cards"]
    liver = [c for c in cards if c["source"]["topic"]["code"] == "riluzole-order-liver"]
    assert [c["indicator"] for c in liver] == ["critical"]


def test_the_same_order_twice_gets_two_ids(console: TestClient) -> None:
    orders = [{"key": GABAPENTIN}, {"key": GABAPENTIN}]
    request = _build(console, hook="order-sign", patient=HEPATIC, orders=orders)["request"]
    ids = [e["resource"]["id"] for e in request["context"]["draftOrders"]["entry"]]
    assert ids == ["draft-gabapentin-m3", "draft-gabapentin-m3-2"]


def test_a_fhir_server_request_has_no_prefetch_so_the_service_fetches(console: TestClient) -> None:
    built = _build(
        console, hook="order-select", fhirServer="http://127.0.0.1:8103/fhir/", patientId=" p1 ",
        orders=[{"key": HEPATIC_ORDER}],
    )  # fmt: skip
    request = built["request"]
    assert (built["service"], request["fhirServer"]) == ("als-order-select", "http://127.0.0.1:8103/fhir")
    assert "prefetch" not in request and "fhirAuthorization" not in request  # the page adds a token
    assert request["context"]["patientId"] == "p1"
    (draft,) = [e["resource"] for e in request["context"]["draftOrders"]["entry"]]
    assert draft["subject"] == {"reference": "Patient/p1"}
    assert request["context"]["selections"] == ["MedicationRequest/draft-riluzole-r2"]


@pytest.mark.parametrize(
    ("spec", "status", "where"),
    [
        ({"hook": "patient-view", "patient": "nobody"}, 404, "patient"),
        ({"hook": "patient-view"}, 400, None),
        (
            {"hook": "patient-view", "patient": HEPATIC, "fhirServer": "http://x.org/fhir", "patientId": "1"},
            400,
            None,
        ),
        ({"hook": "patient-view", "fhirServer": "ftp://x.org/fhir", "patientId": "1"}, 400, "fhirServer"),
        ({"hook": "patient-view", "fhirServer": "http://[::1/fhir", "patientId": "1"}, 400, "fhirServer"),
        ({"hook": "patient-view", "fhirServer": "http://x.org/fhir"}, 400, "patientId"),
        (
            {"hook": "order-sign", "patient": HEPATIC, "orders": [{"key": "no/such/order"}]},
            400,
            "orders.0.key",
        ),
        ({"hook": "encounter-start", "patient": HEPATIC}, 400, "hook"),
        ({"hook": "patient-view", "patient": HEPATIC, "extra": 1}, 400, "extra"),
    ],
)
def test_a_request_that_cannot_be_built_says_why(
    console: TestClient, spec: dict[str, Any], status: int, where: str | None
) -> None:
    response = console.post("/console/api/request", json=spec)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    if where:
        assert where in body["issue"][0].get("expression", [""])[0], body


# ------------------------------------------------------------------------------------------------
# The rule review data


def test_the_rule_review_lists_every_rule_from_the_card_files(
    console: TestClient, settings: Settings
) -> None:
    review = console.get("/console/api/rules").json()
    rules = review["rules"]
    hook_order = catalogue_doc._HOOK_ORDER
    expected_order = sorted(CATALOGUE, key=lambda r: (min(hook_order.index(h) for h in r.hooks), r.id))
    assert [r["id"] for r in rules] == [r.id for r in expected_order]  # as docs/rules.md orders them
    cards = load_catalogue(settings.cards_dir)
    fired = console_fixtures.load().rules_fired()
    for entry, rule in zip(rules, expected_order, strict=True):
        card = cards[rule.id]
        assert (entry["summary"], entry["detail"]) == (card.summary.strip(), card.detail.strip())
        assert entry["reviewStatus"] == card.review_status and entry["trigger"] == rule.trigger
        assert entry["summaryWords"] == word_count(card.summary) > 0
        assert entry["detailWords"] == word_count(card.detail) > 0
        assert [f["name"] for f in entry["facts"]] == [f.name for f in rule.facts]
        assert all(f["source"] and f["source"]["url"] for f in entry["facts"]), rule.id
        assert entry["firedBy"] == fired.get(rule.id, [])
    liver = next(r for r in rules if r["id"] == "riluzole-order-liver")
    assert {"patient": HEPATIC, "hooks": ["order-select", "order-sign"]} in liver["firedBy"]
    assert liver["indicators"] == ["critical"] and liver["hooks"] == ["order-select", "order-sign"]


def test_every_rule_is_fired_by_some_fixture_patient(console: TestClient) -> None:
    rules = console.get("/console/api/rules").json()["rules"]
    assert [r["id"] for r in rules if not r["firedBy"]] == []


def test_fired_by_follows_the_expectation_files() -> None:
    expected: dict[str, set[tuple[str, str]]] = {}
    for path in (FIXTURES / "expected").glob("*.json"):
        for fixture, hooks in json.loads(path.read_text()).items():
            for hook, rule_ids in hooks.items():
                for rule_id in rule_ids:
                    expected.setdefault(rule_id, set()).add((fixture, hook))
    fired = console_fixtures.load().rules_fired()
    assert {
        rule_id: {(f["patient"], h) for f in entries for h in f["hooks"]}
        for rule_id, entries in fired.items()
    } == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Riluzole: ALT check due", 4),
        ("**Measure ALT** before the first dose:\n\n- every month,\n- then 3-monthly", 10),
        ("See [NICE TA20](https://www.nice.org.uk/guidance/ta20) - last: {last_alt}", 5),
        ("5 × ULN", 2),
    ],
)
def test_word_count(text: str, words: int) -> None:
    assert word_count(text) == words

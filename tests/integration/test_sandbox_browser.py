"""The real CDS Hooks Sandbox, in headless Chromium, against this service and the real FHIR server.

Why: the other tests post requests we wrote ourselves. The sandbox is the client integration
engineers try a service with first, and its requests are not ours: it runs our prefetch templates
itself against the FHIR server, sends its own draft orders (not strictly valid R4: see
fhir_fixtures/requests/README.md) and renders the cards. Only a browser shows whether a user of
the sandbox sees our cards. What is driven, like a user:

* Patient View: an ALS patient's chart, loaded in the FHIR server, gets the service's cards
  rendered in the page (elements whose class contains `decision-card`).
* Rx View (`order-select`) and Rx Sign (`order-sign`): for a patient with ALS and cirrhosis, typing
  "riluzole" in the medication box, picking "Riluzole 50 MG Oral Tablet" (RxNorm 199206, from the
  RxNorm list bundled in the sandbox) and, in Rx Sign, pressing "Sign Order", must give the critical
  `riluzole-order-liver` card, rendered as a critical card.
* The JSON bodies the sandbox posts for both order hooks are captured (Playwright observes the
  requests; the service is not changed) and compared with the committed fixtures
  `fhir_fixtures/requests/sandbox-rx-view-order-select.json` and
  `sandbox-rx-sign-order-sign.json`, so the unit tests that read those fixtures keep testing what
  the sandbox really sends. `ALS_CDS_SANDBOX_CAPTURE=1` rewrites the fixtures from this run.

The pieces, all on 127.0.0.1:

* the sandbox: the static production build in `../shared/clients/cds-hooks-sandbox` (beside the
  repository; ALS_CDS_TEST_SANDBOX_DIR overrides), served by a thread of this process;
* the FHIR server: Medplum's FHIR engine (`fhir-server/`, as in test_fhir_server_e2e.py), started
  `--open` (the sandbox refuses a server that asks for a token) with CORS for the page's origin
  only, and the two patients' charts in tenants of their own;
* the service: `python -m cds_service.cli serve` of this checkout, authentication off (the sandbox
  signs its calls with a published key that a test has no reason to trust) and CORS for the page;
* the browser: Debian's `chromium` driven by Playwright for Python (no browser download). The
  sandbox also calls a public discovery URL: every non-loopback host is blocked twice, by the
  resolver flag and by a Playwright route that aborts any request to another host. Each test gets a
  fresh browser context, because the sandbox keeps its choices in localStorage.

Without the sandbox folder, Playwright or chromium the tests skip with a message, except under CI
(CI=true) or with ALS_CDS_REQUIRE_SANDBOX=1, where they fail; the FHIR server follows conftest.py.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import pytest

from tests.integration.conftest import FhirTestServer, start_fhir_server

try:
    from playwright.sync_api import Browser, Page, Response, Route, expect, sync_playwright
except ImportError:  # `prerequisites` says so: a skip, or a failure under CI
    sync_playwright = None

ROOT = Path(__file__).resolve().parents[2]
SANDBOX_DIR = Path(
    os.environ.get("ALS_CDS_TEST_SANDBOX_DIR") or ROOT.parent / "shared" / "clients" / "cds-hooks-sandbox"
)
REQUEST_FIXTURES = ROOT / "fhir_fixtures" / "requests"
RX_VIEW_FIXTURE = "sandbox-rx-view-order-select.json"
RX_SIGN_FIXTURE = "sandbox-rx-sign-order-sign.json"
CAPTURE_ENV = "ALS_CDS_SANDBOX_CAPTURE"

LOOPBACK = "127.0.0.1"
# Chromium resolves no name but the loopback address: the sandbox's public URLs fail at once.
CHROMIUM_ARGS = [f"--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE {LOOPBACK}"]
TIMEOUT_MS = 15_000  # any one wait in the page; a page load with cards takes 2-3 s
SERVICE_START_SECONDS = 60.0

PATIENT_VIEW_PATIENT = "als-riluzole-lft-overdue"  # ALS, on riluzole: several patient-view cards
HEPATIC_PATIENT = "riluzole-hepatic-contraindication"  # ALS (G12.21) and cirrhosis (SNOMED 19943007)
RILUZOLE_TYPED = "riluzole"
RILUZOLE_CHOICE = "Riluzole 50 MG Oral Tablet"
RILUZOLE_RXNORM = "199206"
HEPATIC_RULE = "riluzole-order-liver"

CARD = '[class*="decision-card"]'
CRITICAL_CARD = '[class*="decision-card"][class*="alert-critical"]'
NO_CARDS_TEXT = "No recommendations to display"  # what the sandbox shows for an empty card list


# ------------------------------------------------------------------------------------------------
# Prerequisites: skip here, fail under CI (as conftest.py does for the FHIR server)


def _required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("ALS_CDS_REQUIRE_SANDBOX") == "1"


def _unavailable(message: str) -> None:
    if _required():
        pytest.fail(f"{message} (required because CI=true or ALS_CDS_REQUIRE_SANDBOX=1)")
    pytest.skip(message)


@dataclass(frozen=True)
class Prerequisites:
    sandbox_dir: Path
    chromium: str


@pytest.fixture(scope="module")
def prerequisites() -> Prerequisites:
    """The cheap checks first, so that a machine without a browser skips before any server starts."""
    if not (SANDBOX_DIR / "index.html").is_file() or not (SANDBOX_DIR / "app.bundle.js").is_file():
        _unavailable(
            f"the CDS Hooks Sandbox build is not at {SANDBOX_DIR} (index.html and app.bundle.js); "
            "set ALS_CDS_TEST_SANDBOX_DIR to its folder"
        )
    if sync_playwright is None:
        _unavailable("Playwright for Python is not installed: pip install -e '.[test]'")
    chromium = os.environ.get("ALS_CDS_TEST_CHROMIUM") or shutil.which("chromium")
    if not chromium or not os.access(chromium, os.X_OK):
        _unavailable(
            f"no chromium to run: {chromium or 'none on PATH'} (Debian: apt-get install chromium; "
            "or set ALS_CDS_TEST_CHROMIUM to a Chromium binary)"
        )
    assert chromium is not None
    return Prerequisites(SANDBOX_DIR, chromium)


# ------------------------------------------------------------------------------------------------
# The sandbox page, the FHIR server, the service


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """The sandbox's static files need no access log in the test output."""


@pytest.fixture(scope="module")
def sandbox_origin(prerequisites: Prerequisites) -> Iterator[str]:
    """The sandbox's static build on a free loopback port; its origin is what CORS must allow."""
    handler = functools.partial(_QuietHandler, directory=str(prerequisites.sandbox_dir))
    server = ThreadingHTTPServer((LOOPBACK, 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="sandbox-static", daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def open_fhir(sandbox_origin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirTestServer]:
    """The real FHIR server, open (no token) and with CORS for the sandbox's origin only.

    The sandbox cannot use a secured server ("Cannot configure secured FHIR endpoints"), and the
    session server of conftest.py needs a token: hence a server of our own, `--open`.
    """
    server = start_fhir_server(
        "--open", "--cors-origin", sandbox_origin, log_dir=tmp_path_factory.mktemp("sandbox-fhir")
    )
    try:
        for fixture in (PATIENT_VIEW_PATIENT, HEPATIC_PATIENT):
            server.load_patient(fixture)
        yield server
    finally:
        server.stop()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


@dataclass
class Service:
    """The service as a subprocess, and its log (one JSON event a line)."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def hook_call(self, hook_instance: str) -> dict[str, Any] | None:
        """The service's log event for one hook call: status, cards, rule ids and the ingest report
        (what it parsed, repaired or skipped as invalid), which says why a card is missing."""
        for line in self.log().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("hook_instance") == hook_instance:
                return event
        return None


@pytest.fixture(scope="module")
def service(sandbox_origin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`python -m cds_service.cli serve` of this checkout: auth off, CORS for the sandbox's page."""
    workdir = tmp_path_factory.mktemp("sandbox-service")
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "ALS_CDS_HOST": LOOPBACK,
        "ALS_CDS_PORT": str(port),
        "ALS_CDS_WORKERS": "1",
        "ALS_CDS_DATABASE_URL": f"sqlite:///{workdir / 'als-cds.db'}",
        "ALS_CDS_AUTH_REQUIRED": "false",
        "ALS_CDS_CORS_ORIGINS": sandbox_origin,
        "ALS_CDS_LOG_LEVEL": "info",
    }
    log_path = workdir / "service.log"
    with log_path.open("wb") as sink:  # the child keeps its own handle
        process = subprocess.Popen(
            [sys.executable, "-m", "cds_service.cli", "serve"], cwd=workdir, env=env, stdout=sink, stderr=sink
        )
    served = Service(process, f"http://{LOOPBACK}:{port}", log_path)
    try:
        deadline = time.monotonic() + SERVICE_START_SECONDS
        while True:
            try:
                if httpx.get(f"{served.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the service did not become ready; its log ends:\n{served.log()[-3000:]}")
            time.sleep(0.1)
        yield served
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(prerequisites: Prerequisites) -> Iterator[Browser]:
    """Headless Debian chromium, unable to resolve any name but 127.0.0.1."""
    assert sync_playwright is not None
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=prerequisites.chromium, headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield launched
        finally:
            launched.close()


# ------------------------------------------------------------------------------------------------
# One sandbox page per test


@dataclass
class Sandbox:
    """A fresh browser context on the sandbox, and what it sent to the service."""

    page: Page
    origin: str
    fhir: FhirTestServer
    service: Service
    blocked: list[str] = field(default_factory=list)
    service_calls: list[Response] = field(default_factory=list)

    def url(self, patient: str, **params: str) -> str:
        query = {
            "fhirServiceUrl": self.fhir.base(patient),
            "patientId": patient,
            "serviceDiscoveryURL": f"{self.service.url}/cds-services",
            **params,
        }
        return f"{self.origin}/?{urlencode(query)}"

    def is_call(self, service_id: str) -> Callable[[Response], bool]:
        """A predicate: the response to a hook call (POST) to one of our services."""
        target = f"{self.service.url}/cds-services/{service_id}"
        return lambda response: response.request.method == "POST" and response.url == target

    def open_order_screen(self, patient: str, screen: str, hook: str) -> None:
        """Open Rx View or Rx Sign, settled: the chart read, discovery done, any call made on load.

        `hook` must be given with `screen`: with `screen` alone the sandbox keeps its default hook
        and posts `"hook": "patient-view"` to the order services (which answer 400).
        """
        self.page.goto(self.url(patient, screen=screen, hook=hook))
        expect(self.page.get_by_text(f"ID: {patient}").first).to_be_visible()
        self.page.wait_for_load_state("networkidle")

    def choose_medication(self, typed: str, choice: str) -> None:
        """Enter a search in the Medication box; the sandbox lists matches from its bundled RxNorm
        list (up to 30 prescribable drugs, shortest name first), of which `choice` must be one.

        One input event, as a paste: the box is a controlled input that, on every render, is reset
        to the search last committed by a 150 ms debounce, so keys typed faster than that are lost
        (typed at 20 ms a key, "riluzole" becomes "e").
        """
        box = self.page.locator('input[name="medication-input"]')
        box.click()
        box.fill(typed)
        expect(self.page.get_by_text(choice, exact=True)).to_be_visible()

    def shown(self) -> str:
        """What the card area shows now: each rendered card's text, or the sandbox's empty message."""
        cards = self.page.locator(CARD).all_inner_texts()
        if cards:
            return "\n---\n".join(text.strip()[:400] for text in cards)
        if self.page.get_by_text(NO_CARDS_TEXT).count():
            return f"no card; the page says {NO_CARDS_TEXT!r}"
        return "no card and no message"

    def settle_cards(self, count: int) -> None:
        """Wait until the page shows `count` cards, or its empty-list message for none."""
        if count:
            expect(self.page.locator(CARD)).to_have_count(count)
        else:
            expect(self.page.get_by_text(NO_CARDS_TEXT)).to_be_visible()


@pytest.fixture
def sandbox(
    browser: Browser, sandbox_origin: str, open_fhir: FhirTestServer, service: Service
) -> Iterator[Sandbox]:
    """A fresh context (empty localStorage) whose requests can reach 127.0.0.1 only."""
    open_fhir.clear_requests()
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, service_workers="block")
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    page = context.new_page()
    view = Sandbox(page, sandbox_origin, open_fhir, service)

    def only_loopback(route: Route) -> None:
        if urlsplit(route.request.url).hostname == LOOPBACK:
            route.continue_()
        else:
            view.blocked.append(route.request.url)
            route.abort("blockedbyclient")

    def record_call(response: Response) -> None:
        if response.request.method == "POST" and response.url.startswith(f"{service.url}/cds-services/"):
            view.service_calls.append(response)

    context.route("**/*", only_loopback)
    page.on("response", record_call)
    try:
        yield view
    finally:
        context.close()


# ------------------------------------------------------------------------------------------------
# Helpers: the captured bodies and the answers


def _answer(response: Response) -> tuple[int, Any]:
    try:
        return response.status, response.json()
    except ValueError:
        return response.status, response.text()


def _captured_body(response: Response) -> dict[str, Any]:
    """The JSON body the sandbox posted; its JWT travels in the Authorization header, never in it."""
    request = response.request
    raw = request.post_data or ""
    authorization = request.all_headers().get("authorization", "")
    assert authorization.startswith("Bearer "), "the sandbox signs every call with a JWT"
    assert authorization.removeprefix("Bearer ") not in raw, "the JWT must not be in the body"
    body = json.loads(raw)
    assert isinstance(body, dict)
    return body


def _comparable(body: dict[str, Any]) -> dict[str, Any]:
    """What must not change from run to run: all but the hook instance, the FHIR server's address,
    today's date in `authoredOn` and the prefetch contents (versions, dates, paging links)."""
    context = copy.deepcopy(body.get("context"))
    for entry in (context or {}).get("draftOrders", {}).get("entry", []):
        resource = entry.get("resource", {})
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(resource.get("authoredOn", ""))):
            resource["authoredOn"] = "<today>"
    return {
        "keys": sorted(body),
        "hook": body.get("hook"),
        "context": context,
        "prefetch keys": sorted(body.get("prefetch") or {}),
    }


def _keep(body: dict[str, Any], name: str, tmp_path: Path) -> None:
    """Save the captured body (in tmp_path; in the repository with ALS_CDS_SANDBOX_CAPTURE=1) and
    check the committed fixture still is what the sandbox sends."""
    text = json.dumps(body, indent=2, ensure_ascii=False) + "\n"
    (tmp_path / name).write_text(text, encoding="utf-8")
    committed = REQUEST_FIXTURES / name
    if os.environ.get(CAPTURE_ENV) == "1":
        committed.write_text(text, encoding="utf-8")
    assert committed.is_file(), f"{committed} is missing: run this test with {CAPTURE_ENV}=1"
    saved = json.loads(committed.read_text(encoding="utf-8"))
    assert _comparable(body) == _comparable(saved), (
        f"the sandbox no longer sends what {committed.name} holds (this run's body: {tmp_path / name}); "
        f"re-capture with {CAPTURE_ENV}=1 and update fhir_fixtures/requests/README.md"
    )


def _draft_medication_codes(body: dict[str, Any]) -> list[str]:
    return [
        coding.get("code")
        for entry in body["context"]["draftOrders"]["entry"]
        for coding in entry["resource"].get("medicationCodeableConcept", {}).get("coding", [])
    ]


def _why(sandbox: Sandbox, body: dict[str, Any], status: int, answer: Any) -> str:
    """Everything needed to see why the card is missing, without opening the browser."""
    event = sandbox.service.hook_call(str(body.get("hookInstance")))
    return (
        f"\nthe service answered {status}: {json.dumps(answer)[:1500]}"
        f"\nits log of the call: {json.dumps(event) if event else 'none'}"
        f"\nthe page shows: {sandbox.shown()}"
        f"\nblocked (not loopback): {sandbox.blocked or 'nothing'}"
    )


def _assert_hepatic_card(sandbox: Sandbox, body: dict[str, Any], response: Response) -> None:
    """The critical riluzole-order-liver card: in the service's answer, then rendered as critical."""
    status, answer = _answer(response)
    cards = answer.get("cards") if status == 200 and isinstance(answer, dict) else None
    if isinstance(cards, list):
        sandbox.settle_cards(len(cards))  # so that "the page shows" below is what a user sees
    hepatic = [
        card for card in cards or [] if card.get("source", {}).get("topic", {}).get("code") == HEPATIC_RULE
    ]
    missing = f"no {HEPATIC_RULE} card for riluzole with cirrhosis"
    assert hepatic, missing + _why(sandbox, body, status, answer)
    card = hepatic[0]
    assert card["indicator"] == "critical", card
    assert "hepatic" in card["summary"].lower() or "liver" in card["summary"].lower(), card["summary"]
    rendered = sandbox.page.locator(CRITICAL_CARD).filter(has_text=card["summary"])
    expect(rendered).to_have_count(1)
    expect(rendered).to_be_visible()


# ------------------------------------------------------------------------------------------------
# The tests


def test_the_fhir_server_is_open_to_the_sandbox_page(open_fhir: FhirTestServer, sandbox_origin: str) -> None:
    """What the sandbox needs of a FHIR server, checked without a browser for a plain message."""
    base = open_fhir.base(HEPATIC_PATIENT)
    headers = {"Origin": sandbox_origin}
    preflight = open_fhir.http.options(
        f"{base}/Condition/_search", headers={**headers, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == sandbox_origin
    read = open_fhir.http.get(f"{base}/Patient/{HEPATIC_PATIENT}", headers=headers)  # no token
    assert read.status_code == 200, read.text
    assert read.headers["access-control-allow-origin"] == sandbox_origin
    elsewhere = open_fhir.http.get(f"{base}/metadata", headers={"Origin": "http://127.0.0.1:1"})
    assert "access-control-allow-origin" not in elsewhere.headers  # CORS for the page only


def test_patient_view_renders_the_services_cards(sandbox: Sandbox) -> None:
    page = sandbox.page
    with page.expect_response(sandbox.is_call("als-patient-view")) as called:
        page.goto(sandbox.url(PATIENT_VIEW_PATIENT))
    body = _captured_body(called.value)
    status, answer = _answer(called.value)
    assert body["hook"] == "patient-view"
    assert body["context"]["patientId"] == PATIENT_VIEW_PATIENT
    assert status == 200, answer
    cards = answer["cards"]
    missing = "an ALS patient on riluzole should get patient-view cards"
    assert cards, missing + _why(sandbox, body, status, answer)

    sandbox.settle_cards(len(cards))
    rendered = page.locator(CARD).all_inner_texts()
    # The sandbox sorts by indicator, most severe first, as the service already does.
    assert all(card["summary"] in text for card, text in zip(cards, rendered, strict=True)), rendered
    # The sandbox ran our prefetch templates itself, against the open FHIR server, for this patient.
    served = sandbox.fhir.requests()
    searched = {r["path"].split("/")[0] for r in served}
    assert searched >= {"Patient", "Condition", "MedicationRequest", "Observation"}, searched
    assert all(r["auth"] == "not-required" and r["tenant"] == PATIENT_VIEW_PATIENT for r in served)
    assert all(r["status"] == 200 for r in served), served


def test_rx_view_riluzole_with_liver_disease_shows_a_critical_card(sandbox: Sandbox, tmp_path: Path) -> None:
    page = sandbox.page
    sandbox.open_order_screen(HEPATIC_PATIENT, screen="rx-view", hook="order-select")
    sandbox.choose_medication(RILUZOLE_TYPED, RILUZOLE_CHOICE)
    with page.expect_response(
        lambda r: sandbox.is_call("als-order-select")(r) and RILUZOLE_RXNORM in (r.request.post_data or "")
    ) as called:
        page.get_by_text(RILUZOLE_CHOICE, exact=True).click()
    body = _captured_body(called.value)
    assert body["hook"] == "order-select"
    assert body["context"]["patientId"] == HEPATIC_PATIENT
    assert _draft_medication_codes(body) == [RILUZOLE_RXNORM]
    _keep(body, RX_VIEW_FIXTURE, tmp_path)

    status, answer = _answer(called.value)
    if status == 200 and isinstance(answer, dict) and isinstance(answer.get("cards"), list):
        sandbox.settle_cards(len(answer["cards"]))
    screenshot = tmp_path / "sandbox-rx-view.png"
    page.screenshot(path=str(screenshot), full_page=True)
    try:
        _assert_hepatic_card(sandbox, body, called.value)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nscreenshot: {screenshot}") from None
    # The order Rx View sends on load, before any medication is chosen, is no error either.
    assert [r.status for r in sandbox.service_calls] == [200] * len(sandbox.service_calls)


def test_rx_sign_riluzole_with_liver_disease_shows_a_critical_card(sandbox: Sandbox, tmp_path: Path) -> None:
    page = sandbox.page
    sandbox.open_order_screen(HEPATIC_PATIENT, screen="rx-sign", hook="order-sign")
    sandbox.choose_medication(RILUZOLE_TYPED, RILUZOLE_CHOICE)
    page.get_by_text(RILUZOLE_CHOICE, exact=True).click()
    expect(page.locator('input[name="medication-input"]')).to_have_value(RILUZOLE_CHOICE)
    assert sandbox.service_calls == [], "Rx Sign calls order-sign only when the order is signed"
    with page.expect_response(sandbox.is_call("als-order-sign")) as called:
        page.get_by_role("button", name="Sign Order").click()
    body = _captured_body(called.value)
    assert body["hook"] == "order-sign"
    assert body["context"]["patientId"] == HEPATIC_PATIENT
    assert _draft_medication_codes(body) == [RILUZOLE_RXNORM]
    _keep(body, RX_SIGN_FIXTURE, tmp_path)

    _assert_hepatic_card(sandbox, body, called.value)

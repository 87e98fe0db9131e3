"""The real CDS Hooks Sandbox, in headless Chromium, against this service (authentication ON) and
the real FHIR server.

Why: the other tests post requests we wrote ourselves. The sandbox is the client integration
engineers try a service with first, and its requests are not ours: it runs our prefetch templates
itself against the FHIR server, sends its own draft orders (not strictly valid R4: see
fhir_fixtures/requests/README.md) and renders the cards. Only a browser shows whether a user of
the sandbox sees our cards. What is driven, like a user:

* Patient View: two ALS patients' charts, loaded in the FHIR server, get the service's cards
  rendered in the page (elements whose class contains `decision-card`), the info reminders as one
  care review card. A card's suggestion and a review item's suggestion are accepted and the review
  dismissed with "Snooze 1 month", as a clinician would; each comes back through the sandbox's
  feedback calls as rows in the service's database, traced per rule (the review item by item), and
  the patient's next chart open has no review (the service's log says each rule was snoozed). This
  runs after the Patient View tests of the same patient, which the snooze would change.
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
* the service: `python -m cds_service.cli serve` of this checkout with authentication ON, as in
  production: it trusts the sandbox's issuer with the sandbox's `jku` pinned to the public key set
  published in the sandbox build (`.well-known/jwks.json`), so that the sandbox's own JWTs (ES384,
  signed in the page with the sandbox's published private key, `aud` the exact URL called) are
  verified offline, never fetched. `ALS_CDS_PUBLIC_BASE_URL` is the URL the page calls. CORS: the
  sandbox is served on 127.0.0.1:8090, the port its README uses, so the service runs on its
  default origins; when 8090 is taken, on a free port named in ALS_CDS_CORS_ORIGINS;
* the browser: Debian's `chromium` driven by Playwright for Python (no browser download). The
  sandbox also calls a public discovery URL: every non-loopback host is blocked twice, by the
  resolver flag and by a Playwright route that aborts any request to another host. Each test gets a
  fresh browser context, because the sandbox keeps its choices in localStorage.

Misconfiguration must show in the service's log, since the sandbox shows "All clear" whatever
went wrong: a service whose CORS origins leave the page out, one whose public base URL is not the
URL the page calls (every JWT's `aud` is then wrong), and one given the sandbox's keys as `jwks`
without pinning its `jku` are started too, and their logs must say so (`cds_service/access_log.py`).

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
from datetime import timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import pytest
from sqlalchemy import select

from cds_service.digest import RULE_ID_EXTENSION
from cds_service.store import Store
from cds_service.store.tables import feedback_rules
from tests.integration.conftest import FhirTestServer, start_fhir_server

try:
    from playwright.sync_api import (
        Browser,
        BrowserContext,
        Locator,
        Page,
        Response,
        Route,
        expect,
        sync_playwright,
    )
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
SANDBOX_PORT = 8090  # where the sandbox's README serves its build: a default CORS origin

SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"  # in every sandbox JWT's header

PATIENT_VIEW_PATIENT = "als-riluzole-lft-overdue"  # ALS, on riluzole: several patient-view cards
HEPATIC_PATIENT = "riluzole-hepatic-contraindication"  # ALS (G12.21) and cirrhosis (SNOMED 19943007)
# The clinician's actions on the first patient's cards: suggestions taken, the care review snoozed.
ACCEPTED_RULE = "riluzole-lft-due"  # suggestion: order liver function tests
# Its info reminders come as one care review card (cds_service/digest.py), one suggestion an item:
DIGEST = "care-review-digest"
DIGEST_ITEM_RULE = "mdt-review-overdue"  # the item whose suggestion is taken
SNOOZE = "Snooze 1 month"  # the review dismissed with it: each of its rules snoozed for this patient
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

    @property
    def jwks(self) -> Path:
        """The public JWK Set the sandbox signs its JWTs for, as published in its build."""
        return self.sandbox_dir / ".well-known" / "jwks.json"


@pytest.fixture(scope="module")
def prerequisites() -> Prerequisites:
    """The cheap checks first, so that a machine without a browser skips before any server starts."""
    needed = ("index.html", "app.bundle.js", ".well-known/jwks.json")
    if not all((SANDBOX_DIR / name).is_file() for name in needed):
        _unavailable(
            f"the CDS Hooks Sandbox build is not at {SANDBOX_DIR} ({', '.join(needed)}); "
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
    """The sandbox's static build on 127.0.0.1:8090 as its README serves it (or, if that port is
    taken, on a free one); its origin is what CORS must allow."""
    handler = functools.partial(_QuietHandler, directory=str(prerequisites.sandbox_dir))
    try:
        server = ThreadingHTTPServer((LOOPBACK, SANDBOX_PORT), handler)
    except OSError:
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
    database: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                found.append(event)
        return found

    def hook_call(self, hook_instance: str) -> dict[str, Any] | None:
        """The access line of one hook call: status, issuer, cards, rule ids and the ingest report
        (what it parsed, repaired or skipped as invalid), which says why a card is missing."""
        for event in self.events():
            if event.get("event") == "hook call" and event.get("hook_instance") == hook_instance:
                return event
        return None

    def feedback_rows(self) -> list[dict[str, Any]]:
        """The feedback the service stored, read from its database as an analyst would."""
        store = Store(f"sqlite:///{self.database}")
        try:
            return store.feedback_rows()
        finally:
            store.close()

    def feedback_rules(self) -> list[dict[str, Any]]:
        """What the stored feedback means per rule (`feedback_rules`): a care review digest's
        feedback is one row per rule it concerns, read from the database as an analyst would."""
        store = Store(f"sqlite:///{self.database}")
        try:
            with store.engine.connect() as connection:
                query = select(feedback_rules).order_by(feedback_rules.c.id)
                return [dict(row._mapping) for row in connection.execute(query)]
        finally:
            store.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_service(workdir: Path, **settings: str) -> Service:
    """`python -m cds_service.cli serve` of this checkout on a free port, with these ALS_CDS_*
    settings (in which `{url}` stands for the URL it is served on); ready when it returns."""
    port = _free_port()
    url = f"http://{LOOPBACK}:{port}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ALS_CDS_")},
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "ALS_CDS_HOST": LOOPBACK,
        "ALS_CDS_PORT": str(port),
        "ALS_CDS_WORKERS": "1",
        "ALS_CDS_DATABASE_URL": f"sqlite:///{workdir / 'als-cds.db'}",
        "ALS_CDS_LOG_LEVEL": "info",
        **{f"ALS_CDS_{name.upper()}": value.replace("{url}", url) for name, value in settings.items()},
    }
    log_path = workdir / "service.log"
    with log_path.open("wb") as sink:  # the child keeps its own handle
        process = subprocess.Popen(
            [sys.executable, "-m", "cds_service.cli", "serve"], cwd=workdir, env=env, stdout=sink, stderr=sink
        )
    served = Service(process, url, log_path, workdir / "als-cds.db")
    deadline = time.monotonic() + SERVICE_START_SECONDS
    while True:
        try:
            if httpx.get(f"{served.url}/readyz", timeout=2).status_code == 200:
                return served
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            served.stop()
            pytest.fail(f"the service did not become ready; its log ends:\n{served.log()[-3000:]}")
        time.sleep(0.1)


def sandbox_trusted(prerequisites: Prerequisites) -> str:
    """ALS_CDS_TRUSTED_CLIENTS for the sandbox, offline: its jku pinned to its published key set."""
    return json.dumps({SANDBOX_ISS: {"jku_keys": {SANDBOX_JKU: str(prerequisites.jwks)}}})


@pytest.fixture(scope="module")
def service(
    prerequisites: Prerequisites, sandbox_origin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """The service with authentication on, trusting the sandbox offline; CORS by its defaults when
    the sandbox has its README's origin."""
    settings = {
        "auth_required": "true",
        "trusted_clients": sandbox_trusted(prerequisites),
        "public_base_url": "{url}",
    }
    if sandbox_origin != f"http://{LOOPBACK}:{SANDBOX_PORT}":
        settings["cors_origins"] = sandbox_origin
    served = start_service(tmp_path_factory.mktemp("sandbox-service"), **settings)
    try:
        yield served
    finally:
        served.stop()


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

    def card(self, card: dict[str, Any]) -> Locator:
        """The rendered card of one card of the service's answer, found by its summary."""
        return self.page.locator(CARD).filter(has_text=card["summary"])

    def open_patient_view(self, patient: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Open Patient View for a patient; the body the sandbox posted and the cards, once shown."""
        with self.page.expect_response(self.is_call("als-patient-view")) as called:
            self.page.goto(self.url(patient))
        body = _captured_body(called.value)
        status, answer = _answer(called.value)
        assert body["hook"] == "patient-view"
        assert body["context"]["patientId"] == patient
        assert status == 200, f"the service answered {status}: {answer}" + _why(self, body, status, answer)
        cards = answer["cards"]
        assert cards, f"{patient} should get patient-view cards" + _why(self, body, status, answer)
        self.settle_cards(len(cards))
        return body, cards


def _wait_for(found: Callable[[], Any], what: str, seconds: float = 10.0) -> Any:
    """What `found` returns once it is truthy: the service writes its log line once the answer is
    sent, so a moment after the page has it."""
    deadline = time.monotonic() + seconds
    while not (value := found()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not found within {seconds} s: {what}")
        time.sleep(0.05)
    return value


@pytest.fixture
def open_sandbox(
    browser: Browser, sandbox_origin: str, open_fhir: FhirTestServer
) -> Iterator[Callable[[Service], Sandbox]]:
    """Fresh contexts (empty localStorage) on the sandbox, for a service, whose requests can reach
    127.0.0.1 only."""
    open_fhir.clear_requests()
    contexts: list[BrowserContext] = []

    def open_for(service: Service) -> Sandbox:
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, service_workers="block")
        contexts.append(context)
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
        return view

    try:
        yield open_for
    finally:
        for context in contexts:
            context.close()


@pytest.fixture
def sandbox(open_sandbox: Callable[[Service], Sandbox], service: Service) -> Sandbox:
    """The sandbox on the service as it should be configured."""
    return open_sandbox(service)


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
    # Authentication was on: the service verified the sandbox's own JWT, with the pinned keys.
    line = _wait_for(lambda: sandbox.service.hook_call(body["hookInstance"]), "the call's access line")
    assert (line["status"], line["issuer"]) == (200, SANDBOX_ISS), line


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


@pytest.mark.parametrize("patient", [PATIENT_VIEW_PATIENT, HEPATIC_PATIENT])
def test_patient_view_renders_the_services_cards(sandbox: Sandbox, patient: str) -> None:
    body, cards = sandbox.open_patient_view(patient)
    rendered = sandbox.page.locator(CARD).all_inner_texts()
    # The sandbox sorts by indicator, most severe first, as the service already does.
    assert all(card["summary"] in text for card, text in zip(cards, rendered, strict=True)), rendered
    # The sandbox ran our prefetch templates itself, against the open FHIR server, for this patient.
    served = sandbox.fhir.requests()
    searched = {r["path"].split("/")[0] for r in served}
    assert searched >= {"Patient", "Condition", "MedicationRequest", "Observation"}, searched
    assert all(r["auth"] == "not-required" and r["tenant"] == patient for r in served)
    assert all(r["status"] == 200 for r in served), served
    # Authentication was on: the service verified the sandbox's own JWT, with the pinned keys.
    line = _wait_for(lambda: sandbox.service.hook_call(body["hookInstance"]), "the call's access line")
    assert (line["status"], line["issuer"], line["cards"]) == (200, SANDBOX_ISS, len(cards)), line
    assert "JWK Set fetch failed" not in sandbox.service.log()  # nothing was fetched, nothing failed


def test_suggestions_taken_and_the_care_review_snoozed_become_feedback_per_rule(sandbox: Sandbox) -> None:
    """As a clinician would: take the suggestion of one card and of one item of the care review,
    then dismiss the care review with "Snooze 1 month". The sandbox posts each as feedback, signed
    for the feedback URL; the service stores each item as received, and what it means per rule:
    the review's accepted suggestion for its own rule, the snooze for every rule in the review.
    The next chart open of this patient has no review, and the service's log says why."""
    page = sandbox.page
    _, cards = sandbox.open_patient_view(PATIENT_VIEW_PATIENT)
    by_rule = {card["source"]["topic"]["code"]: card for card in cards}
    taken, review = by_rule[ACCEPTED_RULE], by_rule[DIGEST]
    suggestion = taken["suggestions"][0]
    items = {s["extension"][RULE_ID_EXTENSION]: s for s in review["suggestions"]}
    item = items[DIGEST_ITEM_RULE]
    [reason] = [r for r in review["overrideReasons"] if r["display"] == SNOOZE]
    feedback_url = f"{sandbox.service.url}/cds-services/als-patient-view/feedback"

    def is_feedback(response: Response) -> bool:
        return response.request.method == "POST" and response.url == feedback_url

    with page.expect_response(is_feedback) as accepted:
        sandbox.card(taken).get_by_role("button", name=suggestion["label"]).click()
    with page.expect_response(is_feedback) as accepted_item:
        sandbox.card(review).get_by_role("button", name=item["label"]).click()
    with page.expect_response(is_feedback) as dismissed:
        sandbox.card(review).get_by_role("button", name="select dismiss reason").click()
        page.get_by_role("menuitem", name=f"Override: {reason['display']}").click()
    stored = {"stored": 1, "duplicates": 0, "unknownCards": 0}
    for response in (accepted.value, accepted_item.value, dismissed.value):
        assert (response.status, response.json()) == (200, stored), response.text()
    expect(sandbox.card(review)).to_have_count(0)  # the sandbox removes a dismissed card

    # Each item as received, on the card it was about (the review is one card, one rule id).
    rows = sandbox.service.feedback_rows()
    assert [(r["card_uuid"], r["outcome"], r["rule_id"], r["unknown_card"]) for r in rows] == [
        (taken["uuid"], "accepted", ACCEPTED_RULE, False),
        (review["uuid"], "accepted", DIGEST, False),
        (review["uuid"], "overridden", DIGEST, False),
    ]
    assert [r["accepted_suggestion_ids"] for r in rows[:2]] == [[suggestion["uuid"]], [item["uuid"]]]
    assert all(r["unknown_suggestion_ids"] == [] for r in rows)
    assert rows[2]["override_reason_code"] == reason["code"]
    assert all(row["service_id"] == "als-patient-view" for row in rows)
    # What it means per rule: the review's suggestion for its own rule, the snooze for each item,
    # for a month from the override (the sandbox sends the reason's code only: the card's system).
    per_rule = sandbox.service.feedback_rules()
    meaning = sorted((r["rule_id"], r["outcome"], r["suggestion_uuid"], r["reason_code"]) for r in per_rule)
    assert meaning == sorted(
        [
            (ACCEPTED_RULE, "accepted", suggestion["uuid"], None),
            (DIGEST_ITEM_RULE, "accepted", item["uuid"], None),
            *[(rule, "overridden", "", reason["code"]) for rule in items],
        ]
    )
    snoozed = [r for r in per_rule if r["outcome"] == "overridden"]
    assert {r["reason_system"] for r in snoozed} == {"urn:als-cds:override-reason"}
    assert {r["snooze_until"] for r in snoozed} == {rows[2]["outcome_timestamp"] + timedelta(days=30)}
    lines = _wait_for(
        lambda: [e for e in sandbox.service.events() if e.get("event") == "feedback"][-3:] or None,
        "the feedback calls' access lines",
    )
    assert [(e["status"], e["issuer"], e["stored"]) for e in lines] == [(200, SANDBOX_ISS, 1)] * 3

    # The next chart open: the card not acted on by a snooze is back, the review is not.
    body, again = sandbox.open_patient_view(PATIENT_VIEW_PATIENT)
    shown = [card["source"]["topic"]["code"] for card in again]
    assert ACCEPTED_RULE in shown and DIGEST not in shown and not set(items) & set(shown), shown
    _wait_for(lambda: sandbox.service.hook_call(body["hookInstance"]), "the call's access line")
    suppressed = [e for e in sandbox.service.events() if e.get("event") == "card suppressed"]
    assert sorted((e["rule_id"], e["reason"]) for e in suppressed) == sorted((r, "snoozed") for r in items)
    assert PATIENT_VIEW_PATIENT not in json.dumps(suppressed)  # no patient id in the log


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


# ------------------------------------------------------------------------------------------------
# Misconfigured: the page shows no card, the service's log says why

MISCONFIGURATIONS = [
    "cors-origin-not-allowed",
    "public-base-url-wrong",
    "sandbox-keys-without-the-jku-pinned",
]


def _misconfigured(problem: str, prerequisites: Prerequisites, sandbox_origin: str) -> dict[str, str]:
    """The service's settings, right but for one thing."""
    settings = {
        "auth_required": "true",
        "trusted_clients": sandbox_trusted(prerequisites),
        "public_base_url": "{url}",
        "cors_origins": sandbox_origin,
    }
    if problem == "cors-origin-not-allowed":  # the browser hides every answer, discovery's too
        settings["cors_origins"] = "https://sandbox.cds-hooks.org"
    elif problem == "public-base-url-wrong":  # every JWT names another URL in `aud`
        settings["public_base_url"] = "https://cds.example.org"
    else:  # the sandbox's keys given as `jwks`: its tokens name a jku, which must be pinned instead
        keys = json.loads(prerequisites.jwks.read_text(encoding="utf-8"))
        settings["trusted_clients"] = json.dumps({SANDBOX_ISS: {"jwks": keys}})
    return settings


@pytest.mark.parametrize("problem", MISCONFIGURATIONS)
def test_a_misconfigured_service_shows_no_card_but_its_log_says_why(
    problem: str,
    prerequisites: Prerequisites,
    sandbox_origin: str,
    open_sandbox: Callable[[Service], Sandbox],
    tmp_path: Path,
) -> None:
    service = start_service(tmp_path, **_misconfigured(problem, prerequisites, sandbox_origin))
    try:
        sandbox = open_sandbox(service)
        sandbox.page.goto(sandbox.url(PATIENT_VIEW_PATIENT))
        expect(sandbox.page.get_by_text(f"ID: {PATIENT_VIEW_PATIENT}").first).to_be_visible()
        sandbox.page.wait_for_load_state("networkidle")
        if problem == "cors-origin-not-allowed":
            # Discovery is answered, but the page may not read the answer: no service, no call.
            refused = _wait_for(
                lambda: [e for e in service.events() if e.get("cors") == "refused"],
                "a call from a refused origin in the log",
            )
            assert all(
                (e["origin"], e["level"], e["path"]) == (sandbox_origin, "warning", "/cds-services")
                for e in refused
            ), refused
            assert not [e for e in service.events() if e.get("event") == "hook call"]  # never called
        else:
            reason = "wrong_audience" if problem == "public-base-url-wrong" else "jku_not_allowed"
            failure = _wait_for(
                lambda: next((e for e in service.events() if e.get("auth_failure")), None),
                "an authentication failure in the log",
            )
            call = _wait_for(
                lambda: next((e for e in service.events() if e.get("event") == "hook call"), None),
                "the refused call's access line",
            )
            assert (failure["auth_failure"], failure["iss"], failure["level"]) == (
                reason,
                SANDBOX_ISS,
                "warning",
            )
            if reason == "jku_not_allowed":
                assert failure["jku"] == SANDBOX_JKU
            assert (call["status"], call["request_id"]) == (401, failure["request_id"]), call
            assert [r.status for r in sandbox.service_calls] == [401] * len(sandbox.service_calls)
        # What the user sees is what a patient with nothing to flag gets: only the log tells.
        expect(sandbox.page.locator(CARD)).to_have_count(0)
        expect(sandbox.page.get_by_text(NO_CARDS_TEXT)).to_be_visible()
    finally:
        service.stop()

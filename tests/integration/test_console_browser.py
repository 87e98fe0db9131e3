"""The console (`/console`) in headless Chromium, against the service as the quickstart runs it.

Why: the console is how integration engineers and clinical reviewers see what an EHR will show,
without an EHR and without internet; only a browser shows that its pages work, that cards render
as an EHR renders them, and that its feedback reaches the service. What is driven, like a user:

* patient-view for a fixture patient: every card of the service's answer rendered, in its order,
  with its indicator (as a word) and its summary, its markdown detail as HTML, the request and
  response JSON and the time taken shown;
* the info reminders as one care review card (`care-review-digest`, one suggestion an item): a
  card's suggestion and a review item's suggestion accepted (by mouse), the review overridden with
  "Snooze 1 month" (by keyboard only): each posted to /cds-services/als-patient-view/feedback, the
  service's answer shown, found as rows in the service's database and traced per rule (the item's
  suggestion to its own rule, the snooze to each rule of the review); sent again, the review is gone
  and the log says each of its rules was snoozed. Tests after it in this module do not rely on the
  review of that patient;
* order-select for a patient with ALS and cirrhosis whose draft riluzole order is ticked, beside an
  unticked order added from the library: the critical riluzole-order-liver card; with the riluzole
  order unticked, no such card; order-sign the same;
* a pasted hook request (a committed fixture) and a pasted request that is not JSON (the service's
  400 shown); a patient on the real FHIR server, which the service reads itself;
* the rule review page lists every rule of the catalogue, and its links fire a fixture patient;
* the rule analytics page: a care review item accepted in the console is counted for its rule (shown
  and accepted, today), the table shows exactly what /console/api/analytics answers, a rule filter
  and the CSV export agree, and a rule id that is not one gets the service's 400 on the page;
* the markdown renderer escapes HTML; every control has a label; the pages load nothing from
  elsewhere (every non-loopback request is blocked and must not happen) and raise no error.

The pieces, all on 127.0.0.1: the service, `python -m cds_service.cli serve` of this checkout with
ALS_CDS_AUTH_REQUIRED=false and the console setting left at its default (`auto`: on, since
authentication is off), as `test_sandbox_browser.start_service` starts it; Debian's `chromium`
driven by Playwright (`executable_path`, no browser download), resolving no name but 127.0.0.1.
The FHIR server test uses the session FHIR server of conftest.py (skipped as it says).

Screenshots of each view are saved in the test's tmp_path; with ALS_CDS_CONSOLE_SCREENSHOTS=1 they
are written to docs/ (console-patient-view.png, console-order-select.png, console-rules.png), which
the README shows.

Without Playwright or chromium the tests skip with a message, except under CI (CI=true) or with
ALS_CDS_REQUIRE_BROWSER=1 or ALS_CDS_REQUIRE_SANDBOX=1, where they fail.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import pytest

from cds_service.digest import RULE_ID_EXTENSION
from cds_service.rules import CATALOGUE
from tests.integration.conftest import FhirTestServer
from tests.integration.test_sandbox_browser import (
    CHROMIUM_ARGS,
    LOOPBACK,
    TIMEOUT_MS,
    Service,
    _wait_for,
    start_service,
)

try:
    from playwright.sync_api import Browser, Locator, Page, Response, Route, expect, sync_playwright
except ImportError:  # `chromium_path` says so: a skip, or a failure under CI
    sync_playwright = None

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
REQUESTS = ROOT / "fhir_fixtures" / "requests"
SCREENSHOTS_ENV = "ALS_CDS_CONSOLE_SCREENSHOTS"
SCREENSHOT_HEIGHT = 1800

PATIENT_VIEW_PATIENT = "als-riluzole-lft-overdue"  # ALS, on riluzole: several patient-view cards
ACCEPTED_RULE = "riluzole-lft-due"  # its suggestion: order liver function tests
# Its info reminders come as one care review card (cds_service/digest.py), one suggestion an item:
DIGEST = "care-review-digest"
DIGEST_ITEM_RULE = "mdt-review-overdue"  # the item whose suggestion is accepted
SNOOZE = "Snooze 1 month"  # the review overridden with it: each of its rules snoozed for this patient
ANALYTICS_PATIENT = "care-mdt-overdue-no-acp"  # a care review of five items, genetic testing among them
ANALYTICS_RULE = "genetic-testing-offer"
HEPATIC_PATIENT = "riluzole-hepatic-contraindication"  # ALS (G12.21) and cirrhosis; a draft Tiglutik
HEPATIC_ORDER = "Tiglutik 50 mg/10 mL oral suspension"
HEPATIC_RULE = "riluzole-order-liver"
LIBRARY_ORDER = "Gabapentin 300 mg capsules"  # another fixture's draft, from the order library
INDICATOR_WORDS = {"critical": "Critical", "warning": "Warning", "info": "Info"}


# ------------------------------------------------------------------------------------------------
# Prerequisites: skip here, fail under CI (as test_sandbox_browser.py does)


def _required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or "1" in (
        os.environ.get("ALS_CDS_REQUIRE_BROWSER"),
        os.environ.get("ALS_CDS_REQUIRE_SANDBOX"),
    )


def _unavailable(message: str) -> None:
    if _required():
        pytest.fail(
            f"{message} (required because CI=true, ALS_CDS_REQUIRE_BROWSER=1 or ALS_CDS_REQUIRE_SANDBOX=1)"
        )
    pytest.skip(message)


@pytest.fixture(scope="module")
def chromium_path() -> str:
    if sync_playwright is None:
        _unavailable("Playwright for Python is not installed: pip install -e '.[test]'")
    chromium = os.environ.get("ALS_CDS_TEST_CHROMIUM") or shutil.which("chromium")
    if not chromium or not os.access(chromium, os.X_OK):
        _unavailable(
            f"no chromium to run: {chromium or 'none on PATH'} (Debian: apt-get install chromium; "
            "or set ALS_CDS_TEST_CHROMIUM to a Chromium binary)"
        )
    assert chromium is not None
    return chromium


@pytest.fixture(scope="module")
def service(chromium_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The service as the README's quickstart starts it: authentication off, the console by default."""
    served = start_service(tmp_path_factory.mktemp("console-service"), auth_required="false")
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Browser]:
    """Headless Debian chromium, unable to resolve any name but 127.0.0.1."""
    assert sync_playwright is not None
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Console:
    """One fresh browser context on the console, and what went wrong in it."""

    page: Page
    service: Service
    errors: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    def open(self, path: str = "/console", **query: str) -> None:
        self.page.goto(f"{self.service.url}{path}" + (f"?{urlencode(query)}" if query else ""))
        expect(self.page.locator("body[data-ready='true']")).to_have_count(1)

    def is_call(self, service_id: str) -> Any:
        target = f"{self.service.url}/cds-services/{service_id}"
        return lambda response: response.request.method == "POST" and response.url == target

    def send(self, service_id: str) -> tuple[Any, int, Any]:
        """Press Send; (the body posted to the service, its status, its JSON answer), once shown."""
        with self.page.expect_response(self.is_call(service_id)) as called:
            self.page.get_by_role("button", name="Send hook request").click()
        response: Response = called.value
        raw = response.request.post_data or ""
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw
        answer = response.json()
        expect(self.page.locator("#call-status")).to_contain_text(f"answered {response.status} in")
        return body, response.status, answer

    def card(self, rule_id: str) -> Locator:
        return self.page.locator(f'article.card[data-rule-id="{rule_id}"]')

    def order(self, label: str) -> Locator:
        return self.page.locator("#order-list li").filter(has_text=label).get_by_role("checkbox")


@pytest.fixture
def console(browser: Browser, service: Service) -> Iterator[Console]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    page = context.new_page()
    view = Console(page, service)

    def only_loopback(route: Route) -> None:
        if urlsplit(route.request.url).hostname == LOOPBACK:
            route.continue_()
        else:
            view.blocked.append(route.request.url)
            route.abort("blockedbyclient")

    context.route("**/*", only_loopback)
    page.on("pageerror", lambda error: view.errors.append(f"page error: {error}"))
    page.on("console", lambda message: view.errors.append(message.text) if message.type == "error" else None)
    try:
        yield view
        # Offline and clean: nothing fetched elsewhere, no script error, no CSP violation.
        assert view.blocked == [], view.blocked
        assert view.errors == [], view.errors
    finally:
        context.close()


def _screenshot(page: Page, name: str, tmp_path: Path) -> Path:
    """The page from its top, at most SCREENSHOT_HEIGHT pixels of it: the form and the first cards."""
    path = tmp_path / name
    height = min(page.evaluate("document.documentElement.scrollHeight"), SCREENSHOT_HEIGHT)
    page.screenshot(path=str(path), full_page=True, clip={"x": 0, "y": 0, "width": 1280, "height": height})
    if os.environ.get(SCREENSHOTS_ENV) == "1":
        shutil.copyfile(path, DOCS / name)
    return path


def _rule_ids(answer: dict[str, Any]) -> list[str]:
    return [card["source"]["topic"]["code"] for card in answer["cards"]]


# ------------------------------------------------------------------------------------------------
# Firing hooks


def test_patient_view_cards_render_with_their_indicator_and_summary(console: Console, tmp_path: Path) -> None:
    console.open(patient=PATIENT_VIEW_PATIENT, hook="patient-view")
    body, status, answer = console.send("als-patient-view")
    assert (body["hook"], body["context"]["patientId"], status) == ("patient-view", PATIENT_VIEW_PATIENT, 200)
    cards = answer["cards"]
    assert cards and ACCEPTED_RULE in _rule_ids(answer), answer
    page = console.page
    rendered = page.locator("article.card")
    expect(rendered).to_have_count(len(cards))
    for n, card in enumerate(cards):  # in the service's order, most severe first
        shown = rendered.nth(n)
        expect(shown).to_have_attribute("data-rule-id", card["source"]["topic"]["code"])
        expect(shown.locator(".badge")).to_have_text(INDICATOR_WORDS[card["indicator"]])
        expect(shown.get_by_role("heading", level=3)).to_have_text(card["summary"])
        expect(shown.get_by_role("button", name="Override…")).to_be_visible()
    expect(page.locator("#call-status")).to_contain_text(f"{len(cards)} cards from als-patient-view")
    # The detail's markdown as HTML: bold and the list of data behind the card; its sources are not
    # repeated there (issue 10) but are the card's links, each opening in a new tab.
    detail = console.card(ACCEPTED_RULE).locator(".card-detail")
    expect(detail.locator("strong").filter(has_text="Data behind this card:")).to_have_count(1)
    assert detail.locator("li").count() >= 2
    assert detail.locator("a").count() == 0 and "Sources" not in detail.inner_text()
    assert "**" not in detail.inner_text()
    source_links = console.card(ACCEPTED_RULE).locator(".card-links a[href^='https://']")
    accepted = cards[_rule_ids(answer).index(ACCEPTED_RULE)]
    expect(source_links).to_have_count(len(accepted["links"]))
    expect(source_links.first).to_have_attribute("rel", "noopener noreferrer")
    suggestion = cards[_rule_ids(answer).index(ACCEPTED_RULE)]["suggestions"][0]
    expect(console.card(ACCEPTED_RULE).get_by_role("button", name=suggestion["label"])).to_be_visible()
    # The exchange: the request and response JSON, the status and the time taken.
    assert json.loads(page.locator("#request-json").inner_text())["hookInstance"] == body["hookInstance"]
    assert json.loads(page.locator("#response-json").inner_text()) == answer
    expect(page.locator("#exchange-summary")).to_contain_text("POST /cds-services/als-patient-view: 200 in")
    expect(page.locator("#exchange-summary")).to_contain_text(" ms")
    _screenshot(page, "console-patient-view.png", tmp_path)


def test_accepted_suggestions_and_a_snoozed_care_review_become_feedback_per_rule(
    console: Console, service: Service
) -> None:
    console.open(patient=PATIENT_VIEW_PATIENT, hook="patient-view")
    _, _, answer = console.send("als-patient-view")
    by_rule = {card["source"]["topic"]["code"]: card for card in answer["cards"]}
    taken, review = by_rule[ACCEPTED_RULE], by_rule[DIGEST]
    suggestion = taken["suggestions"][0]
    items = {s["extension"][RULE_ID_EXTENSION]: s for s in review["suggestions"]}
    item = items[DIGEST_ITEM_RULE]
    [reason] = [r for r in review["overrideReasons"] if r["display"] == SNOOZE]
    page = console.page
    feedback_url = f"{service.url}/cds-services/als-patient-view/feedback"

    def is_feedback(response: Response) -> bool:
        return response.request.method == "POST" and response.url == feedback_url

    # By mouse: a card's suggestion, and one item's suggestion on the care review.
    with page.expect_response(is_feedback) as accepted:
        console.card(ACCEPTED_RULE).get_by_role("button", name=suggestion["label"]).click()
    with page.expect_response(is_feedback) as accepted_item:
        console.card(DIGEST).get_by_role("button", name=item["label"]).click()
    # The override by keyboard only: to the review's Override button, Enter, the reason, a comment.
    toggle = console.card(DIGEST).get_by_role("button", name="Override…")
    toggle.focus()
    page.keyboard.press("Enter")
    reasons = console.card(DIGEST).get_by_label("Reason for overriding")
    expect(reasons).to_be_focused()
    assert reasons.locator("option").all_inner_texts() == [r["display"] for r in review["overrideReasons"]]
    reasons.select_option(label=reason["display"])
    page.keyboard.press("Tab")
    expect(console.card(DIGEST).get_by_label("Comment (optional)")).to_be_focused()
    page.keyboard.type("Reviewed at the regional MND clinic last week")
    page.keyboard.press("Tab")
    with page.expect_response(is_feedback) as dismissed:
        page.keyboard.press("Enter")
    stored = {"stored": 1, "duplicates": 0, "unknownCards": 0}
    for response in (accepted.value, accepted_item.value, dismissed.value):
        assert (response.status, response.json()) == (200, stored), response.text()
    # What the page says: the service's answer on each card and in the feedback list.
    answered = "the service answered 200 (stored 1, duplicates 0, unknown cards 0)"
    expect(console.card(ACCEPTED_RULE).locator(".feedback-status")).to_contain_text(answered)
    expect(console.card(DIGEST).locator(".feedback-status")).to_contain_text(answered)
    expect(console.card(DIGEST).get_by_role("button", name=f"Accepted: {item['label']}")).to_be_disabled()
    expect(
        console.card(DIGEST).get_by_role("button", name=f"Overridden: {reason['display']}")
    ).to_be_disabled()
    expect(page.locator("#feedback-log > li")).to_have_count(3)

    # Each item as received, on the card it was about (the review is one card, one rule id).
    rows = service.feedback_rows()
    assert [(r["card_uuid"], r["outcome"], r["rule_id"], r["unknown_card"]) for r in rows] == [
        (taken["uuid"], "accepted", ACCEPTED_RULE, False),
        (review["uuid"], "accepted", DIGEST, False),
        (review["uuid"], "overridden", DIGEST, False),
    ]
    assert [r["accepted_suggestion_ids"] for r in rows[:2]] == [[suggestion["uuid"]], [item["uuid"]]]
    assert (rows[2]["override_reason_code"], rows[2]["override_reason_system"]) == (
        reason["code"], reason.get("system"),
    )  # fmt: skip
    assert all(row["service_id"] == "als-patient-view" for row in rows)
    # What it means per rule: the review's suggestion for its own rule, the snooze for each of its
    # rules, for the month its card files give, from the moment of the override.
    per_rule = service.feedback_rules()
    meaning = sorted((r["rule_id"], r["outcome"], r["suggestion_uuid"], r["reason_code"]) for r in per_rule)
    assert meaning == sorted(
        [
            (ACCEPTED_RULE, "accepted", suggestion["uuid"], None),
            (DIGEST_ITEM_RULE, "accepted", item["uuid"], None),
            *[(rule, "overridden", "", reason["code"]) for rule in items],
        ]
    )
    snoozed = [r for r in per_rule if r["outcome"] == "overridden"]
    assert {r["snooze_until"] for r in snoozed} == {rows[2]["outcome_timestamp"] + timedelta(days=30)}
    lines = _wait_for(
        lambda: [e for e in service.events() if e.get("event") == "feedback"][-3:] or None,
        "the feedback calls' access lines",
    )
    assert [(e["status"], e["stored"]) for e in lines] == [(200, 1)] * 3

    # Sent again: the card not snoozed is there, the review and its rules are not.
    _, _, again = console.send("als-patient-view")
    assert ACCEPTED_RULE in _rule_ids(again) and not ({DIGEST, *items} & set(_rule_ids(again))), again
    expect(console.card(DIGEST)).to_have_count(0)
    suppressed = _wait_for(
        lambda: [e for e in service.events() if e.get("event") == "card suppressed"] or None,
        "the suppressed cards' log lines",
    )
    assert sorted((e["rule_id"], e["reason"]) for e in suppressed) == sorted((r, "snoozed") for r in items)


def test_order_select_riluzole_with_liver_disease_shows_the_critical_card(
    console: Console, tmp_path: Path
) -> None:
    console.open(patient=HEPATIC_PATIENT, hook="order-select")
    page = console.page
    expect(page.get_by_role("group", name="Draft orders")).to_be_visible()
    expect(console.order(HEPATIC_ORDER)).to_be_checked()  # the patient's own draft, selected
    page.get_by_label("Add a draft order from the fixtures").select_option(
        label=next(
            text
            for text in page.locator("#order-library option").all_inner_texts()
            if text.startswith(LIBRARY_ORDER)
        )
    )
    page.get_by_role("button", name="Add order").click()
    console.order(LIBRARY_ORDER).uncheck()  # in the basket, not selected

    body, status, answer = console.send("als-order-select")
    drafts = [entry["resource"] for entry in body["context"]["draftOrders"]["entry"]]
    assert len(drafts) == 2 and status == 200
    assert body["context"]["selections"] == ["MedicationRequest/draft-riluzole-r2"]
    assert HEPATIC_RULE in _rule_ids(answer), answer
    card = console.card(HEPATIC_RULE)
    expect(card).to_have_count(1)
    expect(card).to_have_attribute("data-indicator", "critical")
    expect(card.locator(".badge")).to_have_text("Critical")
    liver = answer["cards"][_rule_ids(answer).index(HEPATIC_RULE)]
    expect(card.get_by_role("heading", level=3)).to_have_text(liver["summary"])
    expect(page.locator("article.card").first).to_have_attribute("data-rule-id", HEPATIC_RULE)  # first
    _screenshot(page, "console-order-select.png", tmp_path)

    # The riluzole order unticked, the other selected: the liver card is gone.
    console.order(HEPATIC_ORDER).uncheck()
    console.order(LIBRARY_ORDER).check()
    body, status, answer = console.send("als-order-select")
    assert body["context"]["selections"] == ["MedicationRequest/draft-gabapentin-m3"]
    assert status == 200 and HEPATIC_RULE not in _rule_ids(answer)
    expect(console.card(HEPATIC_RULE)).to_have_count(0)

    # Nothing selected: the page says so and sends nothing.
    console.order(LIBRARY_ORDER).uncheck()
    page.get_by_role("button", name="Send hook request").click()
    expect(page.get_by_role("alert")).to_contain_text("order-select needs at least one selected draft order")


def test_order_sign_riluzole_with_liver_disease_shows_the_critical_card(console: Console) -> None:
    console.open(patient=HEPATIC_PATIENT, hook="order-sign")
    expect(console.order(HEPATIC_ORDER)).to_be_checked()
    body, status, _ = console.send("als-order-sign")
    assert (body["hook"], status, len(body["context"]["draftOrders"]["entry"])) == ("order-sign", 200, 1)
    expect(console.card(HEPATIC_RULE).locator(".badge")).to_have_text("Critical")


def test_a_pasted_request_and_a_broken_one(console: Console) -> None:
    console.open()
    page = console.page
    page.get_by_label("A pasted hook request").check()
    expect(page.get_by_role("group", name="Hook")).to_be_hidden()
    pasted = (REQUESTS / "order-select-riluzole.json").read_text(encoding="utf-8")
    page.get_by_label("Hook request (JSON)").fill(pasted)
    body, status, answer = console.send("als-order-select")  # the service for the request's hook
    assert (status, body) == (200, json.loads(pasted))
    expect(page.locator("article.card")).to_have_count(len(answer["cards"]))
    assert "riluzole-order-dose" in _rule_ids(answer)

    page.get_by_label("Hook request (JSON)").fill('{"hook": "patient-view", "context": ')
    page.get_by_label("Service", exact=True).select_option("als-patient-view")
    body, status, answer = console.send("als-patient-view")
    assert status == 400 and answer["resourceType"] == "OperationOutcome"
    expect(page.locator(".error-answer")).to_contain_text("not valid JSON")
    expect(page.locator("article.card")).to_have_count(0)
    # The console's own messages are errors in the page; the service's 400 is the answer shown.
    console.errors[:] = [e for e in console.errors if "400" not in e]


def test_a_patient_on_a_fhir_server_is_read_by_the_service(console: Console, fhir: FhirTestServer) -> None:
    console.open(hook="patient-view")
    page = console.page
    page.get_by_label("A FHIR server").check()
    page.get_by_label("FHIR server base URL").fill(fhir.base(PATIENT_VIEW_PATIENT))
    page.get_by_label("Patient id").fill(PATIENT_VIEW_PATIENT)
    page.get_by_label("Access token (optional)").fill(fhir.token)
    body, status, answer = console.send("als-patient-view")
    assert "prefetch" not in body and body["fhirServer"] == fhir.base(PATIENT_VIEW_PATIENT)
    assert body["fhirAuthorization"]["access_token"] == fhir.token
    assert status == 200 and ACCEPTED_RULE in _rule_ids(answer), answer
    searched = {r["path"].split("/")[0] for r in fhir.requests()}
    assert {"Patient", "Condition", "MedicationRequest", "Observation"} <= searched
    expect(page.locator("article.card")).to_have_count(len(answer["cards"]))
    assert fhir.token not in page.locator("main").inner_text()  # masked in the request shown


# ------------------------------------------------------------------------------------------------
# The rule review page


def test_the_rule_review_page_lists_every_rule_in_the_catalogue(console: Console, tmp_path: Path) -> None:
    console.open("/console/rules")
    page = console.page
    sections = page.locator("section.rule")
    listed = [sections.nth(n).get_attribute("data-rule-id") for n in range(sections.count())]
    assert sorted(listed) == sorted(rule.id for rule in CATALOGUE)
    expect(page.locator("#overview tbody tr")).to_have_count(len(CATALOGUE))
    liver = page.locator(f"section#{HEPATIC_RULE}")
    expect(liver.get_by_role("heading", level=2)).to_contain_text(HEPATIC_RULE)
    expect(liver).to_contain_text("words")
    expect(liver.locator("table.facts tbody tr").first).to_be_visible()

    filter_box = page.get_by_label("Filter rules (id, title, trigger, wording, review status)")
    filter_box.fill(HEPATIC_RULE)
    expect(page.locator("#rule-count")).to_have_text(f"Showing 1 of {len(CATALOGUE)} rules.")
    expect(page.locator("section.rule:visible")).to_have_count(1)
    _screenshot(page, "console-rules.png", tmp_path)  # one rule: the whole page would be metres long
    # A fixture patient that fires it, one click from firing it in the console.
    liver.get_by_role("link", name=f"Fire order-select for {HEPATIC_PATIENT}").click()
    expect(page.locator("body[data-ready='true']")).to_have_count(1)
    expect(page.get_by_label("Fixture patient", exact=True)).to_have_value(HEPATIC_PATIENT)
    expect(page.get_by_label("order-select", exact=True)).to_be_checked()
    _, _, answer = console.send("als-order-select")
    assert HEPATIC_RULE in _rule_ids(answer)


# ------------------------------------------------------------------------------------------------
# The rule analytics page


def _figures(service: Service, **query: str) -> dict[str, Any]:
    """What the console's analytics endpoint answers (the figures of GET /analytics/rules)."""
    response = httpx.get(f"{service.url}/console/api/analytics", params=query, timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _today_row(answer: dict[str, Any], rule: str) -> dict[str, Any]:
    return next((r for r in answer["rows"] if r["ruleId"] == rule), {"shown": 0, "acceptedCards": 0})


def test_the_analytics_page_shows_what_was_shown_and_accepted(
    console: Console, service: Service, tmp_path: Path
) -> None:
    today = datetime.now(UTC).date().isoformat()
    before = _today_row(_figures(service, since=today, until=today, period="day"), ANALYTICS_RULE)
    # A care review for another patient, and one of its items accepted, in the console.
    console.open(patient=ANALYTICS_PATIENT, hook="patient-view")
    _, _, answer = console.send("als-patient-view")
    review = next(c for c in answer["cards"] if c["source"]["topic"]["code"] == DIGEST)
    [item] = [s for s in review["suggestions"] if s["extension"][RULE_ID_EXTENSION] == ANALYTICS_RULE]
    page = console.page
    with page.expect_response(lambda r: r.url.endswith("/cds-services/als-patient-view/feedback")):
        console.card(DIGEST).get_by_role("button", name=item["label"]).click()

    figures = _wait_for(
        lambda: (
            (found := _figures(service, since=today, until=today, period="day"))
            and _today_row(found, ANALYTICS_RULE)["shown"] == before["shown"] + 1
            and found
        ),
        "the new card's record in the analytics",
    )
    row = _today_row(figures, ANALYTICS_RULE)
    assert row["acceptedCards"] == before["acceptedCards"] + 1

    console.open("/console/analytics")
    page.get_by_label("From (included)").fill(today)
    page.get_by_label("To (included)").fill(today)
    page.get_by_label("Period", exact=True).select_option("day")
    with page.expect_response(lambda r: "/console/api/analytics?" in r.url) as shown:
        page.get_by_role("button", name="Show figures").click()
    assert shown.value.json() == figures  # the page shows the answer the test read itself
    table = page.locator("#figures tbody tr")
    expect(table).to_have_count(len(figures["rows"]))
    shown_row = page.locator(f'#figures tbody tr[data-rule-id="{ANALYTICS_RULE}"]')
    expect(shown_row.locator("th")).to_have_text(ANALYTICS_RULE)
    expect(shown_row.locator("td.shown")).to_have_text(str(row["shown"]))
    expect(shown_row.locator("td.accepted-cards")).to_have_text(str(row["acceptedCards"]))
    expect(shown_row.locator("td.accepted-suggestions")).to_contain_text(item["label"])
    expect(page.locator("#analytics-status")).to_contain_text(f"{len(figures['rows'])} rows")
    _screenshot(page, "console-analytics.png", tmp_path)

    # The CSV export of the same figures.
    page.get_by_label("Rule ids (optional, comma-separated)").fill(ANALYTICS_RULE)
    page.get_by_role("button", name="Show figures").click()
    expect(table).to_have_count(1)
    href = page.get_by_role("link", name="Download CSV").get_attribute("href") or ""
    exported = page.request.get(href)
    assert exported.headers["content-type"] == "text/csv; charset=utf-8"
    lines = list(csv.DictReader(io.StringIO(exported.text())))
    assert {(line["rule_id"], line["measure"], line["value"]) for line in lines} >= {
        (ANALYTICS_RULE, "shown", str(row["shown"])),
        (ANALYTICS_RULE, "accepted_cards", str(row["acceptedCards"])),
    }

    # A rule id that is not one: the service's 400 said on the page, no table.
    page.get_by_label("Rule ids (optional, comma-separated)").fill("no-such-rule")
    page.get_by_role("button", name="Show figures").click()
    expect(page.get_by_role("alert")).to_contain_text("The service answered 400: rule: not rule ids")
    expect(table).to_have_count(0)
    console.errors[:] = [e for e in console.errors if "400" not in e]  # the browser's own note of it


# ------------------------------------------------------------------------------------------------
# Safety and accessibility


def test_the_markdown_renderer_escapes_html_first(console: Console) -> None:
    console.open()
    rendered = console.page.evaluate(
        """async () => {
            const { renderMarkdown } = await import("./console/static/markdown.js");
            return {
              hostile: renderMarkdown('<img src=x onerror="alert(1)"> <script>alert(2)</script> ' +
                '[click](javascript:alert(3)) [data](data:text/html,hi) **<b>bold</b>**'),
              subset: renderMarkdown('Intro **bold** and *it*.\\nSame paragraph.\\n\\n' +
                '- one\\n- [two](https://example.org/a?b=1&c=2)\\n\\n1. first\\n2. second'),
            };
        }"""
    )
    hostile = rendered["hostile"]
    assert "<img" not in hostile and "<script" not in hostile and "<b>" not in hostile
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in hostile
    assert "href" not in hostile  # neither javascript: nor data: becomes a link
    assert "<strong>&lt;b&gt;bold&lt;/b&gt;</strong>" in hostile
    assert rendered["subset"] == (
        "<p>Intro <strong>bold</strong> and <em>it</em>. Same paragraph.</p>\n"
        '<ul><li>one</li><li><a href="https://example.org/a?b=1&amp;c=2" target="_blank" '
        'rel="noopener noreferrer">two</a></li></ul>\n'
        "<ol><li>first</li><li>second</li></ol>"
    )


@pytest.mark.parametrize("path", ["/console", "/console/rules", "/console/analytics"])
def test_every_control_has_a_label_and_headings_do_not_skip_levels(console: Console, path: str) -> None:
    console.open(path, **({"patient": PATIENT_VIEW_PATIENT} if path == "/console" else {}))
    if path == "/console":
        console.send("als-patient-view")  # cards and their controls on the page too
        # A card the snooze test above leaves in place (the care review may be snoozed by then).
        console.card(ACCEPTED_RULE).get_by_role("button", name="Override…").click()
    found = console.page.evaluate(
        """() => {
            const controls = [...document.querySelectorAll("input, select, textarea, button")];
            const unlabelled = controls
              .filter((c) => c.type !== "hidden")
              .filter((c) => !(c.labels && c.labels.length) && !c.getAttribute("aria-label")
                             && !(c.tagName === "BUTTON" && c.textContent.trim()))
              .map((c) => c.outerHTML.slice(0, 120));
            const levels = [...document.querySelectorAll("h1, h2, h3, h4, h5, h6")]
              .map((h) => Number(h.tagName[1]));
            const live = [...document.querySelectorAll("[aria-live], [role=status], [role=alert]")].length;
            return { unlabelled, levels, live, lang: document.documentElement.lang };
        }"""
    )
    assert found["unlabelled"] == []
    levels = found["levels"]
    assert levels[0] == 1 and levels.count(1) == 1
    assert all(b <= a + 1 for a, b in itertools.pairwise(levels)), levels
    assert found["live"] >= 1 and found["lang"] == "en"

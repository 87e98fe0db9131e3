"""`GET /analytics/rules` (issue 12) over HTTP with injected time, on SQLite and PostgreSQL: its
figures equal exactly what the test was shown and sent; its own token; only aggregates; every bad
query a 400 naming the parameter.

The expected figures are counted here from the HTTP answers the test got (cards and care review
items) and the feedback it posted, never from the store or the code under test.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cds_service.app import create_app
from cds_service.digest import RULE_ID_EXTENSION
from cds_service.fatigue import NON_ADHERENCE_SYSTEM
from cds_service.settings import Settings
from cds_service.store.fatigue import count_rows
from cds_service.store.tables import issued_items, snoozes
from tests.api.test_alert_fatigue import Clock, fixture_request
from tests.cards_shown import DIGEST, fired_rules
from tests.support import NOW, hook_request

TOKEN = "analytics-token-" + "0123456789abcdef" * 2
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VIEW = "/cds-services/als-patient-view"
FEEDBACK = "/cds-services/als-patient-view/feedback"
QUICKSTART = "patient-view-als-riluzole-lft-overdue"
OTHER_PATIENT = "care-mdt-overdue-no-acp"  # its reminders: one care review of five items
OWN_SYSTEM = "urn:als-cds:override-reason"
# A code no card offers, as a client might send it: counted, never echoed.
FREE_TEXT_CODE = "declined-said-so-to-dr-jones-on-the-phone"
COMMENT = "Discussed with the family on the ward"
NOVEMBER = {"since": "2026-11-01", "until": "2026-11-30"}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'als-cds.db'}"
    return str(request.getfixturevalue("postgres_db_url"))


def make(database_url: str, clock: Clock, **settings: Any) -> TestClient:
    config = Settings(_env_file=None, database_url=database_url, auth_required=False, **settings)
    return TestClient(create_app(config, clock=clock))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(database_url: str, clock: Clock) -> Iterator[TestClient]:
    with make(database_url, clock, analytics_token=TOKEN) as client:
        yield client


# -- what the test was shown and sent, counted by the test --------------------------------------


@dataclass
class Sent:
    shown: Counter[tuple[str, date]] = field(default_factory=Counter)
    accepted: Counter[tuple[str, date, str]] = field(default_factory=Counter)
    accepted_cards: set[tuple[str, date, str]] = field(default_factory=set)
    overridden: Counter[tuple[str, date, str | None, str | None, str | None]] = field(default_factory=Counter)
    snoozed: Counter[tuple[str, date]] = field(default_factory=Counter)
    suppressed: Counter[tuple[str, date, str]] = field(default_factory=Counter)
    #: card uuid → (day shown, the rules it stands for): what feedback on it concerns.
    cards: dict[str, tuple[date, list[str]]] = field(default_factory=dict)

    def saw(self, body: dict[str, Any], day: date) -> None:
        for rule in fired_rules(body):
            self.shown[(rule, day)] += 1
        for card in body["cards"]:
            rule = card["source"]["topic"]["code"]
            items = (
                [s["extension"][RULE_ID_EXTENSION] for s in card["suggestions"]] if rule == DIGEST else [rule]
            )
            self.cards[card["uuid"]] = (day, items)


def post_view(client: TestClient, request: dict[str, Any], sent: Sent, day: date) -> dict[str, Any]:
    body = client.post(VIEW, json=request).json()
    sent.saw(body, day)
    return body


def card_of(body: dict[str, Any], rule: str) -> dict[str, Any]:
    return next(c for c in body["cards"] if c["source"]["topic"]["code"] == rule)


def accept(client: TestClient, sent: Sent, card: dict[str, Any], suggestion: dict[str, Any]) -> None:
    item = {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": suggestion["uuid"]}],
        "outcomeTimestamp": "2026-11-22T12:01:00Z",
    }
    assert client.post(FEEDBACK, json={"feedback": [item]}).json()["stored"] == 1
    day, items = sent.cards[card["uuid"]]
    rule = (suggestion.get("extension") or {}).get(RULE_ID_EXTENSION) or items[0]
    sent.accepted[(rule, day, suggestion["label"])] += 1
    sent.accepted_cards.add((rule, day, card["uuid"]))


def override(
    client: TestClient,
    sent: Sent,
    card: dict[str, Any],
    reason: dict[str, str],
    *,
    reported: tuple[str | None, str | None, str | None],
    snooze: bool,
    minute: int,
) -> None:
    """Override `card` with `reason`; `reported`: the (system, code, standard code) the analytics
    must show for it (a code no card offers: `other`)."""
    item = {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {"reason": reason, "userComment": COMMENT},
        "outcomeTimestamp": f"2026-11-22T12:{minute:02d}:00Z",
    }
    assert client.post(FEEDBACK, json={"feedback": [item]}).json()["stored"] == 1
    day, items = sent.cards[card["uuid"]]
    for rule in items:
        sent.overridden[(rule, day, *reported)] += 1
        if snooze:
            sent.snoozed[(rule, day)] += 1


def monday(day: date) -> date:
    return day - timedelta(days=day.weekday())


def expected_rows(sent: Sent, period_start: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(rule, period start) → the figures, counted from what was shown and sent."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}

    def row(rule: str, day: date) -> dict[str, Any]:
        key = (rule, f"{period_start(day).isoformat()}T00:00:00Z")
        return rows.setdefault(
            key,
            {
                "shown": 0,
                "acceptedCards": 0,
                "acceptedBySuggestion": Counter(),
                "overriddenByReason": Counter(),
                "snoozed": 0,
                "suppressedByReason": Counter(),
            },
        )

    for (rule, day), n in sent.shown.items():
        row(rule, day)["shown"] += n
    for rule, day, _ in sent.accepted_cards:
        row(rule, day)["acceptedCards"] += 1
    for (rule, day, label), n in sent.accepted.items():
        row(rule, day)["acceptedBySuggestion"][label] += n
    for (rule, day, *reason), n in sent.overridden.items():
        row(rule, day)["overriddenByReason"][tuple(reason)] += n
    for (rule, day), n in sent.snoozed.items():
        row(rule, day)["snoozed"] += n
    for (rule, day, why), n in sent.suppressed.items():
        row(rule, day)["suppressedByReason"][why] += n
    return rows


def reported_rows(answer: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The answer's rows in the shape of `expected_rows`, after checking their totals add up."""
    found = {}
    for row in answer["rows"]:
        suggestions = Counter({s["suggestion"]: s["count"] for s in row["acceptedBySuggestion"]})
        reasons = Counter(
            {(r["system"], r["code"], r["standardCode"]): r["count"] for r in row["overriddenByReason"]}
        )
        suppressed = Counter(row["suppressedByReason"])
        assert row["acceptedSuggestions"] == suggestions.total()
        assert row["overridden"] == reasons.total()
        assert row["suppressed"] == suppressed.total()
        rate = row["acceptedCards"] / row["shown"] if row["shown"] else None
        assert row["acceptanceRate"] == (round(rate, 4) if rate is not None else None)
        found[(row["ruleId"], row["periodStart"])] = {
            "shown": row["shown"],
            "acceptedCards": row["acceptedCards"],
            "acceptedBySuggestion": suggestions,
            "overriddenByReason": reasons,
            "snoozed": row["snoozed"],
            "suppressedByReason": suppressed,
        }
    return found


def issued_written(client: TestClient, count: int) -> None:
    """Wait (a few seconds at most) until the issued records of the calls so far are in the
    database: they may be written a moment behind the answer."""
    store = client.app.state.als.store  # type: ignore[attr-defined]
    deadline = datetime.now() + timedelta(seconds=5)
    while count_rows(store, issued_items) < count and datetime.now() < deadline:
        time.sleep(0.02)
    assert count_rows(store, issued_items) == count


def drive(client: TestClient, clock: Clock) -> Sent:
    """Two patients on two days of two ISO weeks: cards shown, suggestions accepted, overrides
    with a snooze, a ballot code and a code no card offers, a snoozed review, an order session."""
    sent = Sent()
    first_day = NOW.date()  # Sunday 22 November 2026
    body = post_view(client, hook_request(QUICKSTART), sent, first_day)
    review = card_of(body, DIGEST)
    lft = card_of(body, "riluzole-lft-due")
    accept(client, sent, lft, lft["suggestions"][0])
    mdt = next(s for s in review["suggestions"] if s["extension"][RULE_ID_EXTENSION] == "mdt-review-overdue")
    accept(client, sent, review, mdt)
    override(
        client,
        sent,
        review,
        {"code": "snooze-1-month"},  # as the sandbox sends it: no system
        reported=(OWN_SYSTEM, "snooze-1-month", None),
        snooze=True,
        minute=2,
    )
    snoozed_rules = sent.cards[review["uuid"]][1]

    other = post_view(client, fixture_request(OTHER_PATIENT), sent, first_day)
    other_review = card_of(other, DIGEST)
    ballot = {"system": NON_ADHERENCE_SYSTEM, "code": "action-not-priority"}
    override(
        client,
        sent,
        other_review,
        ballot,
        reported=(NON_ADHERENCE_SYSTEM, "action-not-priority", "action-not-priority"),
        snooze=False,
        minute=3,
    )
    override(
        client,
        sent,
        other_review,
        {"code": FREE_TEXT_CODE},
        reported=(None, "other", None),
        snooze=False,
        minute=4,
    )

    clock.now = NOW + timedelta(days=2)  # Tuesday 24 November: the next ISO week
    second_day = clock.now.date()
    again = post_view(client, hook_request(QUICKSTART), sent, second_day)
    assert not set(snoozed_rules) & set(fired_rules(again))  # the snoozed review's rules: not shown
    for rule in snoozed_rules:
        sent.suppressed[(rule, second_day, "snoozed")] += 1
    selected = client.post(
        "/cds-services/als-order-select", json=hook_request("order-select-riluzole")
    ).json()
    signed = client.post("/cds-services/als-order-sign", json=hook_request("order-sign-riluzole")).json()
    sent.saw(selected, second_day)
    sent.saw(signed, second_day)
    repeated = set(fired_rules(selected)) - set(fired_rules(signed))
    assert repeated == {"riluzole-order-dose", "riluzole-order-monitoring"}
    for rule in repeated:  # shown on order-select, so not again on order-sign
        sent.suppressed[(rule, second_day, "duplicate")] += 1
    issued_written(client, sum(sent.shown.values()))
    return sent


# -- the figures ---------------------------------------------------------------------------------


def test_the_figures_per_rule_and_week_are_exactly_what_was_shown_and_sent(
    app: TestClient, clock: Clock
) -> None:
    sent = drive(app, clock)
    response = app.get("/analytics/rules", params={**NOVEMBER, "period": "week"}, headers=AUTH)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["since"], answer["until"], answer["period"]) == (
        "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z", "week",
    )  # fmt: skip
    assert reported_rows(answer) == expected_rows(sent, monday)
    # Two ISO weeks, each from its Monday; the second ends where the range does (1 December).
    weeks = {(row["periodStart"], row["periodEnd"]) for row in answer["rows"]}
    assert weeks == {
        ("2026-11-16T00:00:00Z", "2026-11-23T00:00:00Z"),
        ("2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z"),
    }
    lft = {r["periodStart"]: r for r in answer["rows"] if r["ruleId"] == "riluzole-lft-due"}
    assert lft["2026-11-16T00:00:00Z"]["acceptanceRate"] == 1.0  # its one card accepted
    assert lft["2026-11-23T00:00:00Z"]["acceptanceRate"] == 0.0  # shown again, not acted on
    reasons = next(r for r in answer["rows"] if r["ruleId"] == "genetic-testing-offer")["overriddenByReason"]
    assert {(r["code"], r["display"]) for r in reasons} == {
        (
            "action-not-priority",
            "Recommended action is not relevant or a priority in current state of health",
        ),
        ("other", "a reason this card does not offer (not shown)"),
    }


def test_the_figures_per_day_and_per_month_add_up_to_the_same(app: TestClient, clock: Clock) -> None:
    sent = drive(app, clock)
    by_day = app.get("/analytics/rules", params={**NOVEMBER, "period": "day"}, headers=AUTH).json()
    assert reported_rows(by_day) == expected_rows(sent, lambda day: day)
    by_month = app.get("/analytics/rules", params=NOVEMBER, headers=AUTH).json()  # month: the default
    assert reported_rows(by_month) == expected_rows(sent, lambda day: day.replace(day=1))
    only = app.get(
        "/analytics/rules", params={**NOVEMBER, "rule": "riluzole-lft-due,mdt-review-overdue"}, headers=AUTH
    ).json()
    assert {r["ruleId"] for r in only["rows"]} == {"riluzole-lft-due", "mdt-review-overdue"}
    assert only["rows"] == [
        r for r in by_month["rows"] if r["ruleId"] in {"riluzole-lft-due", "mdt-review-overdue"}
    ]
    # A range that ends before the second day holds only the first day's figures.
    first = app.get("/analytics/rules", params={"since": "2026-11-22", "until": "2026-11-22"}, headers=AUTH)
    assert {r["periodEnd"] for r in first.json()["rows"]} == {"2026-11-23T00:00:00Z"}
    assert sum(r["shown"] for r in first.json()["rows"]) == sum(
        n for (_, day), n in sent.shown.items() if day == NOW.date()
    )


def test_the_csv_export_holds_the_same_figures_one_line_each(app: TestClient, clock: Clock) -> None:
    sent = drive(app, clock)
    response = app.get(
        "/analytics/rules", params={**NOVEMBER, "period": "week", "format": "csv"}, headers=AUTH
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"].startswith('attachment; filename="als-cds-rules-week-')
    by_accept = app.get(
        "/analytics/rules", params={**NOVEMBER, "period": "week"}, headers={**AUTH, "Accept": "text/csv"}
    )
    assert by_accept.text == response.text
    lines = list(csv.DictReader(io.StringIO(response.text)))
    figures: dict[tuple[str, str], dict[str, Any]] = {}
    for line in lines:
        row = figures.setdefault(
            (line["rule_id"], line["period_start"]),
            {
                "acceptedBySuggestion": Counter(),
                "overriddenByReason": Counter(),
                "suppressedByReason": Counter(),
            },
        )
        measure, value = line["measure"], line["value"]
        if measure in ("shown", "snoozed"):
            row[measure] = int(value)
        elif measure == "accepted_cards":
            row["acceptedCards"] = int(value)
        elif measure == "accepted_suggestion":
            row["acceptedBySuggestion"][line["suggestion"]] += int(value)
        elif measure == "overridden_reason":
            reason = (
                line["reason_system"] or None,
                line["reason_code"] or None,
                line["standard_code"] or None,
            )
            row["overriddenByReason"][reason] += int(value)
        elif measure == "suppressed_reason":
            row["suppressedByReason"][line["suppression_reason"]] += int(value)
    assert figures == expected_rows(sent, monday)


# -- only aggregates -----------------------------------------------------------------------------


def test_no_patient_card_hash_or_comment_and_no_code_a_client_made_up(
    app: TestClient, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        sent = drive(app, clock)
        json_text = app.get("/analytics/rules", params={**NOVEMBER, "period": "day"}, headers=AUTH).text
        csv_text = app.get("/analytics/rules", params={**NOVEMBER, "format": "csv"}, headers=AUTH).text
    store = app.app.state.als.store  # type: ignore[attr-defined]
    with store.engine.connect() as connection:
        subject_keys = list(connection.execute(select(snoozes.c.subject_key)).scalars())
    assert subject_keys
    patients = ["als-riluzole-lft-overdue", OTHER_PATIENT]
    never = [*patients, *subject_keys, *sent.cards, COMMENT, FREE_TEXT_CODE, TOKEN]
    for text in (json_text, csv_text):
        assert [value for value in never if value in text] == []
    assert TOKEN not in caplog.text  # not in any log line either


# -- its own token -------------------------------------------------------------------------------


def test_without_its_token_set_the_endpoint_does_not_exist(database_url: str, clock: Clock) -> None:
    with make(database_url, clock) as client:
        response = client.get("/analytics/rules", headers=AUTH)
        assert response.status_code == 404
        assert response.json()["resourceType"] == "OperationOutcome"
        assert "/analytics/rules" not in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN}x",
        f"Basic {TOKEN}",
        TOKEN,
        "Bearer " + "é" * 40,  # not ASCII: still a 401, never a 500
    ],
    ids=["none", "one-character-short", "one-character-more", "basic", "no-scheme", "not-ascii"],
)
def test_a_wrong_or_missing_token_is_a_401_with_a_json_body(
    app: TestClient, authorization: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    headers = {"Authorization": authorization.encode()} if authorization else {}  # bytes: UTF-8 as sent
    with caplog.at_level(logging.DEBUG):
        response = app.get("/analytics/rules", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "login", "diagnostics": "a valid analytics token is required"}
        ],
    }
    assert TOKEN[:-1] not in caplog.text and TOKEN not in response.text


def test_the_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch, app: TestClient) -> None:
    import cds_service.analytics as analytics

    compared: list[tuple[bytes, bytes]] = []
    real = analytics.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(analytics.hmac, "compare_digest", spy)
    assert app.get("/analytics/rules", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert app.get("/analytics/rules", headers=AUTH).status_code == 200
    assert compared == [(b"wrong", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


def test_a_short_token_stops_the_settings() -> None:
    with pytest.raises(ValueError, match="at least 32 characters"):
        Settings(_env_file=None, analytics_token="too-short")


# -- bad queries ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "where", "says"),
    [
        ("since=2026-13-01", ["since"], "not a date or an ISO 8601 date-time"),
        ("until=yesterday", ["until"], "not a date or an ISO 8601 date-time"),
        ("since=2026-11-01T10:00:00", ["since"], "needs a zone"),
        ("since=2026-11-30&until=2026-11-01", ["since", "until"], "since must be before until"),
        ("since=2000-01-01&until=2026-11-01", ["since"], "longer than 3660 days"),
        ("period=year", ["period"], "give day, week or month"),
        ("format=xml", ["format"], "give json or csv"),
        ("rule=not-a-rule", ["rule"], "not rule ids: 'not-a-rule'"),
        ("rule=,", ["rule"], "not rule ids: none given"),
        ("perod=week", ["perod"], "unknown query parameter 'perod'"),
        ("period=day&period=week", ["period"], "given more than once"),
    ],
)
def test_a_bad_query_is_a_400_naming_the_parameter_and_why(
    app: TestClient, query: str, where: list[str], says: str
) -> None:
    response = app.get(f"/analytics/rules?{query}", headers=AUTH)
    assert response.status_code == 400, response.text
    [found] = response.json()["issue"]
    assert found["expression"] == where
    assert says in found["diagnostics"]
    assert "Traceback" not in response.text


def test_a_wrong_token_is_refused_before_the_query_is_read(app: TestClient) -> None:
    response = app.get("/analytics/rules?period=year", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401  # nothing about the query to someone without the token


def test_the_answer_names_no_more_than_aggregates(app: TestClient, clock: Clock) -> None:
    drive(app, clock)
    answer = app.get("/analytics/rules", params=NOVEMBER, headers=AUTH).json()
    assert set(answer) == {"since", "until", "period", "periodsIn", "rules", "rows"}
    keys = {key for row in answer["rows"] for key in row}
    assert keys == {
        "ruleId",
        "periodStart",
        "periodEnd",
        "shown",
        "acceptedCards",
        "acceptedSuggestions",
        "acceptedBySuggestion",
        "overridden",
        "overriddenByReason",
        "snoozed",
        "suppressed",
        "suppressedByReason",
        "acceptanceRate",
    }

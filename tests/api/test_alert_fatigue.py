"""Against alert fatigue (issue 12), over HTTP with injected time, on SQLite and PostgreSQL.

The whole loop: a card shown, overridden with a snooze reason, absent on the next call for that
patient, present for another patient, back after the period; critical cards never snoozed; the
digest's suggestions each traced to their rule in feedback; order-select then order-sign without a
duplicate; an order we suggested does not bring back cards about itself.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import select

from cds_service.app import create_app
from cds_service.bundles import request_from_bundle
from cds_service.cards import CardFileError, load_catalogue
from cds_service.fatigue import NON_ADHERENCE_SYSTEM
from cds_service.services import build_services
from cds_service.settings import Settings
from cds_service.store.tables import feedback_rules, snoozes
from tests.cards_shown import DIGEST, fired_rules, shown_rules
from tests.support import FIXTURES, NOW, hook_request

VIEW = "/cds-services/als-patient-view"
QUICKSTART = "patient-view-als-riluzole-lft-overdue"
REMINDERS = ["respiratory-assessment-due", "mdt-review-overdue", "advance-care-planning"]
SERVICES = {s.hook: s for s in build_services().values()}


class Clock:
    """The service's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'als-cds.db'}"
    return str(request.getfixturevalue("postgres_db_url"))


def make(database_url: str, clock: Clock, **settings: Any) -> TestClient:
    return TestClient(
        create_app(
            Settings(_env_file=None, database_url=database_url, auth_required=False, **settings), clock=clock
        )
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(database_url: str, clock: Clock) -> Iterator[TestClient]:
    with make(database_url, clock) as client:
        yield client


def fixture_request(
    name: str, hook: str = "patient-view", bundle: dict[str, Any] | None = None
) -> dict[str, Any]:
    bundle = bundle or json.loads((FIXTURES / "patients" / f"{name}.json").read_text())
    return request_from_bundle(
        bundle, hook, list(SERVICES[hook].prefetch(Settings(_env_file=None), NOW.date()))
    )


def override(client: TestClient, service: str, card: dict[str, Any], code: str, **extra: Any) -> None:
    reason = {"code": code, **extra}  # as the sandbox sends it: a code, often no system
    body = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {"reason": reason},
                "outcomeTimestamp": "2026-11-22T12:01:00Z",
            }
        ]
    }
    assert client.post(f"/cds-services/{service}/feedback", json=body).json()["stored"] == 1


def card_of(body: dict[str, Any], rule: str) -> dict[str, Any]:
    return next(c for c in body["cards"] if c["source"]["topic"]["code"] == rule)


# -- the digest --------------------------------------------------------------------------------


def test_the_reminders_of_a_call_come_as_one_card_with_one_suggestion_each(app: TestClient) -> None:
    body = app.post(VIEW, json=hook_request(QUICKSTART)).json()
    assert shown_rules(body) == ["riluzole-lft-due", DIGEST, *REMINDERS]
    digest = card_of(body, DIGEST)
    assert digest["summary"] == "ALS care review: 3 items due" and digest["indicator"] == "info"
    assert len(digest["suggestions"]) == 3 and digest["selectionBehavior"] == "any"
    assert [r["display"] for r in digest["overrideReasons"]] == ["Snooze 1 month", "Snooze 3 months"]
    assert body["cards"][-1] is not digest or body["cards"][-1]["uuid"] == digest["uuid"]  # last


def test_the_digest_can_be_turned_off(database_url: str, clock: Clock) -> None:
    with make(database_url, clock, digest_enabled=False) as client:
        body = client.post(VIEW, json=hook_request(QUICKSTART)).json()
    assert shown_rules(body) == ["riluzole-lft-due", *REMINDERS]


def test_feedback_on_each_digest_suggestion_is_traced_to_its_own_rule(app: TestClient) -> None:
    digest = card_of(app.post(VIEW, json=hook_request(QUICKSTART)).json(), DIGEST)
    mdt, acp = digest["suggestions"][1], digest["suggestions"][2]
    item = {
        "card": digest["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": mdt["uuid"]}, {"id": acp["uuid"]}],
        "outcomeTimestamp": "2026-11-22T12:02:00Z",
    }
    answer = app.post("/cds-services/als-patient-view/feedback", json={"feedback": [item]}).json()
    assert answer == {"stored": 1, "duplicates": 0, "unknownCards": 0}
    app.post("/cds-services/als-patient-view/feedback", json={"feedback": [item]})  # a repeat: no new rows
    store = app.app.state.als.store  # type: ignore[attr-defined]
    with store.engine.connect() as connection:
        rows = connection.execute(select(feedback_rules).order_by(feedback_rules.c.rule_id)).all()
    assert [(r.rule_id, r.suggestion_uuid, r.suggestion_label) for r in rows] == [
        ("advance-care-planning", acp["uuid"], acp["label"]),
        ("mdt-review-overdue", mdt["uuid"], mdt["label"]),
    ]


# -- snoozes -----------------------------------------------------------------------------------


def test_a_snoozed_reminder_stays_away_for_that_patient_only_and_comes_back_after_the_period(
    database_url: str, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    other = fixture_request("care-mdt-overdue-no-acp")
    with make(database_url, clock, digest_enabled=False) as client:
        assert "mdt-review-overdue" in fired_rules(client.post(VIEW, json=other).json())
        first = client.post(VIEW, json=hook_request(QUICKSTART)).json()
        override(client, "als-patient-view", card_of(first, "mdt-review-overdue"), "snooze-1-month")

        clock.now = NOW + timedelta(days=29)
        with caplog.at_level(logging.INFO, logger="cds_service.suppression"):
            later = client.post(VIEW, json=hook_request(QUICKSTART)).json()
        assert shown_rules(later) == [
            "riluzole-lft-due",
            "respiratory-assessment-due",
            "advance-care-planning",
        ]
        assert "mdt-review-overdue" in fired_rules(client.post(VIEW, json=other).json())  # another patient

        clock.now = NOW + timedelta(days=30, minutes=2)  # 30 days after the override at 12:01
        assert "mdt-review-overdue" in fired_rules(client.post(VIEW, json=hook_request(QUICKSTART)).json())

    [line] = [r for r in caplog.records if r.getMessage() == "card suppressed"]
    assert (line.rule_id, line.reason) == ("mdt-review-overdue", "snoozed")  # type: ignore[attr-defined]
    # ... and in the metrics, by rule and reason only (the count is process-wide: at least this one).
    assert REGISTRY.get_sample_value(
        "als_cds_cards_suppressed_total", {"rule_id": "mdt-review-overdue", "reason": "snoozed"}
    )
    assert "als-riluzole-lft-overdue" not in json.dumps(line.__dict__, default=str)  # no patient id


def test_a_patient_declined_reason_snoozes_for_its_own_period(database_url: str, clock: Clock) -> None:
    with make(database_url, clock, digest_enabled=False) as client:
        body = client.post(VIEW, json=hook_request(QUICKSTART)).json()
        override(client, "als-patient-view", card_of(body, "respiratory-assessment-due"), "patient-declined")
        clock.now = NOW + timedelta(days=89)
        assert "respiratory-assessment-due" not in fired_rules(
            client.post(VIEW, json=hook_request(QUICKSTART)).json()
        )
        clock.now = NOW + timedelta(days=90, minutes=2)
        assert "respiratory-assessment-due" in fired_rules(
            client.post(VIEW, json=hook_request(QUICKSTART)).json()
        )
        store = client.app.state.als.store  # type: ignore[attr-defined]
        with store.engine.connect() as connection:
            [row] = connection.execute(select(feedback_rules)).all()
            [snooze] = connection.execute(select(snoozes)).all()
    # The reason with its system and the CDS Hooks 3.0 ballot code it maps to, stored.
    assert (row.reason_system, row.reason_code) == ("urn:als-cds:override-reason", "patient-declined")
    assert row.standard_code == "patient-refuses"
    assert "als-riluzole-lft-overdue" not in snooze.subject_key and len(snooze.subject_key) == 64


def test_snoozing_the_digest_snoozes_each_item(app: TestClient, clock: Clock) -> None:
    body = app.post(VIEW, json=hook_request(QUICKSTART)).json()
    override(app, "als-patient-view", card_of(body, DIGEST), "snooze-3-months")
    clock.now = NOW + timedelta(days=60)
    assert shown_rules(app.post(VIEW, json=hook_request(QUICKSTART)).json()) == ["riluzole-lft-due"]
    clock.now = NOW + timedelta(days=91)
    assert shown_rules(app.post(VIEW, json=hook_request(QUICKSTART)).json()) == [
        "riluzole-lft-due",
        DIGEST,
        *REMINDERS,
    ]


def test_a_reason_that_does_not_snooze_changes_nothing(app: TestClient) -> None:
    body = app.post(VIEW, json=hook_request(QUICKSTART)).json()
    override(app, "als-patient-view", card_of(body, "riluzole-lft-due"), "alt-done-elsewhere")
    override(app, "als-patient-view", card_of(body, DIGEST), "action-completed", system=NON_ADHERENCE_SYSTEM)
    again = app.post(VIEW, json=hook_request(QUICKSTART)).json()
    assert shown_rules(again) == ["riluzole-lft-due", DIGEST, *REMINDERS]


def test_a_critical_card_is_never_snoozed(database_url: str, clock: Clock) -> None:
    request = fixture_request("respiratory-spo2-low-hypercapnia")
    with make(database_url, clock, digest_enabled=False) as client:
        critical = card_of(client.post(VIEW, json=request).json(), "respiratory-hypercapnia")
        assert critical["indicator"] == "critical"
        # Its own reason, and a snooze reason it never offered (a forged or misrouted code).
        override(client, "als-patient-view", critical, "already-referred")
        override(client, "als-patient-view", critical, "snooze-3-months")
        clock.now = NOW + timedelta(days=1)
        assert "respiratory-hypercapnia" in fired_rules(client.post(VIEW, json=request).json())


def test_a_card_file_cannot_make_a_critical_card_snoozable(tmp_path: Path) -> None:
    source = Settings(_env_file=None).cards_dir / "riluzole-neutropenia.toml"
    text = source.read_text()
    (tmp_path / source.name).write_text(
        text + '\n[fatigue.snooze]\nsnooze-1-month = 30\n\n[[override_reasons]]\ncode = "snooze-1-month"\n'
        'display = "Snooze 1 month"\n'
    )
    with pytest.raises(CardFileError, match="can be critical is never snoozed"):
        load_catalogue(tmp_path)


def test_every_snooze_reason_of_the_card_files_has_a_period() -> None:
    catalogue = load_catalogue(Settings(_env_file=None).cards_dir)
    snoozable = {rule for rule, d in catalogue.definitions.items() if d.fatigue.snooze}
    assert {"advance-care-planning", "mdt-review-overdue", "respiratory-assessment-due"} <= snoozable
    for rule in snoozable:
        assert catalogue[rule].indicator == "info"


# -- the order session -------------------------------------------------------------------------


def test_a_card_shown_on_order_select_is_not_repeated_on_order_sign(app: TestClient, clock: Clock) -> None:
    select_body = app.post(
        "/cds-services/als-order-select", json=hook_request("order-select-riluzole")
    ).json()
    assert shown_rules(select_body) == ["riluzole-order-dose", "riluzole-order-monitoring"]
    sign = hook_request("order-sign-riluzole")
    assert shown_rules(app.post("/cds-services/als-order-sign", json=sign).json()) == []

    # The order changed (its dose now only as text): the dose card says something new and is
    # shown; the monitoring card says what it said on order-select and is not.
    changed = copy.deepcopy(sign)
    for entry in changed["context"]["draftOrders"]["entry"]:
        if entry["resource"]["resourceType"] == "MedicationRequest":
            entry["resource"]["dosageInstruction"] = [{"text": "50 mg every 12 hours"}]
    answer = app.post("/cds-services/als-order-sign", json=changed).json()
    assert shown_rules(answer) == ["riluzole-order-dose"]
    assert answer["cards"][0]["summary"] != card_of(select_body, "riluzole-order-dose")["summary"]

    clock.now = NOW + timedelta(minutes=61)  # the order session is over
    assert shown_rules(app.post("/cds-services/als-order-sign", json=sign).json()) == [
        "riluzole-order-dose",
        "riluzole-order-monitoring",
    ]


def test_an_order_we_suggested_does_not_bring_back_cards_about_itself(
    database_url: str, clock: Clock
) -> None:
    bundle = json.loads((FIXTURES / "patients" / "riluzole-naive-eligible.json").read_text())
    chart = copy.deepcopy(bundle)
    chart["entry"] = [e for e in chart["entry"] if e["resource"].get("status") != "draft"]
    with make(database_url, clock, digest_enabled=False) as client:
        view = client.post(VIEW, json=fixture_request("", bundle=chart)).json()
        [suggestion] = card_of(view, "riluzole-not-prescribed")["suggestions"]
        accepted = copy.deepcopy(suggestion["actions"][0]["resource"]) | {"id": "accepted-1"}
        with_order = copy.deepcopy(chart)
        with_order["entry"].append({"resource": accepted})
        request = fixture_request("", "order-select", bundle=with_order)
        assert shown_rules(client.post("/cds-services/als-order-select", json=request).json()) == []
        clock.now = NOW + timedelta(minutes=61)
        assert "riluzole-order-monitoring" in shown_rules(
            client.post("/cds-services/als-order-select", json=request).json()
        )


def test_a_warning_cards_own_reason_is_stored_with_its_ballot_code_and_snoozes_nothing(
    app: TestClient,
) -> None:
    body = app.post(VIEW, json=hook_request(QUICKSTART)).json()
    override(app, "als-patient-view", card_of(body, "riluzole-lft-due"), "alt-done-elsewhere")
    store = app.app.state.als.store  # type: ignore[attr-defined]
    with store.engine.connect() as connection:
        [row] = connection.execute(select(feedback_rules)).all()
        assert connection.execute(select(snoozes)).all() == []
    assert (row.rule_id, row.reason_system, row.reason_code) == (
        "riluzole-lft-due", "urn:als-cds:override-reason", "alt-done-elsewhere",
    )  # fmt: skip
    assert row.standard_code == "action-completed"  # cards/riluzole-lft-due.toml [fatigue.standard_reasons]


def test_every_card_with_override_reasons_maps_some_to_the_ballot_codes() -> None:
    catalogue = load_catalogue(Settings(_env_file=None).cards_dir)
    unmapped = sorted(
        rule
        for rule, definition in catalogue.definitions.items()
        if definition.override_reasons and not definition.fatigue.standard_reasons
    )
    assert unmapped == []

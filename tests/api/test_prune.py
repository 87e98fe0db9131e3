"""`als-cds prune` (issue 12) with injected time, on SQLite and PostgreSQL: it removes exactly what is
older than the age, in batches of one transaction each, every ended snooze and never a live one,
while the service keeps answering; feedback on a card whose record was pruned gets a defined answer.

The data is made over HTTP, as an EHR makes it: cards shown, feedback posted, snoozes set, cards
suppressed, an order session, a year apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Table, event, select

from cds_service import cli
from cds_service.app import create_app
from cds_service.digest import RULE_ID_EXTENSION
from cds_service.settings import Settings
from cds_service.store import Store
from cds_service.store.prune import prune
from cds_service.store.tables import (
    feedback,
    feedback_rules,
    issued_cards,
    issued_items,
    order_marks,
    snoozes,
    suppressed_cards,
)
from tests.api.test_alert_fatigue import Clock, fixture_request
from tests.cards_shown import DIGEST, fired_rules
from tests.support import NOW, hook_request

VIEW = "/cds-services/als-patient-view"
FEEDBACK = "/cds-services/als-patient-view/feedback"
QUICKSTART = "patient-view-als-riluzole-lft-overdue"
OTHER_PATIENT = "care-mdt-overdue-no-acp"
OLD = NOW - timedelta(days=400)  # past a year's retention
RECENT = NOW - timedelta(days=10)
AGE_DAYS = 365
CUTOFF = NOW - timedelta(days=AGE_DAYS)
#: Each table and the time its rows are aged by.
AGED: dict[str, tuple[Table, str, str]] = {
    "issued_cards": (issued_cards, "card_uuid", "issued_at"),
    "issued_items": (issued_items, "id", "issued_at"),
    "order_marks": (order_marks, "id", "issued_at"),
    "feedback": (feedback, "id", "received_at"),
    "feedback_rules": (feedback_rules, "id", "received_at"),
    "suppressed_cards": (suppressed_cards, "id", "suppressed_at"),
}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'als-cds.db'}"
    return str(request.getfixturevalue("postgres_db_url"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(database_url: str, clock: Clock) -> Iterator[TestClient]:
    settings = Settings(_env_file=None, database_url=database_url, auth_required=False)
    with TestClient(create_app(settings, clock=clock)) as client:
        yield client


def card_of(body: dict[str, Any], rule: str) -> dict[str, Any]:
    return next(c for c in body["cards"] if c["source"]["topic"]["code"] == rule)


def post_feedback(client: TestClient, card: dict[str, Any], when: datetime, **outcome: Any) -> dict[str, Any]:
    item = {"card": card["uuid"], "outcomeTimestamp": when.isoformat(), **outcome}
    return dict(client.post(FEEDBACK, json={"feedback": [item]}).json())


def snooze(client: TestClient, card: dict[str, Any], when: datetime, code: str = "snooze-1-month") -> None:
    answer = post_feedback(
        client, card, when, outcome="overridden", overrideReason={"reason": {"code": code}}
    )
    assert answer == {"stored": 1, "duplicates": 0, "unknownCards": 0}


def a_year_of_use(client: TestClient, clock: Clock) -> dict[str, Any]:
    """Old and recent rows in every table; what the test needs later."""
    clock.now = OLD
    old_view = client.post(VIEW, json=hook_request(QUICKSTART)).json()
    review = card_of(old_view, DIGEST)
    accepted = post_feedback(
        client,
        review,
        OLD,
        outcome="accepted",
        acceptedSuggestions=[{"id": review["suggestions"][0]["uuid"]}],
    )
    assert accepted["stored"] == 1
    snooze(client, card_of(old_view, DIGEST), OLD)  # ended 370 days ago
    other = client.post(VIEW, json=fixture_request(OTHER_PATIENT)).json()
    snooze(client, card_of(other, DIGEST), OLD)  # that patient's: ended too, never renewed
    clock.now = OLD + timedelta(days=1)
    client.post(VIEW, json=hook_request(QUICKSTART))  # the review suppressed: snoozed
    client.post("/cds-services/als-order-select", json=hook_request("order-select-riluzole"))
    client.post("/cds-services/als-order-sign", json=hook_request("order-sign-riluzole"))  # duplicates

    clock.now = RECENT
    recent_view = client.post(VIEW, json=hook_request(QUICKSTART)).json()
    snooze(client, card_of(recent_view, DIGEST), RECENT, "snooze-3-months")  # live at NOW
    clock.now = RECENT + timedelta(days=1)
    client.post(VIEW, json=hook_request(QUICKSTART))  # suppressed again: snoozed
    client.post("/cds-services/als-order-select", json=hook_request("order-select-riluzole"))
    client.post("/cds-services/als-order-sign", json=hook_request("order-sign-riluzole"))
    clock.now = NOW
    return {"old_view": old_view, "recent_view": recent_view}


def rows_by_age(store: Store) -> dict[str, tuple[set[Any], set[Any]]]:
    """Table → (keys of rows older than the cutoff, keys of the others)."""
    found = {}
    with store.engine.connect() as connection:
        for name, (table, key, when) in AGED.items():
            rows = connection.execute(select(table.c[key], table.c[when])).all()
            found[name] = ({k for k, t in rows if t < CUTOFF}, {k for k, t in rows if t >= CUTOFF})
    return found


def snooze_ends(store: Store) -> list[datetime]:
    with store.engine.connect() as connection:
        return sorted(connection.execute(select(snoozes.c.until)).scalars())


def wait_for_records(client: TestClient) -> None:
    """Issued records may be written a moment behind the answer, by a writer of the app's (issue
    13): have it write what it holds, so that the test sees every row its calls made."""
    writer = getattr(client.app.state.als, "issued", None)  # type: ignore[attr-defined]
    if writer is not None:
        writer.flush(5.0)


def test_prune_removes_exactly_what_is_older_than_the_age_and_every_ended_snooze(
    app: TestClient, clock: Clock
) -> None:
    a_year_of_use(app, clock)
    wait_for_records(app)
    store: Store = app.app.state.als.store  # type: ignore[attr-defined]
    before = rows_by_age(store)
    for name, (old, recent) in before.items():
        assert old and recent, f"{name}: the test needs old and recent rows"
    ends = snooze_ends(store)
    live = [end for end in ends if end > NOW]
    assert live and len(live) < len(ends)  # ended ones (a year old, the other patient's) and live ones

    removed = prune(store, CUTOFF, NOW, batch_size=3)

    after = rows_by_age(store)
    for name, (old, recent) in before.items():
        assert after[name] == (set(), recent), name  # the recent rows, every one of them, and no old one
        assert removed[name] == len(old), name
    assert snooze_ends(store) == live and removed["snoozes"] == len(ends) - len(live)  # the live ones stay


def test_each_batch_is_a_transaction_of_its_own(app: TestClient, clock: Clock) -> None:
    a_year_of_use(app, clock)
    wait_for_records(app)
    store: Store = app.app.state.als.store  # type: ignore[attr-defined]
    old = {name: len(rows[0]) for name, rows in rows_by_age(store).items()}
    commits: list[int] = []

    def committed(_: Any) -> None:
        commits.append(1)

    event.listen(store.engine, "commit", committed)
    try:
        removed = prune(store, CUTOFF, NOW, batch_size=2, pause_seconds=0)
    finally:
        event.remove(store.engine, "commit", committed)
    # At least one transaction per full batch of 2 rows, per table (and one that finds none).
    assert len(commits) >= sum(-(-n // 2) for n in old.values())
    assert {name: removed[name] for name in old} == old


def test_the_service_keeps_answering_while_and_after_it_prunes(app: TestClient, clock: Clock) -> None:
    state = a_year_of_use(app, clock)
    wait_for_records(app)
    # A second store on the same database, as `als-cds prune` is a process of its own.
    store: Store = app.app.state.als.store  # type: ignore[attr-defined]
    other = Store(str(store.engine.url.render_as_string(hide_password=False)))
    try:
        prune(other, CUTOFF, NOW, batch_size=5)
    finally:
        other.close()
    # The live snooze still holds the review back; the rest is shown as before.
    body = app.post(VIEW, json=hook_request(QUICKSTART)).json()
    recent_rules = set(fired_rules(state["recent_view"]))
    review = card_of(state["recent_view"], DIGEST)
    review_rules = {s["extension"][RULE_ID_EXTENSION] for s in review["suggestions"]}
    assert set(fired_rules(body)) == recent_rules - review_rules


def test_feedback_on_a_pruned_card_is_stored_as_for_an_unknown_card_and_changes_nothing(
    app: TestClient, clock: Clock
) -> None:
    state = a_year_of_use(app, clock)
    wait_for_records(app)
    store: Store = app.app.state.als.store  # type: ignore[attr-defined]
    prune(store, CUTOFF, NOW)
    old_review = card_of(state["old_view"], DIGEST)
    # A late override with a snooze reason, for a card whose record is gone: 200, counted as unknown.
    answer = post_feedback(
        app, old_review, NOW, outcome="overridden", overrideReason={"reason": {"code": "snooze-3-months"}}
    )
    assert answer == {"stored": 1, "duplicates": 0, "unknownCards": 1}
    [row] = [r for r in store.feedback_rows() if r["card_uuid"] == old_review["uuid"]]
    assert (row["unknown_card"], row["rule_id"]) == (True, None)
    with store.engine.connect() as connection:
        per_rule = connection.execute(
            select(feedback_rules).where(feedback_rules.c.card_uuid == old_review["uuid"])
        ).all()
    assert per_rule == []  # no rule to trace it to, so no snooze either
    assert all(end > NOW for end in snooze_ends(store))  # only the live ones, none new


def test_the_command_prints_what_it_removed(
    app: TestClient, clock: Clock, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a_year_of_use(app, clock)
    wait_for_records(app)
    store: Store = app.app.state.als.store  # type: ignore[attr-defined]
    old = {name: len(rows[0]) for name, rows in rows_by_age(store).items()}
    ended = sum(1 for end in snooze_ends(store) if end <= NOW)
    monkeypatch.setenv("ALS_CDS_DATABASE_URL", store.engine.url.render_as_string(hide_password=False))
    capsys.readouterr()
    status = cli.main(["prune", "--older-than", str(AGE_DAYS), "--now", NOW.isoformat(), "--batch-size", "4"])
    printed = capsys.readouterr().out
    assert status == 0, printed
    lines = {line.split()[0]: int(line.split()[1]) for line in printed.splitlines()[1:]}
    assert {name: lines[name] for name in old} == old
    assert lines["snoozes"] == ended and lines["total"] == sum(old.values()) + ended
    assert "older than 365 days (before 2025-11-22T12:00:00Z)" in printed.splitlines()[0]
    # Run again: nothing left to remove.
    assert cli.main(["prune", "--older-than", str(AGE_DAYS), "--now", NOW.isoformat()]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split() == ["total", "0"]


@pytest.mark.parametrize("days", ["0", "-5", "3651", "a-year"])
def test_an_age_that_is_not_a_number_of_days_is_refused(
    days: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["prune", "--older-than", days])
    assert stopped.value.code == 2
    assert "--older-than" in capsys.readouterr().err


def test_the_default_age_is_the_retention_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'als-cds.db'}"
    store = Store(url)
    store.migrate()
    store.close()
    monkeypatch.setenv("ALS_CDS_DATABASE_URL", url)
    monkeypatch.setenv("ALS_CDS_RETENTION_DAYS", "30")
    assert cli.main(["prune", "--now", "2026-11-22T12:00:00Z"]) == 0
    assert "older than 30 days (before 2026-10-23T12:00:00Z)" in capsys.readouterr().out

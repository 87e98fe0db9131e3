"""The feedback store, on SQLite and on PostgreSQL alike.

Every behaviour test runs on both databases (the `database_url` fixture is parametrised), because
the guarantees that matter (idempotent feedback, aware UTC timestamps, a schema that matches its
migration) depend on dialect details that differ between them.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, MetaData, String, inspect, select

from cds_service.hooks import FeedbackItem
from cds_service.store import (
    FeedbackSaveResult,
    IssuedCard,
    Store,
    alembic_config,
    feedback_dedupe_key,
    metadata,
)
from cds_service.store.tables import jwt_replay

SERVICE = "als-patient-view"
OTHER_SERVICE = "als-order-sign"
CARD = "0b6f7d0e-8a53-4bd4-9c39-6f5c1a9e3a01"
SUGGESTION = "5f1e2d3c-1111-4a2b-9c3d-000000000001"
OTHER_SUGGESTION = "5f1e2d3c-1111-4a2b-9c3d-000000000002"
RECEIVED = datetime(2024, 5, 1, 12, 0, 5, tzinfo=UTC)
SNOMED = "http://snomed.info/sct"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: a SQLite file, or a new database on the test PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("postgres_db_url"))


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """A migrated store on `database_url`."""
    opened = Store(database_url)
    opened.migrate()
    try:
        yield opened
    finally:
        opened.close()


def issued_card(
    card_uuid: str = CARD,
    *,
    rule_id: str = "riluzole-lft-monitoring",
    service_id: str = SERVICE,
    suggestions: tuple[str, ...] = (SUGGESTION,),
) -> IssuedCard:
    return IssuedCard(
        card_uuid=card_uuid,
        rule_id=rule_id,
        service_id=service_id,
        hook="patient-view",
        hook_instance="d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        indicator="warning",
        suggestion_uuids=suggestions,
        issued_at=datetime(2024, 5, 1, 11, 59, 0, tzinfo=UTC),
    )


def accepted(card: str = CARD, *suggestion_ids: str, at: str = "2024-05-01T12:00:00Z") -> FeedbackItem:
    return FeedbackItem.model_validate(
        {
            "card": card,
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": s} for s in (suggestion_ids or (SUGGESTION,))],
            "outcomeTimestamp": at,
        }
    )


def overridden(body: dict[str, Any], card: str = CARD, at: str = "2024-05-01T12:00:00Z") -> FeedbackItem:
    return FeedbackItem.model_validate(
        {"card": card, "outcome": "overridden", "outcomeTimestamp": at, **body}
    )


def schema_diff(store: Store, target: MetaData = metadata) -> list[Any]:
    """Alembic autogenerate's differences between the live database and `target`."""
    with store.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, target))


# --------------------------------------------------------------------------------------------
# Schema and migrations


def test_migrations_create_exactly_the_declared_schema(store: Store) -> None:
    assert schema_diff(store) == []


def test_schema_comparison_would_notice_a_difference(store: Store) -> None:
    """Guards the test above: an empty diff must not come from a comparison that sees nothing."""
    changed = MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["feedback"].append_column(Column("extra", String(8), nullable=True))

    diff = schema_diff(store, changed)

    assert [(op[0], op[3].name) for op in diff] == [("add_column", "extra")]


def test_migrating_twice_is_a_no_op(store: Store) -> None:
    store.record_issued_cards([issued_card()])

    store.migrate()

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with store.engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == head == "0003"
    assert schema_diff(store) == []
    assert store.issued_card_rule(CARD) == "riluzole-lft-monitoring"


def test_concurrent_migrations_of_a_fresh_database_all_succeed(database_url: str) -> None:
    """Several worker processes starting at once with migrate_on_start: one migrates, the others
    wait for its lock and find nothing to do. Processes, not threads, as in a real deployment."""
    script = "import sys; from cds_service.store import Store; Store(sys.argv[1]).migrate()"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, database_url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for _ in range(3)
    ]
    outputs = [worker.communicate(timeout=120)[0].decode(errors="replace") for worker in workers]

    assert [worker.returncode for worker in workers] == [0, 0, 0], "\n".join(outputs)
    migrated = Store(database_url)
    try:
        assert schema_diff(migrated) == []
    finally:
        migrated.close()


_RACE_SCRIPT = """
import json, sys, time
from cds_service.store import Store
start, urls = float(sys.argv[1]), json.loads(sys.argv[2])
stores = [Store(url) for url in urls]  # engines only: nothing connects before its instant
failures = []
for i, store in enumerate(stores):
    while time.time() < start + i * 0.15:
        pass  # a sleep wakes up late by a scheduler tick: the workers would not meet
    try:
        store.migrate()
    except Exception as exc:
        failures.append(f"{i}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    finally:
        store.close()
print(json.dumps(failures))
"""


def test_workers_connecting_at_the_same_instant_to_a_fresh_sqlite_file_all_start(tmp_path: Path) -> None:
    """Switching a new SQLite file to WAL takes an exclusive lock that SQLite does not wait for:
    two workers of a fresh deployment (the image runs two) connecting at the same instant had one
    fail its start-up with "database is locked" (26 of 120 starts in a loop). Two processes, as
    many as this machine's cores, and twenty fresh files, each migrated by both at the same instant
    (the test above starts its processes an import apart, which hid this)."""
    import json
    import time

    urls = [f"sqlite:///{tmp_path / f'race-{i}.db'}" for i in range(20)]
    start = time.time() + 3  # the interpreters have imported the store by then
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACE_SCRIPT, str(start), json.dumps(urls)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    results = [worker.communicate(timeout=120) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], [err.decode()[-2000:] for _, err in results]
    assert [json.loads(out) for out, _ in results] == [[], []]


def test_concurrent_migrations_in_one_process_all_succeed(database_url: str) -> None:
    stores = [Store(database_url) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def migrate(worker_store: Store) -> None:
        try:
            barrier.wait(timeout=30)
            worker_store.migrate()
        except BaseException as exc:  # reported in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(s,)) for s in stores]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        assert schema_diff(stores[0]) == []
    finally:
        for worker_store in stores:
            worker_store.close()


def test_alembic_config_without_a_connection_migrates_by_url(database_url: str) -> None:
    """The `alembic.command` path (no Store connection handed over) works too, e.g. for a CLI."""
    from alembic import command

    command.upgrade(alembic_config(database_url), "head")

    migrated = Store(database_url)
    try:
        assert schema_diff(migrated) == []
    finally:
        migrated.close()


def test_tables_hold_no_patient_data() -> None:
    """An explicit list, so that adding a column (a patient id, say) is a deliberate decision."""
    assert {name: set(table.columns.keys()) for name, table in metadata.tables.items()} == {
        "issued_cards": {
            "card_uuid", "rule_id", "service_id", "hook", "hook_instance", "indicator",
            "suggestion_uuids", "issued_at",
        },
        "feedback": {
            "id", "dedupe_key", "service_id", "card_uuid", "rule_id", "unknown_card", "outcome",
            "accepted_suggestion_ids", "unknown_suggestion_ids", "override_reason_code",
            "override_reason_system", "override_reason_display", "override_user_comment",
            "outcome_timestamp", "received_at",
        },
        "jwt_replay": {"iss", "jti", "expires_at"},
        # Against alert fatigue (issue 12): a patient only as a keyed hash with the rule
        # (`subject_key`) or with the card's text or an ordered code (`mark`).
        "service_keys": {"name", "value", "created_at"},
        "issued_items": {
            "id", "card_uuid", "rule_id", "rule_version", "service_id", "hook", "indicator",
            "subject_key", "suggestions", "issued_at",
        },
        "order_marks": {"id", "mark", "kind", "rule_id", "issued_at"},
        "snoozes": {"subject_key", "rule_id", "until", "created_at"},
        "feedback_rules": {
            "id", "dedupe_key", "service_id", "card_uuid", "rule_id", "outcome", "suggestion_uuid",
            "suggestion_label", "reason_system", "reason_code", "standard_code", "snooze_until",
            "received_at",
        },
        "suppressed_cards": {"id", "rule_id", "reason", "service_id", "hook", "suppressed_at"},
    }  # fmt: skip


def test_declared_indexes_exist_in_the_migrated_database(store: Store) -> None:
    inspector = inspect(store.engine)
    indexed = {
        table: {tuple(index["column_names"]) for index in inspector.get_indexes(table)}
        for table in ("issued_cards", "feedback")
    }
    assert {("rule_id",), ("issued_at",)} <= indexed["issued_cards"]
    assert {("card_uuid",), ("rule_id",), ("received_at",)} <= indexed["feedback"]
    unique = inspector.get_unique_constraints("feedback")
    assert [c["column_names"] for c in unique] == [["dedupe_key"]]


# --------------------------------------------------------------------------------------------
# Engine configuration


def test_sqlite_runs_in_wal_mode_with_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'pragmas.db'}")
    try:
        with store.engine.connect() as connection:
            pragma = lambda name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
            assert pragma("journal_mode") == "wal"
            assert pragma("busy_timeout") == 30_000
            assert pragma("foreign_keys") == 1
    finally:
        store.close()


def test_in_memory_sqlite_store_keeps_its_data_across_calls() -> None:
    store = Store("sqlite://")
    try:
        store.migrate()
        store.record_issued_cards([issued_card()])
        store.save_feedback(SERVICE, [accepted()], RECEIVED)
        assert store.issued_card_rule(CARD) == "riluzole-lft-monitoring"
        assert len(store.feedback_rows()) == 1
    finally:
        store.close()


@pytest.mark.parametrize(
    "url", ["postgresql://u@db.example/als", "postgres://u@db.example/als", "postgresql+psycopg://u@h/als"]
)
def test_postgresql_urls_use_psycopg_3(url: str) -> None:
    store = Store(url)  # engines connect lazily: nothing is contacted here
    assert store.engine.url.drivername == "postgresql+psycopg"
    assert store.engine.pool._pre_ping  # type: ignore[attr-defined]


def test_unsupported_backends_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported database backend"):
        Store("mysql://u@h/als")


def test_ping_is_true_for_a_live_database(store: Store) -> None:
    assert store.ping() is True


def test_ping_is_false_when_the_database_cannot_be_opened(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'missing-dir' / 'store.db'}")
    try:
        assert store.ping() is False
    finally:
        store.close()


# --------------------------------------------------------------------------------------------
# Issued cards


def test_issued_cards_are_recorded_and_looked_up(store: Store) -> None:
    store.record_issued_cards([issued_card(), issued_card("c2", rule_id="edaravone-eligibility")])

    assert store.issued_card_rule(CARD) == "riluzole-lft-monitoring"
    assert store.issued_card_rule("c2") == "edaravone-eligibility"
    assert store.issued_card_rule("never-issued") is None


def test_recording_the_same_issued_card_again_does_not_fail(store: Store) -> None:
    store.record_issued_cards([issued_card()])
    store.record_issued_cards([issued_card(rule_id="something-else")])
    store.record_issued_cards([issued_card("c2"), issued_card("c2", rule_id="something-else")])
    store.record_issued_cards([])

    assert store.issued_card_rule(CARD) == "riluzole-lft-monitoring"  # the first write wins
    assert store.issued_card_rule("c2") == "riluzole-lft-monitoring"


def test_issued_card_with_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        IssuedCard("c", "r", SERVICE, "patient-view", "h", "info", (), datetime(2024, 5, 1))


# --------------------------------------------------------------------------------------------
# Feedback


def test_feedback_for_an_issued_card_is_linked_to_its_rule(store: Store) -> None:
    store.record_issued_cards([issued_card()])

    result = store.save_feedback(SERVICE, [accepted()], RECEIVED)

    assert result == FeedbackSaveResult(stored=1, duplicates=0, unknown_cards=0)
    [row] = store.feedback_rows()
    assert row["card_uuid"] == CARD
    assert row["rule_id"] == "riluzole-lft-monitoring"
    assert row["unknown_card"] is False
    assert row["outcome"] == "accepted"
    assert row["accepted_suggestion_ids"] == [SUGGESTION]
    assert row["unknown_suggestion_ids"] == []
    assert row["override_reason_code"] is None
    assert row["override_user_comment"] is None
    assert row["dedupe_key"] == feedback_dedupe_key(SERVICE, accepted())


def test_repeating_the_same_feedback_in_a_second_call_is_not_a_second_row(store: Store) -> None:
    store.record_issued_cards([issued_card()])
    first = store.save_feedback(SERVICE, [accepted()], RECEIVED)

    again = store.save_feedback(SERVICE, [accepted()], RECEIVED + timedelta(minutes=5))

    assert first == FeedbackSaveResult(stored=1, duplicates=0, unknown_cards=0)
    assert again == FeedbackSaveResult(stored=0, duplicates=1, unknown_cards=0)
    assert len(store.feedback_rows()) == 1


def test_the_same_item_twice_in_one_batch_is_one_row(store: Store) -> None:
    store.record_issued_cards([issued_card()])

    result = store.save_feedback(SERVICE, [accepted(), accepted()], RECEIVED)

    assert result == FeedbackSaveResult(stored=1, duplicates=1, unknown_cards=0)
    assert len(store.feedback_rows()) == 1


def test_the_same_item_with_fields_in_another_order_is_the_same_feedback(store: Store) -> None:
    body = {
        "card": CARD,
        "outcome": "overridden",
        "overrideReason": {"reason": {"code": "a", "system": SNOMED}, "userComment": "c"},
        "outcomeTimestamp": "2024-05-01T12:00:00Z",
    }
    reordered = {key: body[key] for key in reversed(body)}
    reordered["overrideReason"] = {"userComment": "c", "reason": {"system": SNOMED, "code": "a"}}

    store.save_feedback(SERVICE, [FeedbackItem.model_validate(body)], RECEIVED)
    result = store.save_feedback(SERVICE, [FeedbackItem.model_validate(reordered)], RECEIVED)

    assert result.duplicates == 1
    assert len(store.feedback_rows()) == 1


def test_a_different_outcome_later_for_the_same_card_is_a_new_row(store: Store) -> None:
    store.record_issued_cards([issued_card()])
    store.save_feedback(SERVICE, [overridden({"overrideReason": {"userComment": "later"}})], RECEIVED)

    result = store.save_feedback(SERVICE, [accepted(at="2024-05-01T12:10:00Z")], RECEIVED)

    assert result == FeedbackSaveResult(stored=1, duplicates=0, unknown_cards=0)
    assert [row["outcome"] for row in store.feedback_rows()] == ["overridden", "accepted"]


def test_the_same_item_for_another_service_is_a_separate_row(store: Store) -> None:
    store.save_feedback(SERVICE, [accepted()], RECEIVED)
    store.save_feedback(OTHER_SERVICE, [accepted()], RECEIVED)

    assert len(store.feedback_rows()) == 2
    assert [row["service_id"] for row in store.feedback_rows(OTHER_SERVICE)] == [OTHER_SERVICE]


def test_feedback_for_an_unknown_card_is_stored_and_flagged(store: Store) -> None:
    store.record_issued_cards([issued_card()])

    result = store.save_feedback(SERVICE, [accepted(), accepted("not-ours", "s9")], RECEIVED)

    assert result == FeedbackSaveResult(stored=2, duplicates=0, unknown_cards=1)
    unknown = [row for row in store.feedback_rows() if row["card_uuid"] == "not-ours"]
    assert len(unknown) == 1
    assert unknown[0]["unknown_card"] is True
    assert unknown[0]["rule_id"] is None
    # Nothing can vouch for a suggestion of a card we never issued.
    assert unknown[0]["unknown_suggestion_ids"] == ["s9"]


def test_a_card_issued_by_another_service_counts_as_unknown(store: Store) -> None:
    store.record_issued_cards([issued_card(service_id=OTHER_SERVICE)])

    result = store.save_feedback(SERVICE, [accepted()], RECEIVED)

    assert result.unknown_cards == 1
    [row] = store.feedback_rows()
    assert row["unknown_card"] is True
    assert row["rule_id"] is None


def test_an_accepted_suggestion_the_card_did_not_offer_is_flagged(store: Store) -> None:
    store.record_issued_cards([issued_card(suggestions=(SUGGESTION,))])

    store.save_feedback(SERVICE, [accepted(CARD, SUGGESTION, "made-up", SUGGESTION)], RECEIVED)

    [row] = store.feedback_rows()
    assert row["unknown_card"] is False
    assert row["accepted_suggestion_ids"] == [SUGGESTION, "made-up"]
    assert row["unknown_suggestion_ids"] == ["made-up"]


def test_override_reason_with_a_full_coding_and_comment_is_stored(store: Store) -> None:
    body = {
        "overrideReason": {
            "reason": {
                "code": "reason-1",
                "system": "https://example.org/reasons",
                "display": "Not relevant",
            },
            "userComment": "discussed at MDT",
        }
    }

    store.save_feedback(SERVICE, [overridden(body)], RECEIVED)

    [row] = store.feedback_rows()
    assert (
        row["override_reason_code"],
        row["override_reason_system"],
        row["override_reason_display"],
        row["override_user_comment"],
    ) == ("reason-1", "https://example.org/reasons", "Not relevant", "discussed at MDT")
    assert row["accepted_suggestion_ids"] == []


def test_override_reason_with_only_a_code_is_stored(store: Store) -> None:
    """The CDS Hooks sandbox sends reasons without `system` and `display`."""
    store.save_feedback(SERVICE, [overridden({"overrideReason": {"reason": {"code": "r1"}}})], RECEIVED)

    [row] = store.feedback_rows()
    assert row["override_reason_code"] == "r1"
    assert row["override_reason_system"] is None
    assert row["override_reason_display"] is None
    assert row["override_user_comment"] is None


def test_override_with_only_a_user_comment_is_stored(store: Store) -> None:
    store.save_feedback(SERVICE, [overridden({"overrideReason": {"userComment": "free text"}})], RECEIVED)

    [row] = store.feedback_rows()
    assert row["override_reason_code"] is None
    assert row["override_user_comment"] == "free text"


def test_epic_style_plural_override_reasons_are_stored(store: Store) -> None:
    body = {
        "overrideReasons": [
            {"reason": {"code": "epic-1", "system": "urn:oid:1.2.840.114350", "display": "Patient declined"}},
            {"reason": {"code": "epic-2"}},
        ]
    }

    store.save_feedback(SERVICE, [overridden(body)], RECEIVED)

    [row] = store.feedback_rows()
    assert row["outcome"] == "overridden"
    assert row["override_reason_code"] == "epic-1"
    assert row["override_reason_system"] == "urn:oid:1.2.840.114350"
    assert row["override_reason_display"] == "Patient declined"


def test_outcome_timestamp_round_trips_as_aware_utc(store: Store) -> None:
    plus_two = timezone(timedelta(hours=2))
    received = datetime(2024, 5, 1, 16, 0, 0, 123456, tzinfo=plus_two)

    store.save_feedback(SERVICE, [accepted(at="2024-05-01T14:30:00.250+02:00")], received)

    [row] = store.feedback_rows()
    assert row["outcome_timestamp"] == datetime(2024, 5, 1, 12, 30, 0, 250000, tzinfo=UTC)
    assert row["outcome_timestamp"].utcoffset() == timedelta(0)
    assert row["received_at"] == datetime(2024, 5, 1, 14, 0, 0, 123456, tzinfo=UTC)
    assert row["received_at"].utcoffset() == timedelta(0)


def test_naive_received_at_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        store.save_feedback(SERVICE, [accepted()], datetime(2024, 5, 1, 12, 0))
    assert store.feedback_rows() == []


def test_feedback_rows_can_be_filtered_by_service(store: Store) -> None:
    store.save_feedback(SERVICE, [accepted()], RECEIVED)
    store.save_feedback(OTHER_SERVICE, [accepted("c2")], RECEIVED)

    assert [row["card_uuid"] for row in store.feedback_rows(SERVICE)] == [CARD]
    assert [row["card_uuid"] for row in store.feedback_rows()] == [CARD, "c2"]


def test_an_empty_batch_stores_nothing(store: Store) -> None:
    assert store.save_feedback(SERVICE, [], RECEIVED) == FeedbackSaveResult(0, 0, 0)


def test_the_user_comment_is_never_logged(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    secret = "Comment-7c1e-should-never-reach-a-log"
    item = overridden({"overrideReason": {"reason": {"code": "x"}, "userComment": secret}})

    with caplog.at_level(logging.DEBUG):
        store.save_feedback(SERVICE, [item], RECEIVED)
        store.save_feedback(SERVICE, [item], RECEIVED)

    assert secret not in caplog.text


def test_concurrent_saves_of_the_same_item_store_exactly_one_row(store: Store, database_url: str) -> None:
    """Several workers (separate engines and connections) receiving the same retry at once."""
    store.record_issued_cards([issued_card()])
    workers = 8
    stores = [Store(database_url) for _ in range(workers)]
    barrier = threading.Barrier(workers)
    results: list[FeedbackSaveResult] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def save(worker_store: Store) -> None:
        try:
            barrier.wait(timeout=30)
            result = worker_store.save_feedback(SERVICE, [accepted()], RECEIVED)
            with lock:
                results.append(result)
        except BaseException as exc:  # reported in the main thread below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=save, args=(s,)) for s in stores]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        for worker_store in stores:
            worker_store.close()

    assert errors == []
    assert sum(r.stored for r in results) == 1
    assert sum(r.duplicates for r in results) == workers - 1
    assert len(store.feedback_rows()) == 1


# --------------------------------------------------------------------------------------------
# JWT replay cache


def test_a_jti_is_accepted_once_per_issuer(store: Store) -> None:
    until = RECEIVED + timedelta(minutes=5)
    assert store.record_jti("https://ehr.example.org", "jti-1", until, RECEIVED) is True
    assert store.record_jti("https://ehr.example.org", "jti-1", until, RECEIVED) is False
    assert store.record_jti("https://ehr.example.org", "jti-1", until + timedelta(hours=1), RECEIVED) is False
    assert store.record_jti("https://other.example.org", "jti-1", until, RECEIVED) is True
    assert store.record_jti("https://ehr.example.org", "jti-2", until, RECEIVED) is True


def test_an_expired_entry_no_longer_blocks_its_jti(store: Store) -> None:
    """A row past its expiry that was not purged yet is taken over, not counted as a replay."""
    until = RECEIVED + timedelta(minutes=5)
    assert store.record_jti("iss", "jti-1", until, RECEIVED)
    later = until + timedelta(seconds=1)
    assert store.record_jti("iss", "jti-1", later + timedelta(minutes=5), later) is True
    assert store.record_jti("iss", "jti-1", later + timedelta(minutes=5), later) is False


def test_expired_replay_entries_are_purged(store: Store) -> None:
    store.record_jti("iss", "old", RECEIVED + timedelta(minutes=1), RECEIVED)
    store.record_jti("iss", "new", RECEIVED + timedelta(minutes=10), RECEIVED)

    assert store.purge_expired_jtis(RECEIVED + timedelta(minutes=5)) == 1
    assert store.purge_expired_jtis(RECEIVED + timedelta(minutes=5)) == 0

    with store.engine.connect() as connection:
        assert [row.jti for row in connection.execute(select(jwt_replay))] == ["new"]
    assert store.record_jti("iss", "new", RECEIVED + timedelta(minutes=10), RECEIVED) is False


def test_replay_cache_refuses_naive_datetimes(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        store.record_jti("iss", "j", datetime(2024, 5, 1, 12, 5), RECEIVED)
    with pytest.raises(ValueError, match="timezone-aware"):
        store.purge_expired_jtis(datetime(2024, 5, 1, 12, 5))


def test_replay_cache_has_its_expiry_index(store: Store) -> None:
    inspector = inspect(store.engine)
    assert ("expires_at",) in {tuple(i["column_names"]) for i in inspector.get_indexes("jwt_replay")}
    assert inspector.get_pk_constraint("jwt_replay")["constrained_columns"] == ["iss", "jti"]


def test_concurrent_uses_of_one_jti_are_accepted_exactly_once(database_url: str, store: Store) -> None:
    """Several replicas (separate engines) receiving the same token at the same instant."""
    workers = 8
    stores = [Store(database_url) for _ in range(workers)]
    barrier = threading.Barrier(workers)
    results: list[bool] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def record(worker_store: Store) -> None:
        try:
            barrier.wait(timeout=30)
            fresh = worker_store.record_jti("iss", "same-jti", RECEIVED + timedelta(minutes=5), RECEIVED)
            with lock:
                results.append(fresh)
        except BaseException as exc:  # reported in the main thread below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=record, args=(s,)) for s in stores]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        for worker_store in stores:
            worker_store.close()

    assert errors == []
    assert sorted(results) == [False] * (workers - 1) + [True]

"""The write-behind of issued-card records (store/writer.py) against a real database, SQLite and
PostgreSQL: queued until written, written once even when a write fails, bounded when the database is
down, and what is dropped counted."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from cds_service.store import IssuedCard, Store
from cds_service.store import fatigue as stored
from cds_service.store.fatigue import IssuedItem, Mark
from cds_service.store.tables import issued_items, order_marks
from cds_service.store.writer import IssueWriter
from tests.support import NOW

HELD = 600.0  # a write delay nothing in a test reaches: only flush and close write


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'als-cds.db'}"
    else:
        url = str(request.getfixturevalue("postgres_db_url"))
    opened = Store(url)
    opened.migrate()
    yield opened
    opened.close()


def call(n: int) -> dict[str, Any]:
    """The records of one hook call with one card."""
    uuid = f"00000000-0000-4000-8000-{n:012d}"
    return {
        "cards": [
            IssuedCard(
                uuid, "mdt-review-overdue", "als-patient-view", "patient-view", f"hi-{n}", "info", (), NOW
            )
        ],
        "items": [
            IssuedItem(
                uuid, "mdt-review-overdue", "1", "als-patient-view", "patient-view", "info", f"s{n}", {}, NOW
            )
        ],
        "marks": [Mark(f"mark-{n}", "shown", "mdt-review-overdue", NOW)],
    }


def uuid_of(n: int) -> str:
    return call(n)["cards"][0].card_uuid


class Drops:
    def __init__(self) -> None:
        self.counted: dict[str, int] = {}

    def __call__(self, reason: str, calls: int) -> None:
        self.counted[reason] = self.counted.get(reason, 0) + calls


def test_records_wait_in_the_queue_visible_to_lookups_until_flushed(store: Store) -> None:
    writer = IssueWriter(store, linger_seconds=HELD)
    writer.start()
    try:
        assert writer.submit(**call(1))
        assert store.issued_card_uuids([uuid_of(1)]) == set()
        assert writer.holds([uuid_of(1)]) and not writer.holds([uuid_of(2)])
        assert writer.pending_marks(["mark-1", "mark-2"], "shown", NOW) == {"mark-1": {"mdt-review-overdue"}}
        assert writer.pending_marks(["mark-1"], "created", NOW) == {}
        assert writer.flush(30)
        assert store.issued_card_uuids([uuid_of(1)]) == {uuid_of(1)}
        assert not writer.holds([uuid_of(1)])
        assert stored.marked(store, ["mark-1"], "shown", NOW) == {"mark-1": {"mdt-review-overdue"}}
    finally:
        writer.close(30)


def test_records_are_written_after_the_write_delay_without_a_flush(store: Store) -> None:
    writer = IssueWriter(store, linger_seconds=0.01)
    writer.start()
    try:
        writer.submit(**call(1))
        with writer._cond:  # the writer thread says when it has written: no sleeping on a guess
            assert writer._cond.wait_for(lambda: writer._done_seq >= 1, timeout=30)
        assert store.issued_card_uuids([uuid_of(1)]) == {uuid_of(1)}
    finally:
        writer.close(30)


def test_close_writes_everything_queued(store: Store) -> None:
    writer = IssueWriter(store, linger_seconds=HELD)
    writer.start()
    for n in range(5):
        writer.submit(**call(n))
    writer.close(30)
    assert store.issued_card_uuids(uuid_of(n) for n in range(5)) == {uuid_of(n) for n in range(5)}
    assert stored.count_rows(store, issued_items) == 5
    assert writer.dropped == 0
    assert not writer.submit(**call(9)), "a closed writer takes nothing more"


def test_a_failed_write_is_retried_and_a_commit_that_reported_failure_is_not_written_twice(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store._writing
    attempts: list[str] = []

    @contextlib.contextmanager
    def flaky() -> Iterator[Any]:
        attempts.append("write")
        if len(attempts) == 1:  # the database refuses
            raise OperationalError("INSERT", {}, Exception("connection refused"))
        with real() as connection:
            yield connection
        if len(attempts) == 2:  # committed, but the acknowledgement was lost
            raise OperationalError("COMMIT", {}, Exception("connection lost"))

    monkeypatch.setattr(store, "_writing", flaky)
    writer = IssueWriter(store, linger_seconds=HELD)
    writer.start()
    try:
        writer.submit(**call(1))
        writer.submit(**call(2))
        assert writer.flush(60)
    finally:
        writer.close(30)
    assert len(attempts) == 3
    assert store.issued_card_uuids([uuid_of(1), uuid_of(2)]) == {uuid_of(1), uuid_of(2)}
    assert stored.count_rows(store, issued_items) == 2, "issued items written once"
    assert stored.count_rows(store, order_marks) >= 2


def _unreachable_urls(tmp_path: Path) -> list[str]:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [
        f"sqlite:///{tmp_path / 'no-such-folder' / 'als-cds.db'}",
        f"postgresql+psycopg://nobody@127.0.0.1:{port}/none?connect_timeout=2",
    ]


@pytest.mark.parametrize("which", [0, 1], ids=["sqlite", "postgresql"])
def test_with_the_database_down_the_queue_stays_bounded_and_what_is_dropped_is_counted(
    tmp_path: Path, which: int
) -> None:
    down = Store(_unreachable_urls(tmp_path)[which])
    drops = Drops()
    writer = IssueWriter(down, linger_seconds=0, max_pending_calls=3, on_drop=drops)
    writer.start()
    accepted = [writer.submit(**call(n)) for n in range(10)]
    assert accepted == [True] * 3 + [False] * 7, "the newest beyond the bound are dropped at once"
    assert drops.counted == {"queue-full": 7}
    assert not writer.flush(0.5), "nothing can be written"
    writer.close(15)
    assert drops.counted == {"queue-full": 7, "shutdown": 3}
    assert writer.dropped == 10
    down.close()


def test_the_writers_bulk_inserts_store_exactly_what_sqlalchemys_own_inserts_store(store: Store) -> None:
    """The writer converts values itself (store/writer.py `_BulkInsert`): every column, as the
    database holds it, must be what SQLAlchemy's insert of the same rows writes. Timestamps in
    another zone and with microseconds, JSON with non-ASCII text, and a repeated card uuid (ignored)."""
    from datetime import UTC, datetime, timedelta, timezone

    from sqlalchemy import select

    from cds_service.store.repository import _issued_row
    from cds_service.store.tables import issued_cards

    when = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=timezone(timedelta(hours=-5)))
    later = when + timedelta(seconds=1)

    def rows(prefix: str) -> tuple[list[IssuedCard], list[IssuedItem], list[Mark]]:
        cards = [
            IssuedCard(f"{prefix}-a", "rule-a", "svc", "patient-view", "hi", "warning", ("s1", "s2"), when),
            IssuedCard(f"{prefix}-b", "rule-b", "svc", "order-sign", "hi2", "critical", (), later),
        ]
        items = [
            IssuedItem(
                f"{prefix}-a", "rule-a", "3", "svc", "patient-view", "warning", "k1", {"s1": "Ordér"}, when
            ),
            IssuedItem(f"{prefix}-b", "rule-b", "1", "svc", "order-sign", "critical", "k2", {}, later),
        ]
        marks = [
            Mark(f"{prefix}-m", "created", "rule-a", when),
            Mark(f"{prefix}-n", "shown", "rule-b", later),
        ]
        return cards, items, marks

    fast_cards, fast_items, fast_marks = rows("fast")
    writer = IssueWriter(store, linger_seconds=HELD)
    writer.start()
    writer.submit(cards=fast_cards, items=fast_items, marks=fast_marks)
    writer.submit(cards=fast_cards[:1], items=[], marks=[])  # the same card again: nothing new
    assert writer.flush(30)
    writer.close(30)

    own_cards, own_items, own_marks = rows("own")
    with store._writing() as connection:
        connection.execute(issued_cards.insert(), [_issued_row(card) for card in own_cards])
        connection.execute(issued_items.insert(), [vars(item) for item in own_items])
        connection.execute(order_marks.insert(), [vars(mark) for mark in own_marks])

    def stored_rows(table: Any, key: str, prefix: str) -> list[tuple[Any, ...]]:
        columns = [c for c in table.c if c.key not in ("id", key)]
        # The raw values as the driver returns them: no result processing, so a different text
        # form of the same timestamp (SQLite) would show.
        statement = select(*columns).where(table.c[key].like(f"{prefix}-%")).order_by(table.c[key])
        with store.engine.connect() as connection:
            raw = connection.exec_driver_sql(
                str(statement.compile(store.engine, compile_kwargs={"literal_binds": True}))
            ).all()
        return [tuple(row) for row in raw]

    for table, key in ((issued_cards, "card_uuid"), (issued_items, "card_uuid"), (order_marks, "mark")):
        fast, own = stored_rows(table, key, "fast"), stored_rows(table, key, "own")
        assert len(fast) == len(own) == 2, table.name
        assert fast == own, table.name
    assert store.issued_card_uuids(["fast-a", "fast-b"]) == {"fast-a", "fast-b"}
    assert stored.marked(store, ["fast-m"], "created", when.astimezone(UTC)) == {"fast-m": {"rule-a"}}

"""The issued-card records of hook calls, written behind the answer by one thread per process.

A hook call used to write its records (`issued_cards`: card uuid → rule, which feedback needs;
issue 12's `issued_items` and order session marks) before it answered: a transaction per call on
the EHR's clock, and on SQLite a wait for the one write lock behind the other workers. Here a call
hands its rows to `IssueWriter.submit`, which never blocks and never touches the database; a thread
writes what has accumulated in one transaction, `linger_seconds` after the oldest pending call (so
under load one transaction carries many calls), or at once when `batch_calls` are waiting.

What feedback needs is never lost to the delay:

* in this process, rows not yet written are found in the queue (`pending_marks`, `holds`), and the
  feedback route flushes the queue before it looks a card up (`flush`);
* in another worker or replica, a card's record becomes visible at most `linger_seconds` plus one
  write later; feedback that finds its card unknown waits up to a bound for it (app.py) before it
  stores the item flagged `unknown_card`;
* on a graceful shutdown (SIGTERM: the app's lifespan ends) `close` writes everything queued.

Bounded: at most `max_pending_calls` calls wait. When the database is down or slower than the calls
arrive, a failed write is retried with back-off and the batch stays queued; the records of calls
beyond the bound are dropped at `submit` (the newest are dropped: the cards still go to the EHR,
and feedback on them is stored flagged `unknown_card`, without its rule). A SIGKILL loses what was
queued (at most `linger_seconds` of calls when the database is healthy). Each drop is counted in
`als_cds_issued_records_dropped_total` by reason and logged with counts only, never patient data;
the rows themselves carry none (card uuids we made, rule ids, keyed hashes).

The guarantee for feedback itself is unchanged: an acknowledged feedback item is written before its
answer (repository.py), exactly once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Dialect, Insert, select

from cds_service.store.fatigue import IssuedItem, Mark
from cds_service.store.repository import IssuedCard, Store, _issued_row, _require_aware
from cds_service.store.tables import UTCDateTime, issued_cards, issued_items, order_marks

log = logging.getLogger(__name__)

#: Longest pause between two attempts while the database fails.
MAX_BACKOFF_SECONDS = 5.0

#: At most one log line per this many seconds while calls are dropped for a full queue.
LOG_EVERY_SECONDS = 10.0

#: Called with (reason, number of calls) whenever records are dropped: the metric (app.py).
DropCounter = Callable[[str, int], None]


def _fields(record: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(record))


class _BulkInsert:
    """An INSERT of many rows, compiled once for a dialect; each value converted by its column's
    own bind processor, as SQLAlchemy does, then the rows handed to the driver's executemany.

    Why not `connection.execute(table.insert(), rows)`: SQLAlchemy's per-row parameter handling
    (construct_params and the type processors, called through several layers for every value)
    cost about 200 us of CPU per hook call's ten rows, more than SQLite's own inserts, some 6 % of
    a typical call. Here the same processors run once per value (a call's rows share one timestamp:
    converted once per batch), and nothing else is done per row. The statement text and the order
    of its parameters come from SQLAlchemy's compiler, so both dialects get what they would have.
    """

    def __init__(self, statement: Insert, keys: Sequence[str], dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        names = list(compiled.positiontup or ()) if compiled.positional else sorted(compiled.binds)
        if sorted(names) != sorted(keys) or compiled.escaped_bind_names:
            raise ValueError(f"unexpected parameters {names} for the columns {list(keys)}")
        self.sql = compiled.string
        self.keys = tuple(names)  # the statement's order (positional) or any order (named)
        self.positional = compiled.positional
        columns = statement.table.c  # type: ignore[attr-defined]
        self.processors = tuple(
            columns[key].type.dialect_impl(dialect).bind_processor(dialect) for key in self.keys
        )
        # Timestamps are converted once per distinct value: every row of a call carries its `now`.
        self.shared = tuple(isinstance(columns[key].type, UTCDateTime) for key in self.keys)

    def execute(self, connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
        converted: dict[tuple[int, Any], Any] = {}
        params: list[Any] = []
        for row in rows:
            values = []
            for index, key in enumerate(self.keys):
                value = row[key]
                process = self.processors[index]
                if process is not None and value is not None:
                    if self.shared[index]:
                        memo = (index, value)
                        found = converted.get(memo)
                        if found is None:
                            found = converted[memo] = process(value)
                        value = found
                    else:
                        value = process(value)
                values.append(value)
            params.append(tuple(values) if self.positional else dict(zip(self.keys, values, strict=True)))
        connection.exec_driver_sql(self.sql, params)


@dataclass
class _Entry:
    """The records of one hook call."""

    seq: int
    queued_at: float
    cards: Sequence[IssuedCard] = ()
    items: Sequence[IssuedItem] = ()
    marks: Sequence[Mark] = ()
    card_uuids: frozenset[str] = field(default_factory=frozenset)


class IssueWriter:
    """Write-behind of issued-card records; thread-safe, one per process (module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        linger_seconds: float = 0.05,
        batch_calls: int = 200,
        max_pending_calls: int = 5000,
        on_drop: DropCounter | None = None,
    ) -> None:
        self.store = store
        self.linger = linger_seconds
        self.batch_calls = batch_calls
        self.max_pending = max_pending_calls
        self._on_drop = on_drop
        self._cond = threading.Condition()
        self._queue: deque[_Entry] = deque()
        # Taken from the queue and being written: still looked in by `holds` and `pending_marks`.
        self._writing: list[_Entry] = []
        self._next_seq = 1
        self._done_seq = 0  # every entry up to here is written or dropped
        self._flush_wanted = 0  # a flush waits for entries up to this seq: write without lingering
        self._closing = False
        self._thread: threading.Thread | None = None
        self.dropped = 0  # calls whose records were dropped, since start (tests, diagnostics)
        self._unlogged: dict[str, int] = {}
        self._logged_at = float("-inf")
        self._compiled: tuple[_BulkInsert, _BulkInsert, _BulkInsert] | None = None

    # -- the request path ------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="als-cds-issue-writer", daemon=True)
            self._thread.start()

    def submit(
        self, cards: Sequence[IssuedCard] = (), items: Sequence[IssuedItem] = (), marks: Sequence[Mark] = ()
    ) -> bool:
        """Queue one call's records; never blocks on the database. False: dropped (queue full or closed)."""
        if not (cards or items or marks):
            return True
        uuids = frozenset([c.card_uuid for c in cards] + [i.card_uuid for i in items])
        with self._cond:
            if self._closing or len(self._queue) + len(self._writing) >= self.max_pending:
                reason = "closed" if self._closing else "queue-full"
            else:
                entry = _Entry(self._next_seq, time.monotonic(), cards, items, marks, uuids)
                self._next_seq += 1
                self._queue.append(entry)
                if len(self._queue) == 1 or len(self._queue) >= self.batch_calls:
                    self._cond.notify_all()
                return True
        self._dropped(reason, 1)
        return False

    def holds(self, card_uuids: Iterable[str]) -> bool:
        """Whether a record of any of these cards is queued or being written in this process."""
        wanted = set(card_uuids)
        with self._cond:
            return any(entry.card_uuids & wanted for entry in (*self._writing, *self._queue))

    def pending_marks(self, marks: Iterable[str], kind: str, since: datetime) -> dict[str, set[str]]:
        """Like `store.fatigue.marked`, over the marks not yet written: mark → the rules that left it."""
        wanted = set(marks)
        after = _require_aware(since, "since")
        found: dict[str, set[str]] = {}
        with self._cond:
            for entry in (*self._writing, *self._queue):
                for mark in entry.marks:
                    if mark.mark in wanted and mark.kind == kind and mark.issued_at >= after:
                        found.setdefault(mark.mark, set()).add(mark.rule_id)
        return found

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted before this call is written (or dropped): True, or False
        when `timeout` passed first (the database is down or slow). Blocks: call it off the loop."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._next_seq - 1
            if self._done_seq >= target:
                return True
            self._flush_wanted = max(self._flush_wanted, target)
            self._cond.notify_all()
            while self._done_seq < target:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float) -> None:
        """Write everything queued, then stop (graceful shutdown). What cannot be written within
        `timeout` (database down) is dropped, counted and logged."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            left = len(self._queue) + len(self._writing)
            self._queue.clear()
            self._done_seq = self._next_seq - 1
            self._cond.notify_all()
        if left:
            self._dropped("shutdown", left)

    # -- the writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while True:
            with self._cond:
                batch = self._next_batch()
                if batch is None:
                    return
                self._writing = batch
            try:
                # After a failure the last attempt may have committed all the same (a connection
                # lost during COMMIT): write only what is not there yet.
                self._write(batch, retry=failures > 0)
            except Exception as exc:
                failures += 1
                # The cause's type only: a driver's message may quote the rows' values.
                log.error(
                    "could not write issued-card records; retrying",
                    extra={"error_type": type(exc).__name__, "calls": len(batch), "attempt": failures},
                )
                with self._cond:
                    self._writing = []
                    self._queue.extendleft(reversed(batch))  # first again, in order
                    if not self._closing:
                        self._cond.wait(min(MAX_BACKOFF_SECONDS, 0.1 * 2**failures))
                    elif failures >= 3:  # shutting down with the database away: give up (close counts)
                        return
                continue
            failures = 0
            with self._cond:
                self._writing = []
                self._done_seq = batch[-1].seq
                self._cond.notify_all()

    def _next_batch(self) -> list[_Entry] | None:
        """Under the lock: the next calls to write, once the oldest has lingered; None: stop."""
        while True:
            if not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
                continue
            urgent = (
                self._closing
                or len(self._queue) >= self.batch_calls
                or self._flush_wanted >= self._queue[0].seq
            )
            wait = self._queue[0].queued_at + self.linger - time.monotonic()
            if urgent or wait <= 0:
                return [self._queue.popleft() for _ in range(min(self.batch_calls, len(self._queue)))]
            self._cond.wait(wait)

    def _write(self, batch: Sequence[_Entry], *, retry: bool) -> None:
        cards: dict[str, dict[str, Any]] = {}
        items: list[dict[str, Any]] = []
        marks: list[dict[str, Any]] = []
        for entry in batch:
            for card in entry.cards:
                cards.setdefault(card.card_uuid, _issued_row(card))
            items += [vars(item) for item in entry.items]
            marks += [vars(mark) for mark in entry.marks]
        with self.store._writing() as connection:
            if retry and items:
                # issued_items has no natural unique key: skip the cards a committed attempt wrote.
                uuids = sorted({row["card_uuid"] for row in items})
                written = set(
                    connection.execute(
                        select(issued_items.c.card_uuid).where(issued_items.c.card_uuid.in_(uuids))
                    ).scalars()
                )
                items = [row for row in items if row["card_uuid"] not in written]
            insert_cards, insert_items, insert_marks = self._inserts(connection)
            if cards:
                insert_cards.execute(connection, list(cards.values()))
            if items:
                insert_items.execute(connection, items)
            if marks:  # a repeated mark is harmless: marks are looked up as sets
                insert_marks.execute(connection, marks)

    def _inserts(self, connection: Connection) -> tuple[_BulkInsert, _BulkInsert, _BulkInsert]:
        """The three INSERTs for the store's dialect, compiled on the first write."""
        if self._compiled is None:
            dialect = connection.dialect
            cards = self.store._insert(connection, issued_cards).on_conflict_do_nothing(
                index_elements=[issued_cards.c.card_uuid]
            )
            self._compiled = (
                _BulkInsert(cards, tuple(issued_cards.c.keys()), dialect),  # as `_issued_row`
                _BulkInsert(issued_items.insert(), _fields(IssuedItem), dialect),
                _BulkInsert(order_marks.insert(), _fields(Mark), dialect),
            )
        return self._compiled

    def _dropped(self, reason: str, calls: int) -> None:
        with self._cond:
            self.dropped += calls
            self._unlogged[reason] = self._unlogged.get(reason, 0) + calls
            now = time.monotonic()
            # One line per LOG_EVERY_SECONDS at most: while the database is down every call drops.
            report = reason != "queue-full" or now - self._logged_at >= LOG_EVERY_SECONDS
            if report:
                counts, self._unlogged, self._logged_at = self._unlogged, {}, now
        if report:
            # Counts and reasons only: the records hold no patient data, and neither does this line.
            for why, count in sorted(counts.items()):
                log.warning("issued-card records dropped", extra={"reason": why, "calls": count})
        if self._on_drop is not None:
            with contextlib.suppress(Exception):
                self._on_drop(reason, calls)

"""Retention: `als-cds prune --older-than DAYS` removes what is older than the age, in batches.

What goes (issue 12), each table by its own time column:

* issued-card records (`issued_cards`, `issued_items`) and the order session's marks (`order_marks`),
  by when the card was issued;
* feedback (`feedback`, `feedback_rules`), by when it was received;
* suppression records (`suppressed_cards`), by when the card was suppressed;
* snoozes (`snoozes`) that have ended, whatever their age: an ended snooze does nothing any more,
  and it is the one row keyed by a patient's (hashed) identity. A live snooze is never removed.

Safe while the service runs: every batch is one short transaction that deletes at most `batch_size`
rows chosen by primary key, and the statement checks the age again on each row it deletes, so a row a
replica writes or changes meanwhile (a snooze extended a moment ago) is left alone. On SQLite each
batch holds the write lock for a few milliseconds, and the service's writers queue behind it within
their busy timeout; on PostgreSQL only the batch's rows are locked. Nothing is read into Python but
primary keys, and nothing is logged but counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Table, delete, select

from cds_service.store.repository import Store, _require_aware
from cds_service.store.tables import (
    feedback,
    feedback_rules,
    issued_cards,
    issued_items,
    order_marks,
    snoozes,
    suppressed_cards,
)

#: Rows deleted per transaction by default: a few milliseconds of lock on either database.
DEFAULT_BATCH_SIZE = 1000
#: Pause between batches, so that the service's own writes get the lock in between (SQLite).
PAUSE_SECONDS = 0.01


@dataclass(frozen=True)
class Retention:
    """One table, and which of its rows are past the age."""

    table: Table
    key: ColumnElement[object]
    old: Callable[[datetime, datetime], ColumnElement[bool]]  # (cutoff, now) → the rows to remove


#: In this order: feedback before the records of the cards it names, so that a prune interrupted
#: half way never leaves feedback per rule whose issued items are gone while newer ones remain.
RETENTION: tuple[Retention, ...] = (
    Retention(feedback_rules, feedback_rules.c.id, lambda cutoff, _: feedback_rules.c.received_at < cutoff),
    Retention(feedback, feedback.c.id, lambda cutoff, _: feedback.c.received_at < cutoff),
    Retention(issued_items, issued_items.c.id, lambda cutoff, _: issued_items.c.issued_at < cutoff),
    Retention(issued_cards, issued_cards.c.card_uuid, lambda cutoff, _: issued_cards.c.issued_at < cutoff),
    Retention(order_marks, order_marks.c.id, lambda cutoff, _: order_marks.c.issued_at < cutoff),
    Retention(
        suppressed_cards, suppressed_cards.c.id, lambda cutoff, _: suppressed_cards.c.suppressed_at < cutoff
    ),
    # Ended snoozes, whatever their age; `until > now` (live) is never matched.
    Retention(snoozes, snoozes.c.subject_key, lambda _, now: snoozes.c.until <= now),
)


def prune(
    store: Store,
    cutoff: datetime,
    now: datetime,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    pause_seconds: float = PAUSE_SECONDS,
) -> dict[str, int]:
    """Remove what is older than `cutoff` (and every ended snooze at `now`); rows removed, by table."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    before, at = _require_aware(cutoff, "cutoff"), _require_aware(now, "now")
    if before > at:
        raise ValueError("the cutoff lies in the future")
    removed: dict[str, int] = {}
    for retention in RETENTION:
        old = retention.old(before, at)
        total = 0
        while True:
            with store._writing() as connection:  # one transaction per batch
                keys = list(
                    connection.execute(
                        select(retention.key).where(old).order_by(retention.key).limit(batch_size)
                    ).scalars()
                )
                if not keys:
                    break
                # The age checked again in the DELETE itself: a row changed since the SELECT (a snooze
                # extended by another replica) no longer matches and stays.
                result = connection.execute(delete(retention.table).where(retention.key.in_(keys), old))
                total += max(result.rowcount or 0, 0)
            if len(keys) < batch_size:
                break
            time.sleep(pause_seconds)
        removed[retention.table.name] = total
    return removed

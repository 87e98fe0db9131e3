"""The store's part against alert fatigue (issue 12): issued items, order session marks, snoozes,
feedback per rule, suppressed cards and the shared pseudonym key.

Functions over a `Store`, kept out of `repository.py` so that the issued-card and feedback paths
there stay as they are. Every guarantee under concurrency is the database's, as there: a snooze is
one `INSERT ... ON CONFLICT` that keeps the later end, feedback per rule is written once by its
unique key, and the pseudonym key is inserted if absent and then read, so every replica gets the
same one. No function here logs or stores a patient identifier: keys arrive already hashed.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from cds_service.store.repository import Store, _require_aware
from cds_service.store.tables import (
    feedback_rules,
    issued_items,
    order_marks,
    service_keys,
    snoozes,
    suppressed_cards,
)

PSEUDONYM_KEY_NAME = "pseudonym-key"


@dataclass(frozen=True)
class IssuedItem:
    """One rule's part of an issued card (`issued_items`)."""

    card_uuid: str
    rule_id: str
    rule_version: str
    service_id: str
    hook: str
    indicator: str
    subject_key: str
    suggestions: dict[str, str]  # uuid → label
    issued_at: datetime


@dataclass(frozen=True)
class Mark:
    mark: str
    kind: str  # 'shown' or 'created'
    rule_id: str
    issued_at: datetime


@dataclass(frozen=True)
class Suppressed:
    rule_id: str
    reason: str
    service_id: str
    hook: str
    suppressed_at: datetime


@dataclass(frozen=True)
class FeedbackRule:
    """What one feedback item means for one rule (`feedback_rules`)."""

    dedupe_key: str
    service_id: str
    card_uuid: str
    rule_id: str
    outcome: str
    suggestion_uuid: str
    suggestion_label: str | None
    reason_system: str | None
    reason_code: str | None
    standard_code: str | None
    snooze_until: datetime | None
    received_at: datetime


def pseudonym_key(store: Store, now: datetime) -> str:
    """The key made once for this database and shared by every replica (insert if absent, read)."""
    with store._writing() as connection:
        statement = store._insert(connection, service_keys).on_conflict_do_nothing(
            index_elements=[service_keys.c.name]
        )
        connection.execute(
            statement,
            {
                "name": PSEUDONYM_KEY_NAME,
                "value": secrets.token_hex(32),
                "created_at": _require_aware(now, "now"),
            },
        )
        return str(
            connection.execute(
                select(service_keys.c.value).where(service_keys.c.name == PSEUDONYM_KEY_NAME)
            ).scalar_one()
        )


def record_issue(store: Store, items: Sequence[IssuedItem], marks: Sequence[Mark]) -> None:
    """The items and order session marks of one hook response, in one transaction."""
    if not items and not marks:
        return
    with store._writing() as connection:
        if items:
            connection.execute(issued_items.insert(), [vars(item) for item in items])
        if marks:
            connection.execute(order_marks.insert(), [vars(mark) for mark in marks])


def record_suppressed(store: Store, rows: Sequence[Suppressed]) -> None:
    if rows:
        with store._writing() as connection:
            connection.execute(suppressed_cards.insert(), [vars(row) for row in rows])


def snoozed(store: Store, subject_keys: Iterable[str], now: datetime) -> set[str]:
    """The subject keys among `subject_keys` whose snooze has not ended at `now`."""
    keys = sorted(set(subject_keys))
    if not keys:
        return set()
    with store.engine.connect() as connection:
        rows = connection.execute(
            select(snoozes.c.subject_key).where(
                snoozes.c.subject_key.in_(keys), snoozes.c.until > _require_aware(now, "now")
            )
        )
        return {row.subject_key for row in rows}


def snooze_ends(store: Store, subject_keys: Iterable[str], now: datetime) -> dict[str, datetime]:
    """Subject key → the end of its snooze, for the keys among `subject_keys` snoozed at `now`."""
    keys = sorted(set(subject_keys))
    if not keys:
        return {}
    with store.engine.connect() as connection:
        rows = connection.execute(
            select(snoozes.c.subject_key, snoozes.c.until).where(
                snoozes.c.subject_key.in_(keys), snoozes.c.until > _require_aware(now, "now")
            )
        )
        return {row.subject_key: row.until for row in rows}


def marked(store: Store, marks: Iterable[str], kind: str, since: datetime) -> dict[str, set[str]]:
    """Mark → the rules that left it since `since`, for the marks among `marks` that exist."""
    wanted = sorted(set(marks))
    if not wanted:
        return {}
    found: dict[str, set[str]] = {}
    with store.engine.connect() as connection:
        rows = connection.execute(
            select(order_marks.c.mark, order_marks.c.rule_id).where(
                order_marks.c.mark.in_(wanted),
                order_marks.c.kind == kind,
                order_marks.c.issued_at >= _require_aware(since, "since"),
            )
        )
        for row in rows:
            found.setdefault(row.mark, set()).add(row.rule_id)
    return found


def items_of(store: Store, service_id: str, card_uuids: Iterable[str]) -> dict[str, list[Any]]:
    """Card uuid → its issued items, for the cards among `card_uuids` this service issued."""
    uuids = sorted(set(card_uuids))
    if not uuids:
        return {}
    found: dict[str, list[Any]] = {}
    with store.engine.connect() as connection:
        rows = connection.execute(
            select(issued_items).where(
                issued_items.c.card_uuid.in_(uuids), issued_items.c.service_id == service_id
            )
        )
        for row in rows:
            found.setdefault(row.card_uuid, []).append(row)
    return found


def save_feedback_rules(
    store: Store, rows: Sequence[FeedbackRule], snooze: Sequence[tuple[str, str, datetime]], now: datetime
) -> None:
    """Feedback per rule, each once (a repeat is a no-op), and the snoozes it sets: (subject key,
    rule id, until), a later end replacing an earlier one and never the other way round."""
    if not rows and not snooze:
        return
    with store._writing() as connection:
        if rows:
            statement = store._insert(connection, feedback_rules).on_conflict_do_nothing(
                index_elements=[
                    feedback_rules.c.dedupe_key,
                    feedback_rules.c.rule_id,
                    feedback_rules.c.suggestion_uuid,
                ]
            )
            connection.execute(statement, [vars(row) for row in rows])
        for subject_key, rule_id, until in snooze:
            insert = store._insert(connection, snoozes)
            statement = insert.on_conflict_do_update(
                index_elements=[snoozes.c.subject_key],
                set_={"until": insert.excluded.until, "rule_id": insert.excluded.rule_id},
                where=snoozes.c.until < insert.excluded.until,
            )
            connection.execute(
                statement,
                {"subject_key": subject_key, "rule_id": rule_id, "until": until, "created_at": now},
            )


def count_rows(store: Store, table: Any) -> int:
    """How many rows a table holds (tests, and the prune command's report)."""
    with store.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table)).scalar_one())

"""The counts behind `GET /analytics/rules` (`cds_service/analytics.py`), per rule and UTC day.

Every figure is a `GROUP BY` in the database: no row leaves it, and the columns that could link a
count to a patient (subject keys, order marks, card and suggestion uuids) are never selected, only
counted. What is read: rule ids, days, suggestion labels (card file wording), override reason
system and code as stored, and suppression reasons.

Feedback counts in the day its card was shown (joined to `issued_items` by card and rule), not the
day it arrived: so "accepted" and "overridden" are what became of the cards shown that day, and an
acceptance rate never exceeds 1. Feedback on a card with no issued record (never ours, or pruned) is
not a rule's, so it is not counted here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import ColumnElement, and_, case, distinct, func, select

from cds_service.store.repository import Store, _require_aware
from cds_service.store.tables import feedback_rules, issued_items, suppressed_cards


@dataclass(frozen=True)
class Accepted:
    rule_id: str
    day: date
    label: str | None
    suggestions: int  # acceptances of this suggestion (each feedback item once)


@dataclass(frozen=True)
class AcceptedCards:
    rule_id: str
    day: date
    cards: int  # distinct cards of this rule with at least one accepted suggestion


@dataclass(frozen=True)
class Overridden:
    rule_id: str
    day: date
    system: str | None
    code: str | None
    standard_code: str | None
    overrides: int
    snoozes: int  # of them, overrides that set a snooze


@dataclass(frozen=True)
class Suppressed:
    rule_id: str
    day: date
    reason: str
    cards: int


@dataclass(frozen=True)
class DailyCounts:
    shown: list[tuple[str, date, int]]
    accepted: list[Accepted]
    accepted_cards: list[AcceptedCards]
    overridden: list[Overridden]
    suppressed: list[Suppressed]


def _utc_day(store: Store, column: ColumnElement[datetime]) -> ColumnElement[str]:
    """The UTC calendar day of a stored instant, as `YYYY-MM-DD`, computed in the database.

    SQLite keeps `UTCDateTime` as the UTC text `YYYY-MM-DD HH:MM:SS.ffffff` (tables.py), so its
    first ten characters are the day; PostgreSQL keeps `timestamptz`, read in UTC whatever the
    session's time zone.
    """
    if store.dialect == "sqlite":
        return func.substr(column, 1, 10)
    return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")


def _day(value: str) -> date:
    return date.fromisoformat(value)


def daily(store: Store, since: datetime, until: datetime, rules: Sequence[str] = ()) -> DailyCounts:
    """Per rule and UTC day, from `since` (included) to `until` (excluded), optionally only `rules`."""
    start, end = _require_aware(since, "since"), _require_aware(until, "until")
    issued_day = _utc_day(store, issued_items.c.issued_at)
    in_range = and_(issued_items.c.issued_at >= start, issued_items.c.issued_at < end)
    if rules:
        in_range = and_(in_range, issued_items.c.rule_id.in_(sorted(rules)))
    # Feedback per rule, on the issued item it is about (same card, rule and service).
    on_item = and_(
        feedback_rules.c.card_uuid == issued_items.c.card_uuid,
        feedback_rules.c.rule_id == issued_items.c.rule_id,
        feedback_rules.c.service_id == issued_items.c.service_id,
    )
    joined = feedback_rules.join(issued_items, on_item)
    accepted = feedback_rules.c.outcome == "accepted"
    overridden = feedback_rules.c.outcome == "overridden"

    suppressed_day = _utc_day(store, suppressed_cards.c.suppressed_at)
    suppressed_range = and_(suppressed_cards.c.suppressed_at >= start, suppressed_cards.c.suppressed_at < end)
    if rules:
        suppressed_range = and_(suppressed_range, suppressed_cards.c.rule_id.in_(sorted(rules)))

    # One read transaction: the figures of one answer are of one moment of the database.
    with store.engine.connect() as connection, connection.begin():
        shown = [
            (row.rule_id, _day(row.day), int(row.n))
            for row in connection.execute(
                select(issued_items.c.rule_id, issued_day.label("day"), func.count().label("n"))
                .where(in_range)
                .group_by(issued_items.c.rule_id, issued_day)
            )
        ]
        by_suggestion = [
            Accepted(row.rule_id, _day(row.day), row.label, int(row.n))
            for row in connection.execute(
                select(
                    feedback_rules.c.rule_id,
                    issued_day.label("day"),
                    feedback_rules.c.suggestion_label.label("label"),
                    func.count().label("n"),
                )
                .select_from(joined)
                .where(in_range, accepted)
                .group_by(feedback_rules.c.rule_id, issued_day, feedback_rules.c.suggestion_label)
            )
        ]
        accepted_cards = [
            AcceptedCards(row.rule_id, _day(row.day), int(row.n))
            for row in connection.execute(
                select(
                    feedback_rules.c.rule_id,
                    issued_day.label("day"),
                    func.count(distinct(feedback_rules.c.card_uuid)).label("n"),
                )
                .select_from(joined)
                .where(in_range, accepted)
                .group_by(feedback_rules.c.rule_id, issued_day)
            )
        ]
        snoozed = case((feedback_rules.c.snooze_until.is_not(None), 1), else_=0)
        by_reason = [
            Overridden(
                row.rule_id,
                _day(row.day),
                row.reason_system,
                row.reason_code,
                row.standard_code,
                int(row.n),
                int(row.snoozes),
            )
            for row in connection.execute(
                select(
                    feedback_rules.c.rule_id,
                    issued_day.label("day"),
                    feedback_rules.c.reason_system,
                    feedback_rules.c.reason_code,
                    feedback_rules.c.standard_code,
                    func.count().label("n"),
                    func.sum(snoozed).label("snoozes"),
                )
                .select_from(joined)
                .where(in_range, overridden)
                .group_by(
                    feedback_rules.c.rule_id,
                    issued_day,
                    feedback_rules.c.reason_system,
                    feedback_rules.c.reason_code,
                    feedback_rules.c.standard_code,
                )
            )
        ]
        suppressed = [
            Suppressed(row.rule_id, _day(row.day), row.reason, int(row.n))
            for row in connection.execute(
                select(
                    suppressed_cards.c.rule_id,
                    suppressed_day.label("day"),
                    suppressed_cards.c.reason,
                    func.count().label("n"),
                )
                .where(suppressed_range)
                .group_by(suppressed_cards.c.rule_id, suppressed_day, suppressed_cards.c.reason)
            )
        ]
    return DailyCounts(shown, by_suggestion, accepted_cards, by_reason, suppressed)

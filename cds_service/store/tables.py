"""SQLAlchemy 2 declarative models of the feedback store.

Three tables, deliberately free of patient data:

* `issued_cards` remembers every card the service sent to an EHR (which rule produced it, which
  suggestions it offered). It exists so that feedback, which only names a card uuid, can be tied
  back to the rule that fired, and so that feedback for cards we never issued can be told apart.
* `feedback` keeps every feedback item exactly once (see `dedupe_key`), with the rule it belongs to
  when known. It has no foreign key to `issued_cards` on purpose: feedback for unknown cards (other
  services, expired rows, a misbehaving client) is stored too and flagged, not refused.

* `jwt_replay` is the replay cache of client JWTs: each (`iss`, `jti`) seen, until the token could
  no longer be accepted anyway. Shared through the database so that every replica sees every token.

The tables against alert fatigue (issue 12) are at the end of the module.

The migrations (`0001_initial`, `0002_jwt_replay`, `0003_alert_fatigue`) must create exactly what is
declared here; a test
compares the two with Alembic's autogenerate. Any change to this module needs a new migration.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

#: Deterministic constraint and index names on every database. Without them PostgreSQL and SQLite
#: invent different names, and later migrations could not drop or alter constraints portably.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: The feedback outcomes CDS Hooks 2.0 defines.
OUTCOMES: tuple[str, ...] = ("accepted", "overridden")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp that is always written and read back as UTC.

    PostgreSQL keeps the offset (`timestamptz`), but SQLite has no timestamp type: SQLAlchemy
    stores a naive ISO string there and returns naive datetimes. Normalising to UTC on the way in
    and attaching UTC on the way out makes both databases return the same aware values, and
    refusing naive input stops local wall-clock times from being stored as if they were UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetimes are not stored; pass a timezone-aware datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base carrying the shared metadata (and its naming convention)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class IssuedCardRow(Base):
    """One card sent to an EHR. Written when the hook response is built; never updated."""

    __tablename__ = "issued_cards"

    # Our own UUID strings (version 7, cards.new_uuid); 64 leaves room should the format ever change.
    card_uuid: Mapped[str] = mapped_column(String(64), primary_key=True)
    rule_id: Mapped[str] = mapped_column(String(128), nullable=False)
    service_id: Mapped[str] = mapped_column(String(128), nullable=False)
    hook: Mapped[str] = mapped_column(String(64), nullable=False)
    # Chosen by the EHR, so not length-limited: an over-long value must not fail the hook call.
    hook_instance: Mapped[str] = mapped_column(Text, nullable=False)
    indicator: Mapped[str] = mapped_column(String(16), nullable=False)
    suggestion_uuids: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)

    __table_args__ = (
        Index(None, "rule_id"),
        Index(None, "issued_at"),
    )


class FeedbackRow(Base):
    """One feedback item as received, stored once however often the EHR repeats it.

    Everything that comes from the client (card uuid, codes, comment) is unbounded text: the store
    must never turn a well-formed but unusual feedback item into a database error.
    """

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # sha256 hex of the canonical JSON of (service id, item as received). Unique: the database,
    # not the application, is what makes repeats (even concurrent ones) a no-op.
    dedupe_key: Mapped[str] = mapped_column(String(64), nullable=False)
    service_id: Mapped[str] = mapped_column(String(128), nullable=False)
    card_uuid: Mapped[str] = mapped_column(Text, nullable=False)
    # Looked up from issued_cards when the feedback arrives; None for unknown cards.
    rule_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    unknown_card: Mapped[bool] = mapped_column(Boolean, nullable=False)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    accepted_suggestion_ids: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    unknown_suggestion_ids: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    override_reason_code: Mapped[str | None] = mapped_column(Text, nullable=True)
    override_reason_system: Mapped[str | None] = mapped_column(Text, nullable=True)
    override_reason_display: Mapped[str | None] = mapped_column(Text, nullable=True)
    override_user_comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    outcome_timestamp: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)

    __table_args__ = (
        UniqueConstraint("dedupe_key"),
        CheckConstraint("outcome IN ('accepted', 'overridden')", name="outcome"),
        Index(None, "card_uuid"),
        Index(None, "rule_id"),
        Index(None, "received_at"),
        Index(None, "service_id"),
    )


class JwtReplayRow(Base):
    """A client JWT that was accepted once, remembered so that it is never accepted again.

    The primary key is what makes a replay detectable atomically: a second insert of the same
    (`iss`, `jti`), even on another replica at the same instant, conflicts. `security.py` bounds
    both lengths (issuers come from the configuration, a `jti` is at most 255 bytes).
    """

    __tablename__ = "jwt_replay"

    iss: Mapped[str] = mapped_column(String(512), primary_key=True)
    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    # After this the token fails its time checks anyway, so the row may be deleted.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)

    __table_args__ = (Index(None, "expires_at"),)


# --------------------------------------------------------------------------------------------
# Against alert fatigue (issue 12, migration 0003): what was shown, snoozed and suppressed, per
# rule. Patients appear only as keyed hashes (HMAC-SHA256 with the pseudonym key, `suppression.py`),
# each of a patient *and* a rule (or a card's text), so that no column links one patient's rows
# across rules; rule ids, hooks and counts are not patient data.


class ServiceKeyRow(Base):
    """A secret the service made itself and every replica shares: the pseudonym key when
    ALS_CDS_PSEUDONYM_KEY is not set. Written once (insert if absent), never changed."""

    __tablename__ = "service_keys"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(128), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class IssuedItemRow(Base):
    """One rule's part of an issued card: a card is one item, the care review digest one per
    reminder. Feedback on the card is traced to its rules (and each suggestion to its own rule)
    through these rows, and a snooze reason snoozes the items' subject keys."""

    __tablename__ = "issued_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    card_uuid: Mapped[str] = mapped_column(String(64), nullable=False)
    rule_id: Mapped[str] = mapped_column(String(128), nullable=False)
    rule_version: Mapped[str] = mapped_column(String(32), nullable=False)
    service_id: Mapped[str] = mapped_column(String(128), nullable=False)
    hook: Mapped[str] = mapped_column(String(64), nullable=False)
    indicator: Mapped[str] = mapped_column(String(16), nullable=False)
    # HMAC of (EHR, patient, rule): what a snooze of this rule for this patient is keyed by.
    subject_key: Mapped[str] = mapped_column(String(64), nullable=False)
    # Suggestion uuid → its label, for the suggestions of this rule on this card.
    suggestions: Mapped[dict[str, str]] = mapped_column(JSON, nullable=False)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)

    __table_args__ = (
        Index(None, "card_uuid"),
        Index(None, "rule_id"),
        Index(None, "issued_at"),
    )


class OrderMarkRow(Base):
    """A mark of the order session: `shown`, a non-critical card shown on order-select (HMAC of EHR,
    patient, rule and the card's text); `created`, a code a create suggestion of ours orders (HMAC of
    EHR, patient, resource type and code). Read for `order_session_minutes`, then only pruned."""

    __tablename__ = "order_marks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    mark: Mapped[str] = mapped_column(String(64), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    rule_id: Mapped[str] = mapped_column(String(128), nullable=False)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)

    __table_args__ = (
        CheckConstraint("kind IN ('shown', 'created')", name="kind"),
        Index(None, "mark", "kind"),
        Index(None, "issued_at"),
    )


class SnoozeRow(Base):
    """A rule snoozed for a patient until `until`, by an override with a snooze reason. One row per
    subject key (patient and rule): a later snooze extends it, never shortens it."""

    __tablename__ = "snoozes"

    subject_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    rule_id: Mapped[str] = mapped_column(String(128), nullable=False)
    until: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)

    __table_args__ = (Index(None, "until"),)


class FeedbackRuleRow(Base):
    """What one feedback item means for one rule: accepted (which suggestion) or overridden (which
    reason, with its system and its CDS Hooks 3.0 ballot code where one fits, and the snooze it set).
    A digest card's feedback has one row per rule it concerns; `dedupe_key` is the feedback row's."""

    __tablename__ = "feedback_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dedupe_key: Mapped[str] = mapped_column(String(64), nullable=False)
    service_id: Mapped[str] = mapped_column(String(128), nullable=False)
    card_uuid: Mapped[str] = mapped_column(String(64), nullable=False)
    rule_id: Mapped[str] = mapped_column(String(128), nullable=False)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    # The accepted suggestion ('' for an override: part of the unique key, so never NULL).
    suggestion_uuid: Mapped[str] = mapped_column(String(64), nullable=False)
    suggestion_label: Mapped[str | None] = mapped_column(Text, nullable=True)
    reason_system: Mapped[str | None] = mapped_column(Text, nullable=True)
    reason_code: Mapped[str | None] = mapped_column(Text, nullable=True)
    standard_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    snooze_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)

    __table_args__ = (
        UniqueConstraint("dedupe_key", "rule_id", "suggestion_uuid"),
        CheckConstraint("outcome IN ('accepted', 'overridden')", name="outcome"),
        Index(None, "rule_id"),
        Index(None, "received_at"),
    )


class SuppressedCardRow(Base):
    """A card not shown, and why (`snoozed`, `duplicate`, `own-suggestion`): the rule and the call,
    never the patient. What the analytics count as suppressed."""

    __tablename__ = "suppressed_cards"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rule_id: Mapped[str] = mapped_column(String(128), nullable=False)
    reason: Mapped[str] = mapped_column(String(32), nullable=False)
    service_id: Mapped[str] = mapped_column(String(128), nullable=False)
    hook: Mapped[str] = mapped_column(String(64), nullable=False)
    suppressed_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)

    __table_args__ = (Index(None, "rule_id"), Index(None, "suppressed_at"))


metadata: MetaData = Base.metadata
issued_cards: Table = cast(Table, IssuedCardRow.__table__)
feedback: Table = cast(Table, FeedbackRow.__table__)
jwt_replay: Table = cast(Table, JwtReplayRow.__table__)
service_keys: Table = cast(Table, ServiceKeyRow.__table__)
issued_items: Table = cast(Table, IssuedItemRow.__table__)
order_marks: Table = cast(Table, OrderMarkRow.__table__)
snoozes: Table = cast(Table, SnoozeRow.__table__)
feedback_rules: Table = cast(Table, FeedbackRuleRow.__table__)
suppressed_cards: Table = cast(Table, SuppressedCardRow.__table__)

"""The store: issued cards, the feedback EHRs send about them, and the JWT replay cache.

`Store` is the only thing the web app talks to. It is safe to share between threads and between
worker processes on one database, because every guarantee that matters under concurrency (one row
per feedback item, one row per issued card, one acceptance per client JWT) is enforced by the
database with unique keys and `INSERT ... ON CONFLICT`, never by a read-then-write check in Python.

Privacy: nothing here stores or logs patient data. Feedback bodies (in particular `userComment`,
which is free text a clinician typed) are never logged; log lines carry counts and ids we issued.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, Insert, Table, create_engine, delete, event, make_url, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection
from sqlalchemy.pool import StaticPool

from cds_service.hooks import FeedbackItem
from cds_service.store.tables import feedback, issued_cards, jwt_replay

logger = logging.getLogger(__name__)

#: Where Alembic finds env.py and the revisions; shipped as package data.
MIGRATIONS_DIR: Path = Path(__file__).resolve().parent / "migrations"

#: How long a SQLite writer waits for another writer's lock before giving up.
SQLITE_BUSY_TIMEOUT_MS: int = 30_000

#: Key of the PostgreSQL advisory lock that serialises `migrate()` across worker processes.
_MIGRATION_LOCK_KEY: int = 0x616C735F636473  # "als_cds"

#: Alembic's `context` and `op` are module-global proxies: two migrations running at once in one
#: process would issue each other's statements. Across processes the database lock suffices.
_ALEMBIC_LOCK = threading.Lock()

#: Execution option marking connections that will write (SQLite: `BEGIN IMMEDIATE`).
_WRITE_OPTION = "als_cds_write"


# --------------------------------------------------------------------------------------------
# Public value types


@dataclass(frozen=True)
class IssuedCard:
    """One card the service sent to an EHR. Deliberately holds no patient data at all."""

    card_uuid: str
    rule_id: str
    service_id: str
    hook: str
    hook_instance: str
    indicator: str
    suggestion_uuids: tuple[str, ...]
    issued_at: datetime  # timezone-aware; stored as UTC

    def __post_init__(self) -> None:
        # Accept any iterable (a list from a Card model) but keep the dataclass hashable.
        object.__setattr__(self, "suggestion_uuids", tuple(self.suggestion_uuids))
        _require_aware(self.issued_at, "issued_at")


@dataclass(frozen=True)
class FeedbackSaveResult:
    """What `Store.save_feedback` did with one batch; `stored + duplicates == len(items)`."""

    stored: int  # new rows written
    duplicates: int  # items already stored before, or repeated within the batch
    unknown_cards: int  # items whose card uuid this service never issued (stored anyway, flagged)


# --------------------------------------------------------------------------------------------
# Engine and Alembic configuration


def create_store_engine(database_url: str) -> Engine:
    """Create the engine for a store URL, configured for concurrent use.

    SQLite gets WAL (readers never block the writer), a busy timeout (writers queue instead of
    failing with "database is locked"), `check_same_thread=False` (the engine's pool hands
    connections to any thread), foreign keys on, and `BEGIN IMMEDIATE` for write transactions (see
    `_install_sqlite_transaction_control`). PostgreSQL goes through psycopg 3 with `pool_pre_ping`,
    so connections dropped by a database restart or a proxy are replaced instead of failing a call.
    """
    url = _normalise_url(database_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        in_memory = url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            # An in-memory database lives and dies with its connection: share exactly one.
            **({"poolclass": StaticPool} if in_memory else {}),
        )
        _install_sqlite_transaction_control(engine, wal=not in_memory)
        return engine
    if backend == "postgresql":
        return create_engine(url, pool_pre_ping=True)
    raise ValueError(f"unsupported database backend {backend!r}: use sqlite or postgresql+psycopg")


def _normalise_url(database_url: str) -> URL:
    """Send bare `postgresql://` and Heroku-style `postgres://` URLs to psycopg 3.

    SQLAlchemy's default PostgreSQL driver is psycopg2, which this project does not install.
    """
    url = make_url(database_url)
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def _install_sqlite_transaction_control(engine: Engine, *, wal: bool) -> None:
    """Let SQLAlchemy, not the sqlite3 module, decide how transactions begin.

    The sqlite3 module starts a deferred transaction lazily before the first write. A deferred
    transaction that reads and then writes can fail at once with SQLITE_BUSY (the busy timeout
    does not apply when a read lock must be upgraded), which is exactly what `save_feedback` does
    under concurrent requests. Write transactions therefore start with `BEGIN IMMEDIATE`, taking
    the write lock up front and waiting for it within the busy timeout; reads keep a plain `BEGIN`.
    This is SQLAlchemy's documented recipe for pysqlite transaction control.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # no implicit BEGIN from the sqlite3 module
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_MS)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if wal:
                _enable_wal(cursor)
                cursor.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL, much faster
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _enable_wal(cursor: Any) -> None:
    """PRAGMA journal_mode = WAL, tried again while another connection holds the lock it needs.

    Switching a new file to WAL takes an exclusive lock, and SQLite answers "database is locked" at
    once instead of waiting out the busy timeout (it skips its busy handler where waiting could
    deadlock): two workers starting on a fresh file at the same instant (the image runs two) had
    one of them fail its start-up. The mode is kept in the file, so only the first connections of
    a new database ever meet this; they wait up to the busy timeout, as for any other lock."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary code of an extended one
            if code not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def alembic_config(database_url: str | None = None) -> Config:
    """Alembic configuration built in code, so no alembic.ini is needed anywhere.

    With `database_url`, `alembic.command` functions can be used directly (env.py then opens its
    own engine); `Store.migrate()` instead passes its open connection in `attributes`.
    """
    config = Config()
    # ConfigParser interpolation: a literal % in a path or password must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    if database_url is not None:
        rendered = _normalise_url(database_url).render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


# --------------------------------------------------------------------------------------------
# Feedback helpers


def feedback_dedupe_key(service_id: str, item: FeedbackItem) -> str:
    """sha256 of the canonical JSON of the service id and the item as received.

    Canonical means sorted keys and no insignificant whitespace, so the same item sent twice (a
    retry, a resend after a timeout) has the same key whatever order its fields arrived in, while a
    genuinely different outcome for the same card (other timestamp, other reason) has another.
    """
    canonical = json.dumps(
        {"service_id": service_id, "item": item.model_dump(mode="json")},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _require_aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value.astimezone(UTC)


def _unique(values: Iterable[str]) -> list[str]:
    """Values in first-seen order without repeats (JSON lists, so order is kept stable)."""
    return list(dict.fromkeys(values))


# --------------------------------------------------------------------------------------------
# The store


class Store:
    """Issued cards and feedback on SQLite (embedded, the default) or PostgreSQL (production)."""

    def __init__(self, database_url: str) -> None:
        self._engine: Engine = create_store_engine(database_url)
        # Same pool, but transactions opened through it are write transactions (SQLite: BEGIN
        # IMMEDIATE). On PostgreSQL the option is inert.
        self._write_engine: Engine = self._engine.execution_options(**{_WRITE_OPTION: True})
        # SQLite has one writer at a time; a thread that finds the write lock taken sleeps in
        # SQLite's busy handler, whose back-off grows to 100 ms a try. Under load (dozens of
        # threads writing issued cards and feedback) that made seconds-long tails. Threads of
        # this process queue here instead and each write goes straight through; other processes
        # (workers) still meet the busy timeout, as before.
        self._sqlite_writer = threading.Lock() if self._engine.dialect.name == "sqlite" else None
        self._insert_issued: Insert | None = None

    def __repr__(self) -> str:
        return f"Store({self._engine.url.render_as_string(hide_password=True)!r})"

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A write transaction (committed on success, rolled back on an exception)."""
        with self._sqlite_writer or contextlib.nullcontext(), self._write_engine.begin() as connection:
            yield connection

    @property
    def engine(self) -> Engine:
        """The underlying engine, for tests and diagnostics."""
        return self._engine

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self._engine.dialect.name

    # -- schema ----------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Apply `alembic upgrade head` to this database; a no-op when it is already current.

        Several worker processes may call this at start-up at once. The migration runs in one
        transaction that first takes a lock (SQLite: the write lock of BEGIN IMMEDIATE; PostgreSQL:
        an advisory lock), so the others wait and then find nothing left to do. Within one process
        a thread lock keeps Alembic's global state to one migration at a time.
        """
        config = alembic_config()
        with _ALEMBIC_LOCK, self._write_engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    # -- writes ----------------------------------------------------------------------------------

    def record_issued_cards(self, cards: Sequence[IssuedCard]) -> None:
        """Remember the cards of one hook response, in one transaction.

        A card uuid that is already stored is skipped, not an error: a retried request or a
        replayed response must not turn into a 500 for the EHR.
        """
        rows: dict[str, dict[str, Any]] = {}
        for card in cards:  # on a uuid repeated within the batch, the first occurrence wins
            rows.setdefault(card.card_uuid, _issued_row(card))
        if not rows:
            return
        with self._writing() as connection:
            if self._insert_issued is None:
                # Built once: constructing it (and finding its compiled form) cost a tenth of a
                # millisecond on every hook call.
                self._insert_issued = self._insert(connection, issued_cards).on_conflict_do_nothing(
                    index_elements=[issued_cards.c.card_uuid]
                )
            connection.execute(self._insert_issued, list(rows.values()))

    def save_feedback(
        self, service_id: str, items: Sequence[FeedbackItem], received_at: datetime
    ) -> FeedbackSaveResult:
        """Store a batch of feedback items exactly once each, tied to the rule that issued the card.

        Idempotent: an item identical to one stored before (same service, same content) is counted
        as a duplicate and not written again, also when the same item arrives concurrently on
        several connections or twice in one batch. Feedback for a card this service never issued
        is stored with `unknown_card` set, and accepted suggestion ids that the issued card did not
        offer are listed in `unknown_suggestion_ids`; the EHR still gets a success, since neither
        is something it could fix by retrying.
        """
        received = _require_aware(received_at, "received_at")
        batch: dict[str, FeedbackItem] = {}
        for item in items:
            batch.setdefault(feedback_dedupe_key(service_id, item), item)
        if not batch:
            return FeedbackSaveResult(stored=0, duplicates=0, unknown_cards=0)

        stored = 0
        with self._writing() as connection:
            issued = self._issued_for(connection, service_id, {item.card for item in batch.values()})
            statement = (
                self._insert(connection, feedback)
                .on_conflict_do_nothing(index_elements=[feedback.c.dedupe_key])
                .returning(feedback.c.id)
            )
            for key, item in batch.items():
                row = _feedback_row(key, service_id, item, issued.get(item.card), received)
                # One statement per row (a feedback batch is a handful of items). RETURNING yields
                # the new id only when the row was inserted, on both databases; rowcount is not
                # reliable for INSERT (psycopg 3 under SQLAlchemy reports -1).
                if connection.execute(statement, row).first() is not None:
                    stored += 1

        unknown = sum(1 for item in items if item.card not in issued)
        result = FeedbackSaveResult(stored=stored, duplicates=len(items) - stored, unknown_cards=unknown)
        logger.debug(
            "feedback for service %s: %d stored, %d duplicates, %d for unknown cards",
            service_id,
            result.stored,
            result.duplicates,
            result.unknown_cards,
        )
        return result

    def record_jti(self, issuer: str, jti: str, expires_at: datetime, now: datetime) -> bool:
        """Remember a client JWT's (`iss`, `jti`) until `expires_at`; False when it was seen before.

        Atomic across threads, processes and replicas: one `INSERT ... ON CONFLICT` statement, so of
        two requests carrying the same token at the same instant exactly one gets True. A row whose
        `expires_at` has passed (not yet purged) no longer counts: it is taken over, since a token
        that old fails its time checks before it ever gets here.
        """
        expires = _require_aware(expires_at, "expires_at")
        current = _require_aware(now, "now")
        with self._writing() as connection:
            insert = self._insert(connection, jwt_replay)
            statement = insert.on_conflict_do_update(
                index_elements=[jwt_replay.c.iss, jwt_replay.c.jti],
                set_={"expires_at": insert.excluded.expires_at},
                where=jwt_replay.c.expires_at < current,
            ).returning(jwt_replay.c.jti)
            row = connection.execute(statement, {"iss": issuer, "jti": jti, "expires_at": expires}).first()
        return row is not None

    def purge_expired_jtis(self, now: datetime) -> int:
        """Delete replay-cache rows whose token can no longer be accepted; returns how many."""
        current = _require_aware(now, "now")
        with self._writing() as connection:
            result = connection.execute(delete(jwt_replay).where(jwt_replay.c.expires_at < current))
        return max(result.rowcount or 0, 0)

    # -- reads -----------------------------------------------------------------------------------

    def issued_card_rule(self, card_uuid: str) -> str | None:
        """The rule that produced an issued card, or None for a uuid we never issued."""
        with self._engine.connect() as connection:
            return connection.execute(
                select(issued_cards.c.rule_id).where(issued_cards.c.card_uuid == card_uuid)
            ).scalar_one_or_none()

    def issued_card_uuids(self, card_uuids: Iterable[str]) -> set[str]:
        """The uuids among `card_uuids` whose issued-card record is stored (by any service)."""
        wanted = sorted(set(card_uuids))
        if not wanted:
            return set()
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(issued_cards.c.card_uuid).where(issued_cards.c.card_uuid.in_(wanted))
            )
            return set(rows.scalars())

    def feedback_rows(self, service_id: str | None = None) -> list[dict[str, Any]]:
        """Stored feedback as plain dicts of its columns, oldest first (tests and analytics)."""
        query = select(feedback).order_by(feedback.c.id)
        if service_id is not None:
            query = query.where(feedback.c.service_id == service_id)
        with self._engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def ping(self) -> bool:
        """Whether the database answers `SELECT 1`; for readiness probes, so it never raises."""
        try:
            with self._engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:  # any failure means "not ready"; the probe reports, not raises
            logger.warning("database ping failed: %s", type(exc).__name__)
            return False
        return True

    def close(self) -> None:
        """Close every pooled connection (the store can be used again afterwards; it reconnects)."""
        self._engine.dispose()

    # -- internals -------------------------------------------------------------------------------

    @staticmethod
    def _insert(connection: Connection, table: Table) -> Insert:
        """The dialect's own INSERT, which is the one that supports ON CONFLICT DO NOTHING."""
        if connection.dialect.name == "sqlite":
            return sqlite.insert(table)
        if connection.dialect.name == "postgresql":
            return postgresql.insert(table)
        raise ValueError(f"unsupported dialect {connection.dialect.name!r}")  # pragma: no cover

    @staticmethod
    def _issued_for(connection: Connection, service_id: str, card_uuids: set[str]) -> dict[str, Any]:
        """The issued cards among `card_uuids` that this service issued, by card uuid.

        A card issued by another service of ours counts as unknown here: feedback is posted to the
        service that returned the card, so anything else is a misrouted or forged item.
        """
        rows = connection.execute(
            select(issued_cards.c.card_uuid, issued_cards.c.rule_id, issued_cards.c.suggestion_uuids).where(
                issued_cards.c.card_uuid.in_(sorted(card_uuids)),
                issued_cards.c.service_id == service_id,
            )
        )
        return {row.card_uuid: row for row in rows}


def _issued_row(card: IssuedCard) -> dict[str, Any]:
    """The `issued_cards` columns for one card."""
    return {
        "card_uuid": card.card_uuid,
        "rule_id": card.rule_id,
        "service_id": card.service_id,
        "hook": card.hook,
        "hook_instance": card.hook_instance,
        "indicator": card.indicator,
        "suggestion_uuids": list(card.suggestion_uuids),
        "issued_at": _require_aware(card.issued_at, "issued_at"),
    }


def _feedback_row(
    dedupe_key: str, service_id: str, item: FeedbackItem, issued: Any | None, received_at: datetime
) -> dict[str, Any]:
    """The `feedback` columns for one item. Only the first override reason is kept in columns."""
    accepted = _unique(s.id for s in item.acceptedSuggestions or [])
    # For an unknown card no suggestion id can be vouched for, so all of them are unknown.
    offered = set(issued.suggestion_uuids) if issued is not None else set()
    reasons = item.reasons()
    first = reasons[0] if reasons else None
    coding = first.reason if first is not None else None
    return {
        "dedupe_key": dedupe_key,
        "service_id": service_id,
        "card_uuid": item.card,
        "rule_id": issued.rule_id if issued is not None else None,
        "unknown_card": issued is None,
        "outcome": item.outcome,
        "accepted_suggestion_ids": accepted,
        "unknown_suggestion_ids": [s for s in accepted if s not in offered],
        "override_reason_code": coding.code if coding is not None else None,
        "override_reason_system": coding.system if coding is not None else None,
        "override_reason_display": coding.display if coding is not None else None,
        "override_user_comment": first.userComment if first is not None else None,
        "outcome_timestamp": item.outcomeTimestamp.astimezone(UTC),
        "received_at": received_at,
    }

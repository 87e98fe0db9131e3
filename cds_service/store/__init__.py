"""Storage of issued cards and CDS Hooks feedback (SQLite or PostgreSQL, migrated by Alembic).

The web app uses `Store` and the two value types; the rest is exported for the CLI
(`alembic_config`) and for tests.
"""

from cds_service.store.repository import (
    FeedbackSaveResult,
    IssuedCard,
    Store,
    alembic_config,
    create_store_engine,
    feedback_dedupe_key,
)
from cds_service.store.tables import metadata

__all__ = [
    "FeedbackSaveResult",
    "IssuedCard",
    "Store",
    "alembic_config",
    "create_store_engine",
    "feedback_dedupe_key",
    "metadata",
]

"""Replay cache of client JWTs: jwt_replay.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

Written out in full rather than importing `cds_service.store.tables`, like 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "jwt_replay",
        sa.Column("iss", sa.String(length=512), nullable=False),
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("iss", "jti", name=op.f("pk_jwt_replay")),
    )
    op.create_index(op.f("ix_jwt_replay_expires_at"), "jwt_replay", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_jwt_replay_expires_at"), table_name="jwt_replay")
    op.drop_table("jwt_replay")

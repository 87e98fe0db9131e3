"""Initial schema: issued_cards and feedback.

Revision ID: 0001
Revises:
Create Date: 2024-11-22

Written out in full rather than importing `cds_service.store.tables`, so that this revision keeps
creating the same schema however the models change later. A test checks that it matches the models
as they are now.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "issued_cards",
        sa.Column("card_uuid", sa.String(length=64), nullable=False),
        sa.Column("rule_id", sa.String(length=128), nullable=False),
        sa.Column("service_id", sa.String(length=128), nullable=False),
        sa.Column("hook", sa.String(length=64), nullable=False),
        sa.Column("hook_instance", sa.Text(), nullable=False),
        sa.Column("indicator", sa.String(length=16), nullable=False),
        sa.Column("suggestion_uuids", sa.JSON(), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("card_uuid", name=op.f("pk_issued_cards")),
    )
    op.create_index(op.f("ix_issued_cards_rule_id"), "issued_cards", ["rule_id"], unique=False)
    op.create_index(op.f("ix_issued_cards_issued_at"), "issued_cards", ["issued_at"], unique=False)

    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dedupe_key", sa.String(length=64), nullable=False),
        sa.Column("service_id", sa.String(length=128), nullable=False),
        sa.Column("card_uuid", sa.Text(), nullable=False),
        sa.Column("rule_id", sa.String(length=128), nullable=True),
        sa.Column("unknown_card", sa.Boolean(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("accepted_suggestion_ids", sa.JSON(), nullable=False),
        sa.Column("unknown_suggestion_ids", sa.JSON(), nullable=False),
        sa.Column("override_reason_code", sa.Text(), nullable=True),
        sa.Column("override_reason_system", sa.Text(), nullable=True),
        sa.Column("override_reason_display", sa.Text(), nullable=True),
        sa.Column("override_user_comment", sa.Text(), nullable=True),
        sa.Column("outcome_timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("outcome IN ('accepted', 'overridden')", name=op.f("ck_feedback_outcome")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_feedback_dedupe_key")),
    )
    op.create_index(op.f("ix_feedback_card_uuid"), "feedback", ["card_uuid"], unique=False)
    op.create_index(op.f("ix_feedback_rule_id"), "feedback", ["rule_id"], unique=False)
    op.create_index(op.f("ix_feedback_received_at"), "feedback", ["received_at"], unique=False)
    op.create_index(op.f("ix_feedback_service_id"), "feedback", ["service_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_feedback_service_id"), table_name="feedback")
    op.drop_index(op.f("ix_feedback_received_at"), table_name="feedback")
    op.drop_index(op.f("ix_feedback_rule_id"), table_name="feedback")
    op.drop_index(op.f("ix_feedback_card_uuid"), table_name="feedback")
    op.drop_table("feedback")
    op.drop_index(op.f("ix_issued_cards_issued_at"), table_name="issued_cards")
    op.drop_index(op.f("ix_issued_cards_rule_id"), table_name="issued_cards")
    op.drop_table("issued_cards")

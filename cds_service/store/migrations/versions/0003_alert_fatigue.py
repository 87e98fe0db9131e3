"""Against alert fatigue (issue 12): issued items, order session marks, snoozes, feedback per rule,
suppressed cards, and the service's own pseudonym key.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

Written out in full rather than importing `cds_service.store.tables`, like 0001 and 0002.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feedback_rules",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dedupe_key", sa.String(length=64), nullable=False),
        sa.Column("service_id", sa.String(length=128), nullable=False),
        sa.Column("card_uuid", sa.String(length=64), nullable=False),
        sa.Column("rule_id", sa.String(length=128), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("suggestion_uuid", sa.String(length=64), nullable=False),
        sa.Column("suggestion_label", sa.Text(), nullable=True),
        sa.Column("reason_system", sa.Text(), nullable=True),
        sa.Column("reason_code", sa.Text(), nullable=True),
        sa.Column("standard_code", sa.String(length=64), nullable=True),
        sa.Column("snooze_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("outcome IN ('accepted', 'overridden')", name=op.f("ck_feedback_rules_outcome")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback_rules")),
        sa.UniqueConstraint(
            "dedupe_key",
            "rule_id",
            "suggestion_uuid",
            name=op.f("uq_feedback_rules_dedupe_key_rule_id_suggestion_uuid"),
        ),
    )
    op.create_index(op.f("ix_feedback_rules_received_at"), "feedback_rules", ["received_at"], unique=False)
    op.create_index(op.f("ix_feedback_rules_rule_id"), "feedback_rules", ["rule_id"], unique=False)

    op.create_table(
        "issued_items",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("card_uuid", sa.String(length=64), nullable=False),
        sa.Column("rule_id", sa.String(length=128), nullable=False),
        sa.Column("rule_version", sa.String(length=32), nullable=False),
        sa.Column("service_id", sa.String(length=128), nullable=False),
        sa.Column("hook", sa.String(length=64), nullable=False),
        sa.Column("indicator", sa.String(length=16), nullable=False),
        sa.Column("subject_key", sa.String(length=64), nullable=False),
        sa.Column("suggestions", sa.JSON(), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_issued_items")),
    )
    op.create_index(op.f("ix_issued_items_card_uuid"), "issued_items", ["card_uuid"], unique=False)
    op.create_index(op.f("ix_issued_items_issued_at"), "issued_items", ["issued_at"], unique=False)
    op.create_index(op.f("ix_issued_items_rule_id"), "issued_items", ["rule_id"], unique=False)

    op.create_table(
        "order_marks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("mark", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("rule_id", sa.String(length=128), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('shown', 'created')", name=op.f("ck_order_marks_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_marks")),
    )
    op.create_index(op.f("ix_order_marks_issued_at"), "order_marks", ["issued_at"], unique=False)
    op.create_index(op.f("ix_order_marks_mark_kind"), "order_marks", ["mark", "kind"], unique=False)

    op.create_table(
        "service_keys",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_service_keys")),
    )
    op.create_table(
        "snoozes",
        sa.Column("subject_key", sa.String(length=64), nullable=False),
        sa.Column("rule_id", sa.String(length=128), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("subject_key", name=op.f("pk_snoozes")),
    )
    op.create_index(op.f("ix_snoozes_until"), "snoozes", ["until"], unique=False)

    op.create_table(
        "suppressed_cards",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("rule_id", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("service_id", sa.String(length=128), nullable=False),
        sa.Column("hook", sa.String(length=64), nullable=False),
        sa.Column("suppressed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suppressed_cards")),
    )
    op.create_index(op.f("ix_suppressed_cards_rule_id"), "suppressed_cards", ["rule_id"], unique=False)
    op.create_index(
        op.f("ix_suppressed_cards_suppressed_at"), "suppressed_cards", ["suppressed_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_suppressed_cards_suppressed_at"), table_name="suppressed_cards")
    op.drop_index(op.f("ix_suppressed_cards_rule_id"), table_name="suppressed_cards")

    op.drop_table("suppressed_cards")
    op.drop_index(op.f("ix_snoozes_until"), table_name="snoozes")

    op.drop_table("snoozes")
    op.drop_table("service_keys")
    op.drop_index(op.f("ix_order_marks_mark_kind"), table_name="order_marks")
    op.drop_index(op.f("ix_order_marks_issued_at"), table_name="order_marks")

    op.drop_table("order_marks")
    op.drop_index(op.f("ix_issued_items_rule_id"), table_name="issued_items")
    op.drop_index(op.f("ix_issued_items_issued_at"), table_name="issued_items")
    op.drop_index(op.f("ix_issued_items_card_uuid"), table_name="issued_items")

    op.drop_table("issued_items")
    op.drop_index(op.f("ix_feedback_rules_rule_id"), table_name="feedback_rules")
    op.drop_index(op.f("ix_feedback_rules_received_at"), table_name="feedback_rules")

    op.drop_table("feedback_rules")

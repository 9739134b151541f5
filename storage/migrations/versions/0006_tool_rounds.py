"""Tool rounds: the calls of each turn with their results, the confirmations they
wait for, and a channel's tool rules.

Revision ID: 0006_tool_rounds
Revises: 0005_usage
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_tool_rounds"
down_revision = "0005_usage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("channel_settings") as batch:
        batch.add_column(sa.Column("tools", sa.String(), nullable=True))
    op.create_table(
        "tool_calls",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("turn_id", sa.Integer(), nullable=False),
        sa.Column(
            "user_message_id",
            sa.Integer(),
            sa.ForeignKey("messages.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("call_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("arguments", sa.Text(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("is_error", sa.Boolean(), nullable=False, server_default="0"),
        sa.Column("tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("round_text", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint(
            "turn_id", "round", "position", name="uq_tool_calls_turn_round_position"
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_tool_calls_user_message_id", "tool_calls", ["user_message_id"])
    op.create_table(
        "tool_confirmations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "turn_id",
            sa.Integer(),
            sa.ForeignKey("turns.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("tool", sa.String(), nullable=False),
        sa.Column("arguments_hash", sa.String(), nullable=False),
        sa.Column("platform", sa.String(), nullable=False),
        sa.Column("asker_id", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("decided_by", sa.String(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint(
            "turn_id", "round", "position", name="uq_tool_confirmations_turn_round_position"
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_tool_confirmations_asker_id", "tool_confirmations", ["asker_id"])


def downgrade() -> None:
    op.drop_index("ix_tool_confirmations_asker_id", "tool_confirmations")
    op.drop_table("tool_confirmations")
    op.drop_index("ix_tool_calls_user_message_id", "tool_calls")
    op.drop_table("tool_calls")
    with op.batch_alter_table("channel_settings") as batch:
        batch.drop_column("tools")

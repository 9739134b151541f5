"""The first tables: conversations, messages, turns, channel settings and their audit,
purge claims.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

AUTOINCREMENT = {"sqlite_autoincrement": True}


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("platform", sa.String(), nullable=False),
        sa.Column("workspace", sa.String(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("thread", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reset_after_message_id", sa.Integer(), nullable=True),
        sa.Column("trim_noticed", sa.Boolean(), nullable=False),
        sa.Column("busy_until", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint(
            "platform", "workspace", "channel", "thread", name="uq_conversations_key"
        ),
        **AUTOINCREMENT,
    )

    op.create_table(
        "messages",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "conversation_id",
            sa.Integer(),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("author_id", sa.String(), nullable=False),
        sa.Column("author_name", sa.String(), nullable=False),
        sa.Column("text", sa.String(), nullable=False),
        sa.Column("platform_message_id", sa.String(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("model", sa.String(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("reply_to_id", sa.Integer(), nullable=True),
        sa.Column("audio", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        **AUTOINCREMENT,
    )
    op.create_index("ix_messages_conversation_id_id", "messages", ["conversation_id", "id"])
    op.create_index("ix_messages_created_at", "messages", ["created_at"])
    op.create_index("ix_messages_author_id", "messages", ["author_id"])
    op.create_index("ix_messages_platform_message_id", "messages", ["platform_message_id"])

    op.create_table(
        "turns",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("platform", sa.String(), nullable=False),
        sa.Column("message_key", sa.String(), nullable=False),
        sa.Column(
            "conversation_id",
            sa.Integer(),
            sa.ForeignKey("conversations.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column(
            "user_message_id",
            sa.Integer(),
            sa.ForeignKey("messages.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("is_channel_admin", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("reply_target", sa.String(), nullable=False),
        sa.Column("reply_ref", sa.String(), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("platform", "message_key", name="uq_turns_platform_message_key"),
        **AUTOINCREMENT,
    )
    op.create_index("ix_turns_created_at", "turns", ["created_at"])
    op.create_index("ix_turns_status", "turns", ["status"])
    op.create_index("ix_turns_conversation_id", "turns", ["conversation_id"])
    op.create_index("ix_turns_user_message_id", "turns", ["user_message_id"])
    op.create_index("ix_turns_reply_ref", "turns", ["reply_ref"])

    op.create_table(
        "channel_settings",
        sa.Column("platform", sa.String(), primary_key=True),
        sa.Column("workspace", sa.String(), primary_key=True),
        sa.Column("channel", sa.String(), primary_key=True),
        sa.Column("instructions", sa.String(), nullable=True),
        sa.Column("model", sa.String(), nullable=True),
        sa.Column("retention_days", sa.Integer(), nullable=True),
        sa.Column("speech_model", sa.String(), nullable=True),
        sa.Column("speech_voice", sa.String(), nullable=True),
        sa.Column("updated_by", sa.String(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )

    op.create_table(
        "setting_changes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("platform", sa.String(), nullable=False),
        sa.Column("workspace", sa.String(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("field", sa.String(), nullable=False),
        sa.Column("old_value", sa.String(), nullable=True),
        sa.Column("new_value", sa.String(), nullable=True),
        sa.Column("changed_by", sa.String(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_setting_changes_channel", "setting_changes", ["platform", "workspace", "channel"]
    )
    op.create_index("ix_setting_changes_changed_by", "setting_changes", ["changed_by"])

    op.create_table(
        "purge_claims",
        sa.Column("job", sa.String(), primary_key=True),
        sa.Column("period", sa.String(), primary_key=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("purge_claims")
    op.drop_table("setting_changes")
    op.drop_table("channel_settings")
    op.drop_table("turns")
    op.drop_table("messages")
    op.drop_table("conversations")

"""Members who opted out of being listened to in a server's voice channels
(`/voice ignore-me`), kept across restarts and shared by every process.

Revision ID: 0010_voice_opt_outs
Revises: 0009_channel_background
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_voice_opt_outs"
down_revision = "0009_channel_background"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "voice_opt_outs",
        sa.Column("platform", sa.String(), nullable=False),
        sa.Column("workspace", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("platform", "workspace", "user_id"),
    )


def downgrade() -> None:
    op.drop_table("voice_opt_outs")

"""A server's voice mode (`/voice mode pipeline|realtime|default`): how the bot answers
members talking in that server's voice channels; NULL: the configured `[voice] mode`.

A column of `channel_settings`, not a table of its own: that table already keeps
workspace-wide values on the row whose channel is '' (a Discord server is the
workspace), and everything a setting needs comes with it for free: the audit trail
(`setting_changes`: who, when, old, new) written in the same transaction as the change,
forget-me taking the changer's name off both, an uninstalled workspace deleting both,
and the store's settings cache (cleared on every change). A separate table would have
to repeat each of those. The column is only ever set on the workspace row; channel rows
keep it NULL, so the server's value shows through for every channel.

Revision ID: 0011_voice_modes
Revises: 0010_voice_opt_outs
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_voice_modes"
down_revision = "0010_voice_opt_outs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("channel_settings") as batch:
        batch.add_column(sa.Column("voice_mode", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("channel_settings") as batch:
        batch.drop_column("voice_mode")

"""A channel's background-mode setting: answers asked for in background mode on the
Responses backend always (true), never (false), or as the model says (NULL).

Revision ID: 0009_channel_background
Revises: 0008_background_responses
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_channel_background"
down_revision = "0008_background_responses"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("channel_settings") as batch:
        batch.add_column(sa.Column("background", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("channel_settings") as batch:
        batch.drop_column("background")

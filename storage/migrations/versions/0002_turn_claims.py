"""Turns are claimed, not leased: one running turn per conversation, a heartbeat per
running turn, and no busy mark on conversations.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

Plain ALTER TABLE statements that SQLite (3.35+) and PostgreSQL both run in place:
batch mode would rebuild the SQLite tables, and dropping the old `conversations`
table with foreign keys on would cascade into its messages.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

RUNNING = sa.text("status = 'running'")
PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    op.execute("ALTER TABLE turns RENAME COLUMN lease_until TO alive_until")
    op.add_column("turns", sa.Column("claimed_by", sa.String(), nullable=True))
    op.add_column("turns", sa.Column("claims", sa.Integer(), nullable=False, server_default="0"))
    op.create_index(
        "uq_turns_one_running",
        "turns",
        ["conversation_id"],
        unique=True,
        postgresql_where=RUNNING,
        sqlite_where=RUNNING,
    )
    op.create_index(
        "ix_turns_pending",
        "turns",
        ["conversation_id", "id"],
        postgresql_where=PENDING,
        sqlite_where=PENDING,
    )
    op.execute("ALTER TABLE conversations DROP COLUMN busy_until")


def downgrade() -> None:
    op.add_column(
        "conversations", sa.Column("busy_until", sa.DateTime(timezone=True), nullable=True)
    )
    op.drop_index("ix_turns_pending", "turns")
    op.drop_index("uq_turns_one_running", "turns")
    op.execute("UPDATE turns SET status = 'pending' WHERE status = 'running'")
    op.execute("ALTER TABLE turns DROP COLUMN claims")
    op.execute("ALTER TABLE turns DROP COLUMN claimed_by")
    op.execute("ALTER TABLE turns RENAME COLUMN alive_until TO lease_until")

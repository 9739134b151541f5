"""Whether a conversation ever had a tool round (`conversations.has_tool_rounds`).

Every turn with tools offered asks for the tool rounds of its history's questions, a
round trip on PostgreSQL that finds nothing in nearly every conversation. The flag is
set in the transaction that stores a conversation's first round and never unset (a
round forgotten later only costs that question), and the statements that claim a turn
on PostgreSQL read it with the turn's other reads, so the round trip is made only when
rounds can exist. Conversations that already have rounds get it here.

Revision ID: 0012_tool_round_flag
Revises: 0011_voice_modes
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_tool_round_flag"
down_revision = "0011_voice_modes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ALTER TABLE ... ADD COLUMN on both (SQLite takes a constant default): a
    # batch would copy the table on SQLite, which every other table refers to.
    op.add_column(
        "conversations",
        sa.Column("has_tool_rounds", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.execute(
        "UPDATE conversations SET has_tool_rounds = TRUE WHERE id IN ("
        "SELECT turns.conversation_id FROM tool_calls JOIN turns ON turns.id = tool_calls.turn_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("has_tool_rounds")

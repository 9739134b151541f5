"""Background responses: the endpoint's id of the response answering a turn (and the
tool round it answers), so a restart follows that response instead of asking again.

Revision ID: 0008_background_responses
Revises: 0007_message_search
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_background_responses"
# The brief named 0005_usage; main's chain has since grown 0006_tool_rounds, and two
# heads would stop every upgrade. The lead re-chains at merge time.
down_revision = "0007_message_search"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("turns") as batch:
        batch.add_column(sa.Column("model_response_id", sa.String(), nullable=True))
        batch.add_column(sa.Column("model_response_round", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("turns") as batch:
        batch.drop_column("model_response_round")
        batch.drop_column("model_response_id")

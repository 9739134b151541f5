"""Slack's OAuth tables (multi-workspace installs), under our migrations.

Revision ID: 0003_slack_oauth
Revises: 0002
Create Date: 2026-11-30

Exactly the tables and indexes slack-sdk's async SQLAlchemy stores define
(`slack_sdk.oauth.installation_store.sqlalchemy`, `slack_sdk.oauth.state_store.sqlalchemy`,
unchanged since slack-sdk 3.8): the stores read and write them on the bot's own
engine, and their `create_tables()` is never called. Naive `DateTime` columns
and `String(n)` lengths are theirs: slack-sdk writes naive UTC datetimes.
A database where the previous release let the stores create these tables
themselves already has them, identical: they are adopted, not created again.
tests/slack/test_oauth_tables.py compares them with slack-sdk's metadata.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_slack_oauth"
down_revision = "0002"
branch_labels = None
depends_on = None

SLACK_TABLES = ("slack_installations", "slack_bots", "slack_oauth_states")


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "slack_installations" not in existing:
        op.create_table(
            "slack_installations",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column("client_id", sa.String(32), nullable=False),
            sa.Column("app_id", sa.String(32), nullable=False),
            sa.Column("enterprise_id", sa.String(32)),
            sa.Column("enterprise_name", sa.String(200)),
            sa.Column("enterprise_url", sa.String(200)),
            sa.Column("team_id", sa.String(32)),
            sa.Column("team_name", sa.String(200)),
            sa.Column("bot_token", sa.String(200)),
            sa.Column("bot_id", sa.String(32)),
            sa.Column("bot_user_id", sa.String(32)),
            sa.Column("bot_scopes", sa.String(1000)),
            sa.Column("bot_refresh_token", sa.String(200)),
            sa.Column("bot_token_expires_at", sa.DateTime()),
            sa.Column("user_id", sa.String(32), nullable=False),
            sa.Column("user_token", sa.String(200)),
            sa.Column("user_scopes", sa.String(1000)),
            sa.Column("user_refresh_token", sa.String(200)),
            sa.Column("user_token_expires_at", sa.DateTime()),
            sa.Column("incoming_webhook_url", sa.String(200)),
            sa.Column("incoming_webhook_channel", sa.String(200)),
            sa.Column("incoming_webhook_channel_id", sa.String(200)),
            sa.Column("incoming_webhook_configuration_url", sa.String(200)),
            sa.Column("is_enterprise_install", sa.Boolean(), nullable=False),
            sa.Column("token_type", sa.String(32)),
            sa.Column("installed_at", sa.DateTime(), nullable=False),
        )
        op.create_index(
            "slack_installations_idx",
            "slack_installations",
            ["client_id", "enterprise_id", "team_id", "user_id", "installed_at"],
        )
    if "slack_bots" not in existing:
        op.create_table(
            "slack_bots",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column("client_id", sa.String(32), nullable=False),
            sa.Column("app_id", sa.String(32), nullable=False),
            sa.Column("enterprise_id", sa.String(32)),
            sa.Column("enterprise_name", sa.String(200)),
            sa.Column("team_id", sa.String(32)),
            sa.Column("team_name", sa.String(200)),
            sa.Column("bot_token", sa.String(200)),
            sa.Column("bot_id", sa.String(32)),
            sa.Column("bot_user_id", sa.String(32)),
            sa.Column("bot_scopes", sa.String(1000)),
            sa.Column("bot_refresh_token", sa.String(200)),
            sa.Column("bot_token_expires_at", sa.DateTime()),
            sa.Column("is_enterprise_install", sa.Boolean(), nullable=False),
            sa.Column("installed_at", sa.DateTime(), nullable=False),
        )
        op.create_index(
            "slack_bots_idx",
            "slack_bots",
            ["client_id", "enterprise_id", "team_id", "installed_at"],
        )
    if "slack_oauth_states" not in existing:
        op.create_table(
            "slack_oauth_states",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column("state", sa.String(200), nullable=False),
            sa.Column("expire_at", sa.DateTime(), nullable=False),
        )


def downgrade() -> None:
    op.drop_table("slack_oauth_states")
    op.drop_index("slack_bots_idx", "slack_bots")
    op.drop_table("slack_bots")
    op.drop_index("slack_installations_idx", "slack_installations")
    op.drop_table("slack_installations")

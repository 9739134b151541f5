"""Multi-workspace installs: Slack's OAuth flow with installations kept in our database.

slack-sdk's async SQLAlchemy stores keep installations (`slack_installations`,
`slack_bots`) and OAuth states (`slack_oauth_states`) in the same database as
the conversations, on the one engine the runtime opened. Their tables belong to
our Alembic migrations (`0003_slack_oauth`), like every other table: the stores'
`create_tables()` is never called, so a schema change of slack-sdk cannot slip
into a database behind the migrations' back (tests/slack/test_oauth_tables.py
notices one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlparse

from slack_bolt.oauth.async_oauth_settings import AsyncOAuthSettings
from slack_sdk.oauth.installation_store.sqlalchemy import AsyncSQLAlchemyInstallationStore
from slack_sdk.oauth.state_store.sqlalchemy import AsyncSQLAlchemyOAuthStateStore
from sqlalchemy.ext.asyncio import AsyncEngine

from botservice.core.errors import ConfigError
from botservice.core.settings import Settings

log = logging.getLogger(__name__)

# Keep in step with config/slack-manifest.yml.
BOT_SCOPES = (
    "app_mentions:read",
    "assistant:write",
    "channels:history",
    "chat:write",
    "commands",
    "files:read",
    # Posting the images the model makes (files.uploadV2).
    "files:write",
    "groups:history",
    "im:history",
    "mpim:history",
    "users:read",
)
INSTALL_PATH = "/slack/install"
REDIRECT_PATH = "/slack/oauth_redirect"
STATE_EXPIRATION_SECONDS = 600


@dataclass
class SlackOAuth:
    client_id: str
    client_secret: str
    api_url: str
    # The bot's own engine (owned and disposed by the store), with migrated tables.
    engine: AsyncEngine
    install_path: str = INSTALL_PATH
    redirect_path: str = REDIRECT_PATH

    def __post_init__(self) -> None:
        self.installations = AsyncSQLAlchemyInstallationStore(
            client_id=self.client_id, engine=self.engine
        )
        self.states = AsyncSQLAlchemyOAuthStateStore(
            expiration_seconds=STATE_EXPIRATION_SECONDS, engine=self.engine
        )

    @classmethod
    def from_settings(cls, settings: Settings, engine: AsyncEngine) -> SlackOAuth:
        slack = settings.slack
        if not slack.client_id or not slack.client_secret:
            raise ConfigError(
                "SLACK_CLIENT_SECRET",
                "multi-workspace installs need both SLACK_CLIENT_ID and SLACK_CLIENT_SECRET "
                "(Basic Information > App Credentials)",
            )
        return cls(
            client_id=slack.client_id,
            client_secret=slack.client_secret.get_secret_value(),
            api_url=slack.api_url,
            engine=engine,
        )

    def bolt_settings(self) -> AsyncOAuthSettings:
        return AsyncOAuthSettings(
            client_id=self.client_id,
            client_secret=self.client_secret,
            scopes=list(BOT_SCOPES),
            install_path=self.install_path,
            redirect_uri_path=self.redirect_path,
            installation_store=self.installations,
            installation_store_bot_only=True,
            state_store=self.states,
            authorization_url=self._authorization_url(),
        )

    async def bot_token(self, enterprise: str | None, team: str) -> str | None:
        bot = await self.installations.async_find_bot(enterprise_id=enterprise, team_id=team)
        return bot.bot_token if bot is not None else None

    async def delete_workspace(self, enterprise: str | None, team: str) -> None:
        await self.installations.async_delete_all(enterprise_id=enterprise, team_id=team)

    def _authorization_url(self) -> str:
        # Slack-compatible servers (and tests) serve the consent page next to their API.
        parsed = urlparse(self.api_url)
        if parsed.hostname in ("slack.com", "www.slack.com"):
            return "https://slack.com/oauth/v2/authorize"
        return f"{parsed.scheme}://{parsed.netloc}/oauth/v2/authorize"

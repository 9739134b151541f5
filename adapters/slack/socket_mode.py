"""Socket Mode: Slack pushes events over a websocket opened from here (no public URL)."""

from __future__ import annotations

import logging

from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from botservice.core.errors import ConfigError

log = logging.getLogger(__name__)


class SocketModeRunner:
    """Connects once at `start` (slack-sdk reconnects by itself) and closes at `stop`.

    The websocket URL comes from `apps.connections.open` on the Web API base
    URL, so `SLACK_API_URL` moves Socket Mode too.
    """

    def __init__(self, app: AsyncApp, app_token: str, client: AsyncWebClient) -> None:
        # slack-sdk's own loggers (quieted by botservice.app.logs) log the envelopes.
        self._handler = AsyncSocketModeHandler(app, app_token=app_token, web_client=client)

    async def start(self) -> None:
        try:
            await self._handler.connect_async()
        except SlackApiError as error:
            code = error.response.get("error") if error.response is not None else "unknown"
            raise ConfigError(
                "SLACK_APP_TOKEN",
                f"Slack refused the app-level token ({code}); create one with the "
                "connections:write scope under Basic Information > App-Level Tokens",
            ) from None
        log.info("Slack Socket Mode connected")

    def is_connected(self) -> bool:
        # What slack-sdk's own (async) `is_connected` checks, minus the ping-pong age:
        # its monitor marks a silent session stale and reconnects on its own.
        client = self._handler.client
        session = client.current_session
        return not client.closed and not client.stale and session is not None and not session.closed

    async def stop(self) -> None:
        await self._handler.close_async()

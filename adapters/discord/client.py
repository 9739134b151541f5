"""The discord.py client: intents, sharding and endpoint overrides from settings."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.state import ConnectionState

from botservice.adapters.discord.supervision import guard_frames
from botservice.core.settings import DiscordSettings
from botservice.core.telemetry import NO_TELEMETRY, Telemetry

log = logging.getLogger(__name__)

_DISCORD_API = "https://discord.com/api/v10"
_DISCORD_GATEWAY = DiscordWebSocket.DEFAULT_GATEWAY

MessageHook = Callable[[discord.Message], Awaitable[None]]
SetupHook = Callable[[discord.Client], Awaitable[None]]
VoiceStateHook = Callable[[discord.Member, discord.VoiceState, discord.VoiceState], Awaitable[None]]
# A click on an answer's feedback button: (interaction, verdict, turn tag).
FeedbackHook = Callable[[discord.Interaction[Any], str, str], Awaitable[None]]
# A click on a tool call's Approve / Deny button: (interaction, the button's custom id).
ConfirmationHook = Callable[[discord.Interaction[Any], str], Awaitable[None]]


def configure_endpoints(settings: DiscordSettings) -> None:
    """Point discord.py at the configured REST API and gateway.

    discord.py keeps both as class attributes, so this is process-wide: one process
    talks to one Discord (or one Discord-compatible server).
    """
    discord.http.Route.BASE = settings.api_url.rstrip("/")
    DiscordWebSocket.DEFAULT_GATEWAY = (
        yarl.URL(settings.gateway_url) if settings.gateway_url else _DISCORD_GATEWAY
    )


def bot_intents() -> discord.Intents:
    # Guild and DM messages with their content; no members or presences (privileged and
    # not needed: a message carries its author's member data and roles are cached).
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.dm_messages = True
    intents.message_content = True
    # Who is in which voice channel: where to join, whom to speak to, when to leave.
    intents.voice_states = True
    return intents


class BotClient(discord.Client):
    """Forwards the events the adapter cares about; holds no behaviour of its own."""

    def __init__(
        self,
        *,
        on_message: MessageHook,
        on_setup: SetupHook,
        on_voice_state: VoiceStateHook | None = None,
        on_feedback: FeedbackHook | None = None,
        on_confirmation: ConfirmationHook | None = None,
        telemetry: Telemetry = NO_TELEMETRY,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if telemetry is not NO_TELEMETRY:
            _count_requests(self.http, telemetry)
        self._on_message_hook = on_message
        self._on_setup_hook = on_setup
        self._on_voice_state_hook = on_voice_state
        self._on_feedback_hook = on_feedback
        self._on_confirmation_hook = on_confirmation
        self.became_ready = asyncio.Event()
        self._session_up = False
        self._guild_ready_timeout = float(options.get("guild_ready_timeout", 2.0))
        _guard_every_connection(self._connection)
        if type(self._connection) is ConnectionState:
            _ready_once_every_guild_arrived(self._connection)

    def gateway_up(self) -> bool:
        """Connected to the gateway with a ready (or resumed) session."""
        if self.is_closed() or not self._session_up:
            return False
        return self.ws is not None and self.ws.open

    async def setup_hook(self) -> None:
        await self._on_setup_hook(self)

    async def on_ready(self) -> None:
        log.info("Discord client ready as %s in %d guilds", self.user, len(self.guilds))
        # Shortened for this start-up only (see _ready_once_every_guild_arrived).
        self._connection.guild_ready_timeout = self._guild_ready_timeout
        self._session_up = True
        self.became_ready.set()

    async def on_resumed(self) -> None:
        log.info("Discord gateway session resumed")
        self._session_up = True

    async def on_disconnect(self) -> None:
        if self._session_up and not self.is_closed():
            log.warning("Discord gateway disconnected; reconnecting")
        self._session_up = False

    async def on_message(self, message: discord.Message) -> None:
        await self._on_message_hook(message)

    async def on_feedback_click(
        self, interaction: discord.Interaction[Any], verdict: str, turn_tag: str
    ) -> None:
        # Dispatched by `feedback_buttons.FeedbackButton.callback`.
        if self._on_feedback_hook is not None:
            await self._on_feedback_hook(interaction, verdict, turn_tag)

    async def on_confirmation_click(
        self, interaction: discord.Interaction[Any], custom_id: str
    ) -> None:
        # Dispatched by `confirmation_buttons.ConfirmationButton.callback`.
        if self._on_confirmation_hook is not None:
            await self._on_confirmation_hook(interaction, custom_id)

    async def on_voice_state_update(
        self, member: discord.Member, before: discord.VoiceState, after: discord.VoiceState
    ) -> None:
        if self._on_voice_state_hook is not None:
            await self._on_voice_state_hook(member, before, after)


def _guard_every_connection(state: ConnectionState[Any]) -> None:
    # discord.py hands every new gateway websocket (each shard's, each reconnect's) to
    # `_update_references` before it reads the first frame: the one place to guard them all.
    update_references = state._update_references

    def update_and_guard(ws: DiscordWebSocket) -> None:
        update_references(ws)
        guard_frames(ws)

    state._update_references = update_and_guard  # type: ignore[method-assign]


def _ready_once_every_guild_arrived(state: ConnectionState[Any]) -> None:
    # After READY, discord.py waits until no GUILD_CREATE came for `guild_ready_timeout`
    # (2 s) before it calls the client ready: a fixed 2 s on every start, most of the
    # time from process start to serving. READY lists every guild of the session (as
    # unavailable); once each of them has arrived nothing more is awaited, so the wait
    # ends at once. discord.py reads the timeout afresh for each guild it waits for;
    # `on_ready` puts the configured value back for the next session.
    add_ready_state = state._add_ready_state

    def add_and_check(guild: discord.Guild) -> bool:
        waiting = add_ready_state(guild)
        if waiting and all(not known.unavailable for known in state._guilds.values()):
            state.guild_ready_timeout = 0.0
        return waiting

    state._add_ready_state = add_and_check  # type: ignore[method-assign]


class ShardedBotClient(BotClient, discord.AutoShardedClient):
    def gateway_up(self) -> bool:
        # Each shard reconnects on its own; every shard must be connected to serve its guilds.
        if self.is_closed() or not self.is_ready():
            return False
        return all(not shard.is_closed() for shard in self.shards.values())


def make_client(
    settings: DiscordSettings,
    *,
    on_message: MessageHook,
    on_setup: SetupHook,
    on_voice_state: VoiceStateHook | None = None,
    on_feedback: FeedbackHook | None = None,
    on_confirmation: ConfirmationHook | None = None,
    guild_ready_timeout: float = 2.0,
    telemetry: Telemetry = NO_TELEMETRY,
    connector: aiohttp.BaseConnector | None = None,
) -> BotClient:
    """`connector`: the HTTP connector of discord.py's REST and websocket connections (a
    test passes one that trusts its voice gateway's certificate: discord.py always dials
    the voice gateway with `wss://`)."""
    configure_endpoints(settings)
    options: dict[str, Any] = {
        "intents": bot_intents(),
        "guild_ready_timeout": guild_ready_timeout,
        # The core keeps history; discord.py's message cache only serves edits/deletes.
        "max_messages": 1000,
        "allowed_mentions": discord.AllowedMentions.none(),
        "telemetry": telemetry,
    }
    if connector is not None:
        options["connector"] = connector
    if settings.shard_count is None:
        return BotClient(
            on_message=on_message,
            on_setup=on_setup,
            on_voice_state=on_voice_state,
            on_feedback=on_feedback,
            on_confirmation=on_confirmation,
            **options,
        )
    shard_ids = list(settings.shard_ids) or None
    return ShardedBotClient(
        on_message=on_message,
        on_setup=on_setup,
        on_voice_state=on_voice_state,
        on_feedback=on_feedback,
        on_confirmation=on_confirmation,
        shard_count=settings.shard_count,
        shard_ids=shard_ids,
        **options,
    )


def _count_requests(http: discord.http.HTTPClient, telemetry: Telemetry) -> None:
    """Count every REST call by its route template ("PATCH /channels/{channel_id}/messages/
    {message_id}": no ids, so the label set stays small) and outcome ("ok" or the HTTP
    status). One wrapper on the client's `request`: every call, the sinks', the
    interactions' and discord.py's own, passes through it."""
    request = http.request

    async def counted(route: discord.http.Route, **kwargs: Any) -> Any:
        method = f"{route.method} {route.path}"
        started = time.perf_counter()
        try:
            result = await request(route, **kwargs)
        except discord.HTTPException as error:
            telemetry.platform_call(
                "discord", method, str(error.status), seconds=time.perf_counter() - started
            )
            raise
        except (OSError, TimeoutError):
            telemetry.platform_call(
                "discord", method, "transport", seconds=time.perf_counter() - started
            )
            raise
        telemetry.platform_call("discord", method, "ok", seconds=time.perf_counter() - started)
        return result

    http.request = counted  # type: ignore[method-assign]

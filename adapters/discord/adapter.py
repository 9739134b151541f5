"""The Discord adapter: start, stop, and rebuild reply sinks for turns left pending."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
import discord
from discord.http import Route

from botservice.adapters.discord.client import BotClient, make_client
from botservice.adapters.discord.commands import TreeExtension, build_command_tree
from botservice.adapters.discord.confirmation import DiscordConfirmations
from botservice.adapters.discord.confirmation_buttons import ConfirmationButton
from botservice.adapters.discord.context import DiscordContext
from botservice.adapters.discord.feedback import DiscordFeedback
from botservice.adapters.discord.feedback_buttons import FeedbackButton
from botservice.adapters.discord.interactions import DiscordInteractions, on_tree_error
from botservice.adapters.discord.messages import DiscordMessages
from botservice.adapters.discord.sink import NO_MENTIONS, InteractionReplySink
from botservice.adapters.discord.supervision import run_gateway
from botservice.adapters.discord.voice.commands import voice_extension
from botservice.adapters.discord.voice.connection import DiscordVoice
from botservice.adapters.discord.voice.hearing import DiscordHearing
from botservice.core.errors import ConfigError
from botservice.core.ports import Lookups, PendingTurn, ReplySink
from botservice.core.redact import redact_url
from botservice.core.settings import Settings
from botservice.voice.speech import SpeechEngine
from botservice.voice.transcription import Transcriber

if TYPE_CHECKING:
    from botservice.core.conversation import ConversationCore

log = logging.getLogger(__name__)

BAD_TOKEN = (
    "Discord rejected the bot token; copy it again from the Developer Portal "
    "(Applications → your app → Bot → Reset Token)"
)
MISSING_INTENT = (
    "the bot needs the Message Content intent; enable it in the Developer Portal "
    "(Applications → your app → Bot → Privileged Gateway Intents → Message Content Intent)"
)
# Leave a margin before the 15-minute interaction token expiry.
_TOKEN_MARGIN_SECONDS = 30


class DiscordAdapter:
    platform = "discord"

    def __init__(
        self,
        settings: Settings,
        core: ConversationCore,
        lookups: Lookups,
        *,
        extensions: Sequence[TreeExtension] = (),
        guild_ready_timeout: float = 2.0,
        start_timeout: float = 60.0,
        voice: bool = True,
        voice_connect_cls: type[discord.VoiceProtocol] = discord.VoiceClient,
        speech_engine: SpeechEngine | None = None,
        http_connector: Callable[[], aiohttp.BaseConnector] | None = None,
    ) -> None:
        self.settings = settings
        self.context = DiscordContext(settings=settings, core=core, lookups=lookups)
        self.messages = DiscordMessages(self.context)
        self.interactions = DiscordInteractions(self.context, self.messages)
        self.feedback = DiscordFeedback(self.context)
        self.confirmations = DiscordConfirmations(self.context)
        # Transcription needs only HTTP, so voice messages work even where speaking cannot.
        self.hearing = DiscordHearing(
            Transcriber.from_settings(
                settings.voice,
                model_base_url=settings.model.base_url,
                api_key=settings.model.api_key,
            ),
            self.context.require_client,
        )
        self.context.hearing = self.hearing
        self.voice: DiscordVoice | None = None
        if voice:
            self.voice = DiscordVoice(
                self.context,
                self.interactions,
                connect_cls=voice_connect_cls,
                engine=speech_engine,
                transcriber=self.hearing.transcriber,
            )
            self.context.voice = self.voice
            extensions = (voice_extension(self.voice), *extensions)
        self._extensions = tuple(extensions)
        self._guild_ready_timeout = guild_ready_timeout
        self._http_connector = http_connector
        self._start_timeout = start_timeout
        self._client: BotClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._serving = False

    @property
    def client(self) -> BotClient:
        assert self._client is not None, "start() the adapter first"
        return self._client

    def http_routes(self) -> list[Any]:
        return []

    async def start(self) -> None:
        discord_settings = self.settings.discord
        if discord_settings.token is None:
            raise ConfigError("DISCORD_TOKEN", "is not set; the Discord adapter needs a bot token")
        _check_shards(discord_settings.shard_count, discord_settings.shard_ids)
        if self.voice is not None:
            self.voice.report_dependencies()
        client = make_client(
            discord_settings,
            on_message=self.messages.on_message,
            on_setup=self._setup,
            on_voice_state=self.voice.on_voice_state_update if self.voice else None,
            on_feedback=self.feedback.on_click,
            on_confirmation=self.confirmations.on_click,
            guild_ready_timeout=self._guild_ready_timeout,
            telemetry=self.context.core.telemetry,
            connector=self._http_connector() if self._http_connector is not None else None,
        )
        self._client = client
        self.context.client = client
        try:
            await client.login(discord_settings.token.get_secret_value())
        except discord.LoginFailure:
            await client.close()
            raise ConfigError("DISCORD_TOKEN", BAD_TOKEN) from None
        except (aiohttp.ClientError, OSError) as error:
            await client.close()
            raise ConfigError(
                "DISCORD_API_URL",
                f"cannot reach {redact_url(discord_settings.api_url)} ({type(error).__name__}); "
                "check the URL and the network",
            ) from None
        self._task = asyncio.create_task(
            run_gateway(client, serving=lambda: self._serving), name="discord-gateway"
        )
        ready = asyncio.create_task(client.became_ready.wait())
        done, _ = await asyncio.wait(
            {self._task, ready}, timeout=self._start_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if ready in done:
            self._serving = True
            log.info(
                "Discord adapter serving (%s)",
                _describe_shards(discord_settings.shard_count, discord_settings.shard_ids),
            )
            return
        ready.cancel()
        failure = self._task.exception() if self._task in done else None
        await self.stop()
        raise _start_error(failure, self._start_timeout) from None

    def is_connected(self) -> bool:
        return self._serving and self._client is not None and self._client.gateway_up()

    async def stop(self) -> None:
        self._serving = False
        if self.voice is not None:
            await self.voice.aclose()
        if self._client is not None and not self._client.is_closed():
            await self._client.close()
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._task, timeout=10)
            self._task = None
        await self.hearing.aclose()

    async def _setup(self, client: discord.Client) -> None:
        tree = build_command_tree(client, self.interactions, self._extensions)
        tree.error(on_tree_error)
        # Clicks are understood from the custom id alone: buttons shown before a restart
        # still work.
        client.add_dynamic_items(FeedbackButton, ConfirmationButton)
        application = client.application
        if application is not None:
            owners = {application.owner.id}
            if application.team is not None:
                owners |= {member.id for member in application.team.members}
            self.context.owner_ids = frozenset(owners)

    # --- resuming pending turns ---------------------------------------------------------

    def sink_for(self, turn: PendingTurn) -> ReplySink | None:
        target = turn.reply_target
        client = self.client
        kind = target.get("kind")
        if kind == "message":
            reply_to = target.get("reply_to")
            sink = self.messages.sink(
                int(target["channel_id"]),
                reply_to=int(reply_to) if reply_to else None,
                thread=turn.conversation.thread,
            )
            # A voice message stored before a stop is heard when its turn resumes.
            return self.hearing.listening(sink)
        if kind != "interaction":
            return None
        ephemeral = bool(target.get("ephemeral"))
        # Targets stored before tokens moved under "secrets" keep it at the top.
        token = (target.get("secrets") or target).get("token")
        if not token or time.time() > float(target.get("expires_at", 0)) - _TOKEN_MARGIN_SECONDS:
            # The interaction token has expired: a public answer can still go to the channel.
            if ephemeral or not target.get("channel_id"):
                return None
            return self.messages.sink(
                int(target["channel_id"]), reply_to=None, thread=turn.conversation.thread
            )
        application_id = target["application_id"]
        # The same follow-up webhook discord.py builds for a live interaction.
        followup = discord.Webhook.from_state(
            data={"id": application_id, "type": 3, "token": token},
            state=client._connection,
        )

        async def edit_original(text: str, view: discord.ui.View | None) -> int | None:
            route = Route(
                "PATCH",
                "/webhooks/{webhook_id}/{webhook_token}/messages/@original",
                webhook_id=application_id,
                webhook_token=token,
            )
            payload: dict[str, Any] = {"content": text, "allowed_mentions": NO_MENTIONS.to_dict()}
            if view is not None:
                # The buttons are dynamic items: clicks find them by custom id, unstored.
                payload["components"] = view.to_components()
            data = await client.http.request(route, json=payload)
            return int(data["id"]) if isinstance(data, dict) and "id" in data else None

        return InteractionReplySink(
            followup=followup, edit_original=edit_original, ephemeral=ephemeral
        )


def _check_shards(count: int | None, ids: tuple[int, ...]) -> None:
    if ids and count is None:
        raise ConfigError(
            "DISCORD_SHARD_IDS", "needs DISCORD_SHARD_COUNT (the total number of shards)"
        )
    if count is not None and any(not 0 <= shard < count for shard in ids):
        raise ConfigError(
            "DISCORD_SHARD_IDS",
            f"every shard id must be between 0 and {count - 1} (DISCORD_SHARD_COUNT - 1)",
        )


def _describe_shards(count: int | None, ids: tuple[int, ...]) -> str:
    if count is None:
        return "unsharded"
    return f"shards {list(ids) if ids else 'all'} of {count}"


def _start_error(error: BaseException | None, timeout: float) -> ConfigError:
    if isinstance(error, discord.PrivilegedIntentsRequired):
        return ConfigError("DISCORD_TOKEN", MISSING_INTENT)
    if isinstance(error, discord.LoginFailure) or (
        isinstance(error, discord.ConnectionClosed) and error.code == 4004
    ):
        return ConfigError("DISCORD_TOKEN", BAD_TOKEN)
    if isinstance(error, discord.ConnectionClosed) and error.code in (4010, 4011):
        return ConfigError(
            "DISCORD_SHARD_COUNT",
            "Discord refused the shard settings (too few shards for the bot's guilds, or an "
            "invalid shard id)",
        )
    if error is None:
        return ConfigError(
            "DISCORD_GATEWAY_URL",
            f"the Discord gateway did not become ready within {timeout:.0f} seconds; "
            "check the network and DISCORD_GATEWAY_URL",
        )
    return ConfigError(
        "DISCORD_GATEWAY_URL", f"could not connect to the Discord gateway ({type(error).__name__})"
    )

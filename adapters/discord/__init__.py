"""Discord: slash commands, mentions, reply chains and threads, answered by message edits.

The runtime builds the adapter with `create_adapter(settings, core, lookups)`, then
`await adapter.start()` (returns once connected and ready; raises `ConfigError` for a
bad token or a missing intent) and `await adapter.stop()`. Slash commands are
registered separately with `sync_commands` (`botservice discord sync-commands`). Voice
(`/voice ...`, spoken answers, voice messages) is part of both by default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import aiohttp
import discord

from botservice.adapters.discord.adapter import DiscordAdapter
from botservice.adapters.discord.commands import TreeExtension
from botservice.adapters.discord.sync import sync_commands
from botservice.core.ports import Lookups
from botservice.core.settings import Settings

if TYPE_CHECKING:
    from botservice.core.conversation import ConversationCore

__all__ = ["DiscordAdapter", "TreeExtension", "create_adapter", "sync_commands"]


def create_adapter(
    settings: Settings,
    core: ConversationCore,
    lookups: Lookups,
    *,
    extensions: Sequence[TreeExtension] = (),
    guild_ready_timeout: float = 2.0,
    voice: bool = True,
    voice_connect_cls: type[discord.VoiceProtocol] = discord.VoiceClient,
    http_connector: Callable[[], aiohttp.BaseConnector] | None = None,
) -> DiscordAdapter:
    """With `voice` (the default) the `/voice` commands join the tree through `extensions`'
    seam; `voice_connect_cls` is the `discord.VoiceProtocol` voice connects with;
    `http_connector` makes the aiohttp connector discord.py connects with (tests: one that
    trusts the fake voice gateway's certificate)."""
    return DiscordAdapter(
        settings,
        core,
        lookups,
        extensions=extensions,
        guild_ready_timeout=guild_ready_timeout,
        voice=voice,
        voice_connect_cls=voice_connect_cls,
        http_connector=http_connector,
    )

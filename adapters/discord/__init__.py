"""Discord: slash commands, mentions, reply chains and threads, answered by message edits.

The runtime builds the adapter with `create_adapter(settings, core)`, then
`await adapter.start()` (returns once connected and ready; raises `ConfigError` for a
bad token or a missing intent) and `await adapter.stop()`. Slash commands are
registered separately with `sync_commands` (`botservice discord sync-commands`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from adapters.discord.adapter import DiscordAdapter
from adapters.discord.commands import TreeExtension
from adapters.discord.sync import sync_commands
from botservice.settings import Settings

if TYPE_CHECKING:
    from botservice.conversation import ConversationCore

__all__ = ["DiscordAdapter", "TreeExtension", "create_adapter", "sync_commands"]


def create_adapter(
    settings: Settings,
    core: ConversationCore,
    *,
    extensions: Sequence[TreeExtension] = (),
    guild_ready_timeout: float = 2.0,
) -> DiscordAdapter:
    return DiscordAdapter(
        settings, core, extensions=extensions, guild_ready_timeout=guild_ready_timeout
    )

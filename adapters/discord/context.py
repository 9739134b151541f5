"""What the Discord handlers share: the core, the settings, the client once it exists."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import discord

from adapters.discord.reply_chains import ReplyChains
from botservice.settings import Settings

if TYPE_CHECKING:
    from botservice.conversation import ConversationCore


@dataclass
class DiscordContext:
    settings: Settings
    core: ConversationCore
    chains: ReplyChains = field(default_factory=ReplyChains)
    owner_ids: frozenset[int] = frozenset()
    client: discord.Client | None = None

    @property
    def bot_id(self) -> int:
        assert self.client is not None and self.client.user is not None
        return self.client.user.id

    def require_client(self) -> discord.Client:
        assert self.client is not None, "the Discord client has not been created"
        return self.client

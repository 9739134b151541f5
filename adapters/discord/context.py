"""What the Discord handlers share: the core, the settings, the client once it exists."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import discord

from adapters.discord.reply_chains import ReplyChains
from botservice.ports import ReplySink
from botservice.settings import Settings

if TYPE_CHECKING:
    from adapters.discord.events import Place
    from adapters.discord.voice import DiscordVoice
    from adapters.discord.voice_messages import DiscordHearing
    from botservice.conversation import ConversationCore


@dataclass
class DiscordContext:
    settings: Settings
    core: ConversationCore
    chains: ReplyChains = field(default_factory=ReplyChains)
    owner_ids: frozenset[int] = frozenset()
    client: discord.Client | None = None
    voice: DiscordVoice | None = None
    hearing: DiscordHearing | None = None

    @property
    def bot_id(self) -> int:
        assert self.client is not None and self.client.user is not None
        return self.client.user.id

    def require_client(self) -> discord.Client:
        assert self.client is not None, "the Discord client has not been created"
        return self.client

    async def spoken(
        self,
        sink: ReplySink,
        *,
        guild_id: int | None,
        user: Any,
        channel_id: int | None,
        place: Place,
    ) -> ReplySink:
        """The sink, also spoken in the guild's voice channel when the person is there, in
        the voice and speech model of `place`'s channel."""
        if self.voice is None:
            return sink
        return await self.voice.speaking_sink(
            sink, guild_id=guild_id, user=user, channel_id=channel_id, place=place
        )

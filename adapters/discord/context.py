"""What the Discord handlers share: the core, the store's lookups, the settings, the client
once it exists."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import discord

from botservice.adapters.discord.reply_chains import ReplyChains
from botservice.core.ports import Lookups, ReplySink
from botservice.core.settings import Settings

if TYPE_CHECKING:
    from botservice.adapters.discord.events import Place
    from botservice.core.conversation import ConversationCore


# The handlers reach voice through these two roles, so this module (which every
# handler imports) never imports the voice package, which imports the handlers.
class Speaking(Protocol):
    """Answers also spoken in a voice channel (`voice.connection.DiscordVoice`)."""

    async def speaking_sink(
        self,
        sink: ReplySink,
        *,
        guild_id: int | None,
        user: Any,
        channel_id: int | None,
        place: Place,
    ) -> ReplySink: ...


class Hearing(Protocol):
    """Voice messages transcribed before they are answered (`voice.hearing.DiscordHearing`)."""

    def listening(self, sink: ReplySink) -> ReplySink: ...


@dataclass
class DiscordContext:
    settings: Settings
    core: ConversationCore
    lookups: Lookups
    chains: ReplyChains = field(default_factory=ReplyChains)
    owner_ids: frozenset[int] = frozenset()
    client: discord.Client | None = None
    voice: Speaking | None = None
    hearing: Hearing | None = None

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

"""Where a Discord voice message (or audio file) becomes text: a sink that can hear.

The message is stored like any other (its audio named by CDN URL, never kept); the core
asks the reply sink to hear it when it answers, again after a restart. The sink
downloads the audio from Discord's CDN, transcribes it, and shows the transcript above
the answer.
"""

from __future__ import annotations

from collections.abc import Callable

import discord

from botservice.core.events import Attachment
from botservice.core.ports import ReplySink
from botservice.voice.messages import ListeningSink
from botservice.voice.transcription import Transcriber


class DiscordHearing:
    def __init__(self, transcriber: Transcriber, client: Callable[[], discord.Client]) -> None:
        self.transcriber = transcriber
        self._client = client

    def listening(self, sink: ReplySink) -> ListeningSink:
        """`sink`, able to hear the audio of the message it answers."""

        async def fetch(audio: Attachment) -> bytes:
            return await self._client().http.get_from_cdn(audio.url)

        return ListeningSink(sink, self.transcriber, fetch)

    async def aclose(self) -> None:
        await self.transcriber.aclose()

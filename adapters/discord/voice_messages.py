"""Where a Discord voice message (or audio file) becomes text for the core.

The audio is downloaded from Discord's CDN, transcribed, and never kept: the core gets
the transcript as the message's text, and the answer shows it above the reply.
"""

from __future__ import annotations

import contextlib
import logging

import discord

from adapters.discord import events
from botservice.events import IncomingMessage
from botservice.ports import ReplySink
from botservice.transcription import Transcriber, TranscriptionError
from botservice.voice_messages import (
    AudioClip,
    HeardSink,
    RecentKeys,
    heard_message,
    transcribe_clips,
)

log = logging.getLogger(__name__)


class DiscordHearing:
    def __init__(self, transcriber: Transcriber) -> None:
        self.transcriber = transcriber
        self._recent = RecentKeys()

    async def hear(
        self, message: discord.Message, incoming: IncomingMessage, sink: ReplySink
    ) -> tuple[IncomingMessage, ReplySink] | None:
        """The message with its audio as text, and a sink that shows the transcript; the
        same pair when there is no audio. None when it must not be answered: the message
        is already being heard, or its audio could not be transcribed (the person has
        been told why, in one sentence)."""
        audio = events.audio_attachments(message)
        if not audio:
            return incoming, sink
        if not self._recent.add(str(message.id)):
            return None
        clips = [
            AudioClip(
                name=item.filename,
                content_type=events.content_type_of(item),
                size=item.size,
                fetch=item.read,
            )
            for item in audio
        ]
        with contextlib.suppress(discord.HTTPException):
            await message.channel.typing()
        try:
            transcript = await transcribe_clips(self.transcriber, clips)
        except TranscriptionError as error:
            log.warning("could not transcribe Discord message %s: %s", message.id, error)
            await sink.notice(error.user_message, private=False)
            return None
        return heard_message(incoming, transcript), HeardSink(sink, transcript)

    async def aclose(self) -> None:
        await self.transcriber.aclose()

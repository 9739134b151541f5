"""Realtime mode in a Discord voice channel: the session's audio source and transcripts.

`RealtimeSource` is the one audio source played while a realtime session is open: the
player thread reads the session's 48 kHz stereo frames (silence while the model is
quiet, so there is no player to restart between answers). `ChatTranscripts` writes both
sides of the talk into the voice channel's text chat and keeps each member's words with
the answer that followed as one turn of the channel's conversation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import discord

from botservice.voice.realtime import SILENCE_FRAME, RealtimePlayback

HEARD = '\N{MICROPHONE} {name}: "{text}"'
SPOKEN = "\N{SPEAKER WITH THREE SOUND WAVES} {text}"
# Kept as the answer of a member's words the model did not answer aloud.
NO_ANSWER = "_(No answer was spoken.)_"
MAX_CHARS = 1800


class RealtimeSource(discord.AudioSource):
    def __init__(self, playback: RealtimePlayback) -> None:
        self._playback = playback

    def read(self) -> bytes:
        return self._playback.read() or SILENCE_FRAME

    def is_opus(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Heard:
    """A member's words as the realtime server transcribed them, posted in the chat."""

    user_id: int
    name: str
    text: str
    posted_id: int


Keep = Callable[[Heard, str, bool], Awaitable[object]]


def _shown(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + "…"


class ChatTranscripts:
    """`RealtimeTranscripts` for a voice channel: each side posted in its text chat, and
    kept (`keep(heard, answer, interrupted)`) as a turn once the answer is known."""

    def __init__(
        self,
        post: Callable[[str], Awaitable[int | None]],
        member_name: Callable[[int], str | None],
        keep: Keep,
    ) -> None:
        self._post = post
        self._member_name = member_name
        self._keep = keep
        self._waiting: Heard | None = None

    async def member_said(self, user_id: int, text: str) -> None:
        name = self._member_name(user_id)
        if name is None:
            return
        posted = await self._post(HEARD.format(name=name, text=_shown(text)))
        if posted is None:
            return
        await self.flush()
        self._waiting = Heard(user_id, name, text, posted)

    async def bot_said(self, text: str, *, interrupted: bool) -> None:
        await self._post(SPOKEN.format(text=_shown(text)))
        heard, self._waiting = self._waiting, None
        if heard is not None:
            await self._keep(heard, text, interrupted)

    async def flush(self) -> None:
        """Words still waiting for an answer are kept without one."""
        heard, self._waiting = self._waiting, None
        if heard is not None:
            await self._keep(heard, NO_ANSWER, False)

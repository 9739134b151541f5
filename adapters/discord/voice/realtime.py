"""Realtime mode in a Discord voice channel: the session's audio source and transcripts.

`RealtimeSource` is the one audio source played while a realtime session is open: the
player thread reads the session's 48 kHz stereo frames (silence while the model is
quiet, so there is no player to restart between answers). `ChatTranscripts` writes both
sides of the talk into the voice channel's text chat.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import discord

from botservice.voice.realtime import SILENCE_FRAME, RealtimePlayback

HEARD = '\N{MICROPHONE} {name}: "{text}"'
SPOKEN = "\N{SPEAKER WITH THREE SOUND WAVES} {text}"
MAX_CHARS = 1800


class RealtimeSource(discord.AudioSource):
    def __init__(self, playback: RealtimePlayback) -> None:
        self._playback = playback

    def read(self) -> bytes:
        return self._playback.read() or SILENCE_FRAME

    def is_opus(self) -> bool:
        return False


def _shown(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + "…"


class ChatTranscripts:
    """`RealtimeTranscripts` that posts each side in the voice channel's text chat."""

    def __init__(
        self,
        post: Callable[[str], Awaitable[object]],
        member_name: Callable[[int], str | None],
    ) -> None:
        self._post = post
        self._member_name = member_name

    async def member_said(self, user_id: int, text: str) -> None:
        name = self._member_name(user_id)
        if name is not None:
            await self._post(HEARD.format(name=name, text=_shown(text)))

    async def bot_said(self, text: str) -> None:
        await self._post(SPOKEN.format(text=_shown(text)))

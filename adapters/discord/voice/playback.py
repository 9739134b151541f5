"""Speech frames into a Discord voice connection.

`DiscordPlayback(voice_client)` is the playback a `VoiceSpeaker` calls with each
sentence: it plays the sentence's 20 ms PCM frames through discord.py's audio
player (which Opus-encodes them) and returns when they have been played; when
the speaker is interrupted it stops the player at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import Callable
from typing import Any, Protocol

import discord

from botservice.core.telemetry import NO_TELEMETRY, Telemetry
from botservice.voice.audio import FRAME_BYTES, AudioError
from botservice.voice.pipeline import Utterance

SILENCE = bytes(FRAME_BYTES)
# How long a read may wait for a late frame before playing silence instead.
LATE_FRAME_WAIT_SECONDS = 0.005
FRAME_SECONDS = 0.02


class VoicePlayer(Protocol):
    """The part of `discord.VoiceClient` that plays audio."""

    def play(
        self, source: discord.AudioSource, *, after: Callable[[Exception | None], Any] | None = None
    ) -> None: ...

    def stop(self) -> None: ...

    def is_playing(self) -> bool: ...


class FrameQueueSource(discord.AudioSource):
    """PCM frames pushed from the event loop and read by discord.py's player thread.

    If the next frame is late the player gets silence instead of waiting, so
    its 20 ms clock never drifts; after `end()` and the last frame it stops.
    """

    def __init__(self) -> None:
        self._frames: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.closed = False
        self.frames_read = 0
        self.underruns = 0

    def push(self, frame: bytes) -> None:
        self._frames.put(frame)

    def end(self) -> None:
        self._frames.put(None)

    def read(self) -> bytes:
        try:
            frame = self._frames.get(timeout=LATE_FRAME_WAIT_SECONDS)
        except queue.Empty:
            self.underruns += 1
            return SILENCE
        if frame is None:
            return b""
        self.frames_read += 1
        return frame

    def is_opus(self) -> bool:
        return False

    def cleanup(self) -> None:
        self.closed = True


class DiscordPlayback:
    """A `Playback` for `VoiceSpeaker` over one voice connection."""

    def __init__(self, voice_client: VoicePlayer, telemetry: Telemetry = NO_TELEMETRY) -> None:
        self.voice_client = voice_client
        self._telemetry = telemetry

    async def __call__(self, utterance: Utterance) -> None:
        first = await anext(utterance.frames, None)
        if first is None:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Exception | None] = loop.create_future()

        def after(error: Exception | None) -> None:
            # Runs in the player thread.
            loop.call_soon_threadsafe(_resolve, done, error)

        source = FrameQueueSource()
        source.push(first)
        try:
            self.voice_client.play(source, after=after)
        except discord.ClientException as refused:
            raise AudioError(f"cannot play in this voice channel: {refused}") from None
        try:
            async for frame in utterance.frames:
                if source.closed:
                    break
                source.push(frame)
            source.end()
            failure = await done
        except asyncio.CancelledError:
            # Interrupted: cut the sentence now.
            self.voice_client.stop()
            raise
        finally:
            # What the player read is what was heard (20 ms a frame), cut short or not.
            self._telemetry.spoken("discord", source.frames_read * FRAME_SECONDS)
        if failure is not None:
            raise AudioError(f"voice playback failed: {type(failure).__name__}") from failure


def _resolve(future: asyncio.Future[Exception | None], error: Exception | None) -> None:
    with contextlib.suppress(asyncio.InvalidStateError):
        future.set_result(error)

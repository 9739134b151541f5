"""Test doubles at the edges of the voice path: a playback that records, a voice client
that runs discord.py's real audio player, and WAV inspection."""

from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import dataclass, field

from botservice.voice.pipeline import Utterance
from tests.fakes.discord_voice import RecordedAudio


@dataclass
class Played:
    text: str
    frames: int = 0
    first_frame_at: float | None = None
    completed: bool = False
    cancelled: bool = False


@dataclass
class RecordingPlayback:
    """Plays nothing: reads every frame (optionally at real-time pace) and records it."""

    frame_seconds: float = 0.0
    played: list[Played] = field(default_factory=list)
    frame_sizes: set[int] = field(default_factory=set)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, utterance: Utterance) -> None:
        record = Played(utterance.text)
        self.played.append(record)
        self.started.set()
        try:
            async for frame in utterance.frames:
                if record.first_frame_at is None:
                    record.first_frame_at = time.monotonic()
                record.frames += 1
                self.frame_sizes.add(len(frame))
                if self.frame_seconds:
                    await asyncio.sleep(self.frame_seconds)
        except asyncio.CancelledError:
            record.cancelled = True
            raise
        record.completed = True

    @property
    def texts(self) -> list[str]:
        return [record.text for record in self.played]


class FakeVoiceClient(RecordedAudio):
    """Stands in for a connected `discord.VoiceClient` (see `RecordedAudio`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.client = type("Client", (), {"loop": loop})()

    def is_connected(self) -> bool:
        return True

    def wait_until_connected(self, timeout: float | None = None) -> bool:
        return True


@dataclass(frozen=True)
class WavInfo:
    sample_rate: int
    channels: int
    bits: int
    data_bytes: int

    @property
    def seconds(self) -> float:
        return self.data_bytes / (self.sample_rate * self.channels * self.bits // 8)


def wav_info(data: bytes) -> WavInfo:
    """Read a WAV header, trusting the file's length over the header's sizes (espeak-ng
    writes 0x7fffffff-ish sizes because it streams)."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", "not a WAV file"
    offset = 12
    fmt: tuple[int, int, int] | None = None
    while offset + 8 <= len(data):
        chunk, size = (
            data[offset : offset + 4],
            struct.unpack("<I", data[offset + 4 : offset + 8])[0],
        )
        body = offset + 8
        if chunk == b"fmt ":
            _, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[body : body + 16])
            fmt = (rate, channels, bits)
        elif chunk == b"data":
            assert fmt is not None
            return WavInfo(fmt[0], fmt[1], fmt[2], min(size, len(data) - body))
        offset = body + size + (size & 1)
    raise AssertionError("no data chunk")

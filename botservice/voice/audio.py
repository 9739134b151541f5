"""Synthesized audio to the frames a voice connection plays: 48 kHz stereo s16le, 20 ms each.

ffmpeg does the decoding and resampling as a subprocess; frames are read from
its stdout as it produces them, so playback can start before a long sentence
is fully decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterable, Sequence

from botservice.core.errors import BotServiceError

log = logging.getLogger(__name__)

SAMPLE_RATE = 48_000
CHANNELS = 2
SAMPLE_BYTES = 2
FRAME_SECONDS = 0.020
FRAME_BYTES = int(SAMPLE_RATE * FRAME_SECONDS) * CHANNELS * SAMPLE_BYTES  # 3,840
PCM_FORMAT_ARGS = ("-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", str(CHANNELS))

AudioInput = bytes | AsyncIterable[bytes]


class AudioError(BotServiceError):
    """Audio could not be decoded or encoded."""

    user_message = "I could not turn my answer into audio."


class DependencyMissing(AudioError):
    """A program or library that voice needs is not installed."""

    def __init__(self, name: str, install: str) -> None:
        super().__init__(f"{name} is not installed ({install})")
        self.name = name
        self.install = install

    @property
    def user_message(self) -> str:  # type: ignore[override]
        return f"Voice needs {self.name}, which is not installed here; an operator can run `{self.install}`."


def frames_duration(frame_count: int) -> float:
    return frame_count * FRAME_SECONDS


async def start_ffmpeg(ffmpeg: str, args: Sequence[str]) -> asyncio.subprocess.Process:
    """Start ffmpeg with pipes on all three streams; a missing ffmpeg is `DependencyMissing`."""
    try:
        return await asyncio.create_subprocess_exec(
            ffmpeg,
            "-hide_banner",
            "-loglevel",
            "error",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError):
        raise DependencyMissing("ffmpeg", "apt-get install ffmpeg") from None


async def feed_stdin(process: asyncio.subprocess.Process, audio: AudioInput) -> None:
    """Write `audio` to the process and close its stdin. A process that exits early is
    not an error here; its exit status says what went wrong."""
    stdin = process.stdin
    assert stdin is not None
    try:
        if isinstance(audio, bytes | bytearray | memoryview):
            stdin.write(audio)
            await stdin.drain()
        else:
            async for chunk in audio:
                stdin.write(chunk)
                await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.close()


async def finish_process(process: asyncio.subprocess.Process, what: str) -> None:
    """Wait for a process that should have ended well; raise `AudioError` if it did not."""
    stderr = b""
    if process.stderr is not None:
        stderr = await process.stderr.read()
    code = await process.wait()
    if code != 0:
        detail = stderr.decode(errors="replace").strip().splitlines()
        log.debug("%s failed with status %s: %s", what, code, detail[-3:])
        reason = detail[-1] if detail else f"exit status {code}"
        raise AudioError(f"{what} failed: {reason}")


async def kill_process(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    if process.stdin is not None:
        process.stdin.close()
    # Python 3.11's `wait()` returns only once every pipe has reached its end, and
    # a reader we stopped reading is paused: drain what is left, then wait.
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                while await stream.read(1 << 16):
                    pass
    await process.wait()


async def pcm_frames(
    audio: AudioInput, *, ffmpeg: str = "ffmpeg", input_format: str | None = None
) -> AsyncGenerator[bytes, None]:
    """Decode `audio` (any container ffmpeg reads: WAV, MP3, Ogg...) into 20 ms frames.

    Every frame is exactly `FRAME_BYTES` long; the last one is padded with
    silence rather than dropped, so no speech is cut. Frames are yielded as
    ffmpeg produces them. Closing the iterator early (an interruption) kills
    ffmpeg; use `contextlib.aclosing` when not reading to the end.
    """
    args: list[str] = []
    if not isinstance(audio, bytes | bytearray | memoryview):
        # Streamed input: probe the first bytes only, or ffmpeg waits for megabytes
        # (or the end of the stream) before it decodes anything.
        args += ["-probesize", "32", "-analyzeduration", "0"]
    if input_format:
        args += ["-f", input_format]
    args += ["-i", "pipe:0", *PCM_FORMAT_ARGS, "pipe:1"]
    process = await start_ffmpeg(ffmpeg, args)
    writer = asyncio.create_task(feed_stdin(process, audio))
    stdout = process.stdout
    assert stdout is not None
    finished = False
    try:
        while True:
            try:
                frame = await stdout.readexactly(FRAME_BYTES)
            except asyncio.IncompleteReadError as end:
                if end.partial:
                    yield end.partial + bytes(FRAME_BYTES - len(end.partial))
                break
            yield frame
        await writer
        await finish_process(process, "ffmpeg decoding")
        finished = True
    finally:
        if not finished:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            await kill_process(process)


async def decode_frames(audio: AudioInput, *, ffmpeg: str = "ffmpeg") -> list[bytes]:
    """All frames of `audio` at once (tests, rendering)."""
    return [frame async for frame in pcm_frames(audio, ffmpeg=ffmpeg)]

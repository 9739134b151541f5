"""`botservice voice render "text" -o FILE`: what the bot would say, written to an audio file.

The text goes through the same path as an answer in a voice channel (sentence
splitting, the configured speech engine, ffmpeg to 48 kHz stereo 20 ms
frames, the speech queue), and the frames are encoded into the file, so an
operator can check the voice set-up without Discord.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from botservice.core.errors import BotServiceError
from botservice.core.settings import Settings
from botservice.voice.audio import (
    PCM_FORMAT_ARGS,
    AudioError,
    feed_stdin,
    finish_process,
    frames_duration,
    kill_process,
    start_ffmpeg,
)
from botservice.voice.formats import OUTPUT_FORMATS
from botservice.voice.pipeline import Utterance, VoiceSpeaker
from botservice.voice.sentences import SentenceSplitter
from botservice.voice.speech import SpeechEngine, create_speech_engine


class UnsupportedOutput(AudioError):
    def __init__(self, path: Path) -> None:
        super().__init__(
            f"cannot write {path.name!r}: use one of {', '.join(sorted(OUTPUT_FORMATS))}"
        )

    @property
    def user_message(self) -> str:  # type: ignore[override]
        return str(self)


class OutputFolderMissing(BotServiceError):
    """Checked before anything is spoken: ffmpeg would fail only at the end, vaguely."""

    def __init__(self, path: Path) -> None:
        folder = str(path.parent)
        problem = (
            f"{folder!r} is not a folder"
            if path.parent.exists()
            else f"the folder {folder!r} does not exist; create it first"
        )
        super().__init__(f"cannot write {str(path)!r}: {problem}")

    @property
    def user_message(self) -> str:  # type: ignore[override]
        return str(self)


class NothingToSay(BotServiceError):
    user_message = "The text has nothing to speak (it is empty, or only markup)."

    def __init__(self) -> None:
        super().__init__("the text has nothing to speak (empty, or only markup)")


@dataclass(frozen=True, slots=True)
class RenderResult:
    path: Path
    engine: str
    sentences: int
    frames: int

    @property
    def duration_seconds(self) -> float:
        return frames_duration(self.frames)

    def describe(self) -> str:
        plural = "" if self.sentences == 1 else "s"
        return (
            f"Wrote {self.path}: {self.duration_seconds:.2f} s of speech "
            f"({self.sentences} sentence{plural}) with {self.engine}."
        )


async def render_to_file(
    settings: Settings, text: str, path: str | Path, *, engine: SpeechEngine | None = None
) -> RenderResult:
    """Speak `text` into `path`; the extension picks the format (.wav, .ogg, .opus, .mp3, .flac).

    `settings` is the loaded `Settings` (its `[voice]` and `[model]` sections);
    `engine` overrides the engine those settings would choose. Raises
    `UnsupportedOutput`, `OutputFolderMissing`, `NothingToSay`, `DependencyMissing` (no ffmpeg),
    `SpeechError` or `AudioError`.
    """
    path = Path(path)
    output_format = OUTPUT_FORMATS.get(path.suffix.lower())
    if output_format is None:
        raise UnsupportedOutput(path)
    _, codec = output_format
    if not path.parent.is_dir():
        raise OutputFolderMissing(path)
    voice = settings.voice
    splitter = SentenceSplitter(max_chars=voice.max_sentence_chars)
    if not splitter.feed(text) + splitter.flush():
        raise NothingToSay()
    own_engine = engine is None
    if engine is None:
        engine = create_speech_engine(
            voice, model_base_url=settings.model.base_url, api_key=settings.model.api_key
        )
    encoder = await start_ffmpeg(
        voice.ffmpeg_executable, ["-y", *PCM_FORMAT_ARGS, "-i", "pipe:0", *codec, str(path)]
    )
    frames: asyncio.Queue[bytes | None] = asyncio.Queue()
    writer = asyncio.create_task(feed_stdin(encoder, _drain(frames)))
    errors: list[BotServiceError] = []
    count = 0

    async def playback(utterance: Utterance) -> None:
        nonlocal count
        async for frame in utterance.frames:
            frames.put_nowait(frame)
            count += 1

    async def on_error(error: BotServiceError) -> None:
        errors.append(error)

    speaker = VoiceSpeaker(
        engine,
        playback,
        ffmpeg=voice.ffmpeg_executable,
        max_sentence_chars=voice.max_sentence_chars,
        on_error=on_error,
    )
    finished = False
    try:
        answer = speaker.say(text)
        await speaker.wait_done()
        frames.put_nowait(None)
        await writer
        if errors:
            raise errors[0]
        await finish_process(encoder, "ffmpeg encoding")
        finished = True
    finally:
        await speaker.aclose()
        if not finished:
            writer.cancel()
            await asyncio.wait([writer])
            await kill_process(encoder)
            with contextlib.suppress(OSError):
                path.unlink()
        if own_engine:
            await engine.aclose()
    return RenderResult(
        path=path, engine=engine.description, sentences=len(answer.sentences), frames=count
    )


async def _drain(frames: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes]:
    while (frame := await frames.get()) is not None:
        yield frame

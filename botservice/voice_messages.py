"""Voice messages and audio clips, answered as if typed.

Adapters find the audio files of a message and hand them over as `AudioClip`s
(a name, a type, a size and a way to download the bytes). `transcribe_clips`
turns them into text; `heard_message` puts that text where a typed message
would be (the core stores text only, so the audio itself is never kept); and
`HeardSink` shows the transcript above the answer, so the person sees what was
understood. Nothing here knows a platform.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from botservice.events import IncomingMessage
from botservice.ports import ReplySink
from botservice.transcription import AudioTooLarge, Transcriber, TranscriptionError

# A transcript longer than this is cut in the line shown above the answer (the
# model still gets all of it).
SHOWN_TRANSCRIPT_CHARS = 600


class AudioDownloadFailed(TranscriptionError):
    user_message = "I could not download that audio; please try again."


@dataclass(frozen=True, slots=True)
class AudioClip:
    name: str
    content_type: str
    size: int
    fetch: Callable[[], Awaitable[bytes]] = dataclasses.field(repr=False, compare=False)


async def transcribe_clips(transcriber: Transcriber, clips: Sequence[AudioClip]) -> str:
    """The words of every clip, in order. Raises a `TranscriptionError` (with a
    `user_message`) for the first clip that cannot be heard; a clip over the size
    limit is refused before it is downloaded."""
    texts = []
    for clip in clips:
        if clip.size > transcriber.max_bytes:
            raise AudioTooLarge(clip.size, transcriber.max_bytes)
        try:
            audio = await clip.fetch()
        except TranscriptionError:
            raise
        except Exception as error:
            raise AudioDownloadFailed(
                f"downloading {clip.content_type} audio failed: {type(error).__name__}"
            ) from None
        texts.append(
            await transcriber.transcribe(
                audio, filename=clip.name, content_type=clip.content_type or "audio/ogg"
            )
        )
    return "\n\n".join(texts)


def heard_message(message: IncomingMessage, transcript: str) -> IncomingMessage:
    """The message with the transcript as its text (after anything typed with it), and
    without the audio files it came from."""
    typed = message.text.strip()
    return dataclasses.replace(
        message,
        text=f"{typed}\n\n{transcript}" if typed else transcript,
        attachments=tuple(a for a in message.attachments if not a.is_audio),
    )


def heard_line(transcript: str) -> str:
    """The quote shown above an answer: `> 🎤 “what was heard”`."""
    shown = " ".join(transcript.split())
    if len(shown) > SHOWN_TRANSCRIPT_CHARS:
        shown = shown[: SHOWN_TRANSCRIPT_CHARS - 1].rstrip() + "…"
    return f"> \N{MICROPHONE} \N{LEFT DOUBLE QUOTATION MARK}{shown}\N{RIGHT DOUBLE QUOTATION MARK}"


class HeardSink:
    """A `ReplySink` that shows the transcript above the answer (the answer the core
    stores stays the model's own text)."""

    def __init__(self, inner: ReplySink, transcript: str) -> None:
        self.inner = inner
        self.line = heard_line(transcript)

    async def begin(self, existing_ref: str | None) -> str | None:
        return await self.inner.begin(existing_ref)

    async def update(self, text: str) -> None:
        await self.inner.update(f"{self.line}\n{text}")

    async def finish(self, text: str) -> None:
        await self.inner.finish(f"{self.line}\n{text}")

    async def notice(self, text: str, *, private: bool = True) -> None:
        await self.inner.notice(text, private=private)


class RecentKeys:
    """Message keys this process has already started to transcribe, so a message
    delivered twice is downloaded and transcribed once (the core's own dedupe only
    sees it after the transcript is ready)."""

    def __init__(self, size: int = 1000) -> None:
        self._size = size
        self._keys: OrderedDict[str, None] = OrderedDict()

    def add(self, key: str) -> bool:
        """True the first time `key` is seen."""
        if key in self._keys:
            return False
        self._keys[key] = None
        if len(self._keys) > self._size:
            self._keys.popitem(last=False)
        return True

"""Voice messages and audio clips, answered as if typed.

The core stores a message with its audio files named (never the audio itself) and
asks its sink to hear them when it answers. `ListeningSink` is such a sink for any
platform: given a way to download a file, it transcribes the audio when asked and
shows the transcript above the answer, so the person sees what was understood.
`heard_text` puts the transcript where a typed message's text would be. Nothing
here knows a platform.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from botservice.core.events import Attachment
from botservice.core.ports import ReplySink, SinkAbilities, abilities_of
from botservice.voice.transcription import AudioTooLarge, Transcriber, TranscriptionError

# A transcript longer than this is cut in the line shown above the answer (the
# model still gets all of it).
SHOWN_TRANSCRIPT_CHARS = 600

Fetch = Callable[[Attachment], Awaitable[bytes]]


class AudioDownloadFailed(TranscriptionError):
    user_message = "I could not download that audio; please try again."


async def transcribe_audio(
    transcriber: Transcriber, audio: Sequence[Attachment], fetch: Fetch
) -> str:
    """The words of every file, in order. Raises a `TranscriptionError` (with a
    `user_message`) for the first file that cannot be heard; a file over the size
    limit is refused before it is downloaded."""
    texts = []
    for item in audio:
        if item.size > transcriber.max_bytes:
            raise AudioTooLarge(item.size, transcriber.max_bytes)
        try:
            data = await fetch(item)
        except TranscriptionError:
            raise
        except Exception as error:
            raise AudioDownloadFailed(
                f"downloading {item.content_type} audio failed: {type(error).__name__}"
            ) from None
        texts.append(
            await transcriber.transcribe(
                data, filename=item.name, content_type=item.content_type or "audio/ogg"
            )
        )
    return "\n\n".join(texts)


def heard_line(transcript: str) -> str:
    """The quote shown above an answer: `> 🎤 “what was heard”`."""
    shown = " ".join(transcript.split())
    if len(shown) > SHOWN_TRANSCRIPT_CHARS:
        shown = shown[: SHOWN_TRANSCRIPT_CHARS - 1].rstrip() + "…"
    return f"> \N{MICROPHONE} \N{LEFT DOUBLE QUOTATION MARK}{shown}\N{RIGHT DOUBLE QUOTATION MARK}"


class ListeningSink:
    """A `ReplySink` that can hear (`SinkAbilities.hear`): it downloads the
    audio with `fetch` and transcribes it when the core asks, then shows the
    transcript above the answer (the answer the core stores stays the model's own)."""

    def __init__(self, inner: ReplySink, transcriber: Transcriber, fetch: Fetch) -> None:
        self.inner = inner
        self.transcriber = transcriber
        self._fetch = fetch
        self.line: str | None = None

    @property
    def abilities(self) -> SinkAbilities:
        # Its own hearing, and whatever the sink inside can do (speak, observe).
        return SinkAbilities(hear=self.hear).joined(abilities_of(self.inner))

    async def hear(self, audio: Sequence[Attachment]) -> str:
        transcript = await transcribe_audio(self.transcriber, audio, self._fetch)
        self.line = heard_line(transcript)
        return transcript

    async def begin(self, existing_ref: str | None, *, turn_tag: str, resumed: bool) -> str | None:
        return await self.inner.begin(existing_ref, turn_tag=turn_tag, resumed=resumed)

    async def update(self, text: str) -> None:
        await self.inner.update(self._shown(text))

    async def finish(self, text: str) -> None:
        await self.inner.finish(self._shown(text))

    async def notice(self, text: str, *, private: bool = True) -> None:
        await self.inner.notice(text, private=private)

    def _shown(self, text: str) -> str:
        return f"{self.line}\n{text}" if self.line else text

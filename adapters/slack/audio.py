"""Where a Slack audio clip (or audio file) becomes text for the core.

The clip is downloaded (with the bot token), transcribed and submitted as text. The
event is acknowledged once that text is stored, like a typed message, when that takes
under two seconds; transcription can take longer than the three seconds Slack waits,
so a slower clip is acknowledged first and heard after. The trade-off: such a clip,
still being transcribed when the process stops, is not answered (the person can send
it again). The audio is never kept; the core stores the transcript.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence

import aiohttp

from adapters.slack.events import FileRef
from adapters.slack.files import download, token_may_go_to
from botservice.errors import BotServiceError
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


Submit = Callable[[IncomingMessage, ReplySink], Awaitable[object]]


def audio_files(files: Sequence[FileRef]) -> list[FileRef]:
    return [ref for ref in files if ref.is_audio and ref.url]


class SlackHearing:
    def __init__(self, transcriber: Transcriber, *, api_url: str) -> None:
        self.transcriber = transcriber
        self._api_url = api_url
        self._recent = RecentKeys()

    async def answer(
        self,
        message: IncomingMessage,
        sink: ReplySink,
        files: Sequence[FileRef],
        *,
        session: aiohttp.ClientSession,
        token: str | None,
        submit: Submit,
    ) -> None:
        """Transcribe the message's audio and submit it as text, showing the transcript
        above the answer; or tell the person in one sentence why it cannot be heard."""
        if not self._recent.add(message.message_key):
            return  # the same clip, delivered again while it is being heard
        clips = [
            AudioClip(
                name=ref.name,
                content_type=ref.mimetype if ref.mimetype.startswith("audio/") else "audio/webm",
                size=ref.size,
                fetch=functools.partial(self._download, session, ref, token),
            )
            for ref in files
        ]
        try:
            try:
                transcript = await transcribe_clips(self.transcriber, clips)
            except TranscriptionError as error:
                log.warning("could not transcribe Slack message %s: %s", message.message_key, error)
                await sink.notice(error.user_message, private=False)
                return
            await submit(heard_message(message, transcript), HeardSink(sink, transcript))
        except BotServiceError as error:
            # Nobody awaits this task: its failure is logged here, once.
            log.error("answering Slack audio %s failed", message.message_key, exc_info=error)

    async def _download(
        self, session: aiohttp.ClientSession, ref: FileRef, token: str | None
    ) -> bytes:
        if not token or not token_may_go_to(ref.url, self._api_url):
            raise ValueError("the audio is not on a Slack file host")
        return await download(session, ref.url, token, max_bytes=self.transcriber.max_bytes)

    async def aclose(self) -> None:
        await self.transcriber.aclose()

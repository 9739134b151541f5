"""Where a Slack audio clip (or audio file) becomes text: a sink that can hear.

A clip is stored like any message (named, never its audio) before Slack is
acknowledged; the core asks the reply sink to hear it when it answers, again after a
restart. The sink downloads the clip with the workspace's bot token, transcribes it,
and shows the transcript above the answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp

from botservice.adapters.slack.files import AUDIO_TYPES, download
from botservice.core.events import Attachment
from botservice.core.ports import ReplySink
from botservice.voice.messages import ListeningSink
from botservice.voice.transcription import Transcriber

# Audio is downloaded after Slack is acknowledged, so a long clip may take its time.
AUDIO_DOWNLOAD_TIMEOUT_SECONDS = 30.0


class SlackHearing:
    def __init__(self, transcriber: Transcriber, *, api_url: str) -> None:
        self.transcriber = transcriber
        self._api_url = api_url

    def listening(
        self,
        sink: ReplySink,
        *,
        session: Callable[[], aiohttp.ClientSession],
        token: Callable[[], Awaitable[str | None]],
    ) -> ListeningSink:
        """`sink`, able to hear the message's audio; `token` finds the workspace's bot token
        when a clip is downloaded."""

        async def fetch(audio: Attachment) -> bytes:
            bot_token = await token()
            if not bot_token:
                raise ValueError("no bot token for this workspace")
            return await download(
                session(),
                audio.url,
                bot_token,
                api_url=self._api_url,
                accept=AUDIO_TYPES,
                max_bytes=self.transcriber.max_bytes,
                timeout_seconds=AUDIO_DOWNLOAD_TIMEOUT_SECONDS,
            )

        return ListeningSink(sink, self.transcriber, fetch)

    async def aclose(self) -> None:
        await self.transcriber.aclose()

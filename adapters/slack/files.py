"""Downloading files attached to a message (images at once, audio when it is heard) with
the bot token, within a budget."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlparse

import aiohttp

from adapters.slack.events import FileRef
from botservice.events import Attachment

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 10 * 1024 * 1024
# Images are downloaded before the event is acknowledged; Slack allows three seconds.
DOWNLOAD_TIMEOUT_SECONDS = 1.5
_SLACK_FILE_HOSTS = ("files.slack.com", "slack-files.com")


def token_may_go_to(url: str, api_url: str) -> bool:
    """The bot token is only ever sent to Slack's file hosts or the configured API host."""
    host = urlparse(url).hostname or ""
    if host in _SLACK_FILE_HOSTS or host.endswith(".slack.com"):
        return True
    return host == (urlparse(api_url).hostname or "")


async def fetch_attachments(
    session: aiohttp.ClientSession,
    files: tuple[FileRef, ...],
    *,
    token: str | None,
    api_url: str,
) -> tuple[Attachment, ...]:
    """Images come with their bytes; other files (and images that fail) only by name and
    URL (audio is downloaded when the core asks the sink to hear it)."""

    async def one(ref: FileRef) -> Attachment:
        # A clip recorded in Slack may come typed as video; it is heard as audio.
        content_type = (
            "audio/webm" if ref.is_audio and not ref.mimetype.startswith("audio/") else ref.mimetype
        )
        attachment = Attachment(
            name=ref.name, content_type=content_type, url=ref.url, size=ref.size
        )
        if not attachment.is_image or not ref.url or not token or ref.size > MAX_IMAGE_BYTES:
            return attachment
        if not token_may_go_to(ref.url, api_url):
            log.warning("not downloading a file from an unexpected host")
            return attachment
        try:
            data = await download(session, ref.url, token, max_bytes=MAX_IMAGE_BYTES)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            log.warning("could not download an attached image: %s", type(error).__name__)
            return attachment
        return Attachment(
            name=ref.name, content_type=ref.mimetype, url=ref.url, data=data, size=len(data)
        )

    if not files:
        return ()
    return tuple(await asyncio.gather(*(one(ref) for ref in files)))


async def download(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    *,
    max_bytes: int,
    timeout_seconds: float = DOWNLOAD_TIMEOUT_SECONDS,
) -> bytes:
    """A private Slack file, fetched with the bot token. ValueError when it cannot be had."""
    timeout = aiohttp.ClientTimeout(total=timeout_seconds)
    async with session.get(
        url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout, allow_redirects=False
    ) as response:
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        # Slack answers a bad token with a 200 HTML login page, not an error.
        if response.content_type.startswith("text/html"):
            raise ValueError("login page instead of the file")
        data = await response.content.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ValueError("file too large")
        return data

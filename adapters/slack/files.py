"""Downloading files attached to a message (images at once, audio when it is heard) with
the bot token, within a budget.

The bot token opens every file in the workspace, so it goes to one place only:
`https://files.slack.com` (or, in tests and behind a Slack-compatible server, the exact
scheme, host and port of `SLACK_API_URL`). A redirect is never followed with it, a
download stops at its size cap, and a response of the wrong type (Slack answers a bad
token with a 200 HTML login page) is refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from urllib.parse import urlsplit

import aiohttp

from botservice.adapters.slack.events import FileRef
from botservice.core.events import Attachment
from botservice.core.settings import ImageSettings

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 10 * 1024 * 1024
# Images are downloaded before the event is acknowledged; Slack allows three seconds.
DOWNLOAD_TIMEOUT_SECONDS = 1.5
SLACK_FILES_ORIGIN = ("https", "files.slack.com", 443)
IMAGE_TYPES = ("image/", "application/octet-stream")
# A clip recorded in Slack is served as audio or video (webm/mp4).
AUDIO_TYPES = ("audio/", "video/", "application/ogg", "application/octet-stream")
_DEFAULT_PORTS = {"https": 443, "http": 80}


class DownloadRefused(ValueError):
    """The file was not fetched, or not kept: the reason is safe to log."""


def token_may_go_to(url: str, api_url: str) -> bool:
    """The bot token is only ever sent to Slack's file host or the configured API origin."""
    origin = _origin(url)
    return origin is not None and origin in (SLACK_FILES_ORIGIN, _origin(api_url))


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    # Credentials in the URL would travel beside the token, to whoever they name.
    if scheme not in _DEFAULT_PORTS or parts.username is not None or not parts.hostname:
        return None
    return scheme, parts.hostname, port or _DEFAULT_PORTS[scheme]


async def fetch_attachments(
    session: aiohttp.ClientSession,
    files: tuple[FileRef, ...],
    *,
    token: str | None,
    api_url: str,
    limits: ImageSettings,
) -> tuple[Attachment, ...]:
    """Images come with their bytes, at most `limits` of them; an image that is not
    downloaded says why (`skipped`). Other files come by name and URL (audio is
    downloaded when the core asks the sink to hear it)."""
    attachments = [_named(ref) for ref in files]
    chosen: list[int] = []
    for index, ref in enumerate(files):
        if not attachments[index].is_image:
            continue
        reason = ""
        if len(chosen) >= limits.max_images_per_turn:
            reason = f"over the limit of {limits.max_images_per_turn} images per message"
        elif ref.size > min(MAX_IMAGE_BYTES, limits.max_image_bytes_per_turn):
            reason = "too large"
        elif not token:
            reason = "not downloaded"
        if reason:
            attachments[index] = dataclasses.replace(attachments[index], skipped=reason)
        else:
            chosen.append(index)

    async def one(index: int) -> bytes | None:
        assert token is not None
        try:
            return await download(
                session,
                files[index].url,
                token,
                api_url=api_url,
                max_bytes=min(MAX_IMAGE_BYTES, limits.max_image_bytes_per_turn),
                accept=IMAGE_TYPES,
            )
        except (aiohttp.ClientError, TimeoutError, DownloadRefused) as error:
            reason = str(error) if isinstance(error, DownloadRefused) else type(error).__name__
            log.warning("could not download an attached image: %s", reason)
            return None

    fetched = await asyncio.gather(*(one(index) for index in chosen))
    total = 0
    for index, data in zip(chosen, fetched, strict=True):
        if data is not None and total + len(data) > limits.max_image_bytes_per_turn:
            limit = _size(limits.max_image_bytes_per_turn)
            data, reason = None, f"over the limit of {limit} of images per message"
        else:
            reason = "not downloaded"
        if data is None:
            attachments[index] = dataclasses.replace(attachments[index], skipped=reason)
        else:
            total += len(data)
            attachments[index] = dataclasses.replace(attachments[index], data=data, size=len(data))
    return tuple(attachments)


def _size(count: int) -> str:
    if count >= 1024 * 1024:
        return f"{count / (1024 * 1024):.0f} MB"
    return f"{count / 1024:.0f} KB"


def _named(ref: FileRef) -> Attachment:
    # A clip recorded in Slack may come typed as video; it is heard as audio.
    content_type = (
        "audio/webm" if ref.is_audio and not ref.mimetype.startswith("audio/") else ref.mimetype
    )
    return Attachment(name=ref.name, content_type=content_type, url=ref.url, size=ref.size)


async def download(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    *,
    api_url: str,
    max_bytes: int,
    accept: tuple[str, ...],
    timeout_seconds: float = DOWNLOAD_TIMEOUT_SECONDS,
) -> bytes:
    """A private Slack file, fetched with the bot token from Slack's file host only.
    DownloadRefused when it cannot (or must not) be had."""
    if not token_may_go_to(url, api_url):
        raise DownloadRefused("not on Slack's file host")
    timeout = aiohttp.ClientTimeout(total=timeout_seconds)
    async with session.get(
        url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout, allow_redirects=False
    ) as response:
        # A redirect included: following it would carry the token to wherever it points.
        if response.status != 200:
            raise DownloadRefused(f"HTTP {response.status}")
        # Slack answers a bad token with a 200 HTML login page, not an error.
        if not response.content_type.startswith(accept):
            raise DownloadRefused(f"unexpected content type {response.content_type}")
        data = bytearray()
        async for chunk in response.content.iter_chunked(64 * 1024):
            data += chunk
            if len(data) > max_bytes:
                raise DownloadRefused("file too large")
        return bytes(data)

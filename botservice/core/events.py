"""Values that cross the boundary between the platform adapters and the core."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

Platform = Literal["console", "slack", "discord", "test"]


class ConversationKey(NamedTuple):
    """Which conversation a message belongs to.

    `thread` is the platform's thread id; a message outside any thread uses the
    id that will become the thread (Slack: the mention's ts), or "" for a flat
    channel conversation (Discord `/ask`, the console).
    """

    platform: str
    workspace: str
    channel: str
    thread: str


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file that came with a message. Only images travel to the model as parts: their
    downloaded bytes, or their URL when `public_url` says the provider may fetch it."""

    name: str
    content_type: str
    url: str = ""
    data: bytes | None = field(default=None, repr=False)
    size: int = 0
    # Why the model is not shown this image (it is named instead), e.g. over a limit.
    skipped: str = ""
    # The URL works without credentials (Discord's CDN). A private platform URL (Slack's
    # `url_private`) must never reach the model: the provider cannot fetch it, and it
    # names the file to a third party.
    public_url: bool = False

    @property
    def shown_to_model(self) -> bool:
        if not self.is_image or self.skipped:
            return False
        return self.data is not None or (self.public_url and bool(self.url))

    @property
    def is_image(self) -> bool:
        return self.content_type.startswith("image/")

    @property
    def is_audio(self) -> bool:
        return self.content_type.startswith("audio/")


def within_image_limits(
    attachments: tuple[Attachment, ...], *, max_images: int, max_bytes: int
) -> tuple[Attachment, ...]:
    """The attachments with every image past `max_images`, or past `max_bytes` in all
    (by the size the platform declared, or the bytes downloaded), marked skipped. The
    same rule on every platform; an adapter that downloads applies it first, and then
    this finds nothing more to skip."""
    shown, total, limited = 0, 0, []
    for attachment in attachments:
        if attachment.shown_to_model:
            size = len(attachment.data) if attachment.data is not None else attachment.size
            if shown >= max_images:
                attachment = replace(
                    attachment, skipped=f"over the limit of {max_images} images per message"
                )
            elif total + size > max_bytes:
                attachment = replace(attachment, skipped="over the size limit per message")
            else:
                shown += 1
                total += size
        limited.append(attachment)
    return tuple(limited)


@dataclass(frozen=True, slots=True)
class ContextMessage:
    """A message said before the bot joined a thread, read once by the adapter."""

    author_name: str
    text: str
    from_bot: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class IncomingMessage:
    """One message from a person, normalized by an adapter.

    `message_key` names the message itself, not its delivery, so the same
    message arriving twice (a retry, or Slack's `app_mention` plus `message`)
    carries the same key and is answered once.
    """

    platform: str
    workspace: str
    channel: str
    thread: str
    user_id: str
    user_name: str
    text: str
    message_key: str
    is_channel_admin: bool = False
    # A direct message with the bot: the person manages the "channel", yet some
    # settings (the model: the operator pays for it) stay with the bot's admins.
    is_direct: bool = False
    # The person running the bot (the console's terminal): not held to the
    # per-person message rate that protects the operator from everyone else.
    from_operator: bool = False
    attachments: tuple[Attachment, ...] = ()
    platform_message_id: str = ""
    # What was said in the thread before the bot was first mentioned there. The
    # core stores it with this message, so the thread is never read again.
    context: tuple[ContextMessage, ...] = ()
    # Where the adapter would answer after a restart: a small JSON-able dict the
    # adapter understands (channel id, thread ts, ...). Credentials go under
    # "secrets" with an "expires_at" (epoch seconds) beside it: the store deletes
    # them once that has passed (`Store.forget_expired_reply_secrets`).
    reply_target: dict[str, Any] = field(default_factory=dict)
    raw: Any = field(default=None, repr=False, compare=False)

    @property
    def conversation(self) -> ConversationKey:
        return ConversationKey(self.platform, self.workspace, self.channel, self.thread)


@dataclass(frozen=True, slots=True)
class Command:
    """A platform-neutral command such as `instructions set Be brief.`"""

    name: str
    action: str = ""
    argument: str = ""

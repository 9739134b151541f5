"""Pure translation: discord.py messages and interactions into the core's `IncomingMessage`.

Nothing here does I/O. Deciding *whether* to answer a message and *which conversation*
it belongs to, and gathering the facts `ChannelPolicy` decides *who* manages the channel
on, are small functions of the payload and of what the adapter already knows (the
bot's id, the reply-chain index, the application's owners).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import discord

from botservice.core.channel_policy import ManagerFacts
from botservice.core.events import Attachment, ContextMessage, IncomingMessage

PLATFORM = "discord"
DM_WORKSPACE = "dm"
THREAD_NAME_LIMIT = 100
_ANSWERED_TYPES = (discord.MessageType.default, discord.MessageType.reply)


@dataclass(frozen=True, slots=True)
class Place:
    """Where a message sits, in the core's terms: (workspace, channel, thread)."""

    workspace: str
    channel: str
    thread: str
    in_thread: bool = False
    thread_owner_id: int | None = None


def place_of(channel: Any, guild_id: int | None) -> Place:
    """A thread's conversation is the thread; its settings belong to the parent channel."""
    if guild_id is None:
        return Place(DM_WORKSPACE, str(channel.id), "")
    if isinstance(channel, discord.Thread):
        return Place(
            str(guild_id),
            str(channel.parent_id),
            str(channel.id),
            in_thread=True,
            thread_owner_id=channel.owner_id,
        )
    return Place(str(guild_id), str(channel.id), "")


def place_of_interaction(interaction: discord.Interaction) -> Place:
    channel = interaction.channel
    if channel is None:
        return Place(str(interaction.guild_id or DM_WORKSPACE), str(interaction.channel_id), "")
    return place_of(channel, interaction.guild_id)


def mentions_user(message: discord.Message, user_id: int) -> bool:
    return any(user.id == user_id for user in message.mentions) or (
        f"<@{user_id}>" in message.content or f"<@!{user_id}>" in message.content
    )


def strip_mention(text: str, user_id: int) -> str:
    return re.sub(rf"<@!?{user_id}>", "", text).strip()


def is_person_message(message: discord.Message) -> bool:
    """Own messages, other bots, webhooks and system messages are never answered."""
    return not message.author.bot and message.webhook_id is None and message.type in _ANSWERED_TYPES


def is_reply(message: discord.Message) -> bool:
    """A reply to a message; a forward also carries a reference, of another type."""
    reference = message.reference
    return (
        reference is not None
        and reference.message_id is not None
        and reference.type is not discord.MessageReferenceType.forward
    )


def is_forward(message: discord.Message) -> bool:
    reference = message.reference
    return reference is not None and reference.type is discord.MessageReferenceType.forward


FORWARDED = "Forwarded message"


def forwarded_text(message: discord.Message) -> str:
    """The text of the messages forwarded in `message`, quoted as forwarded.

    Discord delivers a forward as an empty message whose `message_snapshots` hold the
    forwarded content (no author: Discord does not say who wrote it)."""
    if not is_forward(message):
        return ""
    quotes = [
        quoted(FORWARDED, snapshot.content or "(no text)") for snapshot in message.message_snapshots
    ]
    return "\n\n".join(quotes)


def message_text(message: discord.Message, text: str) -> str:
    """`text` (the message's own content, a mention stripped) with what it forwards."""
    forwarded = forwarded_text(message)
    return "\n\n".join(part for part in (text, forwarded) if part)


def referenced_message(message: discord.Message) -> discord.Message | None:
    reference = message.reference
    if reference is None:
        return None
    resolved = reference.resolved
    return resolved if isinstance(resolved, discord.Message) else None


def manager_facts(
    *,
    manage_channels: bool,
    user_id: int,
    owner_ids: Iterable[int],
    in_dm: bool = False,
    guild_owner_id: int | None = None,
) -> ManagerFacts:
    """What Discord tells about managing the channel: Manage Channels in it, owning the
    server or the bot's application, a direct message (`ChannelPolicy` decides)."""
    return ManagerFacts(
        platform=PLATFORM,
        user_id=str(user_id),
        direct=in_dm,
        manage_channels=manage_channels,
        guild_owner=guild_owner_id is not None and guild_owner_id == user_id,
        bot_owner=user_id in set(owner_ids),
    )


def attachments_of(message: discord.Message) -> tuple[Attachment, ...]:
    """Every file as a reference to its public CDN URL; the core decides what goes to the model.
    A forward's files are in its snapshots."""
    files = list(message.attachments)
    if is_forward(message):
        files += [item for snapshot in message.message_snapshots for item in snapshot.attachments]
    return tuple(
        Attachment(
            name=item.filename,
            content_type=content_type_of(item),
            url=item.url,
            size=item.size,
            # Discord's CDN URLs work without the bot token.
            public_url=True,
        )
        for item in files
    )


def content_type_of(item: discord.Attachment) -> str:
    return (item.content_type or _guess_type(item.filename)).split(";")[0]


def audio_attachments(message: discord.Message) -> list[discord.Attachment]:
    """Voice messages and audio files: what is transcribed instead of being read as text."""
    return [
        item
        for item in message.attachments
        if content_type_of(item).startswith("audio/")
        or (message.flags.voice and item.filename.endswith(".ogg"))
    ]


def _guess_type(filename: str) -> str:
    extension = filename.rsplit(".", 1)[-1].lower()
    return {
        "png": "image/png",
        "jpg": "image/jpeg",
        "jpeg": "image/jpeg",
        "gif": "image/gif",
        "webp": "image/webp",
        "ogg": "audio/ogg",
        "oga": "audio/ogg",
        "opus": "audio/ogg",
        "mp3": "audio/mpeg",
        "m4a": "audio/mp4",
        "wav": "audio/wav",
        "flac": "audio/flac",
    }.get(extension, "application/octet-stream")


def context_of(message: discord.Message, bot_id: int, limit: int = 4000) -> ContextMessage:
    """A message the store does not have (a cold reply chain), for the core to quote once."""
    content = message_text(message, message.content)
    text = content if len(content) <= limit else content[:limit] + "…"
    return ContextMessage(
        author_name=message.author.display_name,
        text=text,
        from_bot=message.author.id == bot_id,
    )


def quoted(author: str, text: str) -> str:
    lines = "\n".join(f"> {line}" for line in text.splitlines() or [""])
    return f"{author}:\n{lines}"


def thread_name(prompt: str) -> str:
    """A thread title from the prompt: its first line, cut at a word, at most 100 characters."""
    line = " ".join(prompt.split()) or "Conversation"
    if len(line) <= THREAD_NAME_LIMIT:
        return line
    cut = line.rfind(" ", 0, THREAD_NAME_LIMIT - 1)
    if cut < THREAD_NAME_LIMIT // 2:
        cut = THREAD_NAME_LIMIT - 1
    return line[:cut].rstrip() + "…"


def message_reply_target(message: discord.Message, *, reply: bool) -> dict[str, Any]:
    target: dict[str, Any] = {"kind": "message", "channel_id": str(message.channel.id)}
    if reply:
        target["reply_to"] = str(message.id)
    return target


def incoming_from_message(
    message: discord.Message,
    *,
    place: Place,
    thread: str,
    text: str,
    admin: bool,
    reply_target: dict[str, Any],
    context: tuple[ContextMessage, ...] = (),
) -> IncomingMessage:
    return IncomingMessage(
        platform=PLATFORM,
        workspace=place.workspace,
        channel=place.channel,
        thread=thread,
        context=context,
        user_id=str(message.author.id),
        user_name=message.author.display_name,
        text=text,
        message_key=str(message.id),
        is_channel_admin=admin,
        is_direct=message.guild is None,
        attachments=attachments_of(message),
        platform_message_id=str(message.id),
        reply_target=reply_target,
        raw=message,
    )


def incoming_from_interaction(
    interaction: discord.Interaction,
    *,
    place: Place,
    text: str,
    admin: bool,
    reply_target: dict[str, Any],
    thread: str | None = None,
) -> IncomingMessage:
    return IncomingMessage(
        platform=PLATFORM,
        workspace=place.workspace,
        channel=place.channel,
        thread=place.thread if thread is None else thread,
        user_id=str(interaction.user.id),
        user_name=interaction.user.display_name,
        text=text,
        message_key=f"interaction:{interaction.id}",
        is_channel_admin=admin,
        is_direct=interaction.guild_id is None,
        platform_message_id=str(interaction.id),
        reply_target=reply_target,
        raw=interaction,
    )


def bot_can_post_in(interaction: discord.Interaction) -> bool:
    """Whether the bot itself may post in the interaction's channel: its own DM with the
    person, or a server that installed it. A user-installed command in a group DM or
    in a server without the bot can only be answered through the interaction."""
    if interaction.guild_id is None:
        return bool(interaction.context.dm_channel)
    return interaction.is_guild_integration()


def interaction_reply_target(
    interaction: discord.Interaction, *, ephemeral: bool
) -> dict[str, Any]:
    """Enough to finish the answer after a restart while the token is valid (15 minutes).
    The token is one of the reply target's `secrets`, which the store deletes once
    `expires_at` has passed. Without a `channel_id` an expired answer is not posted to
    the channel (the bot cannot post there)."""
    channel_id = interaction.channel_id if bot_can_post_in(interaction) else None
    return {
        "kind": "interaction",
        "application_id": str(interaction.application_id),
        "channel_id": str(channel_id or ""),
        "ephemeral": ephemeral,
        "expires_at": interaction.expires_at.timestamp(),
        "secrets": {"token": interaction.token},
    }

"""Values and rows of the hot path, shared by its SQLite and PostgreSQL drivers and the
SQLAlchemy paths: what `accept` and an answer write, and the port values built from
what the statements return. Imports no SQLAlchemy (the turn path does without it)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, get_args

from botservice.core.events import Attachment, ConversationKey, IncomingMessage
from botservice.core.ports import (
    ChannelSettings,
    MessageStatus,
    PendingTurn,
    SettingField,
    StoredMessage,
    StoredToolCall,
    Usage,
    UsageRecord,
)

log = logging.getLogger("botservice.storage.turns")

# In the order the settings statement selects them (channel_settings._CHANNEL_SETTINGS).
SETTING_FIELDS: tuple[SettingField, ...] = get_args(SettingField)


def utcnow() -> datetime:
    return datetime.now(UTC)


def clean_text(text: str) -> str:
    # PostgreSQL text cannot hold NUL; nobody means to send one.
    return text.replace("\x00", "") if "\x00" in text else text


def audio_json(attachments: tuple[Attachment, ...]) -> str | None:
    audio = [
        {"name": a.name, "content_type": a.content_type, "url": a.url, "size": a.size}
        for a in attachments
        if a.is_audio
    ]
    return json.dumps(audio, separators=(",", ":")) if audio else None


def key_values(key: ConversationKey) -> dict[str, Any]:
    return {
        "platform": key.platform,
        "workspace": key.workspace,
        "channel": key.channel,
        "thread": key.thread,
    }


def turn_values(message: IncomingMessage, now: datetime, *, spoken: bool = False) -> dict[str, Any]:
    # A realtime voice session answers a spoken turn itself: no worker ever claims one.
    return {
        "platform": message.platform,
        "message_key": message.message_key,
        "user_id": message.user_id,
        "is_channel_admin": message.is_channel_admin,
        "status": "spoken" if spoken else "pending",
        "reply_target": json.dumps(message.reply_target, separators=(",", ":")),
        "claims": 0,
        "created_at": now,
    }


def user_message_values(
    message: IncomingMessage, *, text: str, tokens: int, now: datetime
) -> dict[str, Any]:
    return {
        "role": "user",
        "author_id": message.user_id,
        "author_name": message.user_name,
        "text": clean_text(text),
        "platform_message_id": message.platform_message_id,
        "tokens": tokens,
        "status": "complete",
        "audio": audio_json(message.attachments),
        "created_at": now,
    }


def answer_values(
    text: str, tokens: int, usage: Usage | None, status: MessageStatus, model: str
) -> dict[str, Any]:
    return {
        "role": "assistant",
        "author_id": "",
        "author_name": "",
        "text": clean_text(text),
        "platform_message_id": "",
        "tokens": tokens,
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
        "model": model,
        "status": status,
        "created_at": utcnow(),
    }


def finish_values(
    turn_id: int, holder: str | None, reply_ref: str | None, *, status: str = "answered"
) -> dict[str, Any]:
    return {
        "b_turn_id": turn_id,
        "b_holder": holder,
        "b_status": status,
        "b_now": utcnow(),
        "b_reply_ref": reply_ref,
    }


def usage_values(record: UsageRecord) -> dict[str, Any]:
    return {
        "turn_id": record.turn_id,
        "platform": record.platform,
        "workspace": record.workspace,
        "channel": record.channel,
        "user_id": record.user_id,
        "model": record.model,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cached_tokens": record.cached_tokens,
        "reasoning_tokens": record.reasoning_tokens,
        "cost": record.cost,
        "estimated": record.estimated,
        "created_at": utcnow(),
    }


def stored_message(row: Any, created_at: datetime | None) -> StoredMessage:
    """A message from the columns of `base._MESSAGE_COLUMNS`, in their order."""
    return StoredMessage(
        id=row[0],
        role=row[1],
        author_id=row[2],
        author_name=row[3],
        text=row[4],
        tokens=row[5],
        reply_to_id=row[6],
        status=row[7],
        created_at=created_at,
    )


def pending_turn(row: Any, conversation: ConversationKey, created_at: datetime) -> PendingTurn:
    """A turn from the columns of `turns._PENDING_COLUMNS`, in their order."""
    return PendingTurn(
        turn_id=row[0],
        conversation_id=row[1],
        user_message_id=row[2],
        platform=row[3],
        conversation=conversation,
        reply_target=json.loads(row[4]) if row[4] else {},
        reply_ref=row[5],
        created_at=created_at,
        user_id=row[7],
        is_channel_admin=bool(row[8]),
        claims=row[9],
        has_audio=row[10] is None or bool(row[10]),
    )


def merged_settings(rows: list[Any], channel: str) -> ChannelSettings:
    """The channel's own row first, the workspace row ('') after it, field by field."""
    rows.sort(key=lambda row: row[0] != channel)
    values: dict[str, Any] = dict.fromkeys(SETTING_FIELDS)
    for row in rows:
        for index, field in enumerate(SETTING_FIELDS, start=1):
            if values[field] is None:
                values[field] = row[index]
    if values["background"] is not None:
        values["background"] = bool(values["background"])
    return ChannelSettings(**values)


def window_order(messages: list[StoredMessage]) -> list[StoredMessage]:
    """Oldest first, each answer right after the question it answers, even when it was
    stored after a later question."""
    messages.sort(key=lambda message: (message.reply_to_id or message.id, message.id))
    return messages


def log_released(conversation_ids: list[int]) -> list[int]:
    """The sweep's one warning line, whichever path released the turns."""
    if conversation_ids:
        log.warning(
            "took back the turns of %d conversations whose process stopped answering",
            len(conversation_ids),
        )
    return conversation_ids


def tool_call(row: Any) -> StoredToolCall:
    """A stored tool call from its columns (tool_rounds._CALL_COLUMNS, in order)."""
    return StoredToolCall(
        user_message_id=row[0],
        round=row[1],
        position=row[2],
        call_id=row[3],
        name=row[4],
        arguments=row[5],
        status=row[6],
        result=row[7],
        is_error=bool(row[8]),
        tokens=row[9],
        round_text=row[10],
    )

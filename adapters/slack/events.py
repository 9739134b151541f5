"""Slack payloads to botservice values: a table of small pure functions.

Nothing here does I/O. `translate_event` decides what an Events API payload
asks for; the adapter then looks up what needs the network (the user's name,
files, a thread's earlier messages) and calls `build_incoming`.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botservice.core.events import Attachment, ContextMessage, IncomingMessage

PLATFORM = "slack"

# Subtypes that are still a person writing a message.
_USER_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})


@dataclass(frozen=True, slots=True)
class BotIdentity:
    user_id: str | None = None
    bot_id: str | None = None


@dataclass(frozen=True, slots=True)
class FileRef:
    name: str
    mimetype: str
    url: str
    size: int = 0
    # Slack's own kind of file: "slack_audio" for an audio clip recorded in Slack.
    subtype: str = ""

    @property
    def is_audio(self) -> bool:
        return self.mimetype.startswith("audio/") or self.subtype == "slack_audio"


@dataclass(frozen=True, slots=True)
class MessageDraft:
    """A person's message that may need an answer, before any network look-up."""

    team: str
    channel: str
    channel_type: str
    ts: str
    thread_ts: str | None
    user: str
    text: str
    files: tuple[FileRef, ...] = ()
    event_id: str = ""
    enterprise: str | None = None

    @property
    def is_direct(self) -> bool:
        return self.channel_type == "im"

    @property
    def in_thread(self) -> bool:
        return bool(self.thread_ts) and self.thread_ts != self.ts

    @property
    def thread(self) -> str:
        """The conversation's thread: a channel mention starts a thread under itself;
        top-level direct messages are one flat conversation, each DM thread its own."""
        if self.is_direct:
            return self.thread_ts or ""
        return self.thread_ts or self.ts

    @property
    def message_key(self) -> str:
        # Names the message, not the delivery: app_mention and message events of
        # one mention, retries and Socket Mode duplicates all share it.
        return f"{self.channel}:{self.ts}"

    def reply_target(self) -> ReplyTarget:
        return ReplyTarget(
            team=self.team,
            channel=self.channel,
            thread_ts=self.thread_ts if self.is_direct else self.thread,
            user=self.user,
            assistant=self.is_direct and bool(self.thread_ts),
            enterprise=self.enterprise,
        )


@dataclass(frozen=True, slots=True)
class ReplyTarget:
    """Where to answer; stored with a pending turn so a restart can resume it."""

    team: str
    channel: str
    thread_ts: str | None = None
    user: str = ""
    assistant: bool = False
    enterprise: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"team": self.team, "channel": self.channel}
        if self.thread_ts:
            data["thread_ts"] = self.thread_ts
        if self.user:
            data["user"] = self.user
        if self.assistant:
            data["assistant"] = True
        if self.enterprise:
            data["enterprise"] = self.enterprise
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplyTarget | None:
        team, channel = data.get("team"), data.get("channel")
        if not isinstance(team, str) or not isinstance(channel, str) or not channel:
            return None
        thread_ts = data.get("thread_ts")
        return cls(
            team=team,
            channel=channel,
            thread_ts=thread_ts if isinstance(thread_ts, str) else None,
            user=str(data.get("user") or ""),
            assistant=bool(data.get("assistant")),
            enterprise=data.get("enterprise") if isinstance(data.get("enterprise"), str) else None,
        )


# --- what an event asks for -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ignore:
    reason: str


@dataclass(frozen=True, slots=True)
class Converse:
    draft: MessageDraft
    # A thread reply without a mention is only for us if we are in that thread.
    only_in_known_thread: bool = False


@dataclass(frozen=True, slots=True)
class DeleteMessage:
    team: str
    channel: str
    ts: str


@dataclass(frozen=True, slots=True)
class AssistantThreadStarted:
    team: str
    channel: str
    thread_ts: str
    user: str


@dataclass(frozen=True, slots=True)
class AgentViewOpened:
    """Someone opened the app's Messages tab (the agent view's conversation): show the
    suggested prompts, as for `assistant_thread_started`, without a thread."""

    team: str
    channel: str
    user: str


@dataclass(frozen=True, slots=True)
class ViewChanged:
    """What a person is looking at in Slack changed while the app was open beside it
    (`app_context_changed`; `assistant_thread_context_changed` in the assistant view).
    `channel` is None when they look at no channel."""

    team: str
    user: str
    channel: str | None


@dataclass(frozen=True, slots=True)
class WorkspaceGone:
    """The app was uninstalled, or its bot token revoked: forget the workspace."""

    team: str
    enterprise: str | None
    uninstalled: bool


Action = (
    Ignore
    | Converse
    | DeleteMessage
    | AssistantThreadStarted
    | AgentViewOpened
    | ViewChanged
    | WorkspaceGone
)
Translator = Callable[[Mapping[str, Any], Mapping[str, Any], BotIdentity], Action]


def translate_event(body: Mapping[str, Any], bot: BotIdentity) -> Action:
    """Decide what one Events API envelope (`event_callback`) asks of the bot."""
    event = body.get("event")
    if not isinstance(event, Mapping):
        return Ignore("no event")
    translator = EVENT_TRANSLATORS.get(str(event.get("type")))
    if translator is None:
        return Ignore(f"unhandled event type {event.get('type')!r}")
    return translator(body, event, bot)


def delivered_message_key(body: Mapping[str, Any]) -> str | None:
    """The `MessageDraft.message_key` of the person's message an Events API envelope
    carries (a mention, or a message written by a person), read without translating
    it; None for anything else (edits, deletions, other events)."""
    event = body.get("event")
    if not isinstance(event, Mapping) or event.get("type") not in ("app_mention", "message"):
        return None
    channel, ts = event.get("channel"), event.get("ts")
    if event.get("subtype") not in _USER_SUBTYPES or not channel or not ts:
        return None
    return f"{channel}:{ts}"


def _team(body: Mapping[str, Any], event: Mapping[str, Any]) -> str:
    # The installation's team; in shared channels `event.team` is the author's.
    return str(body.get("team_id") or event.get("team") or "")


def _enterprise(body: Mapping[str, Any]) -> str | None:
    value = body.get("enterprise_id")
    return value if isinstance(value, str) and value else None


def _from_a_bot(event: Mapping[str, Any], bot: BotIdentity) -> bool:
    return bool(
        event.get("bot_id")
        or event.get("bot_profile")
        or (bot.user_id and event.get("user") == bot.user_id)
        or not event.get("user")
    )


def _draft(body: Mapping[str, Any], event: Mapping[str, Any], bot: BotIdentity) -> MessageDraft:
    thread_ts = event.get("thread_ts")
    return MessageDraft(
        team=_team(body, event),
        channel=str(event.get("channel", "")),
        channel_type=str(
            event.get("channel_type")
            or ("im" if str(event.get("channel", "")).startswith("D") else "channel")
        ),
        ts=str(event.get("ts", "")),
        thread_ts=str(thread_ts) if thread_ts else None,
        user=str(event.get("user", "")),
        text=plain_text(str(event.get("text") or ""), bot_user_id=bot.user_id),
        files=files_of(event),
        event_id=str(body.get("event_id", "")),
        enterprise=_enterprise(body),
    )


def _app_mention(body: Mapping[str, Any], event: Mapping[str, Any], bot: BotIdentity) -> Action:
    if _from_a_bot(event, bot):
        return Ignore("mention by a bot")
    if event.get("subtype") not in _USER_SUBTYPES:
        return Ignore(f"mention subtype {event.get('subtype')}")
    draft = _draft(body, event, bot)
    if not draft.channel or not draft.ts:
        return Ignore("mention without channel or ts")
    return Converse(draft)


def _message(body: Mapping[str, Any], event: Mapping[str, Any], bot: BotIdentity) -> Action:
    subtype = event.get("subtype")
    if subtype == "message_deleted":
        deleted = event.get("deleted_ts") or (event.get("previous_message") or {}).get("ts")
        if not deleted:
            return Ignore("deletion without ts")
        return DeleteMessage(_team(body, event), str(event.get("channel", "")), str(deleted))
    if subtype == "message_changed":
        return Ignore("edits are not answered")
    if subtype not in _USER_SUBTYPES:
        return Ignore(f"message subtype {subtype}")
    if _from_a_bot(event, bot):
        return Ignore("message by a bot")
    draft = _draft(body, event, bot)
    if not draft.channel or not draft.ts:
        return Ignore("message without channel or ts")
    if draft.is_direct:
        return Converse(draft)
    if bot.user_id and f"<@{bot.user_id}>" in str(event.get("text") or ""):
        return Ignore("mentions arrive as app_mention")
    if draft.in_thread:
        return Converse(draft, only_in_known_thread=True)
    return Ignore("channel message without a mention")


def _assistant_thread_started(
    body: Mapping[str, Any], event: Mapping[str, Any], bot: BotIdentity
) -> Action:
    thread = event.get("assistant_thread")
    if (
        not isinstance(thread, Mapping)
        or not thread.get("channel_id")
        or not thread.get("thread_ts")
    ):
        return Ignore("assistant thread without channel")
    return AssistantThreadStarted(
        team=_team(body, event),
        channel=str(thread["channel_id"]),
        thread_ts=str(thread["thread_ts"]),
        user=str(thread.get("user_id", "")),
    )


def _app_home_opened(body: Mapping[str, Any], event: Mapping[str, Any], bot: BotIdentity) -> Action:
    channel, user = event.get("channel"), event.get("user")
    if event.get("tab") != "messages":
        return Ignore("app home opened on another tab")
    if not isinstance(channel, str) or not channel or not isinstance(user, str) or not user:
        return Ignore("app home opened without channel or user")
    return AgentViewOpened(team=_team(body, event), channel=channel, user=user)


_CHANNEL_ENTITY = "slack#/types/channel_id"
_MESSAGE_ENTITY = "slack#/types/message_context"


def _app_context_changed(
    body: Mapping[str, Any], event: Mapping[str, Any], bot: BotIdentity
) -> Action:
    user = event.get("user") or _person_authorized(body)
    if not isinstance(user, str) or not user:
        return Ignore("context change without a person")
    context = event.get("context")
    entities = context.get("entities") if isinstance(context, Mapping) else None
    channel = None
    # Ordered by relevance: the first channel (or message's channel) is what they look at.
    for entity in entities if isinstance(entities, Sequence) else ():
        if not isinstance(entity, Mapping):
            continue
        value = entity.get("value")
        if entity.get("type") == _CHANNEL_ENTITY and isinstance(value, str) and value:
            channel = value
        elif entity.get("type") == _MESSAGE_ENTITY and isinstance(value, Mapping):
            found = value.get("channel_id")
            channel = found if isinstance(found, str) and found else None
        if channel:
            break
    return ViewChanged(team=_team(body, event), user=user, channel=channel)


def _assistant_thread_context_changed(
    body: Mapping[str, Any], event: Mapping[str, Any], bot: BotIdentity
) -> Action:
    thread = event.get("assistant_thread")
    if not isinstance(thread, Mapping) or not thread.get("user_id"):
        return Ignore("assistant context change without a person")
    context = thread.get("context")
    channel = context.get("channel_id") if isinstance(context, Mapping) else None
    return ViewChanged(
        team=_team(body, event),
        user=str(thread["user_id"]),
        channel=channel if isinstance(channel, str) and channel else None,
    )


def _person_authorized(body: Mapping[str, Any]) -> str | None:
    """The person an event is for, when the event does not say (`app_context_changed`)."""
    authorizations = body.get("authorizations")
    for item in authorizations if isinstance(authorizations, Sequence) else ():
        if isinstance(item, Mapping) and item.get("is_bot") is False:
            user = item.get("user_id")
            return user if isinstance(user, str) else None
    return None


def _app_uninstalled(body: Mapping[str, Any], event: Mapping[str, Any], bot: BotIdentity) -> Action:
    return WorkspaceGone(_team(body, event), _enterprise(body), uninstalled=True)


def _tokens_revoked(body: Mapping[str, Any], event: Mapping[str, Any], bot: BotIdentity) -> Action:
    tokens = event.get("tokens")
    if isinstance(tokens, Mapping) and tokens.get("bot"):
        return WorkspaceGone(_team(body, event), _enterprise(body), uninstalled=False)
    return Ignore("only user tokens revoked")


EVENT_TRANSLATORS: dict[str, Translator] = {
    "app_mention": _app_mention,
    "message": _message,
    "assistant_thread_started": _assistant_thread_started,
    "assistant_thread_context_changed": _assistant_thread_context_changed,
    "app_home_opened": _app_home_opened,
    "app_context_changed": _app_context_changed,
    "app_uninstalled": _app_uninstalled,
    "tokens_revoked": _tokens_revoked,
}


# --- text and files ----------------------------------------------------------------

_SPECIAL = re.compile(r"<([^<>]+)>")


def plain_text(text: str, *, bot_user_id: str | None = None) -> str:
    """Slack's message markup to the plain text a model reads."""

    def replace(match: re.Match[str]) -> str:
        inner = match.group(1)
        target, _, label = inner.partition("|")
        if target.startswith("@"):
            if bot_user_id and target[1:] == bot_user_id:
                return ""
            return f"@{label}" if label else target
        if target.startswith("#"):
            return f"#{label}" if label else target
        if target.startswith("!"):
            return f"@{label or target[1:].split('^')[0]}"
        if label and label != target:
            return f"{label} ({target})"
        return target.removeprefix("mailto:")

    return html.unescape(_SPECIAL.sub(replace, text)).strip()


def files_of(event: Mapping[str, Any]) -> tuple[FileRef, ...]:
    files = event.get("files")
    if not isinstance(files, Sequence):
        return ()
    refs = []
    for item in files:
        if not isinstance(item, Mapping) or item.get("mode") == "tombstone":
            continue
        refs.append(
            FileRef(
                name=str(item.get("name") or item.get("title") or "file"),
                mimetype=str(item.get("mimetype") or "application/octet-stream"),
                url=str(item.get("url_private_download") or item.get("url_private") or ""),
                size=int(item.get("size") or 0),
                subtype=str(item.get("subtype") or ""),
            )
        )
    return tuple(refs)


# --- people -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlackUser:
    id: str
    name: str
    is_admin: bool = False


def user_from_info(user_id: str, response: Mapping[str, Any]) -> SlackUser:
    """`users.info` answer to a display name and the workspace-admin right."""
    user = response.get("user")
    if not isinstance(user, Mapping):
        return SlackUser(user_id, user_id)
    profile = user.get("profile") if isinstance(user.get("profile"), Mapping) else {}
    assert isinstance(profile, Mapping)
    name = (
        profile.get("display_name")
        or profile.get("real_name")
        or user.get("real_name")
        or user.get("name")
        or user_id
    )
    admin = bool(user.get("is_admin") or user.get("is_owner") or user.get("is_primary_owner"))
    return SlackUser(user_id, str(name), admin)


# --- a thread read once ---------------------------------------------------------------


def thread_context(
    replies: Sequence[Mapping[str, Any]],
    *,
    before_ts: str,
    bot: BotIdentity,
    names: Mapping[str, str],
    max_chars: int,
    placeholder: str = "",
) -> tuple[ContextMessage, ...]:
    """Earlier messages of a thread, newest kept when space is short.

    The bot's own placeholders are left out: the model must not read them as
    its earlier answers.
    """
    earlier: list[ContextMessage] = []
    for message in replies:
        ts = str(message.get("ts", ""))
        if not ts or _ts_key(ts) >= _ts_key(before_ts):
            continue
        own = bool(bot.user_id) and message.get("user") == bot.user_id
        raw_text = str(message.get("text") or "")
        if own and placeholder and raw_text.strip() == placeholder:
            continue
        text = plain_text(raw_text, bot_user_id=bot.user_id)
        if not text:
            continue
        from_bot = own or bool(message.get("bot_id"))
        user = str(message.get("user") or "")
        author = "me" if own else names.get(user) or _bot_name(message) or user or "someone"
        earlier.append(ContextMessage(author_name=author, text=text, from_bot=from_bot))
    kept: list[ContextMessage] = []
    size = 0
    for item in reversed(earlier):
        size += len(item.author_name) + len(item.text) + 4
        if size > max_chars:
            break
        kept.append(item)
    return tuple(reversed(kept))


def _ts_key(ts: str) -> tuple[int, int]:
    seconds, _, fraction = ts.partition(".")
    try:
        return int(seconds or 0), int(fraction or 0)
    except ValueError:
        return 0, 0


def _bot_name(message: Mapping[str, Any]) -> str:
    profile = message.get("bot_profile")
    if isinstance(profile, Mapping) and profile.get("name"):
        return str(profile["name"])
    return str(message.get("username") or "")


# --- the core's message ---------------------------------------------------------------


def build_incoming(
    draft: MessageDraft,
    *,
    user: SlackUser,
    is_channel_admin: bool,
    attachments: tuple[Attachment, ...] = (),
    context: tuple[ContextMessage, ...] = (),
    raw: Any = None,
) -> IncomingMessage:
    return IncomingMessage(
        platform=PLATFORM,
        workspace=draft.team,
        channel=draft.channel,
        thread=draft.thread,
        user_id=draft.user,
        user_name=user.name,
        text=draft.text,
        message_key=draft.message_key,
        is_channel_admin=is_channel_admin,
        attachments=attachments,
        context=context,
        platform_message_id=draft.ts,
        reply_target=draft.reply_target().to_dict(),
        is_direct=draft.is_direct,
        raw=raw,
    )


# --- slash commands -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlashCommand:
    team: str
    channel: str
    channel_type: str
    user: str
    user_name: str
    text: str
    trigger_id: str
    enterprise: str | None = None

    def message(self, *, is_channel_admin: bool, user_name: str | None = None) -> IncomingMessage:
        """The command as the core's message (commands act on the channel)."""
        return IncomingMessage(
            platform=PLATFORM,
            workspace=self.team,
            channel=self.channel,
            thread="",
            user_id=self.user,
            user_name=user_name or self.user_name,
            text=self.text,
            message_key=f"command:{self.trigger_id}",
            is_channel_admin=is_channel_admin,
            is_direct=self.channel_type == "im",
            reply_target=ReplyTarget(
                team=self.team, channel=self.channel, user=self.user, enterprise=self.enterprise
            ).to_dict(),
        )


def slash_command(body: Mapping[str, Any]) -> SlashCommand | None:
    channel = body.get("channel_id")
    user = body.get("user_id")
    if not isinstance(channel, str) or not isinstance(user, str) or not channel or not user:
        return None
    trigger = body.get("trigger_id")
    if not isinstance(trigger, str) or not trigger:
        return None
    channel_name = str(body.get("channel_name") or "")
    return SlashCommand(
        team=str(body.get("team_id") or ""),
        channel=channel,
        channel_type="im"
        if channel_name == "directmessage" or channel.startswith("D")
        else "channel",
        user=user,
        user_name=str(body.get("user_name") or user),
        text=str(body.get("text") or "").strip(),
        trigger_id=trigger,
        enterprise=str(body["enterprise_id"]) if body.get("enterprise_id") else None,
    )

"""Where one answer goes in Slack: a placeholder at once, throttled edits, split final text."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from botservice.adapters.slack.budget import UpdateBudget
from botservice.adapters.slack.events import ReplyTarget
from botservice.adapters.slack.mrkdwn import MESSAGE_LIMIT, markdown_to_mrkdwn
from botservice.core.errors import BotServiceError
from botservice.core.message_split import split_message
from botservice.core.telemetry import NO_TELEMETRY, Telemetry

log = logging.getLogger(__name__)

PLACEHOLDER = "_Thinking…_"
ASSISTANT_STATUS = "is thinking…"
# Message metadata on the first message of each answer, naming its turn: after a crash
# between Slack creating the placeholder and the core storing its ts, the resumed turn
# finds it by this tag and edits it instead of leaving it stuck under a second one.
TURN_EVENT_TYPE = "botservice_turn"
# How far back a resumed turn looks for its tagged message: one page, one call.
FIND_LIMIT = 200
# Shown while streaming when the answer has outgrown one message; the final
# text is split into several messages instead.
_MORE = "\n…"


class SlackDeliveryError(BotServiceError):
    """Slack refused a message the user must see (the final answer or a notice)."""

    user_message = "I could not post my answer in Slack."


@dataclass(slots=True)
class SlackReplySink:
    """One answer in one Slack thread (implements `botservice.core.ports.ReplySink`).

    In an assistant thread (Slack's AI side panel) the "thinking" status stands
    in for the placeholder: posting any message clears that status, so the
    first text is posted when it arrives.
    """

    client: AsyncWebClient | None
    target: ReplyTarget
    budget: UpdateBudget
    limit: int = MESSAGE_LIMIT
    ts: str | None = None
    # For a turn resumed after a restart in a multi-workspace install: finds
    # the workspace's bot token when the first call is made.
    resolve: Callable[[], Awaitable[AsyncWebClient | None]] | None = None
    telemetry: Telemetry = NO_TELEMETRY
    _last_shown: str | None = field(default=None, repr=False)
    _open: bool = field(default=False, repr=False)
    _turn_tag: str | None = field(default=None, repr=False)

    async def begin(self, existing_ref: str | None, *, turn_tag: str, resumed: bool) -> str | None:
        if not self._open:
            self._open = True
            self.budget.opened(self.target.team)
        self._turn_tag = turn_tag
        if existing_ref:
            self.ts = existing_ref
            return existing_ref
        if resumed and (found := await self._find_tagged(turn_tag)):
            self.ts = found
            return found
        # In a plain DM thread (not an assistant thread) setting the status
        # fails, and a placeholder is posted as anywhere else.
        if (
            self.target.assistant
            and self.target.thread_ts
            and await self._set_status(ASSISTANT_STATUS)
        ):
            return None
        return await self._post_first(PLACEHOLDER)

    async def _post_first(self, text: str, *, required: bool = False) -> str | None:
        """Post the answer's first message, tagged with its turn."""
        metadata = None
        if self._turn_tag is not None:
            metadata = {"event_type": TURN_EVENT_TYPE, "event_payload": {"turn": self._turn_tag}}
        response = await self._call(
            "chat_postMessage",
            channel=self.target.channel,
            thread_ts=self.target.thread_ts,
            text=text,
            metadata=metadata,
            required=required,
        )
        self.ts = response.get("ts") if response is not None else None
        return self.ts

    async def _find_tagged(self, turn_tag: str) -> str | None:
        """The ts of a message this turn posted before a stop, if Slack shows one."""
        if self.target.thread_ts:
            response = await self._call(
                "conversations_replies",
                channel=self.target.channel,
                ts=self.target.thread_ts,
                include_all_metadata=True,
                limit=FIND_LIMIT,
            )
        else:
            response = await self._call(
                "conversations_history",
                channel=self.target.channel,
                include_all_metadata=True,
                limit=FIND_LIMIT,
            )
        messages = (response.get("messages") if response is not None else None) or []
        for message in reversed(messages):
            metadata = message.get("metadata") or {}
            payload = metadata.get("event_payload") or {}
            if metadata.get("event_type") == TURN_EVENT_TYPE and payload.get("turn") == turn_tag:
                ts = message.get("ts")
                if isinstance(ts, str) and ts:
                    log.info("found the message of resumed turn %s in Slack", turn_tag)
                    return ts
        return None

    async def update(self, text: str) -> None:
        shown = _streaming_view(markdown_to_mrkdwn(text), self.limit)
        if not shown.strip() or shown == self._last_shown:
            return
        if self.ts is None:
            await self._post_first(shown)
        else:
            if not self.budget.try_take(self.target.team):
                return
            await self._call("chat_update", channel=self.target.channel, ts=self.ts, text=shown)
        self._last_shown = shown

    async def finish(self, text: str) -> None:
        try:
            await self._finish(text)
        finally:
            if self._open:
                self._open = False
                self.budget.closed(self.target.team)

    async def _finish(self, text: str) -> None:
        # Always edit, even if the text equals what is shown or an earlier
        # answer: skipping it is how placeholders get stuck.
        chunks = split_message(markdown_to_mrkdwn(text), self.limit) or [""]
        first, rest = chunks[0] or "…", chunks[1:]
        if self.ts is None:
            await self._post_first(first, required=True)
        else:
            await self.budget.take(self.target.team)
            await self._call(
                "chat_update", channel=self.target.channel, ts=self.ts, text=first, required=True
            )
        for chunk in rest:
            await self._call(
                "chat_postMessage",
                channel=self.target.channel,
                thread_ts=self.target.thread_ts,
                text=chunk,
                required=True,
            )
        self._last_shown = first

    async def notice(self, text: str, *, private: bool = True) -> None:
        message = markdown_to_mrkdwn(text)
        if private and self.target.user:
            await self._call(
                "chat_postEphemeral",
                channel=self.target.channel,
                user=self.target.user,
                thread_ts=self.target.thread_ts,
                text=message,
                required=True,
            )
            return
        await self._call(
            "chat_postMessage",
            channel=self.target.channel,
            thread_ts=self.target.thread_ts,
            text=message,
            required=True,
        )

    async def _set_status(self, status: str) -> bool:
        return None is not await self._call(
            "assistant_threads_setStatus",
            channel_id=self.target.channel,
            thread_ts=self.target.thread_ts,
            status=status,
        )

    async def _call(self, method: str, *, required: bool = False, **kwargs: Any) -> Any:
        arguments = {key: value for key, value in kwargs.items() if value is not None}
        try:
            client = await self._client()
            response = await getattr(client, method)(**arguments)
        except (SlackApiError, SlackDeliveryError, aiohttp.ClientError, TimeoutError) as error:
            self.telemetry.platform_call("slack", method, _status_label(error))
            code = _describe(error)
            log.warning("Slack %s failed in %s: %s", method, self.target.channel, code)
            if required:
                raise SlackDeliveryError(f"{method} failed: {code}") from None
            return None
        self.telemetry.platform_call("slack", method, "ok")
        return response

    async def _client(self) -> AsyncWebClient:
        if self.client is None and self.resolve is not None:
            self.client = await self.resolve()
        if self.client is None:
            raise SlackDeliveryError(f"no bot token for workspace {self.target.team}")
        return self.client


@dataclass(slots=True)
class CommandReplySink(SlackReplySink):
    """Answers to a slash command: collected for the acknowledgement (which Slack
    shows only to the user), or posted ephemerally once the ack has gone."""

    _buffer: list[str] = field(default_factory=list)
    _direct: bool = False

    async def notice(self, text: str, *, private: bool = True) -> None:
        if self._direct:
            await SlackReplySink.notice(self, text, private=private)
        else:
            self._buffer.append(markdown_to_mrkdwn(text))

    async def begin(self, existing_ref: str | None, *, turn_tag: str, resumed: bool) -> str | None:
        # Command answers go into the acknowledgement: nothing is posted to find again.
        return existing_ref

    async def update(self, text: str) -> None:
        return None

    async def finish(self, text: str) -> None:
        await self.notice(text)

    def take_buffered(self) -> str:
        text = "\n\n".join(self._buffer)
        self._buffer.clear()
        return text

    def go_direct(self) -> None:
        self._direct = True


def _describe(error: Exception) -> str:
    if isinstance(error, SlackApiError) and error.response is not None:
        return str(error.response.get("error") or error.response.status_code)
    if isinstance(error, SlackDeliveryError):
        return str(error)
    return type(error).__name__


_ERROR_CODE = re.compile(r"^[a-z_]{1,40}$")


def _status_label(error: Exception) -> str:
    """A bounded metric label: Slack's error code (`ratelimited`, `channel_not_found`...),
    else the kind of failure; never an id or a message."""
    if isinstance(error, SlackApiError) and error.response is not None:
        code = str(error.response.get("error") or "")
        return code if _ERROR_CODE.match(code) else f"http_{error.response.status_code}"
    if isinstance(error, SlackDeliveryError):
        return "no_token"
    return "transport"


def _streaming_view(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return split_message(text, limit - len(_MORE))[0] + _MORE

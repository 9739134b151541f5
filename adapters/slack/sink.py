"""Where one answer goes in Slack: the first text when it arrives, edits within the
workspace's budget, the final text split if it must be."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from botservice.adapters.slack.budget import StreamBudget, UpdateBudget
from botservice.adapters.slack.confirmation import prompt_message, unanswered_message
from botservice.adapters.slack.events import ReplyTarget
from botservice.adapters.slack.mrkdwn import MESSAGE_LIMIT, escape, markdown_to_mrkdwn
from botservice.adapters.slack.task_cards import TaskCards, markdown_chunk
from botservice.core.errors import BotServiceError
from botservice.core.message_split import split_message
from botservice.core.ports import GeneratedFile, SinkAbilities
from botservice.core.telemetry import NO_TELEMETRY, Telemetry
from botservice.core.tools import ClosedOutcome, ConfirmationRequest, ToolProgress

log = logging.getLogger(__name__)

PLACEHOLDER = "_Thinking…_"
ASSISTANT_STATUS = "is thinking…"
# Shown in turn by Slack under the status while the first words are awaited (its
# loading messages); short, and saying nothing about the question.
LOADING_MESSAGES = ("Reading the thread…", "Thinking it over…", "Writing an answer…")
# Message metadata on the first message of each answer, naming its turn: after a crash
# between Slack creating that message and the core storing its ts, the resumed turn
# finds it by this tag and edits it instead of leaving it stuck under a second one.
TURN_EVENT_TYPE = "botservice_turn"
# How far back a resumed turn looks for its tagged message: one page, one call.
FIND_LIMIT = 200
# Shown while streaming when the answer has outgrown one message; the final
# text is split into several messages instead.
_MORE = "\n…"
# A final edit refused with Slack's 429 is tried again after Retry-After this often,
# waiting at most this long each time: the final text must land.
FINAL_EDIT_ATTEMPTS = 5
RETRY_AFTER_CAP_SECONDS = 30.0
# Slack's answers to chat.startStream that mean "not in this workspace" (an older
# plan, a missing scope, a method it does not know): edits from then on.
STREAMING_REFUSED = frozenset(
    {
        "unknown_method",
        "method_deprecated",
        "missing_scope",
        "not_allowed_token_type",
        "feature_not_enabled",
        "team_not_allowed",
        "not_allowed",
    }
)
STREAM_EXPIRED = "message_not_in_streaming_state"
# The action id of the 👍 / 👎 buttons under every final answer (Slack's feedback
# buttons); their values are `up:<turn id>` and `down:<turn id>`.
FEEDBACK_ACTION = "botservice_feedback"
# Slack's limit on a section block's text; longer answers get several sections.
SECTION_LIMIT = 3000


class SlackDeliveryError(BotServiceError):
    """Slack refused a message the user must see (the final answer or a notice)."""

    user_message = "I could not post my answer in Slack."


@dataclass(slots=True)
class SlackReplySink:
    """One answer in one Slack thread (implements `botservice.core.ports.ReplySink`).

    Nothing is posted before there is something to show. The first text is
    posted `first_text_hold` seconds after it arrives, with whatever has come by
    then, so an answer that is complete by then is one `chat.postMessage` and
    nothing else. Until the first text, the user sees Slack's "thinking" status
    in an assistant thread, and elsewhere a placeholder, posted only when the
    first text takes longer than `placeholder_after` seconds. Whatever is posted
    first carries the turn's metadata, so a resumed turn finds and edits it.

    Edits after the first message come out of the workspace's `UpdateBudget`:
    intermediate ones are skipped when it is low; the final one is always made.
    Slack's own 429 on an edit holds back this reply's next edit only.

    In assistant threads and direct-message threads, with `streams` given, an
    answer still going when its first text is due is streamed natively
    (`chat.startStream`, `appendStream`, `stopStream`) instead of edited. A
    stream that expires mid-answer (`message_not_in_streaming_state`) continues
    by `chat.update` with the whole text; a workspace that refuses streaming
    gets edits from then on.

    Tool calls in such a thread are task cards (`task_update` chunks): the first
    call of an answer starts the stream if nothing is shown yet, each card goes
    from pending (waiting for approval) or in progress to complete or error, and
    the answer's text streams below them. Anywhere else a round of calls is the
    core's status line, as an edit.
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
    placeholder_after: float = 1.0
    first_text_hold: float = 0.3
    streams: StreamBudget | None = None
    clock: Callable[[], float] = time.monotonic
    _last_shown: str | None = field(default=None, repr=False)
    _pending: str | None = field(default=None, repr=False)
    _pending_raw: str = field(default="", repr=False)
    _streaming: bool = field(default=False, repr=False)
    _streamed: str = field(default="", repr=False)
    _open: bool = field(default=False, repr=False)
    _finishing: bool = field(default=False, repr=False)
    _turn_tag: str | None = field(default=None, repr=False)
    _edit_after: float = field(default=0.0, repr=False)
    _first_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    _timers: list[asyncio.Task[None]] = field(default_factory=list, repr=False)
    _edit_client: AsyncWebClient | None = field(default=None, repr=False)
    # The stream's task cards, and how much text earlier rounds left in the stream
    # (the core's text starts over after each round of tool calls).
    _cards: TaskCards = field(default_factory=TaskCards, repr=False)
    _stream_used: int = field(default=0, repr=False)
    # The questions this answer asked (confirmation id -> their ts and request), so a
    # question nobody answered can lose its buttons.
    _questions: dict[int, tuple[str, ConfirmationRequest]] = field(default_factory=dict, repr=False)

    async def begin(self, existing_ref: str | None, *, turn_tag: str, resumed: bool) -> str | None:
        self._turn_tag = turn_tag
        if existing_ref:
            self._shown_at(existing_ref)
            return existing_ref
        if resumed and (found := await self._find_tagged(turn_tag)):
            self._shown_at(found)
            return found
        # In a plain DM thread (not an assistant thread) setting the status
        # fails, and a placeholder stands in as anywhere else.
        if (
            self.target.assistant
            and self.target.thread_ts
            and await self._set_status(ASSISTANT_STATUS)
        ):
            return None
        self._later(self.placeholder_after, self._post_placeholder)
        # The core learns no reference now; a resumed turn finds the message by its tag.
        return None

    def _shown_at(self, ts: str) -> None:
        """A message of this answer exists: it will need a final edit."""
        self.ts = ts
        if not self._open:
            self._open = True
            self.budget.opened(self.target.team)

    def _later(self, delay: float, action: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            await asyncio.sleep(delay)
            async with self._first_lock:
                if self.ts is None and not self._finishing:
                    await action()

        self._timers.append(asyncio.create_task(run()))

    async def _post_placeholder(self) -> None:
        if self._pending is None:
            await self._post_first(PLACEHOLDER)

    async def _post_pending(self) -> None:
        if self._pending is None:
            return
        if self._may_stream() and await self._start_stream(self._pending_raw):
            return
        text = self._pending
        await self._post_first(text)
        if self.ts is not None:
            self._last_shown = text

    def _metadata(self) -> dict[str, Any] | None:
        if self._turn_tag is None:
            return None
        return {"event_type": TURN_EVENT_TYPE, "event_payload": {"turn": self._turn_tag}}

    # --- native streaming ------------------------------------------------------------

    def _may_stream(self) -> bool:
        target = self.target
        return (
            self.streams is not None
            and self.ts is None
            and bool(target.thread_ts)
            and (target.assistant or target.channel.startswith("D"))
            and target.team not in self.streams.refused
        )

    async def _start_stream(self, text: str, cards: list[dict[str, Any]] | None = None) -> bool:
        """Start a native stream with `text` (then `cards`, task cards); False when this
        answer must use edits."""
        assert self.streams is not None
        team = self.target.team
        view = escape(text)
        if len(view) > self.limit or not self.streams.try_start(team):
            return False
        # Cards travel as chunks, and so does text sent with them (Slack takes either
        # `markdown_text` or `chunks`; never both in one call here).
        chunks = [*([markdown_chunk(view)] if view else []), *cards] if cards else None
        response, code = await self._stream_call(
            "chat_startStream",
            channel=self.target.channel,
            thread_ts=self.target.thread_ts,
            markdown_text=None if chunks else view,
            chunks=chunks,
            recipient_team_id=team,
            recipient_user_id=self.target.user or None,
            # Not among chat.startStream's documented arguments (chat.stopStream's
            # are): sent at the start too, so a turn resumed after a crash
            # mid-stream can find its message where Slack keeps it.
            metadata=self._metadata(),
        )
        ts = response.get("ts") if response is not None else None
        if not isinstance(ts, str) or not ts:
            self.streams.ended(team)
            if code in STREAMING_REFUSED:
                log.info("Slack workspace %s refused streaming (%s); using edits", team, code)
                self.streams.refuse(team)
            return False
        self.ts = ts
        self._streaming = True
        self._streamed = view
        return True

    async def _append_stream(self, text: str) -> None:
        assert self.streams is not None and self.ts is not None
        view = escape(text)
        if not view.startswith(self._streamed) or self._stream_used + len(view) > self.limit:
            return  # the final text settles it
        delta = view[len(self._streamed) :]
        if not delta or not self.streams.try_append(self.target.team):
            return  # skipped: the next append carries everything not yet sent
        _, code = await self._stream_call(
            "chat_appendStream", channel=self.target.channel, ts=self.ts, markdown_text=delta
        )
        if code is None:
            self._streamed = view
        elif code == STREAM_EXPIRED:
            self._stream_expired()

    def _stream_expired(self) -> None:
        """Slack closed the stream (a long pause): the message stays and is edited on."""
        assert self.streams is not None and self.ts is not None
        log.info("a Slack stream in %s expired; continuing by edits", self.target.channel)
        self._streaming = False
        self.streams.ended(self.target.team)
        self._shown_at(self.ts)

    async def _stop_stream(self, text: str) -> bool:
        """End the stream with the final text; False when the final text must still be
        shown by an edit (it does not continue what was streamed, or the stream expired)."""
        assert self.streams is not None and self.ts is not None
        view = escape(text)
        continues = view.startswith(self._streamed) and self._stream_used + len(view) <= self.limit
        delta = view[len(self._streamed) :] if continues else ""
        await self.streams.stop(self.target.team)
        feedback = self._feedback_block() if continues else None
        # A card whose last state was skipped (or lost) gets it now: none is left spinning.
        cards = self._cards.unsent()
        chunks = [*cards, *([markdown_chunk(delta)] if delta else [])] if cards else None
        _, code = await self._stream_call(
            "chat_stopStream",
            channel=self.target.channel,
            ts=self.ts,
            markdown_text=None if chunks else delta or None,
            chunks=chunks,
            blocks=[feedback] if feedback is not None else None,
            metadata=self._metadata(),
        )
        if code is None:
            self._streaming = False
            self.streams.ended(self.target.team)
            if continues:
                self._streamed = view
                return True
            self._shown_at(self.ts)
            return False
        self._stream_expired()
        return False

    async def _stream_call(self, method: str, **kwargs: Any) -> tuple[Any, str | None]:
        """A streaming call: (response, None), or (None, Slack's error code)."""
        arguments = {key: value for key, value in kwargs.items() if value is not None}
        try:
            client = await self._client_for_edits()
            return await getattr(client, method)(**arguments), None
        except (SlackApiError, SlackDeliveryError, aiohttp.ClientError, TimeoutError) as error:
            code = _describe(error)
            log.warning("Slack %s failed in %s: %s", method, self.target.channel, code)
            return None, code

    # --- posting and editing -----------------------------------------------------------

    async def _post_first(
        self, text: str, *, required: bool = False, blocks: list[dict[str, Any]] | None = None
    ) -> str | None:
        """Post the answer's first message, tagged with its turn."""
        metadata = self._metadata()
        response = await self._call(
            "chat_postMessage",
            channel=self.target.channel,
            thread_ts=self.target.thread_ts,
            text=text,
            blocks=blocks,
            metadata=metadata,
            required=required,
        )
        ts = response.get("ts") if response is not None else None
        if isinstance(ts, str) and ts:
            self._shown_at(ts)
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
            # Held briefly, so a short answer goes out whole in one post; the
            # post (or stream) takes whatever text has come by then.
            first = self._pending is None
            self._pending = shown
            self._pending_raw = text
            if first:
                self._later(self.first_text_hold, self._post_pending)
            return
        if self._streaming:
            await self._append_stream(text)
            return
        if self.clock() < self._edit_after or not self.budget.try_take(self.target.team):
            return  # skipped, not queued: the next edit carries the whole text
        if await self._edit(shown):
            self._last_shown = shown

    async def finish(self, text: str) -> None:
        try:
            await self._finish(text)
        finally:
            if self._open:
                self._open = False
                self.budget.closed(self.target.team)

    async def _finish(self, text: str) -> None:
        self._finishing = True
        # A first post already on the wire is waited for (its ts is needed to edit
        # it); one still waiting for its moment is not made at all.
        async with self._first_lock:
            pass
        for timer in self._timers:
            timer.cancel()
        await asyncio.gather(*self._timers, return_exceptions=True)
        self._timers.clear()
        # Always show the final text, even if it equals what is shown or an earlier
        # answer: skipping it is how placeholders get stuck.
        chunks = split_message(markdown_to_mrkdwn(text), self.limit) or [""]
        first, rest = chunks[0] or "…", chunks[1:]
        if self._streaming and await self._stop_stream(text):
            return
        # The feedback buttons go under the answer's last message.
        first_blocks = self._answer_blocks(first) if not rest else None
        if self.ts is None:
            await self._post_first(first, required=True, blocks=first_blocks)
        else:
            await self._final_edit(first, blocks=first_blocks)
        for index, chunk in enumerate(rest, start=1):
            await self._call(
                "chat_postMessage",
                channel=self.target.channel,
                thread_ts=self.target.thread_ts,
                text=chunk,
                blocks=self._answer_blocks(chunk) if index == len(rest) else None,
                required=True,
            )
        self._last_shown = first

    def _feedback_block(self) -> dict[str, Any] | None:
        if self._turn_tag is None:
            return None  # not an answer to a turn (a notice): nothing to rate
        return feedback_block(self._turn_tag)

    def _answer_blocks(self, text: str) -> list[dict[str, Any]] | None:
        """The message as blocks (blocks replace `text` on screen): its text in
        sections, then the feedback buttons."""
        feedback = self._feedback_block()
        if feedback is None:
            return None
        sections: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn", "text": part}}
            for part in split_message(text, SECTION_LIMIT)
            if part.strip()
        ]
        return [*sections, feedback]

    async def _final_edit(self, text: str, *, blocks: list[dict[str, Any]] | None = None) -> None:
        for attempt in range(1, FINAL_EDIT_ATTEMPTS + 1):
            if (wait := self._edit_after - self.clock()) > 0:
                await asyncio.sleep(wait)
            await self.budget.take(self.target.team)
            if await self._edit(text, blocks=blocks, required=attempt == FINAL_EDIT_ATTEMPTS):
                return

    async def _edit(
        self, text: str, *, blocks: list[dict[str, Any]] | None = None, required: bool = False
    ) -> bool:
        """One `chat.update`; False when Slack answered 429 (then this reply waits
        Retry-After before its next edit) or, unless `required`, failed otherwise."""
        assert self.ts is not None
        try:
            client = await self._client_for_edits()
            if blocks is None:
                await client.chat_update(channel=self.target.channel, ts=self.ts, text=text)
            else:
                await client.chat_update(
                    channel=self.target.channel, ts=self.ts, text=text, blocks=blocks
                )
            return True
        except SlackApiError as error:
            response = error.response
            if response is not None and response.status_code == 429:
                retry_after = _retry_after(response.headers)
                self._edit_after = self.clock() + retry_after
                log.warning(
                    "Slack rate-limited chat.update in %s; this reply waits %.0f s",
                    self.target.channel,
                    retry_after,
                )
                if required:
                    raise SlackDeliveryError("chat_update failed: ratelimited") from None
                return False
            code = _describe(error)
        except (SlackDeliveryError, aiohttp.ClientError, TimeoutError) as error:
            code = _describe(error)
        log.warning("Slack chat_update failed in %s: %s", self.target.channel, code)
        if required:
            raise SlackDeliveryError(f"chat_update failed: {code}") from None
        return False

    async def _client_for_edits(self) -> AsyncWebClient:
        """The client without slack-sdk's 429 retry: a rate-limited edit is this
        sink's to reschedule, not to be slept through where the final text waits."""
        if self._edit_client is None:
            client = copy.copy(await self._client())
            client.retry_handlers = [
                handler
                for handler in client.retry_handlers
                if not isinstance(handler, AsyncRateLimitErrorRetryHandler)
            ]
            self._edit_client = client
        return self._edit_client

    @property
    def abilities(self) -> SinkAbilities:
        return SinkAbilities(
            status=self.status,
            confirm=self.confirm,
            tool_progress=self.tool_progress,
            confirmation_closed=self.confirmation_closed,
            post_file=self.post_file,
        )

    async def status(self, text: str) -> None:
        """The core's status line, as an edit (as for any sink without this ability);
        in a native stream nothing: streamed, the line would stay in the answer's text,
        and the stream shows its tool calls as cards."""
        if not self._streaming:
            await self.update(f"_{text}_")

    async def tool_progress(self, progress: Sequence[ToolProgress]) -> bool:
        """Tool calls as task cards in a native stream (started by the first call when
        nothing is shown yet). False where there is no stream: the core shows its
        status line instead."""
        async with self._first_lock:
            if self._finishing:
                return False
            if not self._streaming:
                return await self._start_with_cards(progress)
            # The core's text starts over after a round of calls: what it streams next
            # continues below the cards, not what was streamed before them.
            self._stream_used += len(self._streamed)
            self._streamed = ""
            chunks = [self._cards.note(p) for p in progress]
            assert self.streams is not None and self.ts is not None
            if not self.streams.try_append(self.target.team):
                return True  # skipped: the stop sends every card's newest state
            _, code = await self._stream_call(
                "chat_appendStream", channel=self.target.channel, ts=self.ts, chunks=chunks
            )
            if code is None:
                self._cards.sent(chunks)
                return True
            if code == STREAM_EXPIRED:
                self._stream_expired()  # edits from here on: the status line shows
            return False

    async def _start_with_cards(self, progress: Sequence[ToolProgress]) -> bool:
        starting = any(p.state in ("pending", "in_progress") for p in progress)
        # Not after a stream ended (it expired: edits carry on), nor for calls ending.
        if self._cards or not starting or not self._may_stream():
            return False
        cards = TaskCards()
        chunks = [cards.note(p) for p in progress]
        # Text held for its first post goes out first, above the cards.
        held = self._pending_raw if self._pending is not None else ""
        if not await self._start_stream(held, cards=chunks):
            return False
        cards.sent(chunks)
        self._cards = cards
        self._stream_used, self._streamed = len(self._streamed), ""
        return True

    async def post_file(self, file: GeneratedFile) -> None:
        """Upload a file the model made (an image) into the answer's thread: Slack's
        files.uploadV2 (an upload URL, the bytes, then completing it in the thread)."""
        await self._call(
            "files_upload_v2",
            channel=self.target.channel,
            thread_ts=self.target.thread_ts,
            file=file.data,
            filename=file.name,
            title=file.name,
            required=True,
        )

    async def confirm(self, request: ConfirmationRequest) -> None:
        """Ask in the thread whether the tool call may run: Approve / Deny buttons that
        the adapter's `block_actions` listener hands to the core. The question is a
        message of its own, untagged, so the answer's message stays the one edited."""
        text, blocks = prompt_message(request)
        response = await self._call(
            "chat_postMessage",
            channel=self.target.channel,
            thread_ts=self.target.thread_ts,
            text=text,
            blocks=blocks,
            required=True,
        )
        ts = response.get("ts") if response is not None else None
        if isinstance(ts, str) and ts:
            self._questions[request.confirmation_id] = (ts, request)

    async def confirmation_closed(self, confirmation_id: int, outcome: ClosedOutcome) -> None:
        """Nobody answered the question in time: its buttons go, and it says so."""
        asked = self._questions.pop(confirmation_id, None)
        if asked is None:
            return  # asked before a restart, by another sink: its buttons answer clicks
        ts, request = asked
        text, blocks = unanswered_message(request)
        await self.budget.take(self.target.team)
        await self._call(
            "chat_update", channel=self.target.channel, ts=ts, text=text, blocks=blocks
        )

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
            loading_messages=list(LOADING_MESSAGES),
        )

    async def _call(self, method: str, *, required: bool = False, **kwargs: Any) -> Any:
        arguments = {key: value for key, value in kwargs.items() if value is not None}
        started = time.perf_counter()
        try:
            client = await self._client()
            response = await getattr(client, method)(**arguments)
        except (SlackApiError, SlackDeliveryError, aiohttp.ClientError, TimeoutError) as error:
            self.telemetry.platform_call(
                "slack", method, _status_label(error), seconds=time.perf_counter() - started
            )
            code = _describe(error)
            log.warning("Slack %s failed in %s: %s", method, self.target.channel, code)
            if required:
                raise SlackDeliveryError(f"{method} failed: {code}") from None
            return None
        self.telemetry.platform_call("slack", method, "ok", seconds=time.perf_counter() - started)
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

    async def tool_progress(self, progress: Sequence[ToolProgress]) -> bool:
        return False  # the acknowledgement shows text only

    async def finish(self, text: str) -> None:
        await self.notice(text)

    def take_buffered(self) -> str:
        text = "\n\n".join(self._buffer)
        self._buffer.clear()
        return text

    def go_direct(self) -> None:
        self._direct = True


def feedback_block(turn_tag: str) -> dict[str, Any]:
    """Slack's 👍 / 👎 feedback buttons for the answer of turn `turn_tag`."""

    def button(label: str, verdict: str) -> dict[str, Any]:
        return {
            "text": {"type": "plain_text", "text": label},
            "accessibility_label": f"{label} answer",
            "value": f"{verdict}:{turn_tag}",
        }

    return {
        "type": "context_actions",
        "elements": [
            {
                "type": "feedback_buttons",
                "action_id": FEEDBACK_ACTION,
                "positive_button": button("Good", "up"),
                "negative_button": button("Bad", "down"),
            }
        ],
    }


def _retry_after(headers: Any) -> float:
    value = None
    with contextlib.suppress(AttributeError, KeyError, IndexError):
        value = headers.get("Retry-After") or headers.get("retry-after")
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        seconds = float(value) if value is not None else 1.0
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_SECONDS)


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

"""The conversation core: one turn from an incoming message to a stored, streamed answer.

Platform-neutral: adapters hand it an `IncomingMessage` and a `ReplySink`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from cachetools import FIFOCache

from botservice.core.background import BackgroundTasks
from botservice.core.channel_policy import ChannelPolicy
from botservice.core.commands import CommandRunner
from botservice.core.errors import (
    ModelAnswerIncomplete,
    ModelContextExceeded,
    ModelEmptyAnswer,
    ModelError,
    ModelRefused,
    ModelStreamBroken,
    StoreUnavailable,
    TranscriptionError,
)
from botservice.core.events import (
    Attachment,
    Command,
    ConversationKey,
    IncomingMessage,
    within_image_limits,
)
from botservice.core.feedback import FeedbackClick, FeedbackStore
from botservice.core.hosted_tools import (
    HOSTED,
    MCP_PREFIX,
    McpApprovals,
    enabled_entries,
    hosted_tools,
)
from botservice.core.limits import BUSY, GateFull, Limits, SpentBudget
from botservice.core.log_context import in_turn
from botservice.core.pacing import ModelPacer
from botservice.core.ports import (
    AcceptedTurn,
    ChannelSettings,
    ChatRequest,
    ChatStream,
    Claim,
    CoreStore,
    GeneratedFile,
    MessageStatus,
    ModelClient,
    PendingTurn,
    ReplySink,
    SinkAbilities,
    StoredMessage,
    StoredToolCall,
    TokenCounting,
    Usage,
    abilities_of,
)
from botservice.core.prompt import (
    Prompt,
    describe_attachments,
    heard_text,
    quote_context,
    stored_text,
)
from botservice.core.prompt_windows import PromptWindows
from botservice.core.settings import Settings
from botservice.core.streaming import ThrottledUpdates
from botservice.core.telemetry import NO_TELEMETRY, Telemetry, failure_reason
from botservice.core.text import clean_text, estimate_tokens
from botservice.core.tool_rounds import (
    LIMIT_NO_TEXT,
    LIMIT_REACHED,
    Asker,
    ConfirmationWaiters,
    OfferedTools,
    ToolBox,
    TurnTools,
    tools_used_line,
)
from botservice.core.tools import (
    ConfirmationRequest,
    Decision,
    ToolContext,
    ToolPolicy,
    ToolSource,
)
from botservice.core.tracing import NO_TRACER, Tracer
from botservice.core.usage import Quotas, UsageLedger, UsageRecord, usage_record
from botservice.core.windows import ContextWindows, Window

log = logging.getLogger(__name__)

# Under an answer that came with images, where the sink cannot post files.
FILES_NOT_SHOWN = "_(The model made {count} image(s) that cannot be shown here.)_"

T = TypeVar("T")

TRIM_FOOTNOTE = "_(Older messages in this conversation were left out to fit the model's context.)_"
SHRUNK_FOOTNOTE = (
    "_(Older messages in this conversation were left out: the model's context window "
    "is smaller than I had assumed.)_"
)
# An empty answer to a request at least this large (prompt and answer reserve), or
# half the assumed window, may be a server over its window (llama.cpp servers answer
# so): worth one try with a shorter prompt. 2,048 is the smallest window servers
# commonly run with.
OVERFLOW_SUSPECT_TOKENS = 2048
RESTART_TOO_LATE = "Sorry, I restarted before I could answer this, and it is too old to pick up now; please ask again."
UNEXPECTED_FAILURE = "Something went wrong on my side while answering; please try again."
REMEMBERED_MESSAGE_KEYS = 20_000
# How often this process asks once, for all the turns it accepted into conversations
# busy elsewhere, whether any of them was left with nobody answering it.
BUSY_ELSEWHERE_CHECK_SECONDS = 1.0


SinkFinder = Callable[[PendingTurn], ReplySink | None]


@dataclass(frozen=True, slots=True)
class Submission:
    """A message that was new and is now stored. `answered` completes when this process
    has answered it, or has left it to the process answering its conversation."""

    turn_id: int
    answered: asyncio.Future[None]


@dataclass(frozen=True, slots=True, kw_only=True)
class SpokenTurn:
    """A member's words a realtime voice session heard, stored as a turn it answers."""

    turn_id: int
    conversation_id: int
    user_message_id: int
    key: ConversationKey
    user_id: str
    user_name: str


@dataclass(frozen=True, slots=True)
class CoreLoad:
    """Turns accepted or claimed here and not started, turns being answered, and the
    model-call gate's running and waiting calls."""

    pending_turns: int
    running_turns: int
    model_calls_running: int
    model_calls_waiting: int


@dataclass(frozen=True, slots=True)
class _Turn:
    turn_id: int
    conversation_id: int
    user_message_id: int
    key: ConversationKey
    reply_ref: str | None
    images: tuple[Attachment, ...] = ()
    # Voice messages and clips, heard when the turn is answered (not before it is stored).
    audio: tuple[Attachment, ...] = ()
    # Answered after a stop or a takeover, or accepted by another process.
    resumed: bool = False
    # Claimed before this claim: an earlier holder may have shown something already.
    # A turn accepted by another process and claimed here first has nothing to find.
    claimed_before: bool = False
    # When the message was stored: the latencies an operator sees count from here.
    created_at: datetime | None = None
    user_id: str = ""


@dataclass(frozen=True, slots=True)
class _Accepted:
    """What only the accepting process knows about a turn: the live sink and the
    attachments' bytes. Another process answering the turn rebuilds the sink from
    the stored reply target and the text from the store."""

    conversation_id: int
    key: ConversationKey
    sink: ReplySink
    images: tuple[Attachment, ...]
    audio: tuple[Attachment, ...]
    done: asyncio.Future[None]


class ConversationCore:
    """Takes messages, and answers each turn once, in order per conversation.

    Who answers a turn is decided by the store (see `botservice.storage.tables.Turn`): a
    process claims the oldest pending turn of a conversation when none of it is
    running, answers it, then claims the next one itself, so the order needs no
    waiting. A claim is kept alive by a heartbeat; the turns of a process that
    stopped are put back to pending and picked up by any other.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        store: CoreStore,
        model: ModelClient,
        tokens: TokenCounting | None = None,
        holder: str | None = None,
        policy: ChannelPolicy | None = None,
        telemetry: Telemetry = NO_TELEMETRY,
        usage: UsageLedger | None = None,
        feedback: FeedbackStore | None = None,
        tracer: Tracer = NO_TRACER,
        tool_sources: Sequence[ToolSource] = (),
    ) -> None:
        self._settings = settings
        # The tools the model may be offered (each channel's policy picks among them).
        # The tools the endpoint runs itself (Responses API), each enabled per channel;
        # remote MCP calls that need approval go through the tool loop to be asked.
        self._hosted = (
            hosted_tools(settings.hosted_tools, os.environ)
            if settings.model.api == "responses"
            else []
        )
        approvals = McpApprovals(self._hosted)
        self.tools = ToolBox([*tool_sources, *([approvals] if approvals else [])])
        self._confirmations = ConfirmationWaiters()
        # Questions asked for spoken turns whose realtime voice session (in this process)
        # still waits for the answer, with the turn and where each was asked. Nothing
        # else ever acts on such an answer: a click on one not here finds it expired.
        self._spoken_questions: dict[int, tuple[int, SinkAbilities]] = {}
        # Models whose endpoint refused a request for carrying tools: asked without.
        self._tool_less_models: set[str] = set()
        self._tracer = tracer
        # Who manages a channel: adapters ask it when they build a message, the
        # commands when someone changes a setting.
        self.policy = policy or ChannelPolicy(settings.access.admin_user_ids)
        # Where each answer's tokens and cost are kept, and the quotas read them.
        self._usage = usage
        self._quotas = Quotas(settings, usage) if usage is not None else None
        # Public: adapters report their platform calls through the same observer.
        self.telemetry = telemetry
        self._store = store
        # Each long conversation's last prompt, moved on with its window; let go of
        # whenever the store forgets messages.
        self._prompts = PromptWindows()
        store.on_forgetting(self._prompts.clear)
        self._feedback = feedback
        self._model = model
        # Without an exact counter the core budgets with a high estimate.
        self._count_tokens = tokens.count if tokens else estimate_tokens
        self._limits = Limits(settings.limits, store, admin_user_ids=settings.access.admin_user_ids)
        self._windows = ContextWindows(settings, model)
        self._pacer = ModelPacer(settings)
        self._commands = CommandRunner(
            settings=settings,
            store=store,
            model=model,
            windows=self._windows,
            policy=self.policy,
            usage=usage,
            tools=self.tools,
        )
        # Unique per process start, so a restarted process never mistakes the
        # claims of its previous life for its own.
        self._holder = holder or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        # Turns accepted here and not started, by conversation, then turn (oldest first).
        self._accepted: dict[int, dict[int, _Accepted]] = {}
        # Message keys this process stored (or found stored), newest last: the
        # database decides, this only spares it the question for a repeat.
        self._taken: FIFOCache[tuple[str, str], None] = FIFOCache(REMEMBERED_MESSAGE_KEYS)
        # Messages may be submitted from the accept loop's thread too
        # (botservice.core.accept_loop); everything else runs on the home loop.
        self._taken_lock = threading.Lock()
        self._home_loop: asyncio.AbstractEventLoop | None = _running_loop()
        self._drivers: dict[int, asyncio.Task[None]] = {}
        self._wanted: set[int] = set()  # conversations with work since their driver looked
        self._running: set[int] = set()  # turns this process holds
        # Turns this process claimed ahead of running them (with a message it accepted,
        # or with the answer before), by conversation: at most one each.
        self._claimed: dict[int, PendingTurn] = {}
        # Conversations whose last save also tried to claim the next turn.
        self._looked: set[int] = set()
        # Conversations a turn was accepted into here while their turns were another
        # process's (see `_take`): looked at once, together, a moment later.
        self._busy_elsewhere: set[int] = set()
        self._busy_check: asyncio.Task[None] | None = None
        self._tasks = BackgroundTasks()
        self._takeover_after = timedelta(seconds=settings.conversation.turn_takeover_seconds)
        self._sink_for: SinkFinder | None = None
        self._upkeep: asyncio.Task[None] | None = None
        self._sweeping = False
        self._stopping = False

    @property
    def holder(self) -> str:
        return self._holder

    @property
    def load(self) -> CoreLoad:
        """What this process has in hand right now (read by metrics at scrape time)."""
        return CoreLoad(
            pending_turns=sum(map(len, self._accepted.values())) + len(self._claimed),
            running_turns=len(self._running),
            model_calls_running=self._limits.gate.running,
            model_calls_waiting=self._limits.gate.waiting,
        )

    async def decide_tool_call(
        self, confirmation_id: int, *, platform: str, user_id: str, approve: bool
    ) -> Decision:
        """Approve or deny a tool call waiting for its asker (a button click, the
        console's answer). Only the asker decides; the decision is recorded with who
        and when, and the waiting turn (here, or in another process sharing the
        database, which polls) goes on."""
        decision = await self._keep_trying(
            lambda: self._store.decide_confirmation(
                confirmation_id,
                platform=platform,
                user_id=user_id,
                approve=approve,
                now=datetime.now(UTC),
                asker_waits=confirmation_id in self._spoken_questions,
            )
        )
        if decision in ("approved", "denied"):
            log.info("tool call confirmation %d %s", confirmation_id, decision)
            self._spoken_questions.pop(confirmation_id, None)
            self._confirmations.wake(confirmation_id)
        elif decision == "expired":
            log.info("tool call confirmation %d expired: nobody waits for it", confirmation_id)
        return decision

    async def record_feedback(self, click: FeedbackClick) -> bool:
        """Keep a 👍 / 👎 on an answer; False when there is no such answer (any more)."""
        if self._feedback is None:
            return False
        return await self._feedback.record_feedback(click)

    # --- taking messages -------------------------------------------------------

    async def submit(self, message: IncomingMessage, sink: ReplySink) -> Submission | None:
        """Store the message and start answering it in the background.

        Returns once the message is stored, so an adapter can acknowledge the
        platform knowing nothing will be lost. None when the message was already
        taken (a redelivery) or was refused with a notice (empty, too long, over a
        limit: refused messages are not stored, so they never reach a later prompt).
        Raises `StoreUnavailable` when the database cannot take it (the adapter
        should let the platform deliver it again).
        """
        taken = (message.platform, message.message_key)
        with self._taken_lock:
            seen = taken in self._taken
        if seen:
            # Taken by this process already (Slack sends a mention twice, and retries):
            # known without asking the database, so the platform is acknowledged at once.
            self.telemetry.message_redelivered(message.platform)
            return None
        text = clean_text(message.text)
        if refusal := (
            self._refusal(text, message.attachments)
            or await self._limits.refusal(message)
            or (await self._quotas.refusal(message) if self._quotas is not None else None)
        ):
            if await self._store.claim_key(message.platform, message.message_key):
                await sink.notice(refusal, private=False)
            return None

        images = self._settings.images
        limited = within_image_limits(
            message.attachments,
            max_images=images.max_images_per_turn,
            max_bytes=images.max_image_bytes_per_turn,
        )
        if limited != message.attachments:
            message = dataclasses.replace(message, attachments=limited)
        stored_text = self._text_to_store(text, message)
        accepted = await self._store.accept(
            message,
            text=stored_text,
            tokens=self._count_tokens(stored_text),
            # Claimed in the same step when nothing of the conversation is running,
            # so the usual turn costs no separate claim (and on PostgreSQL its reads
            # come back with it: no round trip between the claim and the model).
            claim=None if self._stopping else self._reading_claim(),
        )
        self._remember_taken(taken)
        if accepted is None:
            log.info("dropped a redelivered message (%s %s)", message.platform, message.message_key)
            self.telemetry.message_redelivered(message.platform)
            return None
        self.telemetry.message_accepted(message.platform)
        here = asyncio.get_running_loop()
        if self._home_loop is None:
            self._home_loop = here
        if here is self._home_loop:
            done = self._take(accepted, message, sink)
        else:
            # Stored on the accept loop (botservice.core.accept_loop): the turn is
            # answered on the home loop, like every other.
            done = here.create_future()
            self._home_loop.call_soon_threadsafe(
                self._take_from_elsewhere, accepted, message, sink, done
            )
        return Submission(turn_id=accepted.turn_id, answered=done)

    async def record_spoken_turn(
        self, message: IncomingMessage, answer: str, *, model: str, interrupted: bool = False
    ) -> int | None:
        """Keep a turn answered elsewhere (a realtime voice session: the speech model
        heard the member and answered aloud) as the conversation's messages: the
        member's words and the answer, stored like any turn, so they reach later prompts
        and expire and are forgotten like other messages. The model is not asked.
        Returns the turn id; None for a redelivery."""
        turn = await self.hear_spoken_turn(message)
        if turn is None:
            return None
        await self.answer_spoken_turn(turn, answer, model=model, interrupted=interrupted)
        return turn.turn_id

    async def hear_spoken_turn(self, message: IncomingMessage) -> SpokenTurn | None:
        """Store a member's words heard by a realtime voice session, as the question of a
        turn the session answers (`answer_spoken_turn` keeps the answer once heard). The
        turn exists from now on, so the session's tool calls belong to it (their rows,
        the Approve / Deny question, `earlier_messages`); no worker ever claims it. None
        for a redelivery."""
        text = clean_text(message.text)
        accepted = await self._keep_trying(
            lambda: self._store.accept(
                message, text=text, tokens=self._count_tokens(text), spoken=True
            )
        )
        self._remember_taken((message.platform, message.message_key))
        if accepted is None:
            return None
        return SpokenTurn(
            turn_id=accepted.turn_id,
            conversation_id=accepted.conversation_id,
            user_message_id=accepted.user_message_id,
            key=message.conversation,
            user_id=message.user_id,
            user_name=message.user_name,
        )

    async def answer_spoken_turn(
        self,
        turn: SpokenTurn,
        answer: str,
        *,
        model: str,
        interrupted: bool = False,
        usage: Usage | None = None,
    ) -> None:
        """Keep the answer a realtime voice session spoke to `turn`, with what the
        session's responses to it spent (so the daily token budgets count it, as a
        text answer's)."""
        await self._keep_trying(
            lambda: self._store.store_spoken_answer(
                turn.turn_id,
                text=answer,
                tokens=self._count_tokens(answer),
                status="interrupted" if interrupted else "complete",
                model=model,
                usage=usage,
            )
        )

    def spoken_turn_tools(self, turn: SpokenTurn, abilities: SinkAbilities) -> TurnTools | None:
        """The tool rounds of a spoken turn: the tools the channel allows now, run by the
        text turns' rules (bounds, stored calls, Approve / Deny asked through
        `abilities.confirm` and decided by `decide_tool_call`). None: no tool here."""
        if not self.tools:
            return None
        key, store = turn.key, self._store
        ask = abilities.confirm
        if ask is not None:
            asked_in = abilities

            async def confirm(request: ConfirmationRequest) -> None:
                # Answerable while the session waits (`end_spoken_turns` ends that).
                self._spoken_questions[request.confirmation_id] = (turn.turn_id, asked_in)
                await ask(request)

            abilities = dataclasses.replace(abilities, confirm=confirm)

        async def channel_settings() -> ChannelSettings:
            return await self._keep_trying(
                lambda: store.channel_settings(key.platform, key.workspace, key.channel)
            )

        async def no_status_line(text: str) -> None:
            # A voice answer has no message to show a status line in; a question that
            # needs an answer is posted through `abilities.confirm` all the same.
            return None

        return TurnTools(
            settings=self._settings.tools,
            store=store,
            toolbox=self.tools,
            offered=OfferedTools(tuple(self.tools.available())),
            context=ToolContext(
                conversation=key,
                conversation_id=turn.conversation_id,
                user_id=turn.user_id,
                turn_id=turn.turn_id,
            ),
            user_message_id=turn.user_message_id,
            asker=Asker(platform=key.platform, user_id=turn.user_id, name=turn.user_name),
            abilities=abilities,
            waiters=self._confirmations,
            channel_settings=channel_settings,
            count_tokens=self._count_tokens,
            keep_trying=self._keep_trying,
            show_status=no_status_line,
        )

    async def end_spoken_turns(self, turn_ids: Collection[int]) -> None:
        """The realtime voice session of these spoken turns ended: their questions still
        open are closed (recorded as timed out, their buttons removed), so a late click
        runs nothing."""
        ended = [
            (confirmation_id, abilities)
            for confirmation_id, (turn_id, abilities) in self._spoken_questions.items()
            if turn_id in turn_ids
        ]
        for confirmation_id, abilities in ended:
            self._spoken_questions.pop(confirmation_id, None)
            try:
                closed = await self._store.expire_confirmation(
                    confirmation_id, now=datetime.now(UTC)
                )
            except StoreUnavailable:
                # Still pending there; a click finds nobody waiting and expires it then.
                log.warning(
                    "could not close confirmation %d: database unreachable", confirmation_id
                )
                continue
            if (
                closed is None
                or closed.status != "timed_out"
                or abilities.confirmation_closed is None
            ):
                continue
            try:
                await abilities.confirmation_closed(confirmation_id, "session_ended")
            except Exception:
                # Expired either way; only the question's look is stale.
                log.warning("closing a voice session's question failed", exc_info=True)

    async def spent_budget(
        self, message: IncomingMessage, *, person: bool = True
    ) -> SpentBudget | None:
        """The budget that keeps `message` from being answered, by the rules and in the
        order text messages are refused (`[limits]`: the daily token budgets, then the
        usage quotas), or None. `person=False`: the channel's budgets only (whether a
        voice channel may be listened to at all). For answers not taken through `submit`
        (a realtime voice session)."""
        spent = await self._limits.spent_budget(message, person=person)
        if spent is None and self._quotas is not None:
            spent = await self._quotas.spent_budget(message, person=person)
        return spent

    async def record_spoken_usage(
        self,
        key: ConversationKey,
        *,
        user_id: str,
        turn_id: int | None,
        model: str,
        usage: Usage,
    ) -> None:
        """Keep what one response of a realtime voice session spent in the usage ledger,
        attributed like a text turn's call (platform, channel, the member answered, the
        turn when it is known): the daily quotas read it. A database outage loses the
        row, never the conversation."""
        if self._usage is None:
            return
        record = usage_record(
            self._settings,
            turn_id=turn_id,
            message_platform=key.platform,
            workspace=key.workspace,
            channel=key.channel,
            user_id=user_id,
            model=model,
            usage=usage,
            estimated_prompt_tokens=0,
            estimated_completion_tokens=0,
        )
        try:
            await self._usage.record_usage(record)
        except StoreUnavailable:
            log.warning("the usage of a realtime voice response was not recorded")

    def _take(
        self, accepted: AcceptedTurn, message: IncomingMessage, sink: ReplySink
    ) -> asyncio.Future[None]:
        """Start answering a turn accepted here (on the home loop)."""
        done = asyncio.get_running_loop().create_future()
        self._accepted.setdefault(accepted.conversation_id, {})[accepted.turn_id] = _Accepted(
            conversation_id=accepted.conversation_id,
            key=message.conversation,
            sink=sink,
            images=tuple(a for a in message.attachments if a.is_image),
            audio=tuple(a for a in message.attachments if a.is_audio),
            done=done,
        )
        conversation_id = accepted.conversation_id
        if accepted.claimed is not None:
            self._claimed[conversation_id] = accepted.claimed
        elif self._store.shared and conversation_id not in self._drivers and not self._stopping:
            # Not claimed as it was accepted: a turn of the conversation was pending or
            # running, and not here. Its holder claims this one with its answer, so a
            # claim now would fail (one wasted statement per such message with several
            # processes). Only when the accept and that holder's save crossed is the
            # turn left with nobody answering it: one look for all of them shortly
            # finds those (and the sweep would).
            self._busy_elsewhere.add(conversation_id)
            if self._busy_check is None or self._busy_check.done():
                self._busy_check = self._tasks.spawn(
                    self._check_busy_elsewhere(), name="busy-elsewhere-check"
                )
            return done
        self._wake(conversation_id)
        return done

    async def _check_busy_elsewhere(self) -> None:
        """Start on the conversations of `_busy_elsewhere` that nobody is answering; let
        go of the others (their holders answer the turns accepted here)."""
        while self._busy_elsewhere and not self._stopping:
            await asyncio.sleep(BUSY_ELSEWHERE_CHECK_SECONDS)
            conversations, self._busy_elsewhere = self._busy_elsewhere, set()
            try:
                # The sweep's question (few turns wait at any moment), for these ones.
                waiting = conversations.intersection(
                    await self._store.waiting_conversations(accepted_before=datetime.now(UTC))
                )
            except StoreUnavailable:
                self._busy_elsewhere |= conversations
                continue
            for conversation_id in conversations:
                if conversation_id in waiting:
                    self._wake(conversation_id)
                elif (
                    conversation_id not in self._drivers
                    and conversation_id not in self._busy_elsewhere
                ):
                    self._let_go_of(conversation_id)

    def _take_from_elsewhere(
        self,
        accepted: AcceptedTurn,
        message: IncomingMessage,
        sink: ReplySink,
        done_there: asyncio.Future[None],
    ) -> None:
        there = done_there.get_loop()

        def settle(_: asyncio.Future[None]) -> None:
            def settle_there() -> None:
                if not done_there.done():
                    done_there.set_result(None)

            with contextlib.suppress(RuntimeError):  # that loop is closed already
                there.call_soon_threadsafe(settle_there)

        self._take(accepted, message, sink).add_done_callback(settle)

    def taken_here(self, platform: str, message_key: str) -> bool:
        """Whether this process stored the message (or found it stored) already: a
        repeat an adapter may acknowledge without building the message (any thread)."""
        with self._taken_lock:
            return (platform, message_key) in self._taken

    def _remember_taken(self, key: tuple[str, str]) -> None:
        with self._taken_lock:
            self._taken[key] = None

    async def handle(self, message: IncomingMessage, sink: ReplySink) -> bool:
        """Submit and wait for the answer. False when the message was not taken."""
        submission = await self.submit(message, sink)
        if submission is None:
            return False
        await submission.answered
        return True

    async def run_command(
        self, message: IncomingMessage, command: Command, sink: ReplySink
    ) -> None:
        """Run a platform-neutral command once per message key; answer with a private notice."""
        if not await self._store.claim_key(message.platform, message.message_key):
            return
        reply = await self._commands.run(message, command)
        await sink.notice(reply, private=True)

    # --- turns nobody is answering ------------------------------------------------

    async def start(self, sink_for: SinkFinder) -> int:
        """Answer what a stop left behind, then keep sweeping: every
        `turn_heartbeat_seconds`, turns of a process that stopped are picked up.
        Returns how many conversations were picked up at once."""
        if self._home_loop is None:
            self._home_loop = asyncio.get_running_loop()
        # The default model's window is asked for now, so no first answer waits for it.
        self._tasks.spawn(
            self._windows.window(self._settings.model.name), name="context-window-discovery"
        )
        resumed = await self.resume_pending(sink_for)
        self._sweeping = True
        self._ensure_upkeep()
        return resumed

    async def resume_pending(self, sink_for: SinkFinder, *, at_start_up: bool = True) -> int:
        """Answer the turns that no live process is answering, once.

        `sink_for` rebuilds a reply sink for a turn this process did not accept
        (an adapter's `sink_for`); the core keeps it for turns it claims later.
        At start-up on a store no other process shares (SQLite), turns left
        running are this process's own from before the stop and are taken back
        at once; on a shared store a turn is taken over only once its heartbeat
        stopped. Returns how many conversations were picked up.
        """
        self._sink_for = sink_for
        if at_start_up and not self._store.shared:
            await self._store.release_claims()
        woken = await self._sweep()
        if woken:
            log.info("answering the waiting turns of %d conversations", woken)
        return woken

    async def _sweep(self) -> int:
        """Put back turns whose process stopped, and start on every conversation that
        has a turn waiting with nobody answering it."""
        now = datetime.now(UTC)
        stale = await self._store.release_stale_turns(now=now)
        waiting = await self._store.waiting_conversations(accepted_before=now)
        conversations = set(stale) | set(waiting)
        for conversation_id in conversations:
            self._wake(conversation_id)
        return len(conversations)

    async def stop(self) -> None:
        """Finish the answers in flight (claiming no new turns), then stop the heartbeat
        and the sweep."""
        self._stopping = True
        self._sweeping = False
        await self.drain()
        for conversation_id in self._busy_elsewhere:
            self._let_go_of(conversation_id)  # left to their holders, or the next start
        self._busy_elsewhere.clear()
        if self._claimed:
            # Claimed but not started: back to pending, for another process now or
            # for this one after its restart.
            self._claimed.clear()
            with contextlib.suppress(StoreUnavailable):
                await self._store.release_claims(self._holder)
        if self._upkeep is not None:
            self._upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._upkeep
        await self._tasks.cancel_all()

    async def drain(self) -> None:
        """Wait for every answer in flight (used at shutdown and by tests)."""
        while self._drivers:
            await asyncio.wait(list(self._drivers.values()))

    # --- answering ---------------------------------------------------------------

    def _wake(self, conversation_id: int) -> None:
        """Make sure this process looks for work in the conversation: a driver that is
        running sees the mark before it stops; otherwise a new one starts."""
        self._wanted.add(conversation_id)
        if conversation_id not in self._drivers and not self._stopping:
            self._drivers[conversation_id] = self._tasks.spawn(
                self._drive(conversation_id), name=f"conversation-{conversation_id}"
            )

    async def _drive(self, conversation_id: int) -> None:
        """Answer the conversation's pending turns one by one while this process can
        claim them; stop when none is pending or another process is answering one."""
        waiting = self._accepted.get(conversation_id)
        key = next(iter(waiting.values())).key if waiting else None
        try:
            while True:
                turn = self._claimed.pop(conversation_id, None)
                looked = conversation_id in self._looked
                self._looked.discard(conversation_id)
                if turn is None and looked and conversation_id not in self._wanted:
                    return  # the last answer's save looked for a next turn already
                self._wanted.discard(conversation_id)
                if turn is None and not self._stopping:
                    try:
                        turn = await self._store.claim_next_turn(
                            conversation_id,
                            holder=self._holder,
                            alive_until=self._alive_until(),
                            key=key,
                        )
                    except StoreUnavailable:
                        log.warning(
                            "database unreachable; conversation %d waits for the next sweep",
                            conversation_id,
                        )
                        return
                if turn is None:
                    # No await between the claim and here: a message accepted
                    # meanwhile has set the mark, and is looked for again.
                    if conversation_id in self._wanted and not self._stopping:
                        continue
                    return
                key = turn.conversation
                await self._run(turn)
        finally:
            del self._drivers[conversation_id]
            self._looked.discard(conversation_id)
            self._let_go_of(conversation_id)

    def _let_go_of(self, conversation_id: int) -> None:
        """Turns accepted here that another process will answer (it holds their
        conversation now): their sinks are rebuilt there from the stored target."""
        for accepted in self._accepted.pop(conversation_id, {}).values():
            if not accepted.done.done():
                accepted.done.set_result(None)

    async def _run(self, claimed: PendingTurn) -> None:
        waiting = self._accepted.get(claimed.conversation_id)
        accepted = waiting.pop(claimed.turn_id, None) if waiting else None
        if waiting is not None and not waiting:
            del self._accepted[claimed.conversation_id]
        self._running.add(claimed.turn_id)
        self._ensure_upkeep()
        try:
            with (
                in_turn(claimed.turn_id, claimed.conversation_id, claimed.platform),
                self._tracer.turn(
                    claimed.platform,
                    turn_id=claimed.turn_id,
                    conversation_id=claimed.conversation_id,
                ),
            ):
                await self._run_claimed(claimed, accepted)
        finally:
            self._running.discard(claimed.turn_id)
            if accepted is not None and not accepted.done.done():
                accepted.done.set_result(None)

    async def _run_claimed(self, claimed: PendingTurn, accepted: _Accepted | None) -> None:
        if accepted is not None:
            sink: ReplySink | None = accepted.sink
        else:
            sink = self._sink_for(claimed) if self._sink_for is not None else None
        if sink is None:
            log.warning(
                "turn %d cannot be answered here (no adapter for %s, or its reply target "
                "is unusable); marking it failed",
                claimed.turn_id,
                claimed.platform,
            )
            await self._keep_trying(
                lambda: self._store.fail_turn(claimed.turn_id, holder=self._holder)
            )
            self.telemetry.turn_finished(claimed.platform, "failed", "no_sink")
            return
        max_age = self._settings.conversation.resume_pending_max_age_seconds
        age = (datetime.now(UTC) - claimed.created_at).total_seconds()
        if accepted is None and age > max_age:
            await self._keep_trying(
                lambda: self._store.fail_turn(claimed.turn_id, holder=self._holder)
            )
            await sink.finish(RESTART_TOO_LATE)
            self.telemetry.turn_finished(claimed.platform, "failed", "too_late")
            return
        turn = _Turn(
            turn_id=claimed.turn_id,
            conversation_id=claimed.conversation_id,
            user_message_id=claimed.user_message_id,
            key=claimed.conversation,
            reply_ref=claimed.reply_ref,
            images=accepted.images if accepted else (),
            audio=(
                accepted.audio
                if accepted
                else await self._keep_trying(
                    lambda: self._store.unheard_audio(claimed.user_message_id)
                )
                if claimed.has_audio
                else ()
            ),
            resumed=claimed.claims > 1 or accepted is None,
            claimed_before=claimed.claims > 1,
            created_at=claimed.created_at,
            user_id=claimed.user_id,
        )
        self.telemetry.turn_started(claimed.platform, resumed=turn.resumed)
        try:
            await self._answer_turn(turn, sink)
        except Exception:
            # The adapter's boundary: log the stack once, tell the user one sentence.
            log.exception("answering turn %d failed", turn.turn_id)
            self.telemetry.turn_finished(claimed.platform, "failed", "unexpected")
            with contextlib.suppress(StoreUnavailable):
                await self._keep_trying(
                    lambda: self._store.fail_turn(turn.turn_id, holder=self._holder)
                )
            try:
                await sink.finish(UNEXPECTED_FAILURE)
            except Exception:
                log.exception("could not tell the user that turn %d failed", turn.turn_id)

    # --- heartbeat and sweep --------------------------------------------------------

    def _claim(self) -> Claim:
        return Claim(holder=self._holder, alive_until=self._alive_until())

    def _reading_claim(self) -> Claim:
        """A claim for a turn about to start: the store may read its history window and
        settings in the step that claims it."""
        return Claim(
            holder=self._holder,
            alive_until=self._alive_until(),
            history_limit=self._settings.conversation.history_limit,
        )

    def _alive_until(self) -> datetime:
        return datetime.now(UTC) + self._takeover_after

    def _ensure_upkeep(self) -> None:
        if self._upkeep is None or self._upkeep.done():
            self._upkeep = self._tasks.spawn(self._keep_up(), name="turn-heartbeat")

    async def _keep_up(self) -> None:
        """Renew this process's claims and sweep for abandoned turns, every
        `turn_heartbeat_seconds` (every second while the database is unreachable, so
        claims are renewed as soon as it is back). Runs while this process holds
        turns or sweeps (after `start`)."""
        conversation = self._settings.conversation
        pause = conversation.turn_heartbeat_seconds
        # After losing the database, every heartbeat (ours and our peers') has gone
        # quiet; give them one takeover period to speak again before judging them.
        judge_after = 0.0
        while self._running or self._sweeping:
            await asyncio.sleep(pause)
            try:
                if self._running:
                    await self._store.renew_claims(
                        self._holder, set(self._running), alive_until=self._alive_until()
                    )
                if self._sweeping and time.monotonic() >= judge_after:
                    await self._sweep()
            except StoreUnavailable:
                if pause != 1.0:
                    log.warning("database unreachable; claims will be renewed once it is back")
                pause = 1.0
                judge_after = time.monotonic() + conversation.turn_takeover_seconds
            else:
                if pause == 1.0:
                    log.info("database reachable again")
                pause = conversation.turn_heartbeat_seconds

    async def _keep_trying(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run a store operation of a turn, retrying with backoff while the database is
        unreachable, for at most `store_retry_seconds`."""
        give_up_at = time.monotonic() + self._settings.conversation.store_retry_seconds
        pause = 0.2
        while True:
            try:
                return await operation()
            except StoreUnavailable:
                if time.monotonic() + pause > give_up_at:
                    raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _answer_turn(self, turn: _Turn, sink: ReplySink) -> None:
        store = self._store
        reply_ref = await sink.begin(
            turn.reply_ref, turn_tag=str(turn.turn_id), resumed=turn.claimed_before
        )
        remembered: asyncio.Task[None] | None = None
        if reply_ref is not None and reply_ref != turn.reply_ref:
            # Kept for a process that takes the turn over (it edits this message, not a
            # new one), written beside the reads and the model request rather than
            # before them: a write and its commit off the way to the first text.
            remembered = self._tasks.spawn(
                self._remember_reply_ref(turn.turn_id, reply_ref),
                name=f"reply-ref-{turn.turn_id}",
            )
        abilities = abilities_of(sink)
        if turn.audio and not await self._hear(turn, sink, abilities):
            return

        key = turn.key
        channel = await self._keep_trying(
            lambda: store.channel_settings(
                key.platform, key.workspace, key.channel, for_message=turn.user_message_id
            )
        )
        model = self._settings.chat_model(channel.model)
        model_info = self._settings.model_info(model)
        instructions = channel.instructions or self._settings.conversation.default_instructions
        history = await self._keep_trying(
            lambda: store.history(
                turn.conversation_id,
                up_to_message_id=turn.user_message_id,
                limit=self._settings.conversation.history_limit,
            )
        )
        instructions_tokens = self._count_tokens(instructions)
        tools = self._turn_tools(turn, model, channel, history, sink, abilities)
        earlier_calls: list[StoredToolCall] = []
        if tools is not None:
            # One read: the rounds of earlier turns (shown to the model with the
            # messages they answered) and this turn's own, stored before a restart.
            stored_calls = await self._keep_trying(
                lambda: store.tool_calls_for([m.id for m in history if m.role == "user"])
            )
            # A remote MCP approval is the endpoint's question within one answer: sent
            # again in a later turn it would have the call run again.
            earlier_calls = [
                c
                for c in stored_calls
                if c.user_message_id != turn.user_message_id and not c.name.startswith(MCP_PREFIX)
            ]
            await tools.resume(
                [c for c in stored_calls if c.user_message_id == turn.user_message_id]
            )

        # What the endpoint returned with each tool round of this turn to get back with
        # its calls (reasoning items), by (message id, round); in memory only.
        reasoning: dict[tuple[int, int], Sequence[dict[str, Any]]] = {}

        def prompt_within(budget: int) -> Prompt:
            return self._prompts.build(
                turn.conversation_id,
                instructions=instructions,
                instructions_role=model_info.instructions_role,
                instructions_tokens=instructions_tokens,
                history=history,
                budget_tokens=budget,
                # Images travel as parts of the current message when the model takes
                # them; otherwise the stored text already names them.
                images=turn.images if model_info.accepts_images else (),
                tool_calls=tools.by_message(earlier_calls) if tools is not None else None,
                reasoning=reasoning,
            )

        hosted = enabled_entries(self._hosted, ToolPolicy.parse(channel.tools))
        # Offered as functions: not the hosted ones (the endpoint's own entries carry them).
        functions = (
            [spec for spec in tools.offered.specs if spec.source != HOSTED]
            if tools is not None
            else []
        )
        # Background mode: the response's id is kept with the turn as soon as the
        # endpoint names it, and a resumed turn follows the response it finds for the
        # round it is at instead of asking again. The channel's setting, when it has
        # one, decides over the model's; the Chat backend has no background mode.
        background = self._settings.model.api == "responses" and (
            model_info.background if channel.background is None else channel.background
        )
        resume: str | None = None
        if background and turn.resumed:
            kept = await self._keep_trying(lambda: store.model_response(turn.turn_id))
            if kept is not None and kept.round == (tools.rounds if tools is not None else 0):
                resume = kept.response_id
                log.info("turn %d follows the background response it asked for", turn.turn_id)

        def remembering(round_index: int) -> Callable[[str], Awaitable[None]]:
            async def remember(response_id: str) -> None:
                # Lost to an outage, a restart only asks again: the answer still comes.
                try:
                    await store.remember_model_response(
                        turn.turn_id, response_id, round=round_index
                    )
                except StoreUnavailable:
                    log.warning("turn %d: background response id not kept", turn.turn_id)

            return remember

        window = await self._windows.window(model)
        reserve = self._answer_reserve(window.tokens)
        prompt = prompt_within(window.tokens - reserve)

        updates = ThrottledUpdates(sink, self._settings.conversation.stream_update_interval_seconds)
        parts: list[str] = []
        telemetry = self.telemetry
        shrunk = False
        learned: int | None = None
        usage: Usage | None = None
        # Files the endpoint made (images), posted in the thread after the answer.
        files: list[GeneratedFile] = []
        # Why the model may call no more tools (a limit), once one is reached.
        limit: str | None = None
        texted = False

        def first_text() -> None:
            # Once per turn, though each tool round's request may bring text of its own.
            nonlocal texted
            if not texted:
                texted = True
                telemetry.first_text(key.platform, model, self._age(turn))

        try:
            while True:  # one model request per tool round, the last one answers
                request = ChatRequest(
                    model=model,
                    messages=prompt.messages,
                    max_tokens=reserve,
                    hosted_tools=hosted,
                )
                if background:
                    round_index = tools.rounds if tools is not None else 0
                    request = dataclasses.replace(
                        request,
                        background=True,
                        resume_response=resume,
                        on_started=remembering(round_index),
                    )
                    resume = None  # only the first request of a resumed turn follows one
                if tools is not None:
                    if limit is not None:
                        note = {"role": "system", "content": LIMIT_REACHED.format(why=limit)}
                        request = dataclasses.replace(
                            request,
                            messages=[*prompt.messages, note],
                            tools=functions,
                            no_more_tools=True,
                        )
                    else:
                        request = dataclasses.replace(request, tools=functions)
                async with self._limits.gate.slot(place=turn.turn_id):
                    while True:
                        try:
                            stream = await self._stream_into(
                                request,
                                prompt.tokens,
                                turn.turn_id,
                                sink,
                                parts,
                                updates,
                                abilities,
                                first_text=first_text,
                            )
                            break
                        except ModelError as error:
                            if tools is not None and not tools.rounds and _refuses_tools(error):
                                # An endpoint (or model) without function calling: this
                                # answer and later ones go without tools.
                                log.warning(
                                    "the model endpoint refused tools for %s; answering "
                                    "without them from now on",
                                    model,
                                )
                                self._tool_less_models.add(model)
                                tools = None
                                prompt = prompt_within(window.tokens - reserve)
                                request = dataclasses.replace(
                                    request, messages=prompt.messages, tools=()
                                )
                                continue
                            retry = None
                            if not parts and not shrunk:
                                retry = self._shorter(
                                    error, model, window, reserve, prompt, prompt_within
                                )
                            if retry is None:
                                await updates.close()
                                if tools is not None:
                                    await tools.settle()
                                await self._fail(
                                    turn,
                                    sink,
                                    error,
                                    "".join(parts),
                                    model,
                                    reply_ref,
                                    prompt.tokens,
                                )
                                return
                            prompt, reserve, learned = retry
                            shrunk = True
                            request = dataclasses.replace(
                                request,
                                messages=prompt.messages,
                                max_tokens=reserve,
                                resume_response=None,
                            )
                            log.info(
                                "turn %d: retrying once with a prompt of %d tokens",
                                turn.turn_id,
                                prompt.tokens,
                            )
                if shrunk and learned is not None:
                    # The shorter prompt got an answer: the longer one was over the window.
                    self._windows.learn(model, learned)
                    learned = None
                usage = _added(usage, stream.usage)
                files += stream.generated_files
                if tools is None or limit is not None or not stream.tool_calls:
                    break
                # A tool round: what the model wrote with its calls goes back with them.
                await updates.close()
                round_text = "".join(parts)
                parts.clear()
                limit = tools.limit_reached()
                if limit is None:
                    if stream.reasoning_items:
                        reasoning[(turn.user_message_id, tools.rounds)] = list(
                            stream.reasoning_items
                        )
                    await tools.run_round(stream.tool_calls, round_text)
                    # A limit reached by this round: the next request is the last one.
                    limit = tools.limit_reached()
                prompt = prompt_within(window.tokens - reserve)
        except GateFull:
            # The message stays stored; only this answer is declined.
            log.warning("turn %d declined: too many turns wait for the model", turn.turn_id)
            await updates.close()
            if tools is not None:
                await tools.settle()
            await self._keep_trying(
                lambda: self._store.fail_turn(turn.turn_id, holder=self._holder)
            )
            await sink.finish(BUSY)
            telemetry.turn_finished(key.platform, "failed", "busy")
            return
        await updates.close()
        _report_usage(telemetry, model, usage)
        if tools is not None:
            await tools.settle()
            if not parts:
                parts.append(LIMIT_NO_TEXT)  # calls where only text may come: say so

        answer = "".join(parts)
        shown = answer
        if shrunk:
            await self._first_trim_notice(turn.conversation_id)
            shown = f"{answer}\n\n{SHRUNK_FOOTNOTE}"
        elif prompt.left_out and await self._first_trim_notice(turn.conversation_id):
            shown = f"{answer}\n\n{TRIM_FOOTNOTE}"
        if tools is not None and tools.used:
            shown = f"{shown}\n\n{tools_used_line(tools.used)}"
        if files and abilities.post_file is None:
            shown = f"{shown}\n\n{FILES_NOT_SHOWN.format(count=len(files))}"
        await sink.finish(shown)
        if files and abilities.post_file is not None:
            await self._post_files(turn, abilities.post_file, files)
        telemetry.final_text(key.platform, model, self._age(turn))
        if remembered is not None:
            # Its write before the answer's (which saves it again). Waited for, not
            # raised from: a failure there is logged, and the answer shown is saved.
            await asyncio.wait([remembered])
        # The answer has been shown: from here on it is only ever saved, never made
        # again, so a database outage is waited out (see `_keep_trying`).
        saved = await self._save_answer(
            turn,
            text=answer,
            usage=usage,
            status="complete",
            model=model,
            reply_ref=reply_ref,
            # Written with the answer: a write of its own cost a fifth of the
            # replies a second (bench/bench_metrics.py).
            ledger=self._usage_record(turn, model, usage, prompt.tokens, answer),
        )
        telemetry.turn_finished(key.platform, "answered" if saved else "taken_over")
        if channel.retention_days == 0:
            await self._keep_trying(
                lambda: store.delete_conversation_messages(turn.conversation_id)
            )

    async def _remember_reply_ref(self, turn_id: int, reply_ref: str) -> None:
        # Saved again with the answer, so an unreachable database is no reason to wait.
        with contextlib.suppress(StoreUnavailable):
            await self._store.set_reply_ref(turn_id, reply_ref)

    async def _post_files(
        self,
        turn: _Turn,
        post_file: Callable[[GeneratedFile], Awaitable[None]],
        files: Sequence[GeneratedFile],
    ) -> None:
        """Post each file in the thread; one that fails is logged, the answer stands."""
        for file in files:
            try:
                await post_file(file)
            except Exception as error:
                log.warning(
                    "turn %d: posting a generated file failed: %s",
                    turn.turn_id,
                    type(error).__name__,
                )
                log.debug("posting a generated file failed", exc_info=True)

    def _turn_tools(
        self,
        turn: _Turn,
        model: str,
        channel: ChannelSettings,
        history: Sequence[StoredMessage],
        sink: ReplySink,
        abilities: SinkAbilities,
    ) -> TurnTools | None:
        """The tool rounds of this turn, when the channel allows any tool (None: the
        request is exactly as without tools)."""
        if not self.tools or model in self._tool_less_models:
            return None
        offered = self.tools.offered(ToolPolicy.parse(channel.tools))
        if not offered:
            return None
        key, store = turn.key, self._store
        asker_name = next(
            (m.author_name for m in reversed(history) if m.id == turn.user_message_id),
            turn.user_id,
        )
        tools = TurnTools(
            settings=self._settings.tools,
            store=store,
            toolbox=self.tools,
            offered=offered,
            context=ToolContext(
                conversation=key,
                conversation_id=turn.conversation_id,
                user_id=turn.user_id,
                turn_id=turn.turn_id,
            ),
            user_message_id=turn.user_message_id,
            asker=Asker(platform=key.platform, user_id=turn.user_id, name=asker_name),
            abilities=abilities,
            waiters=self._confirmations,
            channel_settings=lambda: self._keep_trying(
                lambda: store.channel_settings(key.platform, key.workspace, key.channel)
            ),
            count_tokens=self._count_tokens,
            keep_trying=self._keep_trying,
            show_status=lambda text: self._show_status(sink, abilities, text),
        )
        return tools

    async def _record_usage(
        self, turn: _Turn, model: str, usage: Usage | None, prompt_tokens: int, answer: str
    ) -> None:
        """Keep the call's tokens and cost in the usage ledger (our estimate when the
        endpoint reported none). A database outage loses this row, never the answer."""
        record = self._usage_record(turn, model, usage, prompt_tokens, answer)
        if record is None or self._usage is None:
            return
        try:
            await self._usage.record_usage(record)
        except StoreUnavailable:
            log.warning("the usage of turn %d was not recorded: database unreachable", turn.turn_id)

    def _usage_record(
        self, turn: _Turn, model: str, usage: Usage | None, prompt_tokens: int, answer: str
    ) -> UsageRecord | None:
        """The usage ledger's row for this call; None when no ledger is kept."""
        if self._usage is None:
            return None
        key = turn.key
        return usage_record(
            self._settings,
            turn_id=turn.turn_id,
            message_platform=key.platform,
            workspace=key.workspace,
            channel=key.channel,
            user_id=turn.user_id,
            model=model,
            usage=usage,
            estimated_prompt_tokens=prompt_tokens,
            estimated_completion_tokens=self._count_tokens(answer) if usage is None else 0,
        )

    def _answer_reserve(self, window: int) -> int:
        """Tokens kept for the answer: `max_answer_tokens`, but never more than half a
        small window (a 2,048-token server with the default 1,024 keeps 1,024)."""
        return min(self._settings.model.max_answer_tokens, max(1, window // 2))

    async def _stream_into(
        self,
        request: ChatRequest,
        prompt_tokens: int,
        place: int,
        sink: ReplySink,
        parts: list[str],
        updates: ThrottledUpdates,
        abilities: SinkAbilities,
        *,
        first_text: Callable[[], None],
    ) -> ChatStream:
        """Wait for room under the model's rate limits, then stream the answer into
        `parts` and the sink (`first_text` is called when the first text arrives)."""
        # What OpenAI counts against a token limit when the request arrives.
        tokens = prompt_tokens + (request.max_tokens or 0)
        pacer = self._pacer
        wait = pacer.expected_wait(request.model, tokens)
        if wait >= 1:
            await self._show_status(
                sink, abilities, f"Waiting for capacity on {request.model}… about {round(wait)} s"
            )
        ticket = await pacer.admit(request.model, tokens, place=place)
        stream = self._model.stream(request)
        observe = abilities.observe
        observed = False
        try:
            async for delta in stream:
                if not observed:
                    # The headers came before the first delta; the next turns need them.
                    pacer.observe(ticket, stream.rate_limits, answered=True)
                    observed = True
                if not parts:
                    first_text()
                parts.append(delta)
                updates.offer(parts)
                if observe is not None:
                    observe("".join(parts))
        finally:
            if not observed:
                limits = stream.rate_limits
                pacer.observe(ticket, limits, answered=limits is not None)
        return stream

    async def _show_status(self, sink: ReplySink, abilities: SinkAbilities, text: str) -> None:
        try:
            if abilities.status is not None:
                await abilities.status(text)
            else:
                await sink.update(f"_{text}_")
        except Exception:
            # A status line is a courtesy; the answer still comes.
            log.warning("showing a status line failed", exc_info=True)

    def _shorter(
        self,
        error: ModelError,
        model: str,
        window: Window,
        reserve: int,
        prompt: Prompt,
        prompt_within: Callable[[int], Prompt],
    ) -> tuple[Prompt, int, int | None] | None:
        """After a failure before any text: a prompt half as long, when the failure says
        (or suggests) the prompt was over the model's window and older turns can go.
        Returns it with its answer reserve and the window to remember once it works
        (None: remembered already)."""
        named: int | None = None
        if isinstance(error, ModelContextExceeded):
            named = error.window
        elif not (
            isinstance(error, ModelEmptyAnswer)
            and (
                # A stream cut short with nothing in it is how llama.cpp-based servers
                # refuse a prompt over their window. Judging it by the prompt's size
                # fails when the server's tokenizer counts far more tokens than ours.
                error.unfinished
                or prompt.tokens + reserve >= min(window.tokens // 2, OVERFLOW_SUSPECT_TOKENS)
            )
        ):
            return None
        budget = min(window.tokens - reserve, prompt.tokens) // 2
        if named is not None:
            reserve = min(reserve, self._answer_reserve(named))
            budget = min(budget, named - reserve)
        shorter = prompt_within(max(1, budget))
        if shorter.left_out <= prompt.left_out:
            return None  # only the current message is left: shortening cannot help
        if isinstance(error, ModelContextExceeded):
            # The endpoint said so: remember at once, whatever the retry does.
            self._windows.learn(model, named if named is not None else budget + reserve)
            return shorter, reserve, None
        return shorter, reserve, budget + reserve

    async def _first_trim_notice(self, conversation_id: int) -> bool:
        try:
            return await self._store.mark_trim_noticed(conversation_id)
        except StoreUnavailable:
            return False  # the answer is not held back for a footnote

    async def _save_answer(
        self,
        turn: _Turn,
        *,
        text: str,
        usage: Usage | None,
        status: MessageStatus,
        model: str,
        reply_ref: str | None,
        ledger: UsageRecord | None = None,
    ) -> bool:
        """False when the answer could not be saved (taken over, or the database stayed away)."""
        tokens = self._count_tokens(text)
        store = self._store

        async def save() -> int | None:
            if self._stopping:
                return await store.store_answer(
                    turn.turn_id,
                    holder=self._holder,
                    text=text,
                    tokens=tokens,
                    usage=usage,
                    status=status,
                    model=model,
                    reply_ref=reply_ref,
                    ledger=ledger,
                )
            # The next turn of the conversation is claimed with the save, so the
            # order costs no extra step. A message accepted from here on marks the
            # conversation wanted again, and is looked for once more.
            self._wanted.discard(turn.conversation_id)
            saved, following = await store.store_answer_and_claim_next(
                turn.turn_id,
                claim=self._reading_claim(),
                conversation_id=turn.conversation_id,
                key=turn.key,
                text=text,
                tokens=tokens,
                usage=usage,
                status=status,
                model=model,
                reply_ref=reply_ref,
                ledger=ledger,
            )
            self._looked.add(turn.conversation_id)
            if following is not None:
                self._claimed[turn.conversation_id] = following
            return saved

        try:
            saved = await self._keep_trying(save)
        except StoreUnavailable:
            log.error(
                "gave up saving the answer to turn %d: the database was unreachable for "
                "%.0f s; another process may answer it again",
                turn.turn_id,
                self._settings.conversation.store_retry_seconds,
            )
            return False
        if saved is None:
            log.warning(
                "turn %d was taken over by another process while this one answered it; "
                "this answer was shown but not saved",
                turn.turn_id,
            )
            return False
        return True

    async def _hear(self, turn: _Turn, sink: ReplySink, abilities: SinkAbilities) -> bool:
        """Put the transcript of the turn's audio in the stored message. False when it
        cannot be heard (the turn is failed and the person told why)."""
        if abilities.hear is None:
            return True  # answered from the stored text, which names the files
        store = self._store
        try:
            transcript = await abilities.hear(turn.audio)
        except TranscriptionError as error:
            log.warning("could not hear the audio of turn %d: %s", turn.turn_id, error)
            await self._keep_trying(lambda: store.fail_turn(turn.turn_id, holder=self._holder))
            await sink.finish(error.user_message)
            self.telemetry.turn_finished(turn.key.platform, "failed", "unheard")
            return False
        stored = await self._keep_trying(lambda: store.message_text(turn.user_message_id))
        text = heard_text(stored.text if stored else "", turn.audio, transcript)
        tokens = self._count_tokens(text)
        await self._keep_trying(lambda: store.heard(turn.user_message_id, text=text, tokens=tokens))
        return True

    async def _fail(
        self,
        turn: _Turn,
        sink: ReplySink,
        error: ModelError,
        partial: str,
        model: str,
        reply_ref: str | None,
        prompt_tokens: int = 0,
    ) -> None:
        log.warning("model call for turn %d failed: %s", turn.turn_id, type(error).__name__)
        if not partial:
            await self._keep_trying(
                lambda: self._store.fail_turn(turn.turn_id, holder=self._holder)
            )
            # Nothing was shown, so nothing was "cut off": a stream that broke before
            # any text is, to the person, a model that returned none.
            if isinstance(error, ModelStreamBroken):
                error = ModelEmptyAnswer(str(error))
            await sink.finish(error.user_message)
            self.telemetry.turn_finished(turn.key.platform, "failed", failure_reason(error))
            return
        # Keep what the model did say; mark it so neither the user nor a later
        # prompt mistakes it for a whole answer.
        if isinstance(error, ModelAnswerIncomplete):
            marker = f"_(The answer was cut off: {error.marker}.)_"
        else:
            reason = error.user_message if not isinstance(error, ModelStreamBroken) else ""
            marker = "_(The answer was cut off midway" + (f": {reason}" if reason else ".") + ")_"
        await sink.finish(f"{partial}\n\n{marker}")
        await self._save_answer(
            turn, text=partial, usage=None, status="interrupted", model=model, reply_ref=reply_ref
        )
        self.telemetry.turn_finished(turn.key.platform, "interrupted", failure_reason(error))
        # The endpoint spent what it streamed; it reported no usage for a cut stream.
        await self._record_usage(turn, model, None, prompt_tokens, partial)

    @staticmethod
    def _age(turn: _Turn) -> float:
        if turn.created_at is None:
            return 0.0
        return max(0.0, (datetime.now(UTC) - turn.created_at).total_seconds())

    # --- input -------------------------------------------------------------------

    def _refusal(self, text: str, attachments: Sequence[Attachment]) -> str | None:
        limit = self._settings.conversation.max_message_chars
        if not text and not attachments:
            return "Your message was empty; what would you like to ask?"
        if len(text) > limit:
            return (
                f"Your message is {len(text):,} characters long and the limit here is "
                f"{limit:,}; please shorten it or split it up."
            )
        return None

    @staticmethod
    def _text_to_store(text: str, message: IncomingMessage) -> str:
        pieces = []
        if message.context:
            pieces.append(quote_context(message.context))
        if text:
            pieces.append(text)
        if others := [a for a in message.attachments if not a.is_audio]:
            pieces.append(describe_attachments(others))
        return stored_text(pieces, [a for a in message.attachments if a.is_audio])


def _refuses_tools(error: ModelError) -> bool:
    """Whether the endpoint refused the request for its tools (Ollama: "… does not
    support tools"; servers without a tool-call template say similar)."""
    return (
        isinstance(error, ModelRefused)
        and not isinstance(error, ModelContextExceeded)
        and "tool" in error.reason.lower()
    )


def _added(total: Usage | None, more: Usage | None) -> Usage | None:
    """The usage of a turn's model calls together (one per tool round)."""
    if total is None or more is None:
        return more if total is None else total
    return Usage(
        prompt_tokens=total.prompt_tokens + more.prompt_tokens,
        completion_tokens=total.completion_tokens + more.completion_tokens,
        cached_tokens=total.cached_tokens + more.cached_tokens,
        reasoning_tokens=total.reasoning_tokens + more.reasoning_tokens,
    )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _report_usage(telemetry: Telemetry, model: str, usage: Usage | None) -> None:
    if usage is not None:
        telemetry.tokens(
            model,
            prompt=usage.prompt_tokens,
            completion=usage.completion_tokens,
            cached=usage.cached_tokens,
            reasoning=usage.reasoning_tokens,
        )

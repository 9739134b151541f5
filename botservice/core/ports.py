"""The ports the core needs. Adapters and storage implement them; the core only calls them."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from botservice.core.events import Attachment, ConversationKey, IncomingMessage
from botservice.core.tools import (
    ClosedOutcome,
    ConfirmationRequest,
    Decision,
    ToolCall,
    ToolProgress,
    ToolSpec,
)

Role = Literal["user", "assistant"]
MessageStatus = Literal["complete", "interrupted"]
# 'spoken': answered by a realtime voice session, never claimed by a worker.
TurnStatus = Literal["pending", "running", "answered", "failed", "command", "spoken"]
SettingField = Literal[
    "instructions",
    "model",
    "retention_days",
    "speech_model",
    "speech_voice",
    "tools",
    "background",
    "voice_mode",
]


# --- reply sink -------------------------------------------------------------


class ReplySink(Protocol):
    """Where one answer goes, in the platform's own idiom.

    The core calls `begin` once, then `update` with the text so far (throttled),
    then `finish` exactly once with the whole text. `notice` is for short
    messages that are not model answers (command results, refusals). What a sink
    can do beyond these (observe the stream, hear audio, speak) it declares in an
    optional `abilities` attribute (`SinkAbilities`).
    """

    async def begin(self, existing_ref: str | None, *, turn_tag: str, resumed: bool) -> str | None:
        """Show that an answer is coming (placeholder, typing, deferral).

        `existing_ref` is what an earlier `begin` for this same turn returned,
        when the turn is being resumed after a crash or retry: reuse it instead
        of posting again. Return a reference the core stores with the turn.

        `turn_tag` names the turn, the same string every time it is answered: a
        sink marks what it posts with it. `resumed` is True when the turn is
        answered again after a stop or a takeover; then a placeholder may exist
        even without `existing_ref` (the process died after the platform created
        it and before its reference was stored), and a sink that can find its
        tagged placeholder edits that one instead of posting a second.
        """
        ...

    async def update(self, text: str) -> None:
        """Show the answer so far. Called with the whole text, not a delta."""
        ...

    async def finish(self, text: str) -> None:
        """Show the final text (split if the platform needs it)."""
        ...

    async def notice(self, text: str, *, private: bool = True) -> None:
        """Tell the user something that is not a model answer."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class GeneratedFile:
    """A file the model made while answering (an image), to post in the thread."""

    name: str
    data: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class SinkAbilities:
    """What a reply sink can do besides the four `ReplySink` calls, declared.

    A sink with an ability declares it in an `abilities` attribute; a sink that wraps
    another declares its own abilities `joined` with the inner sink's (`abilities_of`),
    so the order of wrapping never hides one. The core reads them once per turn.
    """

    # Every piece of the answer as it arrives, unthrottled (speech starts each sentence
    # the moment it is complete). Must be cheap and must not block: it runs between
    # reads of the model's stream.
    observe: Callable[[str], None] | None = None
    # Download and transcribe the audio a message came with, in order; the words heard.
    # The core stores such a message first and asks the sink to hear it when it
    # answers (again, for a turn resumed after a stop); the sink shows what it heard
    # above the answer. Raises `TranscriptionError` (its `user_message` is one
    # sentence for the person) when the audio cannot be heard.
    hear: Callable[[Sequence[Attachment]], Awaitable[str]] | None = None
    # Show a short status line before the answer starts (waiting for the model's
    # capacity, say); the answer's first text replaces it. Without it the core shows
    # the line through `update` instead.
    status: Callable[[str], Awaitable[None]] | None = None
    # The answer is also spoken aloud (a voice channel).
    speaks: bool = False
    # Ask the person who asked to approve a tool call (buttons, a y/N prompt). The
    # decision comes back through `ConversationCore.decide_tool_call`; a sink without
    # this ability cannot ask, so calls that need asking are declined.
    confirm: Callable[[ConfirmationRequest], Awaitable[None]] | None = None
    # Show how tool calls stand, each on its own (a task card per call): the calls of a
    # round as they start, then each as it waits, runs and ends. Returns whether they
    # are shown; when False (or without this ability) the core shows the round's status
    # line instead, as it does for every sink that lacks it.
    tool_progress: Callable[[Sequence[ToolProgress]], Awaitable[bool]] | None = None
    # A question asked with `confirm` was closed without a click (nobody answered in
    # time): take its buttons away and say so. Given the confirmation's id; a sink that
    # did not ask it (a turn resumed after a restart) leaves it alone.
    confirmation_closed: Callable[[int, ClosedOutcome], Awaitable[None]] | None = None
    # Post a file the model made (an image from the endpoint's image generation) in
    # the answer's thread (Slack: files.uploadV2; Discord: an attachment). A sink
    # without it gets a line in the answer saying the file cannot be shown here.
    post_file: Callable[[GeneratedFile], Awaitable[None]] | None = None

    @property
    def names(self) -> frozenset[str]:
        """The abilities present, by name: "observe", "hear", "status", "speaks",
        "confirm", "tool_progress", "confirmation_closed", "post_file"."""
        present = {
            "observe": self.observe is not None,
            "hear": self.hear is not None,
            "status": self.status is not None,
            "speaks": self.speaks,
            "confirm": self.confirm is not None,
            "tool_progress": self.tool_progress is not None,
            "confirmation_closed": self.confirmation_closed is not None,
            "post_file": self.post_file is not None,
        }
        return frozenset(name for name, has in present.items() if has)

    def joined(self, inner: SinkAbilities) -> SinkAbilities:
        """A wrapper's abilities over its inner sink's: both observe the stream; the
        wrapper hears (or shows a status) if it can, else the inner sink does; either
        speaking speaks."""
        return SinkAbilities(
            observe=_both(self.observe, inner.observe),
            hear=self.hear or inner.hear,
            status=self.status or inner.status,
            speaks=self.speaks or inner.speaks,
            confirm=self.confirm or inner.confirm,
            tool_progress=self.tool_progress or inner.tool_progress,
            confirmation_closed=self.confirmation_closed or inner.confirmation_closed,
            post_file=self.post_file or inner.post_file,
        )


NO_ABILITIES = SinkAbilities()


def abilities_of(sink: object) -> SinkAbilities:
    """The abilities `sink` declares (none, for a sink that declares nothing)."""
    declared = getattr(sink, "abilities", None)
    return declared if isinstance(declared, SinkAbilities) else NO_ABILITIES


def _both(
    first: Callable[[str], None] | None, second: Callable[[str], None] | None
) -> Callable[[str], None] | None:
    if first is None or second is None:
        return first or second

    def observe(text_so_far: str) -> None:
        first(text_so_far)
        second(text_so_far)

    return observe


# --- model client -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Of the prompt tokens, those the endpoint served from its prompt cache.
    cached_tokens: int = 0
    # Of the completion tokens, those a reasoning model spent thinking (not shown).
    reasoning_tokens: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRecord:
    """One model call's tokens, for one turn (a row of the usage ledger)."""

    turn_id: int | None
    platform: str
    workspace: str
    channel: str
    user_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float = 0.0
    # True when the endpoint reported no usage and the counts are our own estimate.
    estimated: bool = False


@dataclass(frozen=True, slots=True)
class RateLimits:
    """What an endpoint's `x-ratelimit-*` headers said about one model's limits.

    `reset_*_seconds`: how long, counted from the response, until that limit is
    whole again. None: the header was absent (local servers send none).
    """

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_seconds: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_seconds: float | None = None

    @property
    def known(self) -> bool:
        return self.remaining_requests is not None or self.remaining_tokens is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatRequest:
    model: str
    # OpenAI chat messages: {"role": ..., "content": str | list[part]}.
    messages: Sequence[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float | None = None
    # The tools the model may call this time (sent as `tools`, `tool_choice: auto`).
    # Empty: the request carries no tool fields at all, exactly as without tools.
    tools: Sequence[ToolSpec] = ()
    # True: the model must answer in text now (a tool limit was reached): the request
    # says `tool_choice: "none"` so earlier tool messages in it stay valid.
    no_more_tools: bool = False
    # Tools the endpoint runs itself, as its own `tools` entries (the Responses API's
    # web_search, file_search, code_interpreter, image_generation, mcp): see
    # botservice/core/hosted_tools.py. Chat Completions has none and ignores them.
    hosted_tools: Sequence[Mapping[str, Any]] = ()
    # Ask for the answer in background mode (the Responses API's `background: true`:
    # the endpoint keeps generating when the connection drops, and the stream can be
    # resumed). Endpoints without it ignore it.
    background: bool = False
    # Follow this background response (its id) instead of asking again: a restart
    # picking up the answer it had asked for.
    resume_response: str | None = None
    # Called with the id of a background response as soon as the endpoint names it
    # (before any text), so it can be kept with the turn.
    on_started: Callable[[str], Awaitable[None]] | None = None


class ChatStream(Protocol):
    """Text deltas of one streamed answer; `usage`, `finished` and `tool_calls` are set
    when it ends.

    `rate_limits` is set as soon as the response's headers arrive (before the first
    delta), so a pacer can read it at the first delta or when the stream fails.
    `tool_calls`: the calls the model asked for, whole, in the order it began them
    (empty for a text answer). A stream that carries calls is a tool round whatever
    its `finish_reason` said.

    `reasoning_items`: opaque items the endpoint returned with a tool round that must
    go back, in order, with that round's calls on the next request of the same turn
    (the Responses API's reasoning items with their encrypted content; always empty
    on Chat Completions). They are kept in memory for the turn, never stored.
    """

    usage: Usage | None
    finished: bool
    rate_limits: RateLimits | None

    @property
    def tool_calls(self) -> Sequence[ToolCall]: ...

    @property
    def reasoning_items(self) -> Sequence[dict[str, Any]]: ...

    @property
    def generated_files(self) -> Sequence[GeneratedFile]:
        """Files the endpoint made (hosted image generation), whole, as it ended."""
        ...

    def __aiter__(self) -> AsyncIterator[str]: ...


@dataclass(frozen=True, slots=True)
class ChatResult:
    text: str
    usage: Usage | None = None


class ModelClient(Protocol):
    def stream(self, request: ChatRequest) -> ChatStream:
        """Start a streamed completion. Iterating raises `ModelError` subclasses."""
        ...

    async def complete(self, request: ChatRequest) -> ChatResult: ...

    async def list_models(self) -> list[str]:
        """The model names the endpoint offers (`/models`). Raises `ModelError`."""
        ...

    async def context_window(self, model: str, *, fresh: bool = False) -> int | None:
        """The context window the endpoint reports for `model` (tokens), None when it
        reports none or cannot be asked; remembered, unless `fresh`. Never raises for
        an endpoint that does not offer the discovery routes."""
        ...

    async def aclose(self) -> None: ...


class TokenCounting(Protocol):
    """Counts a text's tokens for prompt budgeting (`botservice.model.tokens`)."""

    def count(self, text: str) -> int: ...


# --- store -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: int
    role: Role
    author_id: str
    author_name: str
    text: str
    tokens: int
    reply_to_id: int | None = None
    status: MessageStatus = "complete"
    created_at: datetime | None = None
    # The message as the prompt sends it (plain, and with its speaker named for a thread
    # several people share), built once: stores keep a conversation's messages between
    # turns, so a long thread's prompt does not rebuild 200 of them every turn. Shared
    # by every prompt that holds the message: never mutated.
    prompt_entry: dict[str, Any] = dataclasses.field(
        init=False, repr=False, compare=False, hash=False
    )
    named_prompt_entry: dict[str, Any] = dataclasses.field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        entry = {"role": self.role, "content": self.text}
        named = (
            {"role": self.role, "content": f"{self.author_name}: {self.text}"}
            if self.role == "user"
            else entry
        )
        # A frozen dataclass sets its derived fields through object.__setattr__.
        object.__setattr__(self, "prompt_entry", entry)
        object.__setattr__(self, "named_prompt_entry", named)


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """Effective settings of a channel; None means "use the default"."""

    instructions: str | None = None
    model: str | None = None
    retention_days: int | None = None
    speech_model: str | None = None
    speech_voice: str | None = None
    # The channel's tool rules, `ToolPolicy.serialize()`d.
    tools: str | None = None
    # Background mode on the Responses backend: True always, False never, None as the
    # model's `background` says.
    background: bool | None = None
    # How the bot answers in a server's voice channels ("pipeline" or "realtime"); kept
    # on the workspace's row (channel ""), so every channel of the server reads it.
    voice_mode: str | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """Who claims a turn, and until when its claim lives without a heartbeat.

    `history_limit`: the store may read the turn's history window (of this many
    messages) and its channel's settings in the step that claims it (as it accepts its
    message, or as it saves the answer before it), for the turn's `history` and
    `channel_settings` (`for_message`) that follow at once; 0 asks for nothing.
    """

    holder: str
    alive_until: datetime
    history_limit: int = 0


@dataclass(frozen=True, slots=True)
class AcceptedTurn:
    """A message that was new, stored, and now waits for its answer."""

    turn_id: int
    conversation_id: int
    user_message_id: int
    # The turn claimed in the same step when the caller asked for a claim and no turn
    # of the conversation was running (usually this message's own turn).
    claimed: PendingTurn | None = None


@dataclass(frozen=True, slots=True)
class PendingTurn:
    """A turn waiting for its answer, or one a process has just claimed to answer."""

    turn_id: int
    conversation_id: int
    user_message_id: int
    platform: str
    conversation: ConversationKey
    reply_target: dict[str, Any]
    reply_ref: str | None
    created_at: datetime
    user_id: str = ""
    is_channel_admin: bool = False
    # How often the turn has been claimed, this claim included. Above one, an
    # earlier holder stopped midway and may have shown something already.
    claims: int = 0
    # False when the stored message has no audio left to hear (True: unknown, ask).
    has_audio: bool = True


@dataclass(frozen=True, slots=True)
class PurgeCounts:
    messages: int = 0
    conversations: int = 0
    turns: int = 0
    claimed: bool = True
    usage: int = 0


@dataclass(frozen=True, slots=True)
class ForgetCounts:
    """What `forget_user` did: messages and answers deleted; setting changes (audit
    rows) that stay in force but no longer name the person."""

    messages: int = 0
    answers: int = 0
    settings: int = 0

    @property
    def total(self) -> int:
        return self.messages + self.answers + self.settings


@dataclass(frozen=True, slots=True)
class SettingChange:
    field: str
    old: str | None
    new: str | None
    changed_by: str
    changed_at: datetime = dataclasses.field(default_factory=datetime.now)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelResponseRef:
    """A response the endpoint runs in the background for a turn, named by its id: a
    restart follows it instead of asking the model again. `round`: the tool round it
    answers (0 before any round)."""

    response_id: str
    round: int


class TurnStore(Protocol):
    """Turns: accepting a message with its pending turn, claiming turns, the heartbeat,
    and finishing them with the answer (the conversation core's hot path)."""

    async def accept(
        self,
        message: IncomingMessage,
        *,
        text: str,
        tokens: int,
        claim: Claim | None = None,
        spoken: bool = False,
    ) -> AcceptedTurn | None:
        """Claim `(platform, message_key)` and store the user's message with a pending turn,
        in one short transaction. None if the key was already claimed (a duplicate delivery).
        With `claim`, a store that can do it in the same step (one transaction on
        SQLite) also claims the conversation's next turn if none of it is running;
        PostgreSQL leaves it to the caller, to keep the acknowledgement one round trip.
        `spoken`: the turn is answered by a realtime voice session (status 'spoken'),
        so no worker claims it; `store_spoken_answer` finishes it.
        Raises `StoreUnavailable` when the database cannot be reached."""
        ...

    async def store_spoken_answer(
        self,
        turn_id: int,
        *,
        text: str,
        tokens: int,
        status: MessageStatus,
        model: str,
        usage: Usage | None = None,
    ) -> int | None:
        """Store the answer a realtime voice session gave to a 'spoken' turn and mark the
        turn answered, with what its responses spent (the daily token budgets read it).
        None when the turn is not (or no longer) waiting for one."""
        ...

    async def claim_next_turn(
        self,
        conversation_id: int,
        *,
        holder: str,
        alive_until: datetime,
        key: ConversationKey | None = None,
    ) -> PendingTurn | None:
        """Claim the oldest pending turn of the conversation for `holder`, unless a turn
        of it is running already (here or in another process) or none is pending.
        `key`: the conversation's key when the caller knows it (saves a read)."""
        ...

    async def renew_claims(
        self, holder: str, turn_ids: Collection[int], *, alive_until: datetime
    ) -> int:
        """The holder's heartbeat: keep the turns it is still working on alive until
        `alive_until` (a turn it gave up on is left to go stale and be taken over)."""
        ...

    async def release_stale_turns(self, *, now: datetime) -> list[int]:
        """Put running turns whose heartbeat stopped before `now` back to pending. Returns
        their conversations."""
        ...

    async def release_claims(self, holder: str | None = None) -> list[int]:
        """Put the running turns of `holder` (of everyone, with None: a one-process store
        starting up) back to pending. Returns their conversations."""
        ...

    async def waiting_conversations(self, *, accepted_before: datetime) -> list[int]:
        """Conversations with a turn pending since before `accepted_before` and none
        running: nobody is answering them."""
        ...

    @property
    def shared(self) -> bool:
        """Whether other processes may use the same database (PostgreSQL, not SQLite)."""
        ...

    async def claim_key(self, platform: str, message_key: str) -> bool:
        """Claim a key without storing a message (commands). False if already claimed."""
        ...

    async def set_reply_ref(self, turn_id: int, reply_ref: str) -> None: ...

    async def remember_model_response(self, turn_id: int, response_id: str, *, round: int) -> None:
        """Keep the id of the background response answering the turn's tool round
        `round` (0: before any round), replacing the one kept before."""
        ...

    async def model_response(self, turn_id: int) -> ModelResponseRef | None:
        """The background response kept for the turn, if any."""
        ...

    async def store_answer(
        self,
        turn_id: int,
        *,
        holder: str | None = None,
        text: str,
        tokens: int,
        usage: Usage | None,
        status: MessageStatus,
        model: str,
        reply_ref: str | None = None,
        ledger: UsageRecord | None = None,
    ) -> int | None:
        """Store the assistant's answer and mark the turn answered, if `holder` still
        holds it (any unfinished turn, with None). Returns the message id, or None when
        another process took the turn over or it was finished already.
        `ledger`, the model call's usage row, is written with the answer (no write of
        its own) when the answer is saved."""
        ...

    async def store_answer_and_claim_next(
        self,
        turn_id: int,
        *,
        claim: Claim,
        conversation_id: int,
        key: ConversationKey,
        text: str,
        tokens: int,
        usage: Usage | None,
        status: MessageStatus,
        model: str,
        reply_ref: str | None = None,
        ledger: UsageRecord | None = None,
    ) -> tuple[int | None, PendingTurn | None]:
        """`store_answer` for `claim.holder`, then claim the conversation's next turn, in as
        few round trips as the database allows. Returns the message id (None: not saved,
        see `store_answer`) and the turn claimed next, if any."""
        ...

    async def fail_turn(self, turn_id: int, *, holder: str | None = None) -> bool:
        """Mark the turn failed (only if `holder` still holds it, when given)."""
        ...

    async def pending_turns(self) -> list[PendingTurn]:
        """Turns not finished yet (pending or running), oldest first."""
        ...


class HistoryStore(Protocol):
    """The messages of a conversation: read for a prompt, heard, marked, deleted."""

    async def history(
        self, conversation_id: int, *, up_to_message_id: int, limit: int
    ) -> list[StoredMessage]:
        """Newest messages of the conversation (after its last reset) answering turns up to
        and including `up_to_message_id`, oldest first, at most `limit`."""
        ...

    async def message_text(self, message_id: int) -> StoredMessage | None: ...

    async def unheard_audio(self, message_id: int) -> tuple[Attachment, ...]:
        """The audio a stored message came with, until `heard` replaces it with text."""
        ...

    async def heard(self, message_id: int, *, text: str, tokens: int) -> None:
        """Replace a message's text with what was heard, and forget its audio, in one write."""
        ...

    async def mark_trim_noticed(self, conversation_id: int) -> bool:
        """Record that the user was told older turns were left out. True the first time."""
        ...

    async def delete_conversation_messages(self, conversation_id: int) -> int: ...

    def on_forgetting(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever stored messages may have been deleted or changed
        here (forgotten, expired, edited), so a reader that keeps messages between turns
        lets go of them at once."""
        ...


class ChannelSettingsStore(Protocol):
    """A channel's settings, and the audit trail of who changed them."""

    async def channel_settings(
        self, platform: str, workspace: str, channel: str, *, for_message: int | None = None
    ) -> ChannelSettings:
        """Channel setting, else the workspace's (channel ""), field by field.

        `for_message`: the user message of the turn that reads them, which a store may
        answer from what it read as it claimed that turn (see `Claim.history_limit`)."""
        ...

    async def change_setting(
        self,
        platform: str,
        workspace: str,
        channel: str,
        *,
        field: SettingField,
        value: str | int | None,
        changed_by: str,
    ) -> None:
        """Set one channel setting and record who changed it from what to what."""
        ...

    async def setting_changes(
        self, platform: str, workspace: str, channel: str
    ) -> list[SettingChange]: ...


class CommandStore(ChannelSettingsStore, Protocol):
    """What the platform-neutral commands change: settings, conversations, a person's data."""

    async def reset_conversation(self, key: ConversationKey) -> None:
        """Later turns start fresh; nothing is deleted."""
        ...

    async def forget_user(self, platform: str, user_id: str) -> ForgetCounts:
        """Delete everything the person wrote on `platform` and every answer to it; keep
        the settings they changed, no longer under their name."""
        ...


class TokenUsage(Protocol):
    """What the daily budgets read from storage (`botservice.core.limits`)."""

    async def tokens_used_by_user(self, platform: str, user_id: str, *, since: datetime) -> int:
        """Tokens the model spent since `since` answering this person's messages."""
        ...

    async def tokens_used_in_channel(
        self, platform: str, workspace: str, channel: str, *, since: datetime
    ) -> int:
        """Tokens the model spent since `since` answering in this channel."""
        ...


class Lookups(ChannelSettingsStore, Protocol):
    """What adapters ask of the store directly, not through the core: whether the bot is
    in a conversation, which thread holds a message, a channel's settings (the voice a
    spoken answer uses) and the settings only one platform has (a Discord server's voice
    mode, audited like the rest), and the deletions a platform reports (a person deleted
    their message, the app left a workspace)."""

    async def has_conversation(self, key: ConversationKey) -> bool: ...

    async def was_taken(self, platform: str, message_key: str) -> bool:
        """Whether a message with this key was accepted already, by any process: a
        redelivery of it needs no more than an acknowledgement."""
        ...

    async def thread_of_message(
        self, platform: str, workspace: str, channel: str, platform_message_id: str
    ) -> str | None:
        """The thread of the conversation that holds a message or answer with this platform id."""
        ...

    async def delete_platform_message(
        self, platform: str, workspace: str, channel: str, platform_message_id: str
    ) -> int:
        """Delete a person's stored message by its platform id. Returns rows deleted."""
        ...

    async def forget_workspace(self, platform: str, workspace: str) -> int:
        """Delete a workspace's conversations, messages and settings. Returns conversations deleted."""
        ...

    async def mark_answer_unspoken(self, turn_id: int, text: str) -> bool:
        """Replace the stored answer of a turn with `text`, which marks the part a listener
        interrupted before it was spoken aloud. False when the turn has no stored answer."""
        ...

    async def voice_opt_outs(self, platform: str, workspace: str) -> frozenset[str]:
        """The members of a server who said `/voice ignore-me`: their audio is not heard."""
        ...

    async def set_voice_opt_out(
        self, platform: str, workspace: str, user_id: str, *, opted_out: bool
    ) -> None:
        """Store (or withdraw) a member's `/voice ignore-me`; forget-me removes it too."""
        ...


class PurgeStore(Protocol):
    """Expiry (`botservice.app.expiry`): what has expired goes, in batches."""

    async def purge(
        self,
        *,
        now: datetime,
        default_retention_days: int,
        dedupe_days: int,
        batch_size: int,
        period: str | None = None,
        dry_run: bool = False,
    ) -> PurgeCounts:
        """Delete what has expired, in batches. With `period`, run only if this process is the
        first to claim it (several processes share one database)."""
        ...

    async def forget_expired_reply_secrets(self, *, now: datetime, batch_size: int) -> int:
        """Delete the "secrets" of reply targets whose "expires_at" has passed (a Discord
        interaction token is valid for 15 minutes; it is not kept longer). Returns how
        many turns lost theirs."""
        ...


ToolCallStatus = Literal["requested", "started", "done"]
ConfirmationStatus = Literal["pending", "approved", "denied", "timed_out"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredToolCall:
    """One call of a tool round, stored with the turn (its question's message).

    `requested`: the model asked for it; `started`: it began running (stored before
    anything that needed a confirmation runs, so a crash never runs it twice);
    `done`: `result` holds what the model was (or is to be) told.
    """

    user_message_id: int
    round: int
    position: int
    call_id: str
    name: str
    arguments: str
    status: ToolCallStatus
    result: str | None = None
    is_error: bool = False
    tokens: int = 0
    # What the model wrote beside the round's calls (kept on the round's first call).
    round_text: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredConfirmation:
    """A call waiting for (or past) its asker's Approve or Deny."""

    id: int
    turn_id: int
    round: int
    position: int
    tool: str
    arguments_hash: str
    platform: str
    asker_id: str
    status: ConfirmationStatus
    expires_at: datetime
    decided_by: str | None = None
    decided_at: datetime | None = None


class ToolRoundStore(Protocol):
    """Tool rounds kept with their turn, and the confirmations they wait for."""

    async def store_tool_round(self, turn_id: int, calls: Sequence[StoredToolCall]) -> None:
        """Keep a round's calls as they stand: `requested` (before anything is asked or
        run), or already `done` with their results (a round that asked nobody). Storing
        a round again (a resumed turn) changes nothing."""
        ...

    async def start_tool_call(self, turn_id: int, *, round: int, position: int) -> None:
        """Mark the call `started`: from here a crash leaves its outcome unknown."""
        ...

    async def store_tool_results(self, turn_id: int, calls: Sequence[StoredToolCall]) -> None:
        """Store the results of a round's calls (each `done`), in one write."""
        ...

    async def tool_calls(self, turn_id: int) -> list[StoredToolCall]:
        """The turn's stored calls, by round and position (a resumed turn goes on
        from them)."""
        ...

    async def tool_calls_for(self, user_message_ids: Collection[int]) -> list[StoredToolCall]:
        """The calls made answering these messages, by message, round and position
        (what follow-ups see in their prompt)."""
        ...

    async def open_confirmation(
        self,
        turn_id: int,
        *,
        round: int,
        position: int,
        tool: str,
        arguments_hash: str,
        platform: str,
        asker_id: str,
        expires_at: datetime,
    ) -> tuple[StoredConfirmation, bool]:
        """The confirmation of this call: stored now (True), or the one stored before
        (False: a resumed turn waits on it and asks no second time)."""
        ...

    async def confirmation(self, confirmation_id: int) -> StoredConfirmation | None: ...

    async def decide_confirmation(
        self,
        confirmation_id: int,
        *,
        platform: str,
        user_id: str,
        approve: bool,
        now: datetime,
        asker_waits: bool = False,
    ) -> Decision:
        """Record the asker's decision, and in the audit trail who decided what and when.
        Only a pending confirmation not yet expired is decided (an expired one is
        recorded as timed out). One whose turn is neither pending nor running (a spoken
        turn, or a finished one) is decided only when `asker_waits` (a realtime voice
        session of this process waits for it); else nobody would ever act on it: it is
        recorded as timed out and "expired" returned."""
        ...

    async def expire_confirmation(
        self, confirmation_id: int, *, now: datetime
    ) -> StoredConfirmation | None:
        """Mark the confirmation `timed_out` if it is still pending; the row after."""
        ...


class CoreStore(TurnStore, HistoryStore, CommandStore, TokenUsage, ToolRoundStore, Protocol):
    """What `ConversationCore` needs: turns, history, commands, budgets and tool rounds."""


class Store(CoreStore, Lookups, PurgeStore, Protocol):
    """Everything the bot keeps: the sum of the ports above, for the composition root.
    One implementation (storage/) over SQLAlchemy."""

    async def ping(self) -> bool:
        """Whether the database answers right now (readiness checks)."""
        ...

    async def aclose(self) -> None: ...


# --- adapters ------------------------------------------------------------------


class Adapter(Protocol):
    """A platform connection started by `botservice run`.

    `start` connects and returns once the adapter is serving (it keeps running in
    tasks of its own); `stop` disconnects. `sink_for` rebuilds a reply sink for a
    turn that was pending when the process last stopped, from the
    `reply_target` the adapter put on the message; None if it cannot answer it.
    `http_routes` returns aiohttp routes to mount on the shared HTTP server
    (Slack's `/slack/events`), or an empty list. `is_connected` feeds `/readyz`.
    """

    platform: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def sink_for(self, turn: PendingTurn) -> ReplySink | None: ...

    def http_routes(self) -> list[Any]: ...

    def is_connected(self) -> bool:
        """False while the platform connection this adapter keeps is down (a gateway or
        websocket) or before `start` has finished; an adapter that keeps none (Slack over
        HTTP, the console) is always connected. Cheap and non-blocking: a load balancer's
        readiness probe calls it."""
        ...

"""The conversation core: one turn from an incoming message to a stored, streamed answer.

Platform-neutral: adapters hand it an `IncomingMessage` and a `ReplySink`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from botservice.commands import CommandRunner
from botservice.errors import ModelError, ModelStreamBroken
from botservice.events import Attachment, Command, ConversationKey, IncomingMessage
from botservice.ports import (
    ChannelSettings,
    ChatRequest,
    HearingSink,
    ModelClient,
    PendingTurn,
    ReplySink,
    Store,
    StreamObserver,
)
from botservice.prompt import build_prompt, describe_attachments, quote_context
from botservice.settings import Settings
from botservice.streaming import ThrottledUpdates
from botservice.text_input import clean_text
from botservice.tokens import TokenCounter
from botservice.transcription import TranscriptionError
from botservice.voice_messages import heard_text, stored_text

log = logging.getLogger(__name__)

TRIM_FOOTNOTE = "_(Older messages in this conversation were left out to fit the model's context.)_"
RESTART_TOO_LATE = "Sorry, I restarted before I could answer this, and it is too old to pick up now; please ask again."
UNEXPECTED_FAILURE = "Something went wrong on my side while answering; please try again."


@dataclass(frozen=True, slots=True)
class Submission:
    """A message that was new and is now stored; `answered` completes with its answer."""

    turn_id: int
    answered: asyncio.Task[None]


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


class ConversationCore:
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        model: ModelClient,
        tokens: TokenCounter | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._model = model
        self._tokens = tokens or TokenCounter()
        self._lanes = _Lanes()
        self._commands = CommandRunner(settings=settings, store=store)

    # --- taking messages -------------------------------------------------------

    async def submit(self, message: IncomingMessage, sink: ReplySink) -> Submission | None:
        """Store the message and start answering it in the background.

        Returns once the message is stored, so an adapter can acknowledge the
        platform knowing nothing will be lost. None when the message was already
        taken (a redelivery) or was refused with a notice (empty, too long).
        """
        text = clean_text(message.text)
        if refusal := self._refusal(text, message.attachments):
            if await self._store.claim_key(message.platform, message.message_key):
                await sink.notice(refusal, private=False)
            return None

        stored_text = self._text_to_store(text, message)
        accepted = await self._store.accept(
            message,
            text=stored_text,
            tokens=self._tokens.count(stored_text),
            lease_until=self._lease_from(datetime.now(UTC)),
        )
        if accepted is None:
            log.info("dropped a redelivered message (%s %s)", message.platform, message.message_key)
            return None
        turn = _Turn(
            turn_id=accepted.turn_id,
            conversation_id=accepted.conversation_id,
            user_message_id=accepted.user_message_id,
            key=message.conversation,
            reply_ref=None,
            images=tuple(a for a in message.attachments if a.is_image),
            audio=tuple(a for a in message.attachments if a.is_audio),
        )
        task = self._lanes.run(turn.key, lambda: self._answer(turn, sink))
        return Submission(turn_id=accepted.turn_id, answered=task)

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

    async def resume_pending(
        self,
        sink_for: Callable[[PendingTurn], ReplySink | None],
        *,
        at_start_up: bool = True,
    ) -> int:
        """Answer turns that a stopped process left pending; tell the user when one is too
        old. Returns how many were resumed.

        A turn is taken over only when no live process holds its lease. At start-up
        on a store no other process shares (SQLite), every pending turn is this
        process's own from before the stop, so leases are not waited out.
        """
        max_age = self._settings.conversation.resume_pending_max_age_seconds
        force = at_start_up and not self._store.shared
        resumed = 0
        for pending in await self._store.pending_turns():
            sink = sink_for(pending)
            if sink is None:
                continue
            now = datetime.now(UTC)
            if not force and pending.lease_until is not None and pending.lease_until > now:
                continue  # being answered right now, here or elsewhere
            taken = await self._store.take_over_turn(
                pending.turn_id, now=now, lease_until=self._lease_from(now), force=force
            )
            if not taken:
                continue
            if (now - pending.created_at).total_seconds() > max_age:
                await self._store.fail_turn(pending.turn_id)
                await sink.finish(RESTART_TOO_LATE)
                continue
            turn = _Turn(
                turn_id=pending.turn_id,
                conversation_id=pending.conversation_id,
                user_message_id=pending.user_message_id,
                key=pending.conversation,
                reply_ref=pending.reply_ref,
                audio=await self._store.unheard_audio(pending.user_message_id),
            )
            self._lanes.run(turn.key, functools.partial(self._answer, turn, sink))
            resumed += 1
        if resumed:
            log.info("resuming %d turns left pending by a stopped process", resumed)
        return resumed

    def _lease_from(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self._settings.conversation.turn_lease_seconds)

    # --- what adapters ask of the store, through the core ---------------------------

    async def has_conversation(self, key: ConversationKey) -> bool:
        """Whether the bot is part of this conversation (so follow-ups need no mention)."""
        return await self._store.has_conversation(key)

    async def thread_of_message(
        self, platform: str, workspace: str, channel: str, platform_message_id: str
    ) -> str | None:
        """The thread of the conversation a platform message or answer belongs to."""
        return await self._store.thread_of_message(
            platform, workspace, channel, platform_message_id
        )

    async def delete_platform_message(
        self, platform: str, workspace: str, channel: str, platform_message_id: str
    ) -> int:
        """A person deleted their message on the platform: delete the stored copy."""
        return await self._store.delete_platform_message(
            platform, workspace, channel, platform_message_id
        )

    async def channel_settings(
        self, platform: str, workspace: str, channel: str
    ) -> ChannelSettings:
        """A channel's own settings, else its workspace's (speech reads its voice here)."""
        return await self._store.channel_settings(platform, workspace, channel)

    async def forget_workspace(self, platform: str, workspace: str) -> int:
        """The app left a workspace: delete everything stored about it."""
        return await self._store.forget_workspace(platform, workspace)

    async def drain(self) -> None:
        """Wait for every answer in flight (used at shutdown and by tests)."""
        await self._lanes.drain()

    # --- answering ---------------------------------------------------------------

    async def _answer(self, turn: _Turn, sink: ReplySink) -> None:
        try:
            async with self._one_process_at_a_time(turn.conversation_id):
                await self._answer_turn(turn, sink)
        except Exception:
            # The adapter's boundary: log the stack once, tell the user one sentence.
            log.exception("answering turn %d failed", turn.turn_id)
            await self._store.fail_turn(turn.turn_id)
            try:
                await sink.finish(UNEXPECTED_FAILURE)
            except Exception:
                log.exception("could not tell the user that turn %d failed", turn.turn_id)

    @contextlib.asynccontextmanager
    async def _one_process_at_a_time(self, conversation_id: int) -> AsyncIterator[None]:
        """Turns of one conversation in other processes sharing the database wait for
        this one (the lanes already order them within this process)."""
        if not self._store.shared:
            yield
            return
        lease = self._settings.conversation.turn_lease_seconds
        waited, pause = 0.0, 0.05
        # A holder that died is waited out by its lease, never longer.
        while waited < lease:
            now = datetime.now(UTC)
            if await self._store.hold_conversation(
                conversation_id, now=now, until=self._lease_from(now)
            ):
                break
            await asyncio.sleep(pause)
            waited += pause
            pause = min(pause * 2, 1.0)
        try:
            yield
        finally:
            await self._store.release_conversation(conversation_id)

    async def _answer_turn(self, turn: _Turn, sink: ReplySink) -> None:
        reply_ref = await sink.begin(turn.reply_ref)
        if reply_ref is not None and reply_ref != turn.reply_ref:
            await self._store.set_reply_ref(turn.turn_id, reply_ref)
        if turn.audio and not await self._hear(turn, sink):
            return

        key = turn.key
        channel = await self._store.channel_settings(key.platform, key.workspace, key.channel)
        model = channel.model or self._settings.model.name
        model_info = self._settings.model_info(model)
        instructions = channel.instructions or self._settings.conversation.default_instructions
        history = await self._store.history(
            turn.conversation_id,
            up_to_message_id=turn.user_message_id,
            limit=self._settings.conversation.history_limit,
        )
        max_answer = self._settings.model.max_answer_tokens
        prompt = build_prompt(
            instructions=instructions,
            instructions_role=model_info.instructions_role,
            instructions_tokens=self._tokens.count(instructions),
            history=history,
            budget_tokens=model_info.context_window - max_answer,
            # Images travel as parts of the current message when the model takes
            # them; otherwise the stored text already names them.
            images=turn.images if model_info.accepts_images else (),
        )
        request = ChatRequest(model=model, messages=prompt.messages, max_tokens=max_answer)

        updates = ThrottledUpdates(sink, self._settings.conversation.stream_update_interval_seconds)
        observer = sink if isinstance(sink, StreamObserver) else None
        parts: list[str] = []
        stream = self._model.stream(request)
        try:
            async for delta in stream:
                parts.append(delta)
                so_far = "".join(parts)
                updates.offer(so_far)
                if observer is not None:
                    observer.observe(so_far)
        except ModelError as error:
            await updates.close()
            await self._fail(turn, sink, error, "".join(parts), model)
            return
        await updates.close()

        answer = "".join(parts)
        shown = answer
        if prompt.left_out and await self._store.mark_trim_noticed(turn.conversation_id):
            shown = f"{answer}\n\n{TRIM_FOOTNOTE}"
        await sink.finish(shown)
        await self._store.store_answer(
            turn.turn_id,
            text=answer,
            tokens=self._tokens.count(answer),
            usage=stream.usage,
            status="complete",
            model=model,
        )
        if channel.retention_days == 0:
            await self._store.delete_conversation_messages(turn.conversation_id)

    async def _hear(self, turn: _Turn, sink: ReplySink) -> bool:
        """Put the transcript of the turn's audio in the stored message. False when it
        cannot be heard (the turn is failed and the person told why)."""
        if not isinstance(sink, HearingSink):
            return True  # answered from the stored text, which names the files
        try:
            transcript = await sink.hear(turn.audio)
        except TranscriptionError as error:
            log.warning("could not hear the audio of turn %d: %s", turn.turn_id, error)
            await self._store.fail_turn(turn.turn_id)
            await sink.finish(error.user_message)
            return False
        stored = await self._store.message_text(turn.user_message_id)
        text = heard_text(stored.text if stored else "", turn.audio, transcript)
        await self._store.heard(turn.user_message_id, text=text, tokens=self._tokens.count(text))
        return True

    async def _fail(
        self, turn: _Turn, sink: ReplySink, error: ModelError, partial: str, model: str
    ) -> None:
        log.warning("model call for turn %d failed: %s", turn.turn_id, type(error).__name__)
        if not partial:
            await self._store.fail_turn(turn.turn_id)
            await sink.finish(error.user_message)
            return
        # Keep what the model did say; mark it so neither the user nor a later
        # prompt mistakes it for a whole answer.
        reason = error.user_message if not isinstance(error, ModelStreamBroken) else ""
        marker = "_(The answer was cut off midway" + (f": {reason}" if reason else ".") + ")_"
        await sink.finish(f"{partial}\n\n{marker}")
        await self._store.store_answer(
            turn.turn_id,
            text=partial,
            tokens=self._tokens.count(partial),
            usage=None,
            status="interrupted",
            model=model,
        )

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


class _Lanes:
    """One queue per conversation: its turns run one at a time, in the order taken;
    different conversations run concurrently."""

    def __init__(self) -> None:
        self._tails: dict[ConversationKey, asyncio.Task[None]] = {}

    def run(
        self, key: ConversationKey, start: Callable[[], Coroutine[Any, Any, None]]
    ) -> asyncio.Task[None]:
        previous = self._tails.get(key)
        task = asyncio.create_task(self._after(previous, start))
        self._tails[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))
        return task

    async def drain(self) -> None:
        while self._tails:
            await asyncio.wait(list(self._tails.values()))

    @staticmethod
    async def _after(
        previous: asyncio.Task[None] | None, start: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        await start()

    def _forget(self, key: ConversationKey, task: asyncio.Task[None]) -> None:
        if self._tails.get(key) is task:
            del self._tails[key]

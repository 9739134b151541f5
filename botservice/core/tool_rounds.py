"""Tool rounds: the calls the model asks for in one turn, run within bounds.

The conversation core asks the model with the tools the channel allows; when the
answer is a round of tool calls, `TurnTools.run_round` stores the calls, runs them
concurrently (asking the asker first for anything that changes the world), stores
each result, and the core asks the model again with the results, until it answers
in text or a limit is reached (`[tools]` in the settings).

Each round is stored before the next round runs and before the answer is saved, so
a turn resumed after a crash goes on from its stored rounds: a finished call is not
run again. A round that asks the asker is stored before anyone is asked (a restart
waits on the same question), and each approved call is marked started before it
runs: a started call without a stored result is never run again (the model is told
its outcome is unknown). A round of read-only calls is stored with its results in
one write; a crash before it lands only runs those read-only calls again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from botservice.core.ports import (
    ChannelSettings,
    SinkAbilities,
    StoredConfirmation,
    StoredToolCall,
    ToolRoundStore,
)
from botservice.core.settings import ToolSettings
from botservice.core.tools import (
    SHOWN_ARGUMENTS,
    ConfirmationRequest,
    ToolCall,
    ToolContext,
    ToolOutput,
    ToolPolicy,
    ToolProgress,
    ToolSource,
    ToolSpec,
    ToolState,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# How often a waiting turn looks at its confirmation's row: the click may reach
# another process sharing the database, which cannot wake this one.
CONFIRMATION_POLL_SECONDS = 2.0

# What the model is told instead of a result.
NOT_OFFERED = "Refused: there is no tool named {name!r} here. Use only the tools offered."
BAD_ARGUMENTS = (
    "Refused: the arguments are not a JSON object ({problem}). The call was not run; "
    "send the arguments as one JSON object."
)
TOO_MANY_CALLS = "Refused: at most {limit} calls may be made in one round; this one was not run."
TIMED_OUT = "The tool did not answer within {seconds:g} s; it was stopped."
TOOL_FAILED = "The tool failed ({kind}); it returned no result."
OUT_OF_TIME = "Not run: the time for tools in this answer ({seconds:g} s) is used up."
DECLINED = "The user declined this call; it was not run."
DECLINED_SILENCE = "The user declined this call (no answer within {seconds:g} s); it was not run."
CANNOT_ASK = (
    "The user declined this call: it needs the user's approval, and approval cannot be "
    "asked for here. It was not run."
)
OUTCOME_UNKNOWN = (
    "The outcome of this call is unknown: the bot restarted while it ran. It was not run "
    "again; tell the user to check whether it took effect."
)
# Appended (as a system message) to the last request at a limit.
LIMIT_REACHED = (
    "The limit on tool use for this answer has been reached ({why}). No more tools can "
    "be called. Answer now with what you have, and say plainly what you could not do."
)
# Shown when even the last request came back without text.
LIMIT_NO_TEXT = "I reached the limit on tool use for this answer before I could finish it."
# A failed call's detail, as shown beside it: the loop's own outcomes (above) are told
# as they are, shortened; a tool's own error text is not shown.
PROGRESS_DETAIL = 150
TOOL_REPORTED_ERROR = "The tool reported an error."
_OWN_OUTCOMES = tuple(
    template.split("{", 1)[0]
    for template in (
        NOT_OFFERED,
        BAD_ARGUMENTS,
        TOO_MANY_CALLS,
        TIMED_OUT,
        TOOL_FAILED,
        OUT_OF_TIME,
        DECLINED,
        DECLINED_SILENCE,
        CANNOT_ASK,
        OUTCOME_UNKNOWN,
    )
)


@dataclass(frozen=True, slots=True)
class OfferedTools:
    """The tools offered in one turn: what the model request carries, by name."""

    specs: tuple[ToolSpec, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.specs)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(spec.name for spec in self.specs)


NO_TOOLS = OfferedTools()


class ToolBox:
    """Every source's tools, and which of them a channel's policy allows."""

    def __init__(self, sources: Sequence[ToolSource]) -> None:
        self._sources = tuple(sources)

    def __bool__(self) -> bool:
        return bool(self._sources)

    def available(self) -> list[ToolSpec]:
        """Every tool offered by a source now (a name offered twice: the first source's)."""
        seen: dict[str, ToolSpec] = {}
        for source in self._sources:
            for spec in source.tools():
                seen.setdefault(spec.name, spec)
        return list(seen.values())

    def offered(self, policy: ToolPolicy) -> OfferedTools:
        if not self._sources:
            return NO_TOOLS
        return OfferedTools(tuple(spec for spec in self.available() if policy.allows(spec)))

    def find(self, name: str) -> tuple[ToolSource, ToolSpec] | None:
        """The source of a tool and its spec as the source offers it right now."""
        for source in self._sources:
            for spec in source.tools():
                if spec.name == name:
                    return source, spec
        return None


class ConfirmationWaiters:
    """In-process wake-ups for turns waiting on a confirmation (a click handled by this
    process wakes its turn at once; one handled elsewhere is seen by the poll)."""

    def __init__(self) -> None:
        self._events: dict[int, asyncio.Event] = {}

    def wake(self, confirmation_id: int) -> None:
        event = self._events.get(confirmation_id)
        if event is not None:
            event.set()

    async def wait(self, confirmation_id: int, seconds: float) -> None:
        event = self._events.setdefault(confirmation_id, asyncio.Event())
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=max(0.0, seconds))
        finally:
            self._events.pop(confirmation_id, None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Asker:
    """The person whose message started the turn: the only one who may approve."""

    platform: str
    user_id: str
    name: str


class TurnTools:
    """The tool rounds of one turn: the stored ones and the ones run now."""

    def __init__(
        self,
        *,
        settings: ToolSettings,
        store: ToolRoundStore,
        toolbox: ToolBox,
        offered: OfferedTools,
        context: ToolContext,
        user_message_id: int,
        asker: Asker,
        abilities: SinkAbilities,
        waiters: ConfirmationWaiters,
        channel_settings: Callable[[], Awaitable[ChannelSettings]],
        count_tokens: Callable[[str], int],
        keep_trying: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]],
        show_status: Callable[[str], Awaitable[None]],
    ) -> None:
        self._settings = settings
        self._store = store
        self._toolbox = toolbox
        self.offered = offered
        self._context = context
        self._user_message_id = user_message_id
        self._asker = asker
        self._abilities = abilities
        self._waiters = waiters
        self._channel_settings = channel_settings
        self._count = count_tokens
        self._keep_trying = keep_trying
        self._show_status = show_status
        # This turn's calls, stored and finished, in order.
        self.calls: list[StoredToolCall] = []
        self.rounds = 0
        self._tool_seconds = 0.0
        self._used: dict[str, None] = {}  # tools that ran, in order
        # A round that asked nobody is written while the model reads its results.
        self._writing: asyncio.Future[Any] | None = None

    @property
    def used(self) -> list[str]:
        return list(self._used)

    def limit_reached(self) -> str | None:
        """Why no further round may run, if none may."""
        if self.rounds >= self._settings.max_rounds:
            return f"{self._settings.max_rounds} rounds of tool calls"
        if self._tool_seconds >= self._settings.turn_timeout_seconds:
            return f"{self._settings.turn_timeout_seconds:g} s of tool time"
        return None

    async def resume(self, stored: Sequence[StoredToolCall]) -> None:
        """Go on from what an earlier run of this turn stored (its calls, by round and
        position): finish its last round (the calls it did not finish), keep the rest
        as they are."""
        stored = list(stored)
        if not stored:
            return
        last = stored[-1].round
        self.rounds = last + 1
        unfinished = [call for call in stored if call.round == last and call.status != "done"]
        if unfinished:
            log.info(
                "turn %d resumes round %d with %d unfinished calls",
                self._context.turn_id,
                last,
                len(unfinished),
            )
            done = await self._finish(unfinished, await self._policy(), stored=True)
            finished = {call.position: call for call in done}
            stored = [
                finished.get(call.position, call) if call.round == last else call for call in stored
            ]
        self.calls = stored

    async def run_round(self, calls: Sequence[ToolCall], round_text: str) -> None:
        """Store the model's calls, run them, store their results."""
        round_index = self.rounds
        requested = [
            StoredToolCall(
                user_message_id=self._user_message_id,
                round=round_index,
                position=position,
                call_id=call.id,
                name=call.name,
                arguments=call.arguments,
                status="requested",
                round_text=round_text if position == 0 else "",
            )
            for position, call in enumerate(calls)
        ]
        self.rounds += 1
        await self.settle()
        policy = await self._policy()
        turn_id = self._context.turn_id
        if any(self._asks(call, policy) for call in requested):
            # Stored before anyone is asked: a restart waits on the same question.
            await self._keep_trying(lambda: self._store.store_tool_round(turn_id, requested))
            self.calls += await self._finish(requested, policy, stored=True)
            return
        # Nothing here changes the world: run first, then store the round with its
        # results in one write, while the next request goes out (`settle` waits for it
        # before anything else is stored; a crash before it lands only runs read-only
        # calls again). The write was most of a round's cost (bench/bench_tools.py).
        finished = await self._finish(requested, policy, stored=False)
        self._writing = asyncio.ensure_future(
            self._keep_trying(lambda: self._store.store_tool_round(turn_id, finished))
        )
        self.calls += finished

    async def settle(self) -> None:
        """Wait for a round still being written (before the next round, and before the
        answer is saved, so the rounds are stored ahead of the answer)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing

    def by_message(
        self, earlier: Sequence[StoredToolCall]
    ) -> Mapping[int, Sequence[StoredToolCall]]:
        """Earlier turns' calls and this turn's, by the message they answer."""
        grouped: dict[int, list[StoredToolCall]] = {}
        for call in [*earlier, *self.calls]:
            grouped.setdefault(call.user_message_id, []).append(call)
        return grouped

    # --- one round -----------------------------------------------------------------

    async def _policy(self) -> ToolPolicy:
        return ToolPolicy.parse((await self._channel_settings()).tools)

    def _asks(self, call: StoredToolCall, policy: ToolPolicy) -> bool:
        """Whether the call would ask the asker first (if it runs at all)."""
        found = self._toolbox.find(call.name) if call.name in self.offered.names else None
        return found is not None and policy.allows(found[1]) and not found[1].runs_without_asking

    async def _finish(
        self, calls: Sequence[StoredToolCall], policy: ToolPolicy, *, stored: bool
    ) -> list[StoredToolCall]:
        """Bring each call to its result, concurrently; with `stored`, the round's rows
        exist and get the results in one write."""
        limit = self._settings.max_calls_per_round
        runnable = [call for call in calls if call.position < limit]
        shown = [c for c in runnable if c.status == "requested"]
        shown_at = {c.position for c in shown}
        if shown:
            starting = [
                self._progress_of(c, "pending" if self._asks(c, policy) else "in_progress")
                for c in shown
            ]
            if not await self._report(starting):
                await self._show_status("\n".join(p.title for p in starting))
        remaining = self._settings.turn_timeout_seconds - self._tool_seconds
        started = time.monotonic()

        async def resolve(call: StoredToolCall) -> tuple[ToolOutput, float]:
            output, ran_for = await self._resolve(call, policy, remaining)
            if call.position in shown_at:  # each call's end as it comes, not the round's
                await self._report([self._ended(call, output)])
            return output, ran_for

        results = await asyncio.gather(*(resolve(call) for call in calls))
        finished: list[StoredToolCall] = []
        run_seconds = 0.0
        for call, (output, ran_for) in zip(calls, results, strict=True):
            run_seconds = max(run_seconds, ran_for)
            finished.append(self._finished(call, output))
        # Calls run side by side: the round costs its longest call, never more than
        # the round took (approval waits excluded).
        self._tool_seconds += min(run_seconds, time.monotonic() - started)
        if stored:
            turn_id = self._context.turn_id
            await self._keep_trying(lambda: self._store.store_tool_results(turn_id, finished))
        return finished

    def _progress_of(
        self, call: StoredToolCall, state: ToolState, detail: str = ""
    ) -> ToolProgress:
        return ToolProgress(
            call_id=f"tool-{call.round}-{call.position}",
            title=self._status_line(call),
            state=state,
            detail=detail,
        )

    def _ended(self, call: StoredToolCall, output: ToolOutput) -> ToolProgress:
        if not output.is_error:
            return self._progress_of(call, "complete")
        # The loop's own refusals say plainly what happened; a tool's own error text is
        # the model's to read and relay, so the person is not shown it raw.
        own = output.text.startswith(_OWN_OUTCOMES)
        detail = shorten(output.text, PROGRESS_DETAIL) if own else TOOL_REPORTED_ERROR
        return self._progress_of(call, "error", detail)

    async def _report(self, progress: Sequence[ToolProgress]) -> bool:
        """Show the calls' progress where the sink can; False: it was not shown."""
        report = self._abilities.tool_progress
        if report is None:
            return False
        try:
            return await report(progress)
        except Exception:
            # Progress is a courtesy; the calls and the answer go on.
            log.warning("showing tool progress failed", exc_info=True)
            return False

    def _status_line(self, call: StoredToolCall) -> str:
        found = self._toolbox.find(call.name) if call.name in self.offered.names else None
        if found is not None and found[1].status:
            return found[1].status
        return f"Calling {call.name}…"

    async def _resolve(
        self, call: StoredToolCall, policy: ToolPolicy, remaining: float
    ) -> tuple[ToolOutput, float]:
        """What the model is told of one call, and for how long a tool ran for it."""
        if call.status == "started":
            return ToolOutput(OUTCOME_UNKNOWN, is_error=True), 0.0
        if call.position >= self._settings.max_calls_per_round:
            limit = self._settings.max_calls_per_round
            return ToolOutput(TOO_MANY_CALLS.format(limit=limit), is_error=True), 0.0
        # Checked again now: only what was offered, and what the channel still allows.
        found = self._toolbox.find(call.name) if call.name in self.offered.names else None
        if found is None or not policy.allows(found[1]):
            log.info("refused a call of a tool not offered here (turn %d)", self._context.turn_id)
            return ToolOutput(NOT_OFFERED.format(name=call.name[:80]), is_error=True), 0.0
        source, spec = found
        arguments, problem = parse_arguments(call.arguments)
        if arguments is None:
            return ToolOutput(BAD_ARGUMENTS.format(problem=problem), is_error=True), 0.0
        if remaining <= 0:
            seconds = self._settings.turn_timeout_seconds
            return ToolOutput(OUT_OF_TIME.format(seconds=seconds), is_error=True), 0.0
        if not spec.runs_without_asking:
            refusal = await self._ask(call)
            if refusal is not None:
                return refusal, 0.0
            # From here a crash leaves the outcome unknown: never run it twice.
            await self._keep_trying(
                lambda: self._store.start_tool_call(
                    self._context.turn_id, round=call.round, position=call.position
                )
            )
        timeout = min(self._settings.call_timeout_seconds, remaining)
        started = time.monotonic()
        self._used[spec.name] = None
        try:
            output = await asyncio.wait_for(
                source.call(spec.name, arguments, self._context), timeout=timeout
            )
        except TimeoutError:
            log.warning("tool %s timed out after %.1f s", spec.name, timeout)
            output = ToolOutput(TIMED_OUT.format(seconds=timeout), is_error=True)
        except Exception as error:
            # The tool's failure is the model's to handle; the turn goes on. Its message
            # may quote the conversation: only its kind is logged at the default level.
            log.warning("tool %s failed: %s", spec.name, type(error).__name__)
            log.debug("tool %s failed", spec.name, exc_info=True)
            output = ToolOutput(TOOL_FAILED.format(kind=type(error).__name__), is_error=True)
        return output, time.monotonic() - started

    def _finished(self, call: StoredToolCall, output: ToolOutput) -> StoredToolCall:
        text = cap_result(output.text, self._settings.max_result_bytes)
        tokens = self._count(text) + self._count(call.arguments) + self._count(call.name)
        return StoredToolCall(
            user_message_id=call.user_message_id,
            round=call.round,
            position=call.position,
            call_id=call.call_id,
            name=call.name,
            arguments=call.arguments,
            status="done",
            result=text,
            is_error=output.is_error,
            tokens=tokens,
            round_text=call.round_text,
        )

    # --- asking the asker ---------------------------------------------------------

    async def _ask(self, call: StoredToolCall) -> ToolOutput | None:
        """Ask the asker to approve the call (once, across restarts) and wait for the
        answer. None: approved; else what the model is told."""
        confirm = self._abilities.confirm
        timeout = self._settings.confirm_timeout_seconds
        if confirm is None:
            return ToolOutput(CANNOT_ASK, is_error=True)
        expires_at = datetime.now(UTC) + timedelta(seconds=timeout)
        confirmation, created = await self._keep_trying(
            lambda: self._store.open_confirmation(
                self._context.turn_id,
                round=call.round,
                position=call.position,
                tool=call.name,
                arguments_hash=arguments_hash(call.arguments),
                platform=self._asker.platform,
                asker_id=self._asker.user_id,
                expires_at=expires_at,
            )
        )
        if created:
            request = ConfirmationRequest(
                confirmation_id=confirmation.id,
                tool=call.name,
                arguments=shorten(call.arguments, SHOWN_ARGUMENTS),
                asker_id=self._asker.user_id,
                asker_name=self._asker.name,
                timeout_seconds=timeout,
            )
            waiting = self._progress_of(
                call, "pending", f"Waiting for {self._asker.name} to approve"
            )
            if not await self._report([waiting]):
                await self._show_status(f"Waiting for {self._asker.name} to approve {call.name}…")
            try:
                await confirm(request)
            except Exception as error:
                log.warning("asking for a confirmation failed: %s", type(error).__name__)
                log.debug("asking for a confirmation failed", exc_info=True)
                await self._keep_trying(
                    lambda: self._store.expire_confirmation(confirmation.id, now=datetime.now(UTC))
                )
                return ToolOutput(CANNOT_ASK, is_error=True)
        status = (await self._decision(confirmation)).status
        if status == "approved":
            await self._report([self._progress_of(call, "in_progress")])
            return None
        if status == "denied":
            return ToolOutput(DECLINED, is_error=True)
        await self._closed(confirmation.id)
        return ToolOutput(DECLINED_SILENCE.format(seconds=timeout), is_error=True)

    async def _closed(self, confirmation_id: int) -> None:
        """Nobody answered in time: the question's buttons go (where the sink asked it)."""
        closed = self._abilities.confirmation_closed
        if closed is None:
            return
        try:
            await closed(confirmation_id, "timed_out")
        except Exception:
            # The call is declined either way; only the question's look is stale.
            log.warning("closing an unanswered question failed", exc_info=True)

    async def _decision(self, confirmation: StoredConfirmation) -> StoredConfirmation:
        """Wait until the confirmation is decided or expires (then it is marked timed out)."""
        current: StoredConfirmation | None = confirmation
        while True:
            if current is None or current.status != "pending":
                break
            left = (current.expires_at - datetime.now(UTC)).total_seconds()
            if left <= 0:
                current = await self._keep_trying(
                    lambda: self._store.expire_confirmation(confirmation.id, now=datetime.now(UTC))
                )
                break
            await self._waiters.wait(confirmation.id, min(CONFIRMATION_POLL_SECONDS, left))
            current = await self._keep_trying(lambda: self._store.confirmation(confirmation.id))
        if current is None:  # purged under us: as good as no answer
            return _timed_out(confirmation)
        return current


def _timed_out(confirmation: StoredConfirmation) -> StoredConfirmation:
    return StoredConfirmation(
        id=confirmation.id,
        turn_id=confirmation.turn_id,
        round=confirmation.round,
        position=confirmation.position,
        tool=confirmation.tool,
        arguments_hash=confirmation.arguments_hash,
        platform=confirmation.platform,
        asker_id=confirmation.asker_id,
        status="timed_out",
        expires_at=confirmation.expires_at,
    )


def parse_arguments(raw: str) -> tuple[dict[str, Any] | None, str]:
    """The call's arguments as an object, or None and what is wrong with them. Empty
    arguments are an empty object (some servers send "" for a tool without any)."""
    if not raw.strip():
        return {}, ""
    try:
        parsed = json.loads(raw)
    except ValueError as error:
        return None, f"invalid JSON: {str(error)[:120]}"
    if not isinstance(parsed, dict):
        return None, f"a JSON {type(parsed).__name__}, not an object"
    return parsed, ""


def arguments_hash(arguments: str) -> str:
    return hashlib.sha256(arguments.encode("utf-8", "replace")).hexdigest()


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def cap_result(text: str, max_bytes: int) -> str:
    """At most `max_bytes` of UTF-8: the head and the tail of a longer result, with a
    marker between them saying how much was cut."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= max_bytes:
        return text
    marker_room = 96
    keep = max(0, max_bytes - marker_room)
    head = encoded[: keep // 2].decode("utf-8", "ignore")
    tail = encoded[len(encoded) - (keep - keep // 2) :].decode("utf-8", "ignore")
    cut = len(encoded) - len(head.encode()) - len(tail.encode())
    return f"{head}\n[… {cut:,} of {len(encoded):,} bytes cut here …]\n{tail}"


def tools_used_line(names: Sequence[str]) -> str:
    """The compact line under an answer that used tools."""
    return "_Tools used: " + ", ".join(names) + "_"

"""The tools a realtime voice session may call: the text turns' tool sources and rules.

The same `ToolBox` (every source), the channel's `ToolPolicy` (the allow-list), and the
same tool rounds as a text turn (`TurnTools`): bounds (`[tools]` call timeout, result
size, rounds), stored calls and results, and Approve / Deny before anything that is not
read-only from a trusted source. Each call belongs to the member's turn it answers (the
words the session heard, stored as a spoken turn): that member is the asker, the
question is posted in the voice channel's text chat under their words, only they
decide, no answer in time is a denial, and the decision is audited, all as for text
turns. While the question waits the model says so aloud; the call's output (the
result, or the refusal) goes back once decided. When the session ends, its questions
still open are closed (`close`): nothing would act on their answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass

from botservice.core.conversation import SpokenTurn
from botservice.core.ports import SinkAbilities
from botservice.core.tool_rounds import NOT_OFFERED, ToolBox, TurnTools
from botservice.core.tools import ToolCall, ToolPolicy, ToolSpec
from botservice.voice.realtime import RealtimeCall

log = logging.getLogger(__name__)

# What the model is told when the words that asked for a call never reached us.
NOT_HEARD = (
    "Not run: the words that asked for this call could not be kept (no transcript), "
    "so there is nobody to run it for. Ask the user to say it again."
)
# Said aloud while a call waits for its asker's click.
WAITING = "{tool} needs {name}'s approval: the question is in the text chat."
NOT_RUN_LIMIT = "Not run: the limit on tool use for this answer has been reached ({why})."
# How long a call waits for the transcript of the words it answers.
HEARD_WAIT_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class HeardTurn:
    """A member's turn as the conversation keeps it, and where to ask them."""

    turn: SpokenTurn
    # Where Approve / Deny is asked (the text chat, under the member's words).
    abilities: SinkAbilities


class HeardTurns:
    """The spoken turns of one session, by the session's input item, for the calls
    that answer them (a call may come before its words' transcript)."""

    def __init__(self, keep: int = 32) -> None:
        self._turns: dict[str, HeardTurn] = {}
        self._arrived: dict[str, asyncio.Event] = {}
        self._keep = keep

    def heard(self, item_id: str, turn: HeardTurn) -> None:
        self._turns[item_id] = turn
        while len(self._turns) > self._keep:
            self._turns.pop(next(iter(self._turns)))
        event = self._arrived.pop(item_id, None)
        if event is not None:
            event.set()

    def get(self, item_id: str) -> HeardTurn | None:
        return self._turns.get(item_id)

    async def wait_for(self, item_id: str, seconds: float) -> HeardTurn | None:
        found = self._turns.get(item_id)
        if found is not None or not item_id:
            return found
        event = self._arrived.setdefault(item_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout=seconds)
        except TimeoutError:
            self._arrived.pop(item_id, None)
        return self._turns.get(item_id)


TurnToolsFor = Callable[[SpokenTurn, SinkAbilities], TurnTools | None]
# The session ended: the questions of these turns are closed.
EndTurns = Callable[[Collection[int]], Awaitable[None]]


class ChannelVoiceTools:
    """`RealtimeTools` for one voice channel: what its policy allows, run by the rules."""

    def __init__(
        self,
        toolbox: ToolBox,
        policy: ToolPolicy,
        *,
        turns: HeardTurns,
        turn_tools: TurnToolsFor,
        end_turns: EndTurns | None = None,
        heard_wait_seconds: float = HEARD_WAIT_SECONDS,
    ) -> None:
        self._toolbox = toolbox
        self._policy = policy
        self._turns = turns
        self._turn_tools = turn_tools
        self._end_turns = end_turns
        # Every turn whose calls ran here (those may have asked a question).
        self._turn_ids: set[int] = set()
        self._heard_wait = heard_wait_seconds
        # The tool rounds of each turn (its rounds in order, one call at a time).
        self._rounds: dict[int, tuple[TurnTools, asyncio.Lock]] = {}

    def specs(self) -> Sequence[ToolSpec]:
        return self._toolbox.offered(self._policy).specs

    async def call(self, call: RealtimeCall) -> str:
        found = self._toolbox.find(call.name)
        if found is None or not self._policy.allows(found[1]):
            return NOT_OFFERED.format(name=call.name[:80])
        heard = await self._turns.wait_for(call.item_id, self._heard_wait)
        if heard is None:
            log.info("a realtime call came for words that were never transcribed")
            return NOT_HEARD
        rounds = self._rounds_of(heard)
        if rounds is None:
            return NOT_OFFERED.format(name=call.name[:80])
        tools, lock = rounds
        async with lock:
            why = tools.limit_reached()
            if why is not None:
                return NOT_RUN_LIMIT.format(why=why)
            if not found[1].runs_without_asking:
                await call.say_waiting(
                    WAITING.format(tool=call.name, name=heard.turn.user_name or "the asker")
                )
            await tools.run_round(
                [ToolCall(id=call.call_id, name=call.name, arguments=call.arguments)], ""
            )
            await tools.settle()
            return tools.calls[-1].result or ""

    async def close(self) -> None:
        """The session ended (after its calls were stopped): its open questions close."""
        turn_ids, self._turn_ids = self._turn_ids, set()
        self._rounds.clear()
        if turn_ids and self._end_turns is not None:
            await self._end_turns(turn_ids)

    def _rounds_of(self, heard: HeardTurn) -> tuple[TurnTools, asyncio.Lock] | None:
        turn_id = heard.turn.turn_id
        rounds = self._rounds.get(turn_id)
        if rounds is None:
            tools = self._turn_tools(heard.turn, heard.abilities)
            if tools is None:
                return None
            self._turn_ids.add(turn_id)
            rounds = self._rounds[turn_id] = (tools, asyncio.Lock())
            while len(self._rounds) > 16:
                self._rounds.pop(next(iter(self._rounds)))
        return rounds

"""Realtime mode in a Discord voice channel: the session's audio source and transcripts.

`RealtimeSource` is the one audio source played while a realtime session is open: the
player thread reads the session's 48 kHz stereo frames (silence while the model is
quiet, so there is no player to restart between answers). `ChatTranscripts` writes both
sides of the talk into the voice channel's text chat and keeps each member's words with
the answer that followed as one turn of the channel's conversation (stored as soon as
the words are heard: the model's tool calls belong to it), and what each response
spent in the usage ledger. `ChatBudget` keeps a member whose budget (or the channel's)
is spent from being answered, and says so in the text chat once per member and budget
until it renews.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import discord

from botservice.core.conversation import SpokenTurn
from botservice.core.limits import SpentBudget
from botservice.core.ports import Usage
from botservice.voice.realtime import SILENCE_FRAME, RealtimePlayback
from botservice.voice.realtime_tools import HeardTurn, HeardTurns

HEARD = '\N{MICROPHONE} {name}: "{text}"'
SPOKEN = "\N{SPEAKER WITH THREE SOUND WAVES} {text}"
# Kept as the answer of a member's words the model did not answer aloud.
NO_ANSWER = "_(No answer was spoken.)_"
MAX_CHARS = 1800


class RealtimeSource(discord.AudioSource):
    def __init__(self, playback: RealtimePlayback) -> None:
        self._playback = playback

    def read(self) -> bytes:
        return self._playback.read() or SILENCE_FRAME

    def is_opus(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Heard:
    """A member's words as the realtime server transcribed them, posted in the chat."""

    user_id: int
    name: str
    text: str
    posted_id: int


# Store the member's words as a spoken turn (None: a redelivery, or not stored).
Hear = Callable[[Heard], Awaitable[HeardTurn | None]]
# Keep the answer spoken to a turn (interrupted or not), with what its responses spent.
Answer = Callable[[SpokenTurn, str, bool, Usage | None], Awaitable[object]]
# Keep what one response spent, for its turn when known, else for the member heard.
Spend = Callable[[Usage, SpokenTurn | None, int | None], Awaitable[object]]


def _shown(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + "…"


class ChatTranscripts:
    """`RealtimeTranscripts` for a voice channel: each side posted in its text chat; the
    member's words stored as a turn at once (the calls that answer them belong to it,
    `turns`), its answer kept once known, and each response's usage recorded."""

    def __init__(
        self,
        post: Callable[[str], Awaitable[int | None]],
        member_name: Callable[[int], str | None],
        *,
        hear: Hear,
        answer: Answer,
        spend: Spend,
        turns: HeardTurns,
    ) -> None:
        self._post = post
        self._member_name = member_name
        self._hear = hear
        self._answer = answer
        self._spend = spend
        self.turns = turns
        self._waiting: SpokenTurn | None = None
        self._waiting_item = ""
        # What the session's responses spent on each member's turn (by input item; it may
        # come before the words' transcript), kept with the turn's answer. A response
        # done after the answer was kept is in the usage ledger only.
        self._spent_on: dict[str, Usage] = {}

    async def member_said(self, user_id: int, text: str, *, item_id: str) -> None:
        name = self._member_name(user_id)
        if name is None:
            return
        posted = await self._post(HEARD.format(name=name, text=_shown(text)))
        if posted is None:
            return
        await self.flush()
        heard = await self._hear(Heard(user_id, name, text, posted))
        if heard is None:
            return
        self.turns.heard(item_id, heard)
        self._waiting, self._waiting_item = heard.turn, item_id

    async def bot_said(self, text: str, *, interrupted: bool) -> None:
        await self._post(SPOKEN.format(text=_shown(text)))
        turn, self._waiting = self._waiting, None
        if turn is not None:
            spent = self._spent_on.pop(self._waiting_item, None)
            await self._answer(turn, text, interrupted, spent)

    async def spent(self, usage: Usage, *, item_id: str, author: int | None) -> None:
        heard = self.turns.get(item_id)
        earlier = self._spent_on.pop(item_id, None)
        self._spent_on[item_id] = usage if earlier is None else _sum(earlier, usage)
        while len(self._spent_on) > 16:
            self._spent_on.pop(next(iter(self._spent_on)))
        await self._spend(usage, heard.turn if heard is not None else None, author)

    async def flush(self) -> None:
        """Words still waiting for an answer are kept without one."""
        turn, self._waiting = self._waiting, None
        if turn is not None:
            spent = self._spent_on.pop(self._waiting_item, None)
            await self._answer(turn, NO_ANSWER, False, spent)


def _sum(one: Usage, other: Usage) -> Usage:
    return Usage(
        prompt_tokens=one.prompt_tokens + other.prompt_tokens,
        completion_tokens=one.completion_tokens + other.completion_tokens,
        cached_tokens=one.cached_tokens + other.cached_tokens,
        reasoning_tokens=one.reasoning_tokens + other.reasoning_tokens,
    )


# The budget that keeps a member's turn (None: nobody heard, the channel's only) from
# being answered, or None.
SpentFor = Callable[[int | None], Awaitable[SpentBudget | None]]
# When each member was told that a budget is spent, by (member, budget): until it renews.
Told = dict[tuple[int | None, str], datetime]


class ChatBudget:
    """`RealtimeBudget` for a voice channel: the budgets text messages are refused by.
    A member over one is not answered; the text chat gets the sentence a refused text
    message gets, naming the member, once per member and budget until that budget
    renews (`told` outlives a session, so `/voice listen` again does not repeat it)."""

    def __init__(
        self,
        spent_for: SpentFor,
        post: Callable[[str], Awaitable[int | None]],
        told: Told,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._spent_for = spent_for
        self._post = post
        self._told = told
        self._now = now

    async def allows(self, user_id: int | None) -> bool:
        spent = await self._spent_for(user_id)
        if spent is None:
            return True
        now = self._now()
        key = (user_id, spent.budget)
        if self._told.get(key, now) > now:
            return False  # told already in this period
        for old in [k for k, renews in self._told.items() if renews <= now]:
            del self._told[old]
        self._told[key] = spent.renews_at
        who = f"<@{user_id}> " if user_id is not None else ""
        await self._post(who + spent.sentence)
        return False

"""Cost and abuse limits: how often one person may ask, how many model calls run at once,
and how many tokens a person or a channel may spend in a day.

Each limit answers with one sentence the person can act on. The message rate and the
model-call gate live in this process's memory (several processes each apply them to
the traffic they take); the daily budgets are computed from the token counts stored
with the answers, so they hold across processes and restarts.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time

from cachetools import FIFOCache

from botservice.core.events import IncomingMessage
from botservice.core.ports import TokenUsage
from botservice.core.settings import LimitSettings

BUSY = "I'm busy, please try again in a minute."
# Verdicts remembered per message key, so a second delivery of one message (Slack sends
# most mentions twice) gets the first one's verdict and never counts twice.
_REMEMBERED_VERDICTS = 10_000
# Buckets of people who stopped writing are dropped once there are this many.
_MAX_BUCKETS = 100_000


@dataclass(frozen=True, slots=True)
class SpentBudget:
    """A budget that is spent: the sentence to tell the person, which budget it is
    (`"user:day:tokens"`, `"channel:month:cost"`, …) and when it renews, so a voice
    session can say it once per person and budget until then."""

    sentence: str
    budget: str
    renews_at: datetime


class GateFull(Exception):
    """Too many turns are already waiting for a model call."""


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class MessageRate:
    """A token bucket per person: `per_minute` messages at once, refilled evenly over a minute."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = float(per_minute)
        self._refill_per_second = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def take(self, platform: str, user_id: str) -> float:
        """Take one message's token. Returns 0 when taken, else the seconds until one is free."""
        now = self._clock()
        key = (platform, user_id)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._drop_full(now)
            bucket = self._buckets[key] = _Bucket(self._capacity, now)
        bucket.tokens = min(
            self._capacity, bucket.tokens + (now - bucket.updated) * self._refill_per_second
        )
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self._refill_per_second

    def _drop_full(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket.
        refill_time = 60.0
        for key in [k for k, b in self._buckets.items() if now - b.updated >= refill_time]:
            del self._buckets[key]


class ModelCallGate:
    """At most `max_concurrent` model calls at once; later ones wait, and at most
    `max_waiting` may wait (`slot` raises `GateFull` beyond that).

    Waiting turns go by `place` (the turn's number), then by arrival: a turn reads
    the database before it gets here, so under load a later turn may arrive first,
    and the model pacer behind the gate keeps the same order.
    """

    def __init__(self, max_concurrent: int, max_waiting: int) -> None:
        self._max_concurrent = max_concurrent
        self._max_waiting = max_waiting
        self._running = 0
        # (place, arrival, future), smallest first.
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def slot(self, *, place: int = 0) -> _Slot:
        """One model call's place: `async with gate.slot(place=...)`."""
        return _Slot(self, place)

    def _enter_free(self) -> bool:
        """Take a slot if one is free and nobody waits for it."""
        if self._running < self._max_concurrent and not self._waiting:
            self._running += 1
            return True
        return False

    async def _acquire(self, place: int) -> None:
        if self._enter_free():
            return
        if len(self._waiting) >= self._max_waiting:
            raise GateFull
        turn = asyncio.get_running_loop().create_future()
        entry = (place, next(self._arrivals), turn)
        heapq.heappush(self._waiting, entry)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release()  # the slot was handed over just as we were cancelled
            else:
                self._waiting.remove(entry)
                heapq.heapify(self._waiting)
            raise

    def _release(self) -> None:
        # The slot passes straight to the first waiter, so no newcomer overtakes it.
        while self._waiting:
            _, _, turn = heapq.heappop(self._waiting)
            if not turn.done():
                turn.set_result(None)
                return
        self._running -= 1


class _Slot:
    """`ModelCallGate.slot` as a plain class: every model call passes here, and
    `contextlib.asynccontextmanager` costs an async generator, its context manager
    and two more frames each time; a free slot is taken without a coroutine."""

    __slots__ = ("_gate", "_place")

    def __init__(self, gate: ModelCallGate, place: int) -> None:
        self._gate, self._place = gate, place

    async def __aenter__(self) -> None:
        if not self._gate._enter_free():
            await self._gate._acquire(self._place)

    async def __aexit__(self, *exc_info: object) -> None:
        self._gate._release()


class Limits:
    """The checks a new message passes before it is stored, and the model-call gate."""

    def __init__(
        self,
        settings: LimitSettings,
        usage: TokenUsage,
        *,
        admin_user_ids: Collection[str] = (),
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._usage = usage
        # Held to no daily budget while `quota_exempt_admins` is on, like the quotas.
        self._exempt = frozenset(admin_user_ids) if settings.quota_exempt_admins else frozenset()
        self._now = now
        self._rate = MessageRate(settings.messages_per_minute, clock=clock)
        self._verdicts: FIFOCache[tuple[str, str], str | None] = FIFOCache(_REMEMBERED_VERDICTS)
        self.gate = ModelCallGate(settings.max_concurrent_model_calls, settings.max_queued_turns)

    async def refusal(self, message: IncomingMessage) -> str | None:
        """The sentence to answer instead of taking the message, or None to take it."""
        key = (message.platform, message.message_key)
        if key in self._verdicts:
            return self._verdicts[key]
        verdict = self._rate_refusal(message) or await self._budget_refusal(message)
        self._verdicts[key] = verdict
        return verdict

    def _rate_refusal(self, message: IncomingMessage) -> str | None:
        per_minute = self._settings.messages_per_minute
        if per_minute <= 0 or message.from_operator:
            return None
        wait = self._rate.take(message.platform, message.user_id)
        if not wait:
            return None
        seconds = max(1, math.ceil(wait))
        return (
            f"You are sending messages faster than I can take them ({per_minute} a minute); "
            f"please wait {seconds} second{'' if seconds == 1 else 's'} and try again."
        )

    async def _budget_refusal(self, message: IncomingMessage) -> str | None:
        spent = await self.spent_budget(message)
        return spent.sentence if spent is not None else None

    async def spent_budget(
        self, message: IncomingMessage, *, person: bool = True
    ) -> SpentBudget | None:
        """The daily token budget of `message`'s author (unless `person` is False) or of
        its channel that is spent, or None."""
        user_budget = self._settings.user_daily_tokens if person else 0
        channel_budget = self._settings.channel_daily_tokens
        if not user_budget and not channel_budget:
            return None
        if message.from_operator or (person and message.user_id in self._exempt):
            return None
        # Budgets are per UTC day, so everyone knows when they renew.
        since = datetime.combine(self._now().astimezone(UTC).date(), clock_time(), UTC)
        renews_at = since + timedelta(days=1)
        if user_budget:
            used = await self._usage.tokens_used_by_user(
                message.platform, message.user_id, since=since
            )
            if used >= user_budget:
                return SpentBudget(
                    f"You have used your {user_budget:,} tokens for today; "
                    "the allowance renews at 00:00 UTC.",
                    "user:day:tokens",
                    renews_at,
                )
        if channel_budget:
            used = await self._usage.tokens_used_in_channel(
                message.platform, message.workspace, message.channel, since=since
            )
            if used >= channel_budget:
                return SpentBudget(
                    f"This channel has used its {channel_budget:,} tokens for today; "
                    "the allowance renews at 00:00 UTC.",
                    "channel:day:tokens",
                    renews_at,
                )
        return None

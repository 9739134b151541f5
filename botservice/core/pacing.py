"""Pacing model calls under each model's rate limits, so a burst waits instead of
meeting HTTP 429.

Per model, two sources of limits:

- what the endpoint says in its `x-ratelimit-*` headers (OpenAI, Azure, most
  proxies): requests and tokens left in the current window, and when the window
  is whole again; read from every response;
- `requests_per_minute` / `tokens_per_minute` under `[models."<name>"]` (or
  `[model_defaults]`): a sliding minute of what this process sent.

A call is admitted when every known limit has room for it (one request, and its
estimated tokens: the prompt plus the answer reserve, which is what OpenAI counts
against the token limit when a request arrives); otherwise it waits, in arrival
order, behind the others of the same model. Until the first response of a model
has said whether the endpoint sends limits, only a few calls go out and the rest
wait (briefly) for its headers: a cold burst of fifty must not all go out blind. An endpoint that
sends none (local servers) is not paced at all after that first answer.

The pacer counts only this process's calls; several processes sharing one key
learn of each other through the headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from botservice.core.ports import RateLimits
from botservice.core.settings import Settings

MINUTE = 60.0
# With limits known but no reset time (a window just reset, no answer yet), look again
# after this long, or as soon as an answer brings headers.
RECHECK_SECONDS = 1.0
# Before the first answer of a model has said whether the endpoint sends limits, at
# most this many calls go out (a cold burst of fifty must not all go blind), and a
# call waits at most this long for that answer (a slow first answer must not hold
# up the others long).
BLIND_CALLS = 4
BLIND_PATIENCE_SECONDS = 2.0


@dataclass(slots=True)
class _Window:
    """One limit as the endpoint reported it, with this process's sends since."""

    limit: int | None = None
    remaining: float = math.inf
    reset_at: float | None = None
    span: float = RECHECK_SECONDS  # the longest reset wait seen: about a window's length
    # Headers of calls up to this sequence number say nothing new: read already, or
    # sent before the window last reset (their counts belong to the old window, and
    # their reset time would re-arm one already past).
    seen: int = -1

    def room(self, now: float, last_sent: int) -> float:
        if self.reset_at is not None and now >= self.reset_at:
            # The endpoint's window is whole again.
            self.remaining = float(self.limit) if self.limit is not None else math.inf
            self.reset_at = None
            self.seen = max(self.seen, last_sent)
        return self.remaining


@dataclass(slots=True)
class _Model:
    requests: _Window = field(default_factory=_Window)
    tokens: _Window = field(default_factory=_Window)
    # Whether responses carry limits: None until the first answer says.
    headers: bool | None = None
    blind: int = 0  # calls out before anything was known
    # (sequence, tokens) of calls sent and not yet answered.
    in_flight: dict[int, int] = field(default_factory=dict)
    last_sent: int = -1  # sequence of the newest call sent
    sent: deque[tuple[float, int]] = field(default_factory=deque)  # config minute: (time, tokens)
    # Calls waiting, as (place, arrival): the lowest place goes first.
    waiting: list[tuple[int, int]] = field(default_factory=list)
    # Set (and replaced) whenever an answer brings headers or the head of the line
    # moves: waiters look again.
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def queue(self) -> int:
        return len(self.waiting)

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass(frozen=True, slots=True)
class Ticket:
    model: str
    sequence: int
    tokens: int


class ModelPacer:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._models: dict[str, _Model] = {}
        self._sequence = itertools.count()

    def expected_wait(self, model: str, tokens: int) -> float:
        """About how long a call arriving now would wait (for a status line)."""
        state = self._models.get(model)
        if state is None or (state.headers is False and not self._configured(model)):
            return 0.0
        wait = self._wait(model, state, tokens)
        info = self._settings.model_info(model)
        limit = state.requests.limit or info.requests_per_minute
        if not state.queue or not limit:
            return wait
        now = self._clock()
        room: float
        if self._configured(model):
            room, span = float(info.requests_per_minute - len(state.sent)), MINUTE
        else:
            room, span = state.requests.room(now, state.last_sent), state.requests.span
        if state.queue < room:
            return wait
        # The calls queued ahead use up what is left; each further window holds `limit`.
        until_reset = max(wait, RECHECK_SECONDS)
        return until_reset + ((state.queue - max(0, int(room))) // limit) * span

    async def admit(self, model: str, tokens: int, *, place: int = 0) -> Ticket:
        """Wait until the call fits every known limit of `model`. Waiting calls go in
        the order of `place` (the turn's number, so turns keep the order they were
        taken in even when they reach the pacer in another), then of arrival."""
        state = self._models.get(model)
        if state is None:
            state = self._models[model] = _Model()
        if state.headers is False and not self._configured(model) and not state.waiting:
            return self._send(model, state, tokens)  # an endpoint without limits
        me = (place, next(self._sequence))
        heapq.heappush(state.waiting, me)
        patience = self._clock() + BLIND_PATIENCE_SECONDS
        try:
            while True:
                wait: float | None = None
                if state.waiting[0] == me:
                    blind = state.headers is None
                    if blind and state.blind >= BLIND_CALLS and self._clock() < patience:
                        wait = patience - self._clock()  # or until an answer says more
                    else:
                        wait = self._wait(model, state, tokens)
                        if wait <= 0:
                            heapq.heappop(state.waiting)
                            state.blind += blind
                            state.wake()
                            return self._send(model, state, tokens)
                await self._until_changed(state, wait)
        finally:
            if me in state.waiting:  # cancelled while waiting
                state.waiting.remove(me)
                heapq.heapify(state.waiting)
                state.wake()

    def observe(self, ticket: Ticket, limits: RateLimits | None, *, answered: bool) -> None:
        """A call's response came (`answered`: its headers were read), or it failed
        before any response. Call once per ticket."""
        state = self._models[ticket.model]
        state.in_flight.pop(ticket.sequence, None)
        if state.blind and state.headers is None:
            state.blind -= 1
        if answered:
            if limits is not None and limits.known:
                state.headers = True
                self._read(state, ticket.sequence, limits)
            elif state.headers is None:
                state.headers = False
        state.wake()

    # --- internals -------------------------------------------------------------

    def _configured(self, model: str) -> bool:
        info = self._settings.model_info(model)
        return bool(info.requests_per_minute or info.tokens_per_minute)

    def _send(self, model: str, state: _Model, tokens: int) -> Ticket:
        sequence = next(self._sequence)
        state.last_sent = sequence
        state.in_flight[sequence] = tokens
        state.requests.remaining -= 1
        state.tokens.remaining -= tokens
        if self._configured(model):
            state.sent.append((self._clock(), tokens))
        return Ticket(model, sequence, tokens)

    def _read(self, state: _Model, sequence: int, limits: RateLimits) -> None:
        """Take the endpoint's counts, less the calls sent after this one (it could not
        count them yet)."""
        now = self._clock()
        later = [tokens for number, tokens in state.in_flight.items() if number > sequence]
        for window, limit, remaining, reset, spent in (
            (
                state.requests,
                limits.limit_requests,
                limits.remaining_requests,
                limits.reset_requests_seconds,
                len(later),
            ),
            (
                state.tokens,
                limits.limit_tokens,
                limits.remaining_tokens,
                limits.reset_tokens_seconds,
                sum(later),
            ),
        ):
            if remaining is None or sequence <= window.seen:
                continue
            same_window = window.reset_at is not None and now < window.reset_at
            window.seen = sequence
            window.limit = limit if limit is not None else window.limit
            # Calls reach the endpoint in another order than they were sent, so this
            # answer may not count an earlier call still in flight: within one window
            # what is left only ever shrinks, and the lower count stands.
            told = remaining - spent
            window.remaining = min(window.remaining, told) if same_window else told
            window.reset_at = now + reset if reset is not None else None
            window.span = max(window.span, reset or 0.0)

    def _wait(self, model: str, state: _Model, tokens: int) -> float:
        """Seconds until a call of `tokens` fits; 0 when it fits now."""
        now = self._clock()
        waits = [0.0]
        for window, need in ((state.requests, 1), (state.tokens, tokens)):
            if window.limit is not None and need > window.limit:
                need = window.limit  # one call larger than the limit: wait for a whole window
            if window.room(now, state.last_sent) < need:
                waits.append(
                    window.reset_at - now if window.reset_at is not None else RECHECK_SECONDS
                )
        info = self._settings.model_info(model)
        if info.requests_per_minute or info.tokens_per_minute:
            sent = state.sent
            while sent and sent[0][0] <= now - MINUTE:
                sent.popleft()
            if info.requests_per_minute and len(sent) >= info.requests_per_minute:
                waits.append(sent[-info.requests_per_minute][0] + MINUTE - now)
            if info.tokens_per_minute:
                budget = info.tokens_per_minute - min(tokens, info.tokens_per_minute)
                used = sum(spent for _, spent in sent)
                for at, spent in sent:
                    if used <= budget:
                        break
                    used -= spent
                    waits.append(at + MINUTE - now)
        return max(waits)

    @staticmethod
    async def _until_changed(state: _Model, seconds: float | None) -> None:
        """Sleep `seconds` (None: no limit), or less if an answer brings fresh headers
        or the line moves."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.changed.wait(), seconds)

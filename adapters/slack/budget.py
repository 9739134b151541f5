"""One `chat.update` budget per workspace, shared by every reply streaming there.

`chat.update` is Tier 3: about 50 calls a minute per workspace. Each reply asks
to edit about once a second, so ten replies at once would ask for 600 a minute
and collect 429s. The budget is a token bucket sized so that no 60-second
window holds more than `per_minute` edits. Intermediate edits take a token
only when enough are left for every open reply's final edit, and are skipped
otherwise (the next edit carries the whole text anyway); final edits wait for
a token, so they are never dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from botservice.core.telemetry import NO_TELEMETRY, Telemetry


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


@dataclass(slots=True)
class UpdateBudget:
    per_minute: float = 50.0
    burst: float = 15.0
    # A final edit waits at most this long; past it, it goes out anyway and
    # slack-sdk's retry handler honours Slack's Retry-After if it comes to that.
    max_wait_seconds: float = 5.0
    clock: Callable[[], float] = time.monotonic
    # Told how much of the budget is spent, and of every skipped edit.
    telemetry: Telemetry = NO_TELEMETRY
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _open: Counter[str] = field(default_factory=Counter)

    @property
    def _rate(self) -> float:
        # burst + rate * 60 <= per_minute: no minute ever exceeds the limit.
        return max(self.per_minute - self.burst, 1.0) / 60.0

    def _refill(self, workspace: str) -> _Bucket:
        now = self.clock()
        bucket = self._buckets.get(workspace)
        if bucket is None:
            bucket = self._buckets[workspace] = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self._rate)
            bucket.updated = now
        return bucket

    def opened(self, workspace: str) -> None:
        """A reply started streaming here; it will need one final edit."""
        self._open[workspace] += 1

    def closed(self, workspace: str) -> None:
        if self._open[workspace] > 0:
            self._open[workspace] -= 1

    def open_replies(self, workspace: str) -> int:
        return self._open[workspace]

    def try_take(self, workspace: str) -> bool:
        """Take a token for an intermediate edit; False means skip this edit."""
        bucket = self._refill(workspace)
        if bucket.tokens >= 1.0 + self._open[workspace]:
            bucket.tokens -= 1.0
            self._report(bucket)
            return True
        self.telemetry.edit_skipped("slack")
        self._report(bucket)
        return False

    async def take(self, workspace: str) -> None:
        """Take a token for a final edit, waiting for one if needed."""
        deadline = self.clock() + self.max_wait_seconds
        while True:
            bucket = self._refill(workspace)
            remaining = deadline - self.clock()
            if bucket.tokens >= 1.0 or remaining <= 0:
                bucket.tokens -= 1.0
                self._report(bucket)
                return
            await asyncio.sleep(min((1.0 - bucket.tokens) / self._rate, remaining) + 0.001)

    def _report(self, bucket: _Bucket) -> None:
        # The workspace that edited last stands for all: scanning every bucket on each
        # edit would cost more than the edit's bookkeeping.
        self.telemetry.edit_budget("slack", min(1.0, max(0.0, 1.0 - bucket.tokens / self.burst)))

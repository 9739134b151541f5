"""One `chat.update` budget per workspace, shared by every reply shown there.

`chat.update` is Tier 3: Slack allows at least 50 calls a minute per workspace and
welcomes sporadic bursts. The budget keeps the times of its own edits and never
lets more than `per_minute` of them fall into one window (a minute plus a second
of margin for the time a request spends on the wire), so it never asks for a 429.

Final texts come first. A reply that has a message on screen will need one final
edit; the budget counts those replies (`opened` / `closed`). An intermediate edit
is made only while the window leaves room for `headroom` edits plus every open
reply's final one; otherwise it is skipped (not queued: the next edit carries the
whole text anyway). A final edit needs only a free slot, so intermediate edits of
other replies never hold it up; it waits only when final edits alone have used
the whole minute. Slack's own 429 on an edit is the sink's business: that reply
alone waits out the Retry-After.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from botservice.core.telemetry import NO_TELEMETRY, Telemetry


@dataclass(slots=True)
class UpdateBudget:
    per_minute: int = 50
    # Slots of each window intermediate edits leave alone, beyond the open replies'
    # final edits: a burst of answers finishing at once still finds room.
    headroom: int = 15
    window_seconds: float = 61.0
    clock: Callable[[], float] = time.monotonic
    # Told how much of the budget is spent, and of every skipped edit.
    telemetry: Telemetry = NO_TELEMETRY
    _sent: dict[str, deque[float]] = field(default_factory=dict)
    _open: Counter[str] = field(default_factory=Counter)

    def _used(self, workspace: str) -> deque[float]:
        now = self.clock()
        sent = self._sent.setdefault(workspace, deque())
        while sent and now - sent[0] >= self.window_seconds:
            sent.popleft()
        return sent

    def opened(self, workspace: str) -> None:
        """A reply has a message on screen here; it will need one final edit."""
        self._open[workspace] += 1

    def closed(self, workspace: str) -> None:
        if self._open[workspace] > 0:
            self._open[workspace] -= 1

    def open_replies(self, workspace: str) -> int:
        return self._open[workspace]

    def used(self, workspace: str) -> int:
        """Edits made in the current window."""
        return len(self._used(workspace))

    def try_take(self, workspace: str) -> bool:
        """A slot for an intermediate edit; False means skip this edit."""
        sent = self._used(workspace)
        if len(sent) + 1 + self.headroom + self._open[workspace] > self.per_minute:
            self.telemetry.edit_skipped("slack")
            return False
        sent.append(self.clock())
        self._report(sent)
        return True

    async def take(self, workspace: str) -> None:
        """A slot for a final edit, waiting only if the window is full."""
        while True:
            sent = self._used(workspace)
            if len(sent) < self.per_minute:
                sent.append(self.clock())
                self._report(sent)
                return
            await asyncio.sleep(max(sent[0] + self.window_seconds - self.clock(), 0.0) + 0.001)

    def _report(self, sent: deque[float]) -> None:
        # The workspace that edited last stands for all: scanning every workspace on
        # each edit would cost more than the edit's bookkeeping.
        self.telemetry.edit_budget("slack", min(1.0, len(sent) / self.per_minute))


@dataclass(slots=True)
class _Window:
    """Times of the calls of one method in one workspace within the last window."""

    per_minute: int
    window_seconds: float
    times: deque[float] = field(default_factory=deque)

    def used(self, now: float) -> int:
        while self.times and now - self.times[0] >= self.window_seconds:
            self.times.popleft()
        return len(self.times)


@dataclass(slots=True)
class StreamBudget:
    """Slack's native streaming per workspace: `chat.startStream` and `chat.stopStream`
    are Tier 2 (20 a minute), `chat.appendStream` Tier 4 (100).

    A stream is started only while its stop is sure to fit in the window too
    (every open stream holds a stop slot); otherwise that answer is shown by post
    and edits. Appends, like intermediate edits, are skipped when none is left:
    the next one carries all the text not yet sent. A workspace where Slack
    refused streaming itself (an unknown method, a missing scope) is remembered
    and answered by post and edits from then on.
    """

    start_per_minute: int = 20
    append_per_minute: int = 100
    stop_per_minute: int = 20
    window_seconds: float = 61.0
    clock: Callable[[], float] = time.monotonic
    refused: set[str] = field(default_factory=set)
    _windows: dict[tuple[str, str], _Window] = field(default_factory=dict)
    _open: Counter[str] = field(default_factory=Counter)

    def _window(self, method: str, workspace: str) -> _Window:
        window = self._windows.get((method, workspace))
        if window is None:
            limit = {
                "start": self.start_per_minute,
                "append": self.append_per_minute,
                "stop": self.stop_per_minute,
            }[method]
            window = self._windows[(method, workspace)] = _Window(limit, self.window_seconds)
        return window

    def _room(self, method: str, workspace: str) -> int:
        window = self._window(method, workspace)
        return window.per_minute - window.used(self.clock())

    def _record(self, method: str, workspace: str) -> None:
        self._window(method, workspace).times.append(self.clock())

    def try_start(self, workspace: str) -> bool:
        if workspace in self.refused or self._room("start", workspace) < 1:
            return False
        if self._room("stop", workspace) < self._open[workspace] + 1:
            return False
        self._record("start", workspace)
        self._open[workspace] += 1
        return True

    def try_append(self, workspace: str) -> bool:
        if self._room("append", workspace) < 1:
            return False
        self._record("append", workspace)
        return True

    async def stop(self, workspace: str) -> None:
        """A slot for the stream's last call, held for it since it started."""
        while self._room("stop", workspace) < 1:
            window = self._window("stop", workspace)
            await asyncio.sleep(
                max(window.times[0] + window.window_seconds - self.clock(), 0.0) + 0.001
            )
        self._record("stop", workspace)

    def ended(self, workspace: str) -> None:
        """The stream is over (stopped, expired or given up): its stop slot is free."""
        if self._open[workspace] > 0:
            self._open[workspace] -= 1

    def refuse(self, workspace: str) -> None:
        self.refused.add(workspace)

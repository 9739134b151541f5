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


@dataclass(slots=True)
class UpdateBudget:
    per_minute: int = 50
    # Slots of each window intermediate edits leave alone, beyond the open replies'
    # final edits: a burst of answers finishing at once still finds room.
    headroom: int = 15
    window_seconds: float = 61.0
    clock: Callable[[], float] = time.monotonic
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
            return False
        sent.append(self.clock())
        return True

    async def take(self, workspace: str) -> None:
        """A slot for a final edit, waiting only if the window is full."""
        while True:
            sent = self._used(workspace)
            if len(sent) < self.per_minute:
                sent.append(self.clock())
                return
            await asyncio.sleep(max(sent[0] + self.window_seconds - self.clock(), 0.0) + 0.001)

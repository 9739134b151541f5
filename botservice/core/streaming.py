"""Throttled delivery of a growing answer to a reply sink."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from botservice.core.ports import ReplySink

log = logging.getLogger(__name__)


class ThrottledUpdates:
    """Sends the text so far to `sink.update`: the first text at once, then at most
    once per `interval` seconds, always the newest text.

    Each reply has its own throttle, so one slow reply never delays another.
    Updates run in a task of their own so that reading the model's stream never
    waits on the platform's API; `close` makes sure no update lands after the
    final text.
    """

    def __init__(
        self,
        sink: ReplySink,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._interval = interval
        self._clock = clock
        self._parts: list[str] = []
        self._last_sent_at = float("-inf")
        self._pending: asyncio.Task[None] | None = None
        self._sending = False
        self.updates_sent = 0

    def offer(self, parts: list[str]) -> None:
        """Note that the text, `parts` joined, has grown; schedule an update unless one
        is already waiting. The pieces are joined when an update is sent: joining them
        for every delta would cost a long answer's length squared."""
        self._parts = parts
        if self._pending is None or self._pending.done():
            delay = max(0.0, self._last_sent_at + self._interval - self._clock())
            self._pending = asyncio.create_task(self._send_after(delay))

    async def close(self) -> None:
        """Drop a waiting update; let one that is already on the wire finish."""
        pending, self._pending = self._pending, None
        if pending is None or pending.done():
            return
        if self._sending:
            await asyncio.wait([pending])
        else:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)

    async def _send_after(self, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        self._sending = True
        self._last_sent_at = self._clock()
        try:
            await self._sink.update("".join(self._parts))
            self.updates_sent += 1
        except Exception:
            # A failed edit is not worth the answer: the final text still comes.
            log.warning(
                "a streaming update failed; the final text will still be sent", exc_info=True
            )
        finally:
            self._sending = False

"""Acknowledging platforms on a thread of their own: the accept loop.

Slack waits at most three seconds for the answer to an HTTP event and delivers
it again after that. On the process's main event loop an acknowledgement waits
behind everything else ready to run there: answers being streamed, claims,
heartbeats. With several processes sharing two cores, that wait was most of an
acknowledgement's time (issue 8). So `botservice run` on PostgreSQL, with
`[http] accept_thread = true`, serves HTTP from a second event loop on a thread
of its own, and an event goes like this:

1. On the accept loop: the request is read and verified, the message is
   deduplicated and stored in its one accept transaction (the store keeps
   connections of its own for every loop it is used from), and Slack gets its
   200. Requests that are not new messages (commands, clicks, installs) are
   handed to the main loop whole and their answer handed back.
2. The accepted turn is handed to the main loop with `call_soon_threadsafe`
   (`ConversationCore.submit` does it when it runs off its own loop); the main
   loop claims and answers it as before. Nothing else crosses the threads.

Both loops run Python under one GIL, so the accept thread still shares the CPU
with the answers; what it no longer does is wait for a loop iteration full of
other work. A thread that wants the GIL gets it when the holder has run for the
switch interval; at CPython's default 5 ms, an acknowledgement (a dozen hand-overs:
socket reads, database round trips) waited for the main loop almost as before
(measured: the accept loop's 20 ms sleeps woke 166 ms late, median, under load), so
starting the accept loop sets it to 1 ms (`SWITCH_INTERVAL_SECONDS`). SQLite, the
one-process store, keeps everything on the main loop.
At shutdown the main loop finishes its answers while the accept loop still
takes messages (stored, answered after the restart), then the HTTP server
stops, the accept loop closes what it opened and its thread ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar, runtime_checkable

log = logging.getLogger(__name__)

T = TypeVar("T")

THREAD_NAME = "botservice-accept"
SWITCH_INTERVAL_SECONDS = 0.001


class AcceptLoop:
    """A second event loop on its own thread, next to the main (home) loop.

    Create it on the home loop; `start` it, run coroutines there with `run`, and
    from there reach back with `on_home`. `stop` runs the closers registered with
    `on_stop` on the accept loop, then ends the thread."""

    def __init__(self) -> None:
        self.home = asyncio.get_running_loop()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=THREAD_NAME, daemon=True)
        self._closers: list[Callable[[], Awaitable[None]]] = []

    def start(self) -> None:
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_SECONDS))
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def is_current(self) -> bool:
        """True on the accept loop's thread."""
        return threading.current_thread() is self._thread

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the accept loop; await it from the home loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    async def on_home(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the home loop; await it from the accept loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.home))

    def on_stop(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Close something the accept loop opened (connections, sessions), on that loop,
        when it stops; the last registered closes first."""
        self._closers.append(closer)

    async def stop(self) -> None:
        """Close what the accept loop opened, then end its thread (from the home loop)."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            await self.run(self._close_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        await asyncio.to_thread(self._thread.join, 10)

    async def _close_all(self) -> None:
        for closer in reversed(self._closers):
            try:
                await closer()
            except Exception:
                log.exception("closing something of the accept loop failed")
        self._closers.clear()


@runtime_checkable
class AcceptsOnOwnLoop(Protocol):
    """An adapter whose HTTP routes can acknowledge on the accept loop."""

    def accept_on(self, accept_loop: AcceptLoop) -> bool:
        """Prepare to serve this adapter's HTTP routes on `accept_loop` (called on the
        home loop before the HTTP server starts). False: it cannot (its routes are then
        run on the home loop)."""
        ...

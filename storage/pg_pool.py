"""A pool of asyncpg connections that hands out the most recently used one first and
grows one connection at a time, only while statements wait.

asyncpg's own pool queues its connection slots first in, first out: every slot is used
in turn, so a process soon holds as many connections as the pool may open (16 for
the hot path, 12 for accepting) however few it keeps busy, and each statement lands
on whichever backend was idle longest. It also opens a connection whenever none is
idle, though one statement takes a millisecond or two and opening a connection costs
both sides several (the database starts a process; this side authenticates and
prepares its statements again). Three bot processes held about 80 connections and a
burst of messages opened dozens.

Here the newest idle connection is taken first, so the same few backends serve nearly
every statement (their caches and this side's prepared statements warm). With none
idle, the statement waits for the first connection to come back; only when statements
have waited `grow_after` is one more connection opened beside them (whichever is
ready first serves the first of them), and the next one only if statements still wait
when it is open. Connections idle for `idle_seconds` are closed.

No reset between uses: the hot path runs single statements outside transactions, so
a connection comes back as it went out. One that may not have (its user was
cancelled mid-statement, or it is in a transaction or closed) is dropped, not reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator

import asyncpg

log = logging.getLogger(__name__)

# How long a statement waits for a connection to come back before the pool opens one
# more: several statements' time (each a millisecond or two), well under what opening
# a connection costs on a busy machine (tens of milliseconds seen here).
GROW_AFTER_SECONDS = 0.01


class NewestFirstPool:
    """Up to `max_size` connections to `dsn`, opened as waiting statements need them,
    the newest idle one first."""

    def __init__(
        self,
        dsn: str,
        *,
        max_size: int,
        connect_timeout: float,
        idle_seconds: float,
        grow_after: float = GROW_AFTER_SECONDS,
    ) -> None:
        self._dsn = dsn
        self._grow_after = grow_after
        self._max_size = max_size
        self._connect_timeout = connect_timeout
        self._idle_seconds = idle_seconds
        # Idle connections with when each came back, oldest first: taken from the end.
        self._idle: deque[tuple[asyncpg.Connection, float]] = deque()
        # Statements waiting for a connection, first come first served.
        self._waiters: deque[asyncio.Future[asyncpg.Connection]] = deque()
        self._size = 0  # open or being opened, idle or in use
        self._opening: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._expiry: asyncio.TimerHandle | None = None
        self._growth: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        connection = await self._take()
        try:
            yield connection
        except BaseException as error:
            # Cancelled mid-statement, the connection may still be running it.
            self._give_back(connection, reusable=isinstance(error, Exception))
            raise
        self._give_back(connection, reusable=True)

    async def open(self, count: int) -> None:
        """Open up to `count` connections now (as many as the pool may), idle for the
        statements to come, so the first of them do not wait for one to open."""
        wanted = min(count, self._max_size - self._size)
        self._size += wanted
        opened = await asyncio.gather(
            *(self._connect() for _ in range(wanted)), return_exceptions=True
        )
        for outcome in opened:
            if isinstance(outcome, asyncpg.Connection):
                self._give_back(outcome, reusable=True)
            else:
                self._size -= 1
                log.debug("could not open a connection ahead (%s)", outcome)

    async def _take(self) -> asyncpg.Connection:
        if self._closed:
            raise asyncpg.InterfaceError("the pool is closed")
        self._expire_idle()
        while self._idle:
            connection = self._idle.pop()[0]
            if not connection.is_closed():
                return connection
            self._size -= 1  # the server closed it while idle
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[asyncpg.Connection] = loop.create_future()
        self._waiters.append(waiter)
        if self._size == 0:
            self._grow()  # nothing to wait for
        elif self._growth is None:
            self._growth = loop.call_later(self._grow_after, self._grow_if_still_waiting)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed a connection as this statement was cancelled: pass it on.
                self._give_back(waiter.result(), reusable=True)
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def _grow_if_still_waiting(self) -> None:
        self._growth = None
        if not self._closed:
            self._grow()

    def _grow(self) -> None:
        """Open one more connection, if statements wait and the pool may."""
        if self._opening is None and self._waiters and self._size < self._max_size:
            self._size += 1
            self._opening = asyncio.get_running_loop().create_task(self._open_one())

    async def _open_one(self) -> None:
        try:
            connection = await self._connect()
        except Exception as error:
            self._size -= 1
            self._opening = None
            # The first waiting statement learns why (the database may be down); the
            # others wait on, for a connection coming back or the next attempt.
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(error)
                    break
            self._grow()
            return
        self._opening = None
        self._give_back(connection, reusable=True)
        self._grow()

    async def _connect(self) -> asyncpg.Connection:
        connection: asyncpg.Connection = await asyncpg.connect(
            self._dsn, timeout=self._connect_timeout
        )
        return connection

    def _give_back(self, connection: asyncpg.Connection, *, reusable: bool) -> None:
        if not reusable or self._closed or connection.is_closed() or connection.is_in_transaction():
            self._drop(connection)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append((connection, time.monotonic()))
        self._expire_idle()
        if self._expiry is None:
            self._expiry = asyncio.get_running_loop().call_later(
                self._idle_seconds, self._expire_later
            )

    def _expire_idle(self) -> None:
        # The oldest idle connections, unused that long, are more than any moment since
        # has needed: close them.
        now = time.monotonic()
        while self._idle and now - self._idle[0][1] > self._idle_seconds:
            self._drop(self._idle.popleft()[0])

    def _expire_later(self) -> None:
        self._expiry = None
        if not self._closed:
            self._expire_idle()
            if self._idle:
                self._expiry = asyncio.get_running_loop().call_later(
                    self._idle_seconds, self._expire_later
                )

    def _drop(self, connection: asyncpg.Connection) -> None:
        self._size -= 1
        if not connection.is_closed():
            if self._closed or connection.is_in_transaction():
                connection.terminate()
            else:
                closing = asyncio.get_running_loop().create_task(self._close(connection))
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
        if not self._closed:
            self._grow()  # its place may serve a waiting statement

    async def _close(self, connection: asyncpg.Connection) -> None:
        try:
            await connection.close(timeout=self._connect_timeout)
        except Exception:
            connection.terminate()

    def _stop(self) -> list[asyncpg.Connection]:
        """Closed from now on: fail the waiting statements; the idle connections."""
        self._closed = True
        for timer in (self._expiry, self._growth):
            if timer is not None:
                timer.cancel()
        if self._opening is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed
                self._opening.cancel()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(asyncpg.InterfaceError("the pool is closed"))
        self._waiters.clear()
        idle = [connection for connection, _ in self._idle]
        self._idle.clear()
        self._size -= len(idle)
        return idle

    async def close(self) -> None:
        """Close the idle connections now and the others as they come back."""
        idle = self._stop()
        await asyncio.gather(*(self._close(connection) for connection in idle), *self._closing)

    def terminate(self) -> None:
        """Close every idle connection at once, without waiting (its loop may be gone)."""
        for connection in self._stop():
            connection.terminate()

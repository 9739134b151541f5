"""Whole SQLite transactions on worker threads, one round trip each.

aiosqlite sends every cursor, execute, fetch and close to its thread and back:
about twenty round trips for one small transaction, each costing a loop
wake-up. `SqliteWorker` instead runs a whole unit of work, a plain function of
a SQLAlchemy `Connection`, on a thread with its own sqlite3 connection.

Writes share one thread, so this process never has two writers fighting over
SQLite's lock; each begins with BEGIN IMMEDIATE so a write lock held by another
process is waited for (busy_timeout) before anything is read. Reads run on
their own threads beside it (WAL mode) without an explicit transaction.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy import Connection, Engine

T = TypeVar("T")


class SqliteWorker:
    def __init__(self, engine: Engine, *, readers: int = 2) -> None:
        # `engine` must leave transactions to us: sqlite3 in autocommit mode
        # (isolation_level None) and no "begin" listener (see botservice.storage.engine).
        self._engine = engine
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="botservice-db-write")
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="botservice-db-read")
        self._local = threading.local()
        self._connections: list[Connection] = []
        self._connections_lock = threading.Lock()

    async def write(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in one write transaction; roll back if it raises."""

        def in_thread() -> T:
            connection = self._connection()
            try:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
                result = work(connection)
                connection.commit()
                return result
            except BaseException:
                connection.rollback()
                raise

        return await asyncio.get_running_loop().run_in_executor(self._writer, in_thread)

    async def read(self, work: Callable[[Connection], T]) -> T:
        """Run `work`, which only reads; each statement sees its own snapshot."""

        def in_thread() -> T:
            connection = self._connection()
            try:
                return work(connection)
            finally:
                # Ends SQLAlchemy's bookkeeping transaction; SQLite has none open.
                connection.rollback()

        return await asyncio.get_running_loop().run_in_executor(self._readers, in_thread)

    async def aclose(self) -> None:
        for executor in (self._writer, self._readers):
            await asyncio.to_thread(executor.shutdown, wait=True)
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
        self._engine.dispose()

    def _connection(self) -> Connection:
        # Each worker thread keeps one connection: no pool check-out per call.
        connection: Connection | None = getattr(self._local, "connection", None)
        if connection is None or connection.closed or connection.invalidated:
            connection = self._engine.connect()
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

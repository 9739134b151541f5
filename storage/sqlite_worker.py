"""Whole SQLite transactions on worker threads, one round trip each.

aiosqlite sends every cursor, execute, fetch and close to its thread and back:
about twenty round trips for one small transaction, each costing a loop
wake-up. `SqliteWorker` instead runs a whole unit of work, a plain function of
a SQLAlchemy `Connection` (or of a sqlite3 one: the hot path's), on a thread with
its own connections.

The sqlite3 side imports no SQLAlchemy: a start on a SQLite file answers its first
message before SQLAlchemy is imported (botservice.storage.sqlite_file), and the
SQLAlchemy engine is built on the first SQLAlchemy work.

Writes share one thread, so this process never has two writers fighting over
SQLite's lock; each begins with BEGIN IMMEDIATE so a write lock held by another
process is waited for (busy_timeout) before anything is read. Reads run on
their own threads beside it (WAL mode) without an explicit transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from botservice.storage.sqlite_hot import SqliteHotPath

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

T = TypeVar("T")
log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000


def connect_raw(path: str) -> sqlite3.Connection:
    """A sqlite3 connection set up as the engine's are (botservice.storage.engine):
    transactions left to the caller, waiting up to busy_timeout for a lock."""
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in (
        f"busy_timeout = {BUSY_TIMEOUT_MS}",
        "foreign_keys = ON",
        "journal_mode = WAL",
        "synchronous = NORMAL",
    ):
        connection.execute(f"PRAGMA {pragma}").fetchall()
    return connection


class SqliteWorker:
    def __init__(self, path: str, engine: Callable[[], Engine], *, readers: int = 2) -> None:
        # `engine()` builds the SQLAlchemy engine on the first SQLAlchemy work. It must
        # leave transactions to us: sqlite3 in autocommit mode (isolation_level None)
        # and no "begin" listener (see botservice.storage.engine).
        self._path = path
        self._build_engine = engine
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="botservice-db-write")
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="botservice-db-read")
        self._local = threading.local()
        self._connections: list[Connection] = []
        self._raw_connections: list[sqlite3.Connection] = []
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

    async def write_raw(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` on the writing thread's sqlite3 connection, in one BEGIN IMMEDIATE
        transaction that waits for the write lock (busy_timeout): the hot path's way
        (botservice.storage.sqlite_hot) when its own connection found the lock taken."""

        def in_thread() -> T:
            raw = self._raw_connection()
            raw.execute("BEGIN IMMEDIATE")
            try:
                result = work(raw)
                raw.execute("COMMIT")
                return result
            except BaseException:
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
                raise

        return await asyncio.get_running_loop().run_in_executor(self._writer, in_thread)

    def checkpoint_soon(self, done: Callable[[], None]) -> None:
        """Copy the write-ahead log into the database file on the writing thread, without
        waiting, then call `done()` there: the hot path's connection never checkpoints
        (its commits would pay for the fsync on the event loop).

        TRUNCATE, not PASSIVE: the log starts afresh only when a write begins after a
        checkpoint that copied all of it, which a passive checkpoint beside a loop that
        keeps writing almost never achieves (the log grew to hundreds of megabytes).
        TRUNCATE holds new writers off until it is done and empties the file; the
        loop's writes meanwhile find the lock taken and queue here, behind it, and
        the loop itself never waits."""

        def in_thread() -> None:
            try:
                self._raw_connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as error:  # the next one will do
                log.debug("WAL checkpoint skipped (%s)", error)
            finally:
                done()

        with contextlib.suppress(RuntimeError):  # closing: the executor is shut down
            self._writer.submit(in_thread)

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
            raw_connections, self._raw_connections = self._raw_connections, []
        for connection in connections:
            connection.close()
        for raw in raw_connections:
            raw.close()
        if self._engine is not None:
            self._engine.dispose()

    def _connection(self) -> Connection:
        # Each worker thread keeps one connection: no pool check-out per call.
        connection: Connection | None = getattr(self._local, "connection", None)
        if connection is None or connection.closed or connection.invalidated:
            with self._engine_lock:
                if self._engine is None:
                    self._engine = self._build_engine()
            connection = self._engine.connect()
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def _raw_connection(self) -> sqlite3.Connection:
        """The thread's plain sqlite3 connection (the hot path's work, checkpoints):
        beside its SQLAlchemy one, used in turn on the same thread, never both in one
        transaction."""
        raw: sqlite3.Connection | None = getattr(self._local, "raw", None)
        if raw is None:
            raw = connect_raw(self._path)
            self._local.raw = raw
            with self._connections_lock:
                self._raw_connections.append(raw)
        return raw


@dataclass(frozen=True, slots=True)
class SqliteFileParts:
    """What a store on a SQLite file runs its work on: the worker threads and the hot
    path on the event loop, which falls back to the worker's writing thread."""

    worker: SqliteWorker
    hot: SqliteHotPath

    @classmethod
    def open(cls, path: str, engine: Callable[[], Engine]) -> SqliteFileParts:
        worker = SqliteWorker(path, engine)
        hot = SqliteHotPath(path, on_thread=worker.write_raw, checkpoint=worker.checkpoint_soon)
        return cls(worker, hot)

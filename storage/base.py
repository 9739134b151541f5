"""The machinery every part of `SqlStore` shares: how work runs on the database.

Every operation is one plain function of a SQLAlchemy `Connection` run as one
transaction: on a SQLite file by `SqliteWorker` (worker threads, one round trip
per transaction); on PostgreSQL, or SQLite in memory, through the async engine
with `AsyncConnection.run_sync`. A turn's own statements are the exception: they
run through the drivers directly (`sqlite_hot` on the event loop, `postgres_hot` on
asyncpg), which `StoreBase` builds here beside the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Self, TypeVar, get_args

from sqlalchemy import (
    Connection,
    String,
    bindparam,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from botservice.core.errors import StoreUnavailable
from botservice.core.events import ConversationKey
from botservice.core.ports import (
    ChannelSettings,
    SettingField,
    StoredMessage,
)
from botservice.storage import hot_rows
from botservice.storage.engine import (
    CONNECT_TIMEOUT_SECONDS,
    SQLITE_SINGLE_READ_OPTION,
    SQLITE_WRITE_OPTION,
    check_connection,
    create_engine,
    is_sqlite,
    sibling_engine,
    sqlite_file,
    sqlite_thread_engine,
)
from botservice.storage.migrate import upgrade
from botservice.storage.postgres_hot import PostgresHotPath
from botservice.storage.sqlite_hot import SqliteHotPath
from botservice.storage.sqlite_worker import SqliteFileParts
from botservice.storage.tables import (
    CHANNEL_SETTINGS,
    CONVERSATIONS,
    MESSAGES,
    SETTING_CHANGES,
    TURNS,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
_SETTING_FIELDS: tuple[SettingField, ...] = get_args(SettingField)
MESSAGE_CACHE_SIZE = 20_000
# Messages held in conversations' last windows (`_MessageCache.keep_window`).
KEPT_WINDOW_MESSAGES = 20_000
ACCEPT_POOL_SIZE = 12
# Connections of a store on a loop other than its home (the accept loop).
AWAY_POOL_SIZE = ACCEPT_POOL_SIZE

_c = CONVERSATIONS.c
_m = MESSAGES.c
_t = TURNS.c
_s = CHANNEL_SETTINGS.c
_a = SETTING_CHANGES.c

# Columns of a StoredMessage, in the order _stored_message reads them.
_MESSAGE_COLUMNS = (
    _m.id,
    _m.role,
    _m.author_id,
    _m.author_name,
    _m.text,
    _m.tokens,
    _m.reply_to_id,
    _m.status,
    _m.created_at,
)

_UNFINISHED = ("pending", "running")
_PENDING = literal_column("'pending'", String())
_RUNNING = literal_column("'running'", String())
_CONVERSATION_ID = select(_c.id).where(
    _c.platform == bindparam("platform"),
    _c.workspace == bindparam("workspace"),
    _c.channel == bindparam("channel"),
    _c.thread == bindparam("thread"),
)
_INSERT_MESSAGE = MESSAGES.insert().returning(_m.id)
_PING = text("SELECT 1")


def _stored_message(row: Any) -> StoredMessage:
    return StoredMessage(
        id=row[0],
        role=row[1],
        author_id=row[2],
        author_name=row[3],
        text=row[4],
        tokens=row[5],
        reply_to_id=row[6],
        status=row[7],
        created_at=row[8],
    )


class _MessageCache:
    """Recently read messages by id, shared by the read threads.

    A stored message changes only once, when the audio it came with is heard
    (`heard` drops it from here), before any history includes it; its id is
    never handed out again, so a cached copy is never wrong. History asks the
    database which ids belong in the window and builds objects only for ids it
    has not seen. A deleted message is simply never asked for again; deletions
    in this process also empty the cache so no forgotten text lingers in memory.

    It also keeps each conversation's last window as built (PostgreSQL's history,
    `window_from`): emptied with the cache, so those hold no forgotten text either.
    """

    def __init__(self, capacity: int) -> None:
        # Oldest insertions go first. An OrderedDict (its lookups are a dict's, in C),
        # not a cachetools cache: a 200-message window is looked up every turn, and the
        # cache's Python-level lookups took 29 us of it.
        self._capacity = capacity
        self._messages: OrderedDict[int, StoredMessage] = OrderedDict()
        self._lock = threading.Lock()
        # Conversations' last windows, least recently kept first, and their messages.
        self._windows: OrderedDict[int, _KeptWindow] = OrderedDict()
        self._window_messages = 0
        # Moves on whenever a message may have changed or been forgotten: a window
        # built from the cache before then is not kept.
        self.generation = 0
        # Called then too: readers that keep messages between turns let go of them.
        self.listeners: list[Callable[[], None]] = []

    def get_many(self, ids: list[int]) -> dict[int, StoredMessage]:
        with self._lock:
            messages = self._messages
            return {id_: messages[id_] for id_ in ids if id_ in messages}

    def add(self, messages: list[StoredMessage]) -> None:
        with self._lock:
            kept = self._messages
            for message in messages:
                kept[message.id] = message
                # Stored again, it counts as new (last to go), as in a FIFO cache.
                kept.move_to_end(message.id)
            while len(kept) > self._capacity:
                kept.popitem(last=False)

    def discard(self, message_id: int) -> None:
        with self._lock:
            self._messages.pop(message_id, None)
            self._forget_windows()
        self._tell_listeners()

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()
            self._forget_windows()
        self._tell_listeners()

    def _tell_listeners(self) -> None:
        for listener in self.listeners:
            listener()

    def _forget_windows(self) -> None:
        self.generation += 1
        self._windows.clear()
        self._window_messages = 0

    def window_from(self, conversation_id: int, ids: list[int]) -> list[StoredMessage] | None:
        """The window of `ids` (as the database just gave them, in the window's order)
        built from the conversation's last kept one where the two overlap: a long
        thread's window moves by a question and its answer a turn, and looking all 200
        of its messages up again (scattered among 20,000) took a tenth of a millisecond.
        Only the ids past the overlap are looked up. None when the last window does not
        lead into this one."""
        with self._lock:
            kept = self._windows.get(conversation_id)
        if kept is None or not ids:
            return None
        try:
            start = kept.ids.index(ids[0])
        except ValueError:
            return None
        overlap = len(kept.ids) - start
        if ids[:overlap] != kept.ids[start:]:
            return None
        newer = self.get_many(ids[overlap:])
        if len(newer) != len(ids) - overlap:
            return None
        return kept.messages[start:] + [newer[id_] for id_ in ids[overlap:]]

    def keep_window(
        self, conversation_id: int, ids: list[int], messages: list[StoredMessage], generation: int
    ) -> None:
        """Keep the window built for `ids` from the cache as it was at `generation` (read
        before building it): built across a change, or missing a message deleted
        meanwhile, it is dropped instead."""
        # Copies: the lists handed out are their callers' own.
        window = _KeptWindow(list(ids), list(messages))
        with self._lock:
            old = self._windows.pop(conversation_id, None)
            if old is not None:
                self._window_messages -= len(old.ids)
            if generation != self.generation or len(messages) != len(ids):
                return
            self._windows[conversation_id] = window
            self._window_messages += len(ids)
            while self._window_messages > KEPT_WINDOW_MESSAGES and len(self._windows) > 1:
                _, dropped = self._windows.popitem(last=False)
                self._window_messages -= len(dropped.ids)


@dataclass(slots=True)
class _KeptWindow:
    """A conversation's last history window: its ids as the database gave them, and
    the messages built for them."""

    ids: list[int]
    messages: list[StoredMessage]


_clean_text = hot_rows.clean_text


class StoreBase:
    """What every part of `SqlStore` runs on: the engine, its connections, the caches.

    Build it with `await SqlStore.open(database_url)` (checks the connection,
    applies migrations) or `SqlStore(create_engine(url))` over a migrated
    database. Close it with `aclose()`.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        owns_engine: bool = True,
        concurrency: int | None = None,
        sqlite_parts: SqliteFileParts | None = None,
    ) -> None:
        """`concurrency`: how many turns may use the database at once (the hot path's
        PostgreSQL pool); the engine's pool size when not given. `sqlite_parts`: the
        worker and hot path of a SQLite file, when they were opened before this store
        (botservice.storage.sqlite_file); the store owns them from here on."""
        self._engine = engine
        self._owns_engine = owns_engine
        self._claimed_by = f"{socket.gethostname()}:{os.getpid()}"
        self._message_cache = _MessageCache(MESSAGE_CACHE_SIZE)
        sqlite_database = is_sqlite(engine)
        self._shared = not sqlite_database
        # Every turn reads its channel's settings; they change only through this
        # store, so with SQLite (one process) they are kept in memory and dropped
        # on every change. With a shared database another process may change them.
        self._settings_cache: dict[tuple[str, str, str], ChannelSettings] = {}
        self._insert: Callable[..., Any] = sqlite.insert if sqlite_database else postgresql.insert

        write_options = {SQLITE_WRITE_OPTION: True}
        read_options: dict[str, Any] = {SQLITE_SINGLE_READ_OPTION: True}
        if not sqlite_database:
            # A read, or a write of one statement, is atomic on its own: no BEGIN and
            # COMMIT/ROLLBACK round trips around it.
            read_options = {"isolation_level": "AUTOCOMMIT"}
        self._async_writer = engine.execution_options(**write_options)
        self._async_reader = engine.execution_options(**read_options)
        # SQLite has one writer at a time; queueing here is cheaper than SQLite's
        # busy-wait sleeps when two connections of this process collide. An
        # in-memory database is a single shared connection: reads queue too.
        self._async_write_lock: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if sqlite_database else contextlib.nullcontext()
        )
        self._async_read_lock: contextlib.AbstractAsyncContextManager[Any] = (
            self._async_write_lock if sqlite_database else contextlib.nullcontext()
        )
        # PostgreSQL: the turn's statements through asyncpg, in pools of their own. The
        # platform waits for `accept` before it gets its acknowledgement (Slack
        # redelivers after 3 s): accepting has a few connections of its own, so it
        # never queues behind the statements of answers being written.
        self._pg_hot = (
            None
            if sqlite_database
            else PostgresHotPath(
                engine.url.set(drivername="postgresql").render_as_string(hide_password=False),
                pool_size=concurrency or _pool_size(engine),
                accept_pool_size=ACCEPT_POOL_SIZE,
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                messages=self._message_cache,
                home=_running_loop(),
            )
        )
        # asyncpg connections belong to the event loop that opened them. The loop the
        # store is first used on (the main one) has the engines above; another loop
        # (botservice.core.accept_loop) gets a small engine of its own (PostgreSQL).
        self._home_loop: asyncio.AbstractEventLoop | None = _running_loop()
        self._elsewhere: dict[asyncio.AbstractEventLoop, AsyncEngine] = {}
        self._elsewhere_autocommit: dict[asyncio.AbstractEventLoop, AsyncEngine] = {}
        # A SQLite file: the turn's statements run on the event loop (sqlite_hot), the
        # worker taking over when another connection holds the write lock.
        path = sqlite_file(engine)
        if sqlite_parts is None and path is not None:
            sqlite_parts = SqliteFileParts.open(path, lambda: sqlite_thread_engine(engine))
        self._worker = sqlite_parts.worker if sqlite_parts is not None else None
        self._sqlite_hot: SqliteHotPath | None = (
            sqlite_parts.hot if sqlite_parts is not None else None
        )
        if self._sqlite_hot is not None:
            self._message_cache.listeners.append(self._sqlite_hot.forget)
        # The driver-level path the turn's statements take (SQLite in memory has none:
        # it runs them through SQLAlchemy on its one connection).
        self._hot: SqliteHotPath | PostgresHotPath | None = self._sqlite_hot or self._pg_hot

    @classmethod
    async def open(
        cls, database_url: str, *, migrate: bool = True, concurrency: int | None = None
    ) -> Self:
        """Connect (ConfigError if unreachable) and migrate to head unless told not to."""
        engine = create_engine(database_url)
        try:
            await check_connection(engine)
            if migrate:
                await upgrade(engine)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine, concurrency=concurrency)

    @property
    def pool_size(self) -> int:
        """Connections the turns of the home loop share (1: SQLite's loop connection)."""
        return self._pg_hot.pool_size if self._pg_hot is not None else 1

    @property
    def shared(self) -> bool:
        # SQLite is the one-process store; PostgreSQL is the shared one (README).
        return self._shared

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    def on_forgetting(self, listener: Callable[[], None]) -> None:
        self._message_cache.listeners.append(listener)

    async def aclose(self) -> None:
        if self._pg_hot is not None:
            await self._pg_hot.aclose()
        if self._sqlite_hot is not None:
            self._sqlite_hot.close()
        if self._worker is not None:
            await self._worker.aclose()
        if self._owns_engine:
            await self._engine.dispose()

    async def open_accept_connections(self) -> None:
        """Open the connections that accept messages on the running loop now
        (PostgreSQL; nothing on SQLite). Opened on demand, each one's connect and
        set-up fell inside an acknowledgement: 0.1-0.8 s on a busy machine, one
        acknowledgement in twenty in the scale-out benchmark."""
        if self._pg_hot is not None:
            await self._pg_hot.open_accept_connections()

    async def leave_loop(self) -> None:
        """Close the connections this store opened for the running loop, when it is not
        the store's home loop (called by the accept loop as it stops)."""
        if self._pg_hot is not None:
            await self._pg_hot.leave_loop()
        loop = asyncio.get_running_loop()
        self._elsewhere_autocommit.pop(loop, None)
        engine = self._elsewhere.pop(loop, None)
        if engine is not None:
            await engine.dispose()

    def _away_writer(self) -> AsyncEngine | None:
        """The running loop's own engine (transactions: `begin()` sends BEGIN), or None
        on the home loop (and on SQLite, which is only ever used from the home loop)."""
        if not self._shared:
            return None
        loop = asyncio.get_running_loop()
        if self._home_loop is None:
            self._home_loop = loop
        if loop is self._home_loop:
            return None
        engine = self._elsewhere.get(loop)
        if engine is None:
            engine = sibling_engine(self._engine, pool_size=AWAY_POOL_SIZE)
            self._elsewhere[loop] = engine
        return engine

    def _away_engine(self) -> AsyncEngine | None:
        """`_away_writer` in AUTOCOMMIT (same connections): reads and one-statement
        writes need no BEGIN, as at home."""
        writer = self._away_writer()
        if writer is None:
            return None
        loop = asyncio.get_running_loop()
        engine = self._elsewhere_autocommit.get(loop)
        if engine is None:
            engine = writer.execution_options(isolation_level="AUTOCOMMIT")
            self._elsewhere_autocommit[loop] = engine
        return engine

    # --- running work -------------------------------------------------------------

    async def _write(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in one write transaction."""
        with _unavailable_as_store_error():
            if self._worker is not None:
                return await self._worker.write(work)
            away = self._away_writer()
            if away is not None:
                async with away.begin() as connection:
                    return await connection.run_sync(work)
            async with self._async_write_lock, self._async_writer.begin() as connection:
                return await connection.run_sync(work)

    async def _write_one(self, work: Callable[[Connection], T]) -> T:
        """Run `work`, which executes a single write statement: atomic by itself, so on
        PostgreSQL it runs without BEGIN and COMMIT (one round trip instead of three)."""
        if not self._shared:
            return await self._write(work)  # SQLite: its single writer already
        with _unavailable_as_store_error():
            async with (self._away_engine() or self._async_reader).connect() as connection:
                return await connection.run_sync(work)

    async def _read(self, work: Callable[[Connection], T]) -> T:
        """Run `work`, which only reads, outside an explicit transaction on SQLite.

        Each statement sees its own snapshot there; `work` must not need two
        statements to agree.
        """
        with _unavailable_as_store_error():
            if self._worker is not None:
                return await self._worker.read(work)
            away = self._away_engine()
            if away is not None:
                async with away.connect() as connection:
                    return await connection.run_sync(work)
            async with self._async_read_lock, self._async_reader.connect() as connection:
                return await connection.run_sync(work)

    async def ping(self) -> bool:
        if self._sqlite_hot is not None:
            return await self._sqlite_hot.ping()
        try:
            await self._read(lambda connection: connection.execute(_PING).scalar())
        except StoreUnavailable:
            return False
        return True


def _pool_size(engine: AsyncEngine) -> int:
    """The connections an engine keeps (create_engine's `pool_size`): the configured
    concurrency, which the hot path's pool follows."""
    size = getattr(engine.pool, "size", None)
    return int(size()) if callable(size) else 16


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


@contextlib.contextmanager
def _unavailable_as_store_error() -> Iterator[None]:
    """Connection failures become `StoreUnavailable`, which callers may retry; errors
    in the statements themselves (integrity, programming) pass through unchanged."""
    try:
        yield
    except (OperationalError, InterfaceError) as error:
        raise StoreUnavailable() from error
    except DBAPIError as error:
        if error.connection_invalidated or _refused_connection(error):
            raise StoreUnavailable() from error
        raise
    except (OSError, TimeoutError) as error:
        raise StoreUnavailable() from error


# SQLSTATE classes of a server that refuses or drops connections: 08 connection
# exception, 53 insufficient resources (53300: too many connections), 57P operator
# intervention (shutting down, starting up). The driver's other errors are the
# statement's own.
_REFUSED_SQLSTATES = ("08", "53", "57P")


def _refused_connection(error: DBAPIError) -> bool:
    """Whether the server refused a connection (PostgreSQL's full `max_connections`,
    asyncpg raising it as a plain driver error): the database is unavailable for now,
    as when it is unreachable, not the statement wrong."""
    sqlstate = getattr(error.orig, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(_REFUSED_SQLSTATES)


def _rows_of(statement: Any, parameters: dict[str, Any]) -> Callable[[Connection], list[Any]]:
    def work(connection: Connection) -> list[Any]:
        return list(connection.execute(statement, parameters))

    return work


def _key_filter(key: ConversationKey) -> tuple[Any, ...]:
    return (
        _c.platform == key.platform,
        _c.workspace == key.workspace,
        _c.channel == key.channel,
        _c.thread == key.thread,
    )

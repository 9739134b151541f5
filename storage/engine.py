"""The async engine: URL normalization, SQLite pragmas, and a start-up connection check."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import event, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from botservice.core.errors import ConfigError
from botservice.storage.sqlite_worker import BUSY_TIMEOUT_MS

# Execution options that shape SQLite transactions (ignored on PostgreSQL):
# WRITE begins with BEGIN IMMEDIATE, so the write lock is taken (waiting up to
# busy_timeout) before the first read and a read-then-write transaction never
# fails with SQLITE_BUSY because another process wrote in between. SINGLE_READ
# skips BEGIN altogether for a connection that runs one SELECT: a statement is
# its own snapshot, and each BEGIN is another trip to aiosqlite's thread.
SQLITE_WRITE_OPTION = "botservice_sqlite_write"
SQLITE_SINGLE_READ_OPTION = "botservice_sqlite_single_read"

SQLITE_BUSY_TIMEOUT_MS = BUSY_TIMEOUT_MS
CONNECT_TIMEOUT_SECONDS = 10.0


def normalize_url(database_url: str) -> str:
    """Accept Heroku-style `postgres://` and plain `sqlite:///` URLs; return the async form."""
    scheme, sep, rest = database_url.strip().partition("://")
    if not sep:
        raise ConfigError(
            "DATABASE_URL",
            f"{_redact(database_url)!r} is not a database URL; "
            "use sqlite+aiosqlite:///path.db or postgresql+asyncpg://user@host/db",
        )
    scheme = scheme.lower()
    if scheme in ("postgres", "postgresql", "postgresql+asyncpg"):
        scheme = "postgresql+asyncpg"
    elif scheme in ("sqlite", "sqlite+aiosqlite"):
        scheme = "sqlite+aiosqlite"
    else:
        raise ConfigError(
            "DATABASE_URL",
            f"the {scheme!r} driver is not supported; "
            "use sqlite+aiosqlite:///path.db or postgresql+asyncpg://user@host/db",
        )
    return f"{scheme}://{rest}"


def create_engine(database_url: str, *, echo: bool = False, pool_size: int = 16) -> AsyncEngine:
    """An async engine for `database_url` (SQLite or PostgreSQL). Does not connect yet."""
    url = _parse(normalize_url(database_url))
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, echo=echo)
    if importlib.util.find_spec("asyncpg") is None:
        raise ConfigError(
            "DATABASE_URL",
            'names PostgreSQL, but its driver is not installed; run `python -m pip install -e ".[postgres]"`',
        )
    return create_async_engine(
        url,
        echo=echo,
        # A fixed set of kept connections: an overflow connection is closed on
        # return, and opening one (an SSL attempt, authentication) costs far more
        # than waiting a moment for a statement of a few milliseconds to finish.
        pool_size=pool_size,
        max_overflow=0,
        # Managed PostgreSQL closes idle connections; recycle before that happens.
        pool_recycle=1800,
        connect_args={"timeout": CONNECT_TIMEOUT_SECONDS},
    )


def sibling_engine(engine: AsyncEngine, *, pool_size: int) -> AsyncEngine:
    """Another engine on the same PostgreSQL database with a pool of its own."""
    return create_engine(
        engine.url.render_as_string(hide_password=False), echo=engine.echo, pool_size=pool_size
    )


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


async def check_connection(engine: AsyncEngine) -> None:
    """Connect once; raise ConfigError("DATABASE_URL", ...) if the database is unreachable."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and not _in_memory(url.database):
        folder = Path(url.database or "").parent
        if not folder.is_dir():
            raise ConfigError(
                "DATABASE_URL",
                f"cannot open the SQLite file: the folder {str(folder)!r} does not exist",
            )
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except (OSError, DBAPIError, TimeoutError) as error:
        if url.get_backend_name() == "sqlite":
            # aiosqlite stops its worker thread after a failed connect without waiting
            # for it; let that finish before the caller's event loop may close.
            await asyncio.sleep(0.05)
        raise ConfigError("DATABASE_URL", _unreachable(engine.url, error)) from None
    except TypeError as error:
        if "unexpected keyword argument" not in str(error):
            raise
        # A query-string option the driver does not take (`?sslpassword=` for asyncpg).
        raise ConfigError(
            "DATABASE_URL",
            f"{_shown(engine.url)} has an option the database driver does not take ({error})",
        ) from None
    except Exception as error:  # asyncpg raises its own classes for bad credentials etc.
        if type(error).__module__.startswith("asyncpg"):
            raise ConfigError("DATABASE_URL", _unreachable(engine.url, error)) from None
        raise


def _parse(database_url: str) -> URL:
    try:
        return make_url(database_url)
    except ArgumentError:
        raise ConfigError(
            "DATABASE_URL", f"{_redact(database_url)!r} is not a valid database URL"
        ) from None


def _sqlite_engine(url: URL, *, echo: bool) -> AsyncEngine:
    in_memory = _in_memory(url.database)
    # Connections always end their own transactions (commit, or rollback on close),
    # so the pool's extra rollback on check-in would only cost a thread hop.
    options: dict[str, Any] = {"pool_reset_on_return": None}
    if not in_memory:
        # WAL lets readers run beside the one writer; a handful of connections is plenty.
        options.update(pool_size=5, max_overflow=5)
    try:
        engine = create_async_engine(url, echo=echo, **options)
    except NoSuchModuleError:
        raise ConfigError("DATABASE_URL", "the aiosqlite driver is not installed") from None
    _prepare_sqlite(engine.sync_engine, in_memory=in_memory)
    _begin_sqlite_transactions(engine.sync_engine)
    return engine


def sqlite_file(engine: AsyncEngine) -> str | None:
    """The file of a SQLite engine; None for PostgreSQL and SQLite in memory."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or _in_memory(url.database):
        return None
    return str(url.database)


def sqlite_thread_engine(engine: AsyncEngine) -> Engine:
    """A plain sqlite3 engine on the same file as `engine` (a SQLite file).

    For `botservice.storage.sqlite_worker`, which runs whole transactions on worker threads.
    Its connections stay in autocommit mode with no "begin" hook: the worker
    issues BEGIN IMMEDIATE itself, and an engine without connection event
    listeners skips SQLAlchemy's per-statement event dispatch.
    """
    sync_engine = sqlalchemy.create_engine(
        engine.url.set(drivername="sqlite"), echo=engine.echo, pool_size=5, max_overflow=5
    )
    _prepare_sqlite(sync_engine, in_memory=False)
    return sync_engine


def _prepare_sqlite(engine: Engine, *, in_memory: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin
        # (the documented recipe for proper SAVEPOINT/BEGIN handling).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if not in_memory:
                cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()


def _begin_sqlite_transactions(engine: Engine) -> None:
    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        options = connection.get_execution_options()
        if options.get(SQLITE_SINGLE_READ_OPTION):
            return
        begin = "BEGIN IMMEDIATE" if options.get(SQLITE_WRITE_OPTION) else "BEGIN"
        # One call on aiosqlite's thread instead of cursor, execute and close.
        connection.connection.dbapi_connection.run_async(lambda raw: raw.execute(begin))


def _in_memory(database: str | None) -> bool:
    return database in (None, "", ":memory:") or (database or "").startswith("file::memory:")


def _unreachable(url: URL, error: BaseException) -> str:
    # The driver's own words, without SQLAlchemy's wrapper text.
    cause = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    lines = str(cause).strip().splitlines()
    reason = lines[0] if lines else type(cause).__name__
    if url.get_backend_name() == "sqlite":
        return f"cannot open the SQLite file {url.database!r} ({reason}); check the path and permissions"
    where = _shown(url)
    return (
        f"cannot connect to {where} ({reason}); check that PostgreSQL is running "
        "and that the host, port, user, password and database name are right"
    )


def _redact(database_url: str) -> str:
    try:
        return _shown(make_url(database_url))
    except ArgumentError:
        scheme, _, rest = database_url.partition("://")
        return f"{scheme}://…" if rest else database_url


def _shown(url: URL) -> str:
    """The URL as an error may print it: no password, and no query string, which
    may carry one too (`?password=…`, `?sslpassword=…`)."""
    hidden = url.render_as_string(hide_password=True)
    if url.query:
        hidden = url.set(query={}).render_as_string(hide_password=True) + "?***"
    return hidden

"""Opening the store for a running bot: the one place that chooses how.

A SQLite file whose schema is current opens as `SqliteFileStore`, without importing
SQLAlchemy (botservice.storage.sqlite_file says why). Anything else opens through
SQLAlchemy: SQLite is brought up to date by itself; a PostgreSQL database shared by
several processes must already be (`botservice db upgrade`).

Imports no SQLAlchemy until the second path is taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from botservice.core.errors import ConfigError
from botservice.storage.revisions import head_revision
from botservice.storage.sqlite_file import SqliteFileStore

if TYPE_CHECKING:
    import asyncio

    from botservice.core.usage import UsageLedger
    from botservice.storage.repository import SqlStore


@dataclass(frozen=True, slots=True)
class OpenedStore:
    store: SqlStore
    usage: UsageLedger
    # Set for a store whose SQLAlchemy part waits: the import, started a second from now.
    importing_rest: asyncio.Task[None] | None = None


async def open_store(database_url: str, *, concurrency: int | None) -> OpenedStore:
    """The store and usage ledger for `database_url`; ConfigError("DATABASE_URL", ...)
    when the database cannot be reached or its schema is behind (PostgreSQL)."""
    quick = SqliteFileStore.open(database_url, concurrency=concurrency)
    if quick is not None:
        # It answers every question SqlStore does (the turn's itself, the rest by
        # handing them to the SqlStore it builds on first use).
        return OpenedStore(
            store=cast("SqlStore", quick),
            usage=quick.usage_ledger(),
            importing_rest=quick.import_rest_soon(),
        )

    from botservice.storage.engine import check_connection, create_engine, is_sqlite
    from botservice.storage.migrate import current_revision, upgrade
    from botservice.storage.repository import SqlStore
    from botservice.storage.usage_ledger import SqlUsage

    engine = create_engine(database_url)
    try:
        await check_connection(engine)
        if is_sqlite(engine):
            await upgrade(engine)
        else:
            # Several processes share a PostgreSQL database: migrating is an
            # operator's step (`botservice db upgrade`), never a race at start-up.
            if await current_revision(engine) != head_revision():
                raise ConfigError(
                    "DATABASE_URL",
                    "the database schema is not up to date; run `botservice db upgrade` once",
                )
    except BaseException:
        await engine.dispose()
        raise
    store = SqlStore(engine, concurrency=concurrency)
    return OpenedStore(store=store, usage=SqlUsage(store))

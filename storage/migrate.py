"""Apply the Alembic migrations shipped in `storage/migrations` (no alembic.ini needed).

Alembic is imported only when there is something to migrate: a database already at
the head (every start but the first after an upgrade) is recognised by reading
`alembic_version` and the revision lines of the migration files, which saves the
half second Alembic takes to import on a small machine (bench/bench_cold_start.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from botservice.storage.engine import SQLITE_WRITE_OPTION, check_connection, create_engine
from botservice.storage.revisions import MIGRATIONS, head_revision

__all__ = ["MIGRATIONS", "alembic_config", "current_revision", "head_revision", "upgrade"]

if TYPE_CHECKING:
    from alembic.config import Config

# Any constant; several processes starting at once take turns on it (PostgreSQL).
_PG_MIGRATION_LOCK = 0x626F7473


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


async def upgrade(database: str | AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to `revision`. A no-op when it is there already.

    Raises ConfigError("DATABASE_URL", ...) when the database cannot be reached.
    """
    engine, owned = _engine(database)
    try:
        await check_connection(engine)
        if revision == "head" and (head := head_revision()) is not None:
            async with engine.connect() as connection:
                if await connection.run_sync(_current) == head:
                    return
        writer = engine.execution_options(**{SQLITE_WRITE_OPTION: True})
        async with writer.begin() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
                )
            await connection.run_sync(_upgrade, revision)
    finally:
        if owned:
            await engine.dispose()


async def current_revision(database: str | AsyncEngine) -> str | None:
    """The revision the database is at; None for a database never migrated."""
    engine, owned = _engine(database)
    try:
        await check_connection(engine)
        async with engine.connect() as connection:
            return await connection.run_sync(_current)
    finally:
        if owned:
            await engine.dispose()


def _engine(database: str | AsyncEngine) -> tuple[AsyncEngine, bool]:
    if isinstance(database, AsyncEngine):
        return database, False
    return create_engine(database), True


def _upgrade(connection: Connection, revision: str) -> None:
    from alembic import command

    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def _current(connection: Connection) -> str | None:
    """What Alembic would say (`MigrationContext.get_current_revision`), without
    importing it: the one row of `alembic_version`, None when there is none."""
    if not connection.dialect.has_table(connection, "alembic_version"):
        return None
    try:
        rows = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    except DBAPIError:
        return None
    if len(rows) > 1:
        raise RuntimeError("alembic_version holds several heads; run `botservice db upgrade`")
    return str(rows[0][0]) if rows else None

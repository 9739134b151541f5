"""Apply the Alembic migrations shipped in `storage/migrations` (no alembic.ini needed)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from botservice.storage.engine import SQLITE_WRITE_OPTION, check_connection, create_engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Any constant; several processes starting at once take turns on it (PostgreSQL).
_PG_MIGRATION_LOCK = 0x626F7473


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def upgrade(database: str | AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to `revision`. A no-op when it is there already.

    Raises ConfigError("DATABASE_URL", ...) when the database cannot be reached.
    """
    engine, owned = _engine(database)
    try:
        await check_connection(engine)
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
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()

"""slack-sdk's OAuth tables live under our migrations: the migrated database, and the
copy declared in botservice.storage.tables, must match what slack-sdk's stores
define. An upgrade of slack-sdk that changes its tables fails here, before a store
writes a column our migration never created."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from slack_sdk.oauth.installation_store.models.installation import Installation
from slack_sdk.oauth.installation_store.sqlalchemy import AsyncSQLAlchemyInstallationStore
from slack_sdk.oauth.state_store.sqlalchemy import AsyncSQLAlchemyOAuthStateStore
from sqlalchemy import MetaData, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from botservice.storage.engine import create_engine
from botservice.storage.migrate import current_revision, head_revision, upgrade
from botservice.storage.tables import metadata as our_metadata

SLACK_TABLES = ("slack_installations", "slack_bots", "slack_oauth_states")


def slack_sdk_metadata() -> MetaData:
    """The tables exactly as slack-sdk's async stores build them (default names)."""
    # The stores only keep the engine; nothing connects until a query runs.
    engine = create_async_engine("sqlite+aiosqlite://")
    installations = AsyncSQLAlchemyInstallationStore(client_id="any", engine=engine)
    states = AsyncSQLAlchemyOAuthStateStore(expiration_seconds=600, engine=engine)
    combined = MetaData()
    for table in (installations.installations, installations.bots, states.oauth_states):
        table.to_metadata(combined)
    return combined


def _only_slack_tables(name: str | None, type_: str, parent_names: Any) -> bool:
    if type_ == "table":
        return name in SLACK_TABLES
    return True


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={"compare_type": True, "include_name": _only_slack_tables},
    )
    return list(compare_metadata(context, slack_sdk_metadata()))


async def test_the_migration_creates_slack_sdks_tables_exactly(database_url: str) -> None:
    """Columns, types, nullability and indexes of the migrated database against slack-sdk's
    metadata (on SQLite and PostgreSQL)."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            differences = await connection.run_sync(_differences)
    finally:
        await engine.dispose()
    assert differences == []


def _shape(table: Table) -> dict[str, Any]:
    columns = {
        column.name: (
            column.type.compile(dialect=sqlite.dialect()),
            column.type.compile(dialect=postgresql.dialect()),
            column.nullable,
            column.primary_key,
        )
        for column in table.columns
    }
    indexes = {
        (index.name, tuple(column.name for column in index.columns), bool(index.unique))
        for index in table.indexes
    }
    return {"columns": columns, "indexes": indexes}


def test_the_declared_tables_are_slack_sdks() -> None:
    theirs = slack_sdk_metadata()
    assert set(theirs.tables) == set(SLACK_TABLES)
    for name in SLACK_TABLES:
        assert _shape(our_metadata.tables[name]) == _shape(theirs.tables[name]), name


async def test_tables_the_previous_release_let_slack_sdk_create_are_adopted(
    empty_database_url: str,
) -> None:
    """Before 0003 the stores created their tables themselves (`create_tables()`); such a
    database upgrades, keeps its installations, and ends with the same schema."""
    await upgrade(empty_database_url, "0002")
    engine = create_engine(empty_database_url)
    try:
        installations = AsyncSQLAlchemyInstallationStore(client_id="1111.2222", engine=engine)
        states = AsyncSQLAlchemyOAuthStateStore(expiration_seconds=600, engine=engine)
        await installations.create_tables()  # what the previous release did at start
        await states.create_tables()
        await installations.async_save(
            Installation(
                app_id="A0001",
                team_id="T0001",
                user_id="U0001",
                bot_token="xoxb-kept",
                bot_id="B0001",
                bot_user_id="UBOT0001",
            )
        )

        await upgrade(engine)

        assert await current_revision(engine) == head_revision()
        bot = await installations.async_find_bot(enterprise_id=None, team_id="T0001")
        assert bot is not None and bot.bot_token == "xoxb-kept"
        async with engine.connect() as connection:
            assert await connection.run_sync(_differences) == []
    finally:
        await engine.dispose()

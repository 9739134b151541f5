"""Database fixtures (a pytest plugin, see conftest.py): every storage test runs on SQLite
and on PostgreSQL.

- `database_url`: a migrated, empty database; parametrized `sqlite` / `sqlite-file` /
  `postgres` (`sqlite-file`: a SQLite file as well, whose stores open as a running bot
  opens them, as `SqliteFileStore`: the turn's path without SQLAlchemy, the rest of
  `SqlStore` built on first use).
- `store`: a `SqlStore` over it; `make_store()` opens more stores on the same
  database (another process, or the same process after a restart).
- `sqlite_database_url` / `sqlite_store`: SQLite only, for tests that need one backend.
- `empty_database_url`: a database that was never migrated (both backends).

Migrations run once per session and backend: SQLite tests copy a migrated
template file, PostgreSQL tests share one fresh database
(`botservice_test_<hex>`, dropped at the end) whose rows are deleted before each
test. PostgreSQL is expected at 127.0.0.1:5432 (user postgres, trust auth);
override with BOTSERVICE_TEST_POSTGRES_URL. If it is not reachable the
PostgreSQL tests fail, they do not skip: CI starts PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url

from botservice.core.events import IncomingMessage
from botservice.storage.engine import create_engine
from botservice.storage.migrate import upgrade
from botservice.storage.repository import SqlStore
from botservice.storage.sqlite_file import SqliteFileStore

POSTGRES_ADMIN_URL = os.environ.get(
    "BOTSERVICE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
# Children first, so a plain DELETE never trips a foreign key.
TABLES = (
    "tool_confirmations",
    "tool_calls",
    "turns",
    "messages",
    "conversations",
    "setting_changes",
    "channel_settings",
    "purge_claims",
    "usage",
    "slack_installations",
    "slack_bots",
    "slack_oauth_states",
    "voice_opt_outs",
)

T = TypeVar("T")


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a private loop in another thread.

    Session fixtures are synchronous; asyncio.run here would replace the event
    loop pytest-asyncio has installed for the tests.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@dataclass(frozen=True)
class PostgresServer:
    admin_dsn: str  # asyncpg DSN of a database we may connect to for CREATE/DROP DATABASE

    def dsn(self, database: str) -> str:
        return make_url(self.admin_dsn).set(database=database).render_as_string(hide_password=False)

    def url(self, database: str) -> str:
        return (
            make_url(self.admin_dsn)
            .set(drivername="postgresql+asyncpg", database=database)
            .render_as_string(hide_password=False)
        )

    async def create_database(self, name: str) -> None:
        connection = await asyncpg.connect(self.admin_dsn, timeout=10)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()

    async def drop_database(self, name: str) -> None:
        connection = await asyncpg.connect(self.admin_dsn, timeout=10)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()


async def _find_postgres() -> PostgresServer:
    candidates = [POSTGRES_ADMIN_URL]
    fallback = (
        make_url(POSTGRES_ADMIN_URL).set(database="postgres").render_as_string(hide_password=False)
    )
    if fallback not in candidates:
        candidates.append(fallback)
    error: BaseException | None = None
    for dsn in candidates:
        try:
            connection = await asyncpg.connect(dsn, timeout=5)
        except asyncpg.InvalidCatalogNameError as missing:  # that database does not exist
            error = missing
            continue
        await connection.close()
        return PostgresServer(dsn)
    assert error is not None
    raise error


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    try:
        return run_sync(_find_postgres())
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        problem = str(error) or type(error).__name__
    where = make_url(POSTGRES_ADMIN_URL).render_as_string(hide_password=True)
    pytest.fail(
        f"PostgreSQL is not reachable at {where} ({problem}). The storage tests run on "
        "PostgreSQL too: start it (CI does), point BOTSERVICE_TEST_POSTGRES_URL at one, "
        "or deselect these tests with -k 'not postgres'.",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def postgres_session_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, migrated database for this test session (and this xdist worker)."""
    name = f"botservice_test_{secrets.token_hex(6)}"
    run_sync(postgres_server.create_database(name))
    try:
        url = postgres_server.url(name)
        run_sync(upgrade(url))
        yield url
    finally:
        run_sync(postgres_server.drop_database(name))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "botservice.db"
    run_sync(upgrade(sqlite_url(path)))
    return path


async def _clear_postgres(url: str) -> None:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        # DELETE beats TRUNCATE on tables this small; tests never rely on id values.
        await connection.execute("; ".join(f"DELETE FROM {table}" for table in TABLES))
    finally:
        await connection.close()


@pytest.fixture
def sqlite_database_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "botservice.db"
    shutil.copyfile(sqlite_template, path)
    return sqlite_url(path)


@pytest_asyncio.fixture(params=["sqlite", "sqlite-file", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param in ("sqlite", "sqlite-file"):
        url: str = request.getfixturevalue("sqlite_database_url")
        return url
    url = request.getfixturevalue("postgres_session_url")
    await _clear_postgres(url)
    return url


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database no migration has touched."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "empty.db")
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = f"botservice_test_empty_{secrets.token_hex(6)}"
    await server.create_database(name)
    try:
        yield server.url(name)
    finally:
        await server.drop_database(name)


StoreFactory = Callable[[], Awaitable[SqlStore]]


@pytest_asyncio.fixture
async def make_store(
    request: pytest.FixtureRequest, database_url: str
) -> AsyncIterator[StoreFactory]:
    """Open another SqlStore on the test's database; all are closed after the test."""
    opened: list[SqlStore] = []
    as_a_bot = request.node.callspec.params.get("database_url") == "sqlite-file"

    async def open_store() -> SqlStore:
        if as_a_bot:
            quick = SqliteFileStore.open(database_url)
            assert quick is not None, "a migrated SQLite file opens without SQLAlchemy"
            # It answers every question SqlStore does (botservice.storage.sqlite_file).
            store = cast(SqlStore, quick)
        else:
            store = SqlStore(create_engine(database_url))
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.aclose()


@pytest_asyncio.fixture
async def store(make_store: StoreFactory) -> SqlStore:
    return await make_store()


@pytest_asyncio.fixture
async def sqlite_store(sqlite_database_url: str) -> AsyncIterator[SqlStore]:
    store = SqlStore(create_engine(sqlite_database_url))
    yield store
    await store.aclose()


def incoming(
    key: str,
    *,
    text: str = "hello",
    platform: str = "test",
    workspace: str = "W1",
    channel: str = "C1",
    thread: str = "T1",
    user_id: str = "U1",
    user_name: str = "Ada",
    is_channel_admin: bool = False,
    reply_target: dict[str, Any] | None = None,
) -> IncomingMessage:
    """A user message as an adapter would hand it to the core."""
    return IncomingMessage(
        platform=platform,
        workspace=workspace,
        channel=channel,
        thread=thread,
        user_id=user_id,
        user_name=user_name,
        text=text,
        message_key=key,
        is_channel_admin=is_channel_admin,
        platform_message_id=f"pm-{key}",
        reply_target=reply_target if reply_target is not None else {"channel": channel},
    )

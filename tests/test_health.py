"""`/healthz` (liveness) and `/readyz` (readiness) as a load balancer sees them."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest_asyncio

from botservice.app.runtime import start_http_server
from botservice.core.ports import PendingTurn, ReplySink, Store
from botservice.storage.engine import create_engine
from botservice.storage.repository import SqlStore


class PlatformConnection:
    """An adapter whose platform connection a test can drop, as a gateway drops."""

    platform = "somewhere"

    def __init__(self) -> None:
        self.up = True

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def sink_for(self, turn: PendingTurn) -> ReplySink | None:
        return None

    def http_routes(self) -> list[Any]:
        return []

    def is_connected(self) -> bool:
        return self.up


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest_asyncio.fixture
async def unreachable_store() -> AsyncIterator[SqlStore]:
    # Nothing listens there: every connection attempt is refused at once.
    store = SqlStore(create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x"))
    yield store
    await store.aclose()


async def probe(store: Store, connection: PlatformConnection, path: str) -> tuple[int, Any]:
    port = free_port()
    runner = await start_http_server(store, [connection], port)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}{path}") as response,
        ):
            return response.status, await response.json()
    finally:
        await runner.cleanup()


async def test_ready_when_the_database_answers_and_the_platform_is_connected(
    sqlite_store: SqlStore,
) -> None:
    assert await probe(sqlite_store, PlatformConnection(), "/readyz") == (
        200,
        {"status": "ready"},
    )


async def test_not_ready_while_the_database_is_unreachable_but_still_alive(
    unreachable_store: SqlStore,
) -> None:
    assert await probe(unreachable_store, PlatformConnection(), "/readyz") == (
        503,
        {"status": "not ready", "database": "unreachable"},
    )
    assert await probe(unreachable_store, PlatformConnection(), "/healthz") == (
        200,
        {"status": "ok"},
    )


async def test_not_ready_while_a_platform_connection_is_down(sqlite_store: SqlStore) -> None:
    connection = PlatformConnection()
    connection.up = False
    assert await probe(sqlite_store, connection, "/readyz") == (
        503,
        {"status": "not ready", "somewhere": "disconnected"},
    )

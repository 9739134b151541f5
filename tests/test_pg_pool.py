"""The hot path's PostgreSQL pool (storage/pg_pool.py), against the real server: the
newest connection first, a new one only when statements have waited, and no connection
handed out that a cancelled statement or the server left unusable."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest

from botservice.storage.pg_pool import NewestFirstPool
from tests.bot_process import free_port
from tests.db import PostgresServer


@contextlib.asynccontextmanager
async def pool_of(
    postgres_server: PostgresServer,
    *,
    max_size: int = 4,
    grow_after: float = 0.05,
    idle_seconds: float = 60.0,
) -> AsyncIterator[NewestFirstPool]:
    pool = NewestFirstPool(
        postgres_server.admin_dsn,
        max_size=max_size,
        connect_timeout=5.0,
        idle_seconds=idle_seconds,
        grow_after=grow_after,
    )
    try:
        yield pool
    finally:
        await pool.close()


async def backend_pid(pool: NewestFirstPool) -> int:
    async with pool.acquire() as connection:
        pid: int = await connection.fetchval("SELECT pg_backend_pid()")
        return pid


async def test_one_statement_after_another_uses_one_connection(
    postgres_server: PostgresServer,
) -> None:
    async with pool_of(postgres_server) as pool:
        pids = {await backend_pid(pool) for _ in range(20)}
        assert len(pids) == 1 and pool.size == 1


async def test_the_connection_given_back_last_is_taken_first(
    postgres_server: PostgresServer,
) -> None:
    async with pool_of(postgres_server) as pool:
        await pool.open(2)
        async with pool.acquire() as first, pool.acquire() as second:
            pids = [await c.fetchval("SELECT pg_backend_pid()") for c in (first, second)]
        # They come back in reverse order: `first` last, so it is taken first.
        assert await backend_pid(pool) == pids[0]
        async with pool.acquire() as first:
            async with pool.acquire() as second:
                inner = await second.fetchval("SELECT pg_backend_pid()")
            assert await backend_pid(pool) == inner  # taken while `first` is still out


async def test_a_statement_that_waits_briefly_opens_no_connection(
    postgres_server: PostgresServer,
) -> None:
    async with pool_of(postgres_server, grow_after=0.5) as pool:

        async def hold(seconds: float) -> None:
            async with pool.acquire() as connection:
                await connection.execute(f"SELECT pg_sleep({seconds})")

        # Ten statements at once on one connection, each a few milliseconds: they take
        # turns rather than open nine more connections.
        await backend_pid(pool)
        await asyncio.gather(*(hold(0.005) for _ in range(10)))
        assert pool.size == 1


async def test_statements_that_keep_waiting_grow_the_pool_one_connection_at_a_time(
    postgres_server: PostgresServer,
) -> None:
    async with pool_of(postgres_server, max_size=3, grow_after=0.02) as pool:
        await backend_pid(pool)

        async def hold() -> int:
            async with pool.acquire() as connection:
                await connection.execute("SELECT pg_sleep(0.5)")
                pid: int = await connection.fetchval("SELECT pg_backend_pid()")
                return pid

        pids = await asyncio.gather(*(hold() for _ in range(5)))
        assert pool.size == 3  # grown to its limit, no further
        assert len(set(pids)) == 3


async def test_a_connection_cancelled_mid_statement_is_not_used_again(
    postgres_server: PostgresServer,
) -> None:
    async with pool_of(postgres_server) as pool:
        used = await backend_pid(pool)

        async def slow() -> None:
            async with pool.acquire() as connection:
                await connection.execute("SELECT pg_sleep(30)")

        task = asyncio.create_task(slow())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The next statement gets a fresh connection that answers at once.
        async with pool.acquire() as connection:
            assert await asyncio.wait_for(connection.fetchval("SELECT 1"), 2) == 1
            assert await connection.fetchval("SELECT pg_backend_pid()") != used


async def test_a_connection_the_server_closed_while_idle_is_not_handed_out(
    postgres_server: PostgresServer,
) -> None:
    async with pool_of(postgres_server) as pool:
        doomed = await backend_pid(pool)
        admin = await asyncpg.connect(postgres_server.admin_dsn)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", doomed)
        finally:
            await admin.close()
        await asyncio.sleep(0.2)  # the server's goodbye reaches the connection
        assert await backend_pid(pool) != doomed
        assert pool.size == 1


async def test_connections_idle_for_longer_than_the_limit_are_closed(
    postgres_server: PostgresServer,
) -> None:
    async with pool_of(postgres_server, idle_seconds=0.2) as pool:
        await pool.open(3)
        assert pool.size == 3
        await asyncio.sleep(0.6)
        assert pool.size == 0
        assert await backend_pid(pool) > 0  # and it opens again when asked


async def test_an_unreachable_database_fails_the_statement_instead_of_leaving_it_waiting(
    postgres_server: PostgresServer,
) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    pool = NewestFirstPool(dsn, max_size=2, connect_timeout=2.0, idle_seconds=60.0)
    try:
        for _ in range(2):
            with pytest.raises(OSError):
                async with asyncio.timeout(5), pool.acquire():
                    pass
        assert pool.size == 0
    finally:
        await pool.close()


async def test_closing_the_pool_fails_the_statements_still_waiting(
    postgres_server: PostgresServer,
) -> None:
    pool = NewestFirstPool(
        postgres_server.admin_dsn, max_size=1, connect_timeout=5.0, idle_seconds=60.0
    )
    async with pool.acquire():
        waiting = asyncio.create_task(backend_pid(pool))
        await asyncio.sleep(0.05)
        await pool.close()
        with pytest.raises(asyncpg.InterfaceError):
            await waiting

"""The cuttable proxy the database-outage test stands on: a cut drops open connections
and refuses new ones; a restore accepts again on the same port."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.db import PostgresServer
from tests.fakes.tcp_proxy import TcpProxy


async def test_a_cut_drops_and_refuses_postgres_connections_until_restored(
    postgres_server: PostgresServer,
) -> None:
    admin = make_url(postgres_server.admin_dsn)
    proxy = TcpProxy((admin.host or "127.0.0.1", admin.port or 5432))
    await proxy.start()
    via_proxy = admin.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        connection = await asyncpg.connect(via_proxy, timeout=5)
        assert await connection.fetchval("SELECT 1") == 1

        await proxy.cut()
        with pytest.raises((OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)):
            await connection.fetchval("SELECT 1", timeout=5)
        with pytest.raises(OSError):
            await asyncpg.connect(via_proxy, timeout=5)

        await proxy.restore()
        again = await asyncpg.connect(via_proxy, timeout=5)
        assert await again.fetchval("SELECT 2") == 2
        await again.close()
        connection.terminate()
    finally:
        await proxy.close()

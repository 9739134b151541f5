"""A TCP proxy on 127.0.0.1 that a test can cut: the network between a bot and its database.

    proxy = TcpProxy(("127.0.0.1", 5432))
    await proxy.start()              # proxy.port: point DATABASE_URL here
    await proxy.cut()                # every open connection dropped, new ones refused
    await proxy.restore()            # accepting again, on the same port

While cut, the listening socket is closed, so a client's connect fails at once
with "connection refused", as it would against a stopped server; connections
that were open are closed both ways (a reset, as when the server goes away).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field


@dataclass
class TcpProxy:
    upstream: tuple[str, int]
    port: int = 0
    accepted: int = 0  # connections accepted since start
    cuts: int = 0
    _server: asyncio.Server | None = None
    _pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def is_cut(self) -> bool:
        return self._server is None

    @property
    def open_connections(self) -> int:
        return len(self._pairs)

    async def start(self) -> None:
        await self._listen()

    async def cut(self) -> None:
        """Refuse new connections and drop every open one."""
        self.cuts += 1
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for client, remote in list(self._pairs):
            _reset(client)
            _reset(remote)
        self._pairs.clear()
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    async def restore(self) -> None:
        if self._server is None:
            await self._listen()

    async def close(self) -> None:
        await self.cut()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, host="127.0.0.1", port=self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        if self._server is None:
            _reset(client)
            return
        self.accepted += 1
        try:
            remote_reader, remote = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream), 5.0
            )
        except (OSError, TimeoutError):
            _reset(client)
            return
        if self._server is None:  # cut while connecting upstream
            _reset(client)
            _reset(remote)
            return
        pair = (client, remote)
        self._pairs.add(pair)
        pumps = [
            asyncio.create_task(_pump(client_reader, remote)),
            asyncio.create_task(_pump(remote_reader, client)),
        ]
        for task in pumps:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            # When one direction ends, the connection is over both ways.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            self._pairs.discard(pair)
            client.close()
            remote.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN: the peer sees the connection fail, not end."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()

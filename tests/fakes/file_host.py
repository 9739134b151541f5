"""A second origin on 127.0.0.1 (its own port): where a hostile or careless file URL
points. It serves whatever it is given and records the Authorization header of every
request, so a test can show that the bot token never arrives here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web


@dataclass
class FakeFileHost:
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    # (path, Authorization header or None) for every request, in order.
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_file(self, name: str, content_type: str, data: bytes) -> str:
        self.files[name] = (content_type, data)
        return f"{self.root_url}/files/{name}"

    def authorizations(self) -> list[str]:
        return [auth for _, auth in self.requests if auth is not None]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/files/{name}", self._file)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _file(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, request.headers.get("Authorization")))
        found = self.files.get(request.match_info["name"])
        if found is None:
            return web.Response(status=404)
        content_type, data = found
        return web.Response(body=data, content_type=content_type)


@pytest.fixture
async def file_host() -> AsyncIterator[FakeFileHost]:
    host = FakeFileHost()
    await host.start()
    try:
        yield host
    finally:
        await host.close()

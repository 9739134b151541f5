"""A real MCP server from the official SDK (FastMCP), for the MCP tool source's tests.

Its tools: `lookup` (read-only), `delete_record` (destructive), `archive` (no
annotations at all), `add_note` (writes, destroys nothing), `slow` (waits), `big`
(returns 1 MB of text), `failing` (reports an error), `chatty` (a very long
description), `picture` (an image), `grow` (adds a tool and tells the client its list
changed), `whoami` (the HTTP headers it was called with); in a process of its own
also `environment` (its variables' names) and `crash` (ends the process). Every call is recorded
in `calls`, and, when the environment names a file in FAKE_MCP_CALL_LOG, appended
there as a JSON line (the stdio server runs in a process of its own).

Served two ways: `serve_http(server)` runs it over streamable HTTP on 127.0.0.1 (an
ephemeral port, or a socket bound in advance); `python tests/fakes/mcp_server.py`
runs it over stdio. It imports nothing of the project (a stdio child has no path to it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

from mcp.server.fastmcp import Context, FastMCP
from mcp.types import ImageContent, ToolAnnotations

ONE_MB = 1024 * 1024


class FakeMcp:
    def __init__(self, name: str = "fake", *, own_process: bool = False) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.headers: list[dict[str, str]] = []
        self.server = FastMCP(name, host="127.0.0.1")
        self._register()
        if own_process:
            self._register_crash()

    def _register_crash(self) -> None:
        @self.server.tool(
            description="The names of this process's environment variables.",
            annotations=ToolAnnotations(readOnlyHint=True),
        )
        def environment() -> str:
            self._record("environment", {})
            return " ".join(sorted(os.environ))

        @self.server.tool(description="End this server's process at once.")
        def crash() -> str:
            self._record("crash", {})
            os._exit(3)

    def _record(self, tool: str, arguments: dict[str, Any]) -> None:
        self.calls.append((tool, arguments))
        if path := os.environ.get("FAKE_MCP_CALL_LOG"):
            with open(path, "a", encoding="utf-8") as log:
                log.write(json.dumps([tool, arguments]) + "\n")

    def _register(self) -> None:
        server = self.server

        @server.tool(
            description="Look a record up by its id.",
            annotations=ToolAnnotations(readOnlyHint=True),
        )
        def lookup(record_id: str) -> str:
            self._record("lookup", {"record_id": record_id})
            return f"record {record_id}: status open"

        @server.tool(
            description="Delete a record for good.",
            annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True),
        )
        def delete_record(record_id: str) -> str:
            self._record("delete_record", {"record_id": record_id})
            return f"deleted {record_id}"

        @server.tool(description="Archive a record (says nothing about its effects).")
        def archive(record_id: str) -> str:
            self._record("archive", {"record_id": record_id})
            return f"archived {record_id}"

        @server.tool(
            description="Add a note; changes something but destroys nothing.",
            annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=False),
        )
        def add_note(text: str) -> str:
            self._record("add_note", {"text": text})
            return "noted"

        @server.tool(
            description="Answer after a while.", annotations=ToolAnnotations(readOnlyHint=True)
        )
        async def slow(seconds: float) -> str:
            self._record("slow", {"seconds": seconds})
            await asyncio.sleep(seconds)
            return f"slept {seconds}"

        @server.tool(
            description="A megabyte of text.", annotations=ToolAnnotations(readOnlyHint=True)
        )
        def big() -> str:
            self._record("big", {})
            return "x" * ONE_MB

        @server.tool(description="A tool that explains itself at length. " * 200)
        def chatty() -> str:
            self._record("chatty", {})
            return "said"

        @server.tool(description="Always fails.", annotations=ToolAnnotations(readOnlyHint=True))
        def failing() -> str:
            self._record("failing", {})
            raise ValueError("the record store is read-only today")

        @server.tool(description="A small picture.", annotations=ToolAnnotations(readOnlyHint=True))
        def picture() -> list[Any]:
            self._record("picture", {})
            data = base64.b64encode(b"\x89PNG" + b"\x00" * 96).decode()
            return ["Here it is:", ImageContent(type="image", data=data, mimeType="image/png")]

        @server.tool(description="Offer one more tool, named as asked.")
        async def grow(name: str, ctx: Context) -> str:  # type: ignore[type-arg]
            self._record("grow", {"name": name})

            def extra() -> str:
                return f"{name} ran"

            server.add_tool(extra, name=name, description="A tool added while running.")
            await ctx.session.send_tool_list_changed()
            return f"added {name}"

        @server.tool(
            description="The HTTP headers of this call.",
            annotations=ToolAnnotations(readOnlyHint=True),
        )
        def whoami(ctx: Context) -> str:  # type: ignore[type-arg]
            request = ctx.request_context.request
            headers = {} if request is None else dict(request.headers)  # type: ignore[attr-defined]
            self._record("whoami", {})
            self.headers.append(headers)
            return headers.get("authorization", "(none)")


def bound_socket(port: int = 0) -> socket.socket:
    """A socket bound to 127.0.0.1 (an ephemeral port unless given) and not listening
    yet: until the server starts on it, connections to the port are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


@contextlib.asynccontextmanager
async def serve_http(fake: FakeMcp, sock: socket.socket | None = None) -> AsyncIterator[str]:
    """Serve `fake` over streamable HTTP on 127.0.0.1; yields its URL (…/mcp)."""
    import uvicorn

    sock = sock or bound_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        fake.server.streamable_http_app(), log_level="warning", lifespan="on", access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        # Open streams (a client's GET stream) would hold a graceful stop forever.
        server.force_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        sock.close()


if __name__ == "__main__":
    FakeMcp(sys.argv[1] if len(sys.argv) > 1 else "fake", own_process=True).server.run("stdio")

"""One MCP server's tools as a `ToolSource`, through the official `mcp` SDK (1.x, on httpx).

A background task owns the connection (streamable HTTP or a stdio child process): it
connects, lists the tools, relists them when the server says its list changed, and
when the server is down or goes away, retries with backoff while the source offers
no tools. The log says once that a server is unreachable, and once that it is back;
nothing here ever stops the bot.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fnmatch
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import httpx
from mcp import ClientSession, McpError, StdioServerParameters, types
from mcp.client.stdio import get_default_environment, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.session import RequestResponder

from botservice.core.redact import redact_url, scrub
from botservice.core.tools import ToolContext, ToolOutput, ToolSpec
from botservice.tools.mcp_names import map_tool_names

log = logging.getLogger(__name__)
T = TypeVar("T")

# The SDK's read timeout for the HTTP stream a server may hold open; a call's own time
# is bounded by the core (it cancels the call).
_STREAM_READ_SECONDS = 300.0
_CLOSE_SECONDS = 5.0
# Every tool's description goes into every request that offers it: a server's essay
# is cut to this many characters.
MAX_DESCRIPTION = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class McpServer:
    """How to reach one server, with the secrets already read from the environment."""

    name: str
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    command: str | None = None
    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    trusted: bool = False
    # Globs of the server's own tool names; empty: every tool.
    allowed_tools: Sequence[str] = ()

    @property
    def where(self) -> str:
        """The server as a log line may name it (no credentials)."""
        if self.url is not None:
            return redact_url(self.url)
        return f"stdio:{self.command}"

    def allows(self, tool: str) -> bool:
        return not self.allowed_tools or any(
            fnmatch.fnmatchcase(tool, pattern) for pattern in self.allowed_tools
        )


@dataclass(frozen=True, slots=True)
class _Listing:
    specs: tuple[ToolSpec, ...] = ()
    # Offered name -> the server's own name.
    originals: Mapping[str, str] = field(default_factory=dict)


class McpToolSource:
    """The tools of one MCP server (`botservice.core.tools.ToolSource`)."""

    def __init__(
        self,
        server: McpServer,
        *,
        connect_timeout_seconds: float = 10.0,
        retry_initial_seconds: float = 1.0,
        retry_max_seconds: float = 300.0,
    ) -> None:
        self.name = server.name
        self.trusted = server.trusted
        self._server = server
        self._connect_timeout = connect_timeout_seconds
        self._retry_initial = retry_initial_seconds
        self._retry_max = max(retry_max_seconds, retry_initial_seconds)
        self._listing = _Listing()
        self._session: ClientSession | None = None
        # Set when the current connection ends: calls still waiting on it give up.
        self._ended = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._closing = False
        self._relist = False
        self._lost = False
        self._reported_down = False
        self._secrets = tuple(server.headers.values()) + tuple(server.env.values())

    # --- ToolSource ------------------------------------------------------------------

    def tools(self) -> Sequence[ToolSpec]:
        return self._listing.specs

    @property
    def connected(self) -> bool:
        return self._session is not None

    async def start(self) -> None:
        """Connect and list in the background; wait for the first attempt only briefly,
        so the first messages already see the tools of a server that is up."""
        if self._task is not None:
            return
        self._task = asyncio.create_task(self._run(), name=f"mcp:{self.name}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._connect_timeout + 1):
                await self._first_attempt.wait()

    async def aclose(self) -> None:
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            async with asyncio.timeout(_CLOSE_SECONDS):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        except Exception:  # the runner logs its own failures
            pass

    async def call(
        self, name: str, arguments: Mapping[str, Any], context: ToolContext
    ) -> ToolOutput:
        session, ended = self._session, self._ended
        if session is None:
            return ToolOutput(
                f"The MCP server {self.name!r} is not reachable right now; its tool "
                f"{name!r} could not run.",
                is_error=True,
            )
        original = self._listing.originals.get(name)
        if original is None:
            return ToolOutput(
                f"The MCP server {self.name!r} offers no tool named {name!r}.", is_error=True
            )
        try:
            result = await _unless_ended(ended, session.call_tool(original, dict(arguments)))
        except McpError as error:
            if error.error.code == types.CONNECTION_CLOSED or "terminated" in error.error.message:
                self._connection_lost(session)
            return ToolOutput(
                f"The MCP server {self.name!r} refused the call: {self._clean(error.error.message)}",
                is_error=True,
            )
        except (
            _ConnectionEnded,
            anyio.ClosedResourceError,
            anyio.BrokenResourceError,
            httpx.HTTPError,
            OSError,
        ):
            self._connection_lost(session)
            return ToolOutput(
                f"The connection to the MCP server {self.name!r} was lost during the call.",
                is_error=True,
            )
        return tool_output(result)

    # --- the connection --------------------------------------------------------------

    async def _run(self) -> None:
        delay = self._retry_initial
        while not self._closing:
            ended = self._ended = asyncio.Event()
            try:
                async with self._session_opened() as session:
                    with anyio.fail_after(self._connect_timeout):
                        await session.initialize()
                        await self._list(session)
                    self._session = session
                    self._lost = False
                    self._first_attempt.set()
                    self._report_up()
                    delay = self._retry_initial
                    await self._serve(session)
            except Exception as error:
                self._report_down(error)
            finally:
                self._session = None
                self._listing = _Listing()
                # A transport that failed may leave a call waiting for an answer that
                # will never come (the SDK does not fail it): end it here.
                ended.set()
            self._first_attempt.set()
            if self._closing:
                break
            await self._sleep(delay)
            delay = min(delay * 2, self._retry_max)

    async def _serve(self, session: ClientSession) -> None:
        """While connected: relist when the server says its list changed; return when
        closing or when the connection was found lost."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._closing or self._lost:
                return
            if self._relist:
                self._relist = False
                with anyio.fail_after(self._connect_timeout):
                    await self._list(session)
                log.info(
                    "MCP server %s changed its tools: %d offered", self.name, len(self.tools())
                )

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not self._closing:
                    await self._wake.wait()
                    self._wake.clear()

    @contextlib.asynccontextmanager
    async def _session_opened(self) -> AsyncIterator[ClientSession]:
        server = self._server
        async with contextlib.AsyncExitStack() as stack:
            if server.url is not None:
                client = create_mcp_http_client(
                    headers=dict(server.headers),
                    timeout=httpx.Timeout(self._connect_timeout, read=_STREAM_READ_SECONDS),
                )
                await stack.enter_async_context(client)
                read, write, _ = await stack.enter_async_context(
                    streamable_http_client(server.url, http_client=client)
                )
            else:
                assert server.command is not None
                parameters = StdioServerParameters(
                    command=server.command,
                    args=list(server.args),
                    env={**get_default_environment(), **server.env} if server.env else None,
                )
                read, write = await stack.enter_async_context(stdio_client(parameters))
            session = await stack.enter_async_context(
                ClientSession(read, write, message_handler=self._on_message)
            )
            yield session

    async def _on_message(
        self,
        message: RequestResponder[types.ServerRequest, types.ClientResult]
        | types.ServerNotification
        | Exception,
    ) -> None:
        # Runs inside the session's reading loop: never make a request from here (its
        # answer would wait for this very loop). Wake the runner instead.
        if isinstance(message, types.ServerNotification) and isinstance(
            message.root, types.ToolListChangedNotification
        ):
            self._relist = True
            self._wake.set()

    async def _list(self, session: ClientSession) -> None:
        tools: list[types.Tool] = []
        cursor: str | None = None
        while True:
            page = await session.list_tools(
                params=types.PaginatedRequestParams(cursor=cursor) if cursor else None
            )
            tools.extend(page.tools)
            cursor = page.nextCursor
            if not cursor:
                break
        offered = {tool.name: tool for tool in tools if self._server.allows(tool.name)}
        originals = map_tool_names(self.name, offered)
        specs = tuple(
            self._spec(mapped, offered[original]) for mapped, original in sorted(originals.items())
        )
        self._listing = _Listing(specs, originals)

    def _spec(self, name: str, tool: types.Tool) -> ToolSpec:
        hints = tool.annotations
        read_only = bool(hints and hints.readOnlyHint)
        destructive_hint = hints.destructiveHint if hints else None
        return ToolSpec(
            name=name,
            description=_shortened(tool.description or tool.title or tool.name),
            parameters=tool.inputSchema or {"type": "object", "properties": {}},
            source=self.name,
            read_only=read_only,
            # MCP: absent means destructive; a read-only tool changes nothing.
            destructive=not read_only and destructive_hint is not False,
            trusted=self.trusted,
        )

    def _connection_lost(self, session: ClientSession) -> None:
        if self._session is not session:
            return  # a call on an earlier connection, already replaced
        # Withdraw the tools at once; the runner closes the connection and reconnects.
        self._session = None
        self._listing = _Listing()
        self._lost = True
        self._wake.set()

    def _report_up(self) -> None:
        count = len(self.tools())
        if self._reported_down:
            log.info("MCP server %s is reachable again: %d tools", self.name, count)
        else:
            log.info("MCP server %s (%s): %d tools", self.name, self._server.where, count)
        self._reported_down = False

    def _report_down(self, error: BaseException) -> None:
        if self._closing:
            return
        if self._reported_down:
            log.debug("MCP server %s still unreachable: %s", self.name, self._reason(error))
            return
        self._reported_down = True
        log.warning(
            "MCP server %s (%s) is unreachable (%s); its tools are absent until it answers, "
            "retrying in the background",
            self.name,
            self._server.where,
            self._reason(error),
        )

    def _reason(self, error: BaseException) -> str:
        while isinstance(error, BaseExceptionGroup) and error.exceptions:
            error = error.exceptions[0]
        if isinstance(error, TimeoutError):
            return f"no answer within {self._connect_timeout:g} s"
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return type(error).__name__ + (f": {self._clean(text)[:200]}" if text else "")

    def _clean(self, text: str) -> str:
        return scrub(text, *self._secrets)


def _shortened(description: str) -> str:
    if len(description) <= MAX_DESCRIPTION:
        return description
    return description[: MAX_DESCRIPTION - 1].rstrip() + "…"


class _ConnectionEnded(Exception):
    """The connection a call was made on ended before its answer came."""


async def _unless_ended(ended: asyncio.Event, work: Awaitable[T]) -> T:
    """`work`'s result, unless the connection ends first (`_ConnectionEnded`). A caller
    that cancels (the core's time limit) cancels the work too."""
    task = asyncio.ensure_future(work)
    # Read the outcome of work cut short, so none is reported as never retrieved.
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
    waiter = asyncio.ensure_future(ended.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    raise _ConnectionEnded


def tool_output(result: types.CallToolResult) -> ToolOutput:
    """A call's result as text for the model: text joined, other content described."""
    parts = [_described(item) for item in result.content]
    if not parts and result.structuredContent is not None:
        parts.append(json.dumps(result.structuredContent, ensure_ascii=False))
    text = "\n".join(parts) if parts else "(the tool returned nothing)"
    return ToolOutput(text, is_error=bool(result.isError))


def _described(item: types.ContentBlock) -> str:
    if isinstance(item, types.TextContent):
        return item.text
    if isinstance(item, types.ImageContent):
        return f"[an image, {item.mimeType}, {_decoded_size(item.data)}]"
    if isinstance(item, types.AudioContent):
        return f"[an audio clip, {item.mimeType}, {_decoded_size(item.data)}]"
    if isinstance(item, types.ResourceLink):
        return f"[a link to the resource {item.uri} ({item.name})]"
    if isinstance(item, types.EmbeddedResource):
        resource = item.resource
        if isinstance(resource, types.TextResourceContents):
            return f"[the resource {resource.uri}]\n{resource.text}"
        kind = resource.mimeType or "binary data"
        return f"[the resource {resource.uri}, {kind}, {_decoded_size(resource.blob)}]"
    return f"[content of type {getattr(item, 'type', 'unknown')}]"


def _decoded_size(data: str) -> str:
    try:
        size = len(base64.b64decode(data, validate=False))
    except (binascii.Error, ValueError):
        size = len(data)
    return f"{size:,} bytes"

"""An httpx transport for one person's conversation (the console): HTTP/1.1 spoken by
h11 over asyncio's streams.

Why not aiohttp's pool (botservice/model/aiohttp_transport.py), which serves
`botservice run`: importing aiohttp costs about 0.1 s of CPU on a small machine (a
third of it two SSL contexts aiohttp builds at import, which a plain-HTTP endpoint
never uses), as much as the rest of a piped `botservice chat` does before its first
answer. Why not httpx's own transport (httpcore): importing it imports trio when trio
is installed, and making it loads the CA bundle. h11 is the HTTP/1.1 library httpcore
itself speaks through (installed with httpx) and imports in a few milliseconds.

A console sends its requests one after another, so an idle connection per origin,
reused while the server keeps it open, is all the pooling it needs. Conduct as the
aiohttp transport's: no redirects, no decompression (httpx decodes the body), no
proxies from the environment, certificates as httpx verifies them (that context is
built on the first https request, never for http), and each failure raised as the
httpx error httpx's own transport would raise (refused: ConnectError, a body cut
short: RemoteProtocolError, silence past the read timeout: ReadTimeout...).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import h11
import httpx

# Bytes asked of the socket per read; an SSE event is far smaller.
_READ_SIZE = 64 * 1024
# (scheme, host, port)
_Origin = tuple[str, str, int]


class H11Transport(httpx.AsyncBaseTransport):
    """Requests over HTTP/1.1 connections of its own, kept open between requests for
    `keepalive_expiry` seconds (httpx's default)."""

    def __init__(self, *, keepalive_expiry: float = 5.0) -> None:
        self._keepalive_expiry = keepalive_expiry
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._connections: set[_Connection] = set()
        self._tls: ssl.SSLContext | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout") or {}
        origin = _origin(request.url)
        connection = self._idle_connection(origin) or await self._connect(origin, timeouts)
        try:
            head = await connection.exchange(request, timeouts)
        except BaseException:
            self._discard(connection)
            raise
        reason = head.reason.decode("ascii", errors="replace")
        return httpx.Response(
            head.status_code,
            headers=head.headers.raw_items(),
            stream=_H11Body(self, connection, read_timeout=timeouts.get("read")),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason.encode()},
        )

    async def aclose(self) -> None:
        connections, self._connections, self._idle = self._connections, set(), {}
        for connection in connections:
            await connection.close()

    def release(self, connection: _Connection, *, whole: bool) -> None:
        """A response's body is done with: a connection whose exchange ended cleanly
        waits for the next request; any other is closed (its body was not read to the
        end, or the server said it closes)."""
        if whole and connection.ready_for_next():
            connection.idle_since = time.monotonic()
            self._idle.setdefault(connection.origin, []).append(connection)
        else:
            self._discard(connection)

    def _discard(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        connection.abort()

    def _idle_connection(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin, [])
        while idle:
            connection = idle.pop()
            fresh = time.monotonic() - connection.idle_since < self._keepalive_expiry
            # A server that closed the connection meanwhile has sent its end already.
            if fresh and not connection.closed_by_server():
                return connection
            self._discard(connection)
        return None

    async def _connect(self, origin: _Origin, timeouts: dict[str, Any]) -> _Connection:
        scheme, host, port = origin
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        tls = self._tls_context() if scheme == "https" else None
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=tls, server_hostname=host if tls else None
                )
        except TimeoutError as error:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} in time") from error
        except OSError as error:  # refused, no route, DNS, the TLS handshake
            raise httpx.ConnectError(str(error) or type(error).__name__) from error
        connection = _Connection(origin, reader, writer)
        self._connections.add(connection)
        return connection

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = httpx.create_ssl_context()
        return self._tls


class _Connection:
    """One HTTP/1.1 connection and h11's view of it."""

    def __init__(
        self, origin: _Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.origin = origin
        self.idle_since = 0.0
        self._reader = reader
        self._writer = writer
        self._h11 = h11.Connection(h11.CLIENT)
        self._received: h11.Event | None = None

    async def exchange(self, request: httpx.Request, timeouts: dict[str, Any]) -> h11.Response:
        """Send the request, body and all; return the response's head (its body is
        read with `next_event`)."""
        write_timeout = timeouts.get("write")
        target = request.url.raw_path
        with _as_httpx_errors(writing=True):
            await self._send(
                h11.Request(method=request.method, target=target, headers=request.headers.raw),
                write_timeout,
            )
            try:
                body: bytes | None = request.content
            except httpx.RequestNotRead:  # a streamed upload
                body = None
            if body:
                await self._send(h11.Data(data=body), write_timeout)
            elif body is None:
                async for chunk in request.stream:  # type: ignore[union-attr]
                    await self._send(h11.Data(data=chunk), write_timeout)
            await self._send(h11.EndOfMessage(), write_timeout)
        while True:
            event = await self.next_event(timeouts.get("read"))
            if isinstance(event, h11.Response):
                return event
            # 1xx (100 Continue, 103 Early Hints) come before the response itself.
            if not isinstance(event, h11.InformationalResponse):
                raise httpx.RemoteProtocolError(f"expected a response, got {event!r}")

    async def next_event(self, read_timeout: float | None) -> h11.Event:
        with _as_httpx_errors(writing=False):
            while (event := self.received_event()) is None:
                async with asyncio.timeout(read_timeout):
                    data = await self._reader.read(_READ_SIZE)
                self._h11.receive_data(data)  # b"": the server closed; h11 judges
        self._received = None
        return event

    def received_event(self) -> h11.Event | None:
        """The next event if its bytes have arrived already (kept for `next_event`);
        None if it needs more."""
        if self._received is None:
            with _as_httpx_errors(writing=False):
                event = self._h11.next_event()
            if isinstance(event, h11.Event):
                self._received = event
            elif event is h11.PAUSED:
                # Bytes after the response's end, before the next request was sent.
                raise httpx.RemoteProtocolError("the server sent more than one response")
        return self._received

    def ready_for_next(self) -> bool:
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
            return True
        return False

    def closed_by_server(self) -> bool:
        return self._reader.at_eof() or self._writer.is_closing()

    def abort(self) -> None:
        self._writer.close()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()

    async def _send(self, event: h11.Event, write_timeout: float | None) -> None:
        data = self._h11.send(event)
        if data:
            self._writer.write(data)
            async with asyncio.timeout(write_timeout):
                await self._writer.drain()


class _H11Body(httpx.AsyncByteStream):
    """A response's body, read from its connection as the server sends it."""

    def __init__(
        self, transport: H11Transport, connection: _Connection, *, read_timeout: float | None
    ) -> None:
        self._transport = transport
        self._connection: _Connection | None = connection
        self._read_timeout = read_timeout
        self._whole = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            raise httpx.StreamClosed()
        try:
            while True:
                event = await connection.next_event(self._read_timeout)
                if isinstance(event, h11.Data):
                    # The body's end often arrives with its last data (an SSE stream's
                    # [DONE]): the connection is free before the reader has seen the
                    # end, and the next request, sent at once, finds it idle.
                    if isinstance(connection.received_event(), h11.EndOfMessage):
                        await connection.next_event(self._read_timeout)
                        self._whole = True
                        await self.aclose()
                        yield bytes(event.data)
                        return
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self._whole = True
                    return
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        # Back to the pool when read to the end; closed when not.
        connection, self._connection = self._connection, None
        if connection is not None:
            self._transport.release(connection, whole=self._whole)


@contextlib.contextmanager
def _as_httpx_errors(*, writing: bool) -> Iterator[None]:
    """The failures of a connection in use, as httpx's own transport names them."""
    try:
        yield
    except TimeoutError as error:
        raise (httpx.WriteTimeout if writing else httpx.ReadTimeout)(
            "the model endpoint took too long"
        ) from error
    except h11.RemoteProtocolError as error:  # not HTTP, or the body cut short
        raise httpx.RemoteProtocolError(str(error)) from error
    except h11.LocalProtocolError as error:
        raise httpx.LocalProtocolError(str(error)) from error
    except OSError as error:  # reset, broken pipe
        raise (httpx.WriteError if writing else httpx.ReadError)(
            str(error) or type(error).__name__
        ) from error


def _origin(url: httpx.URL) -> _Origin:
    default_port = 443 if url.scheme == "https" else 80
    return (url.scheme, url.host, url.port or default_port)

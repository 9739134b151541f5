"""An httpx transport over aiohttp's connection pool: the model client's transport
wherever many answers stream at once (`botservice run`; see
botservice/model/client.py, `pooled_transport`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over aiohttp's connection pool.

    Why aiohttp: with many answers streaming at once, httpcore's pool polls every
    pooled connection's socket on every request and took about half of the event
    loop's time. Why not httpx-aiohttp's transport, which this replaced: per
    request it built a timeout object, converted the headers twice and wrapped the
    body in two more generators, and it turned every connection error into
    `ConnectTimeout`. Here the timeouts are built once per setting, the body is
    read as aiohttp delivers it, and each aiohttp error becomes the httpx error
    httpx's own transport would raise (refused: ConnectError, reset: ReadError...).

    Keeps httpx-aiohttp's conduct: no redirects, no decompression (httpx decodes
    the body), no proxies from the environment, certificates as httpx verifies them.
    """

    def __init__(self, *, max_connections: int, keepalive_expiry: float = 5.0) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        # Built on first use: an aiohttp session belongs to the running event loop.
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            keepalive_timeout=self._keepalive_expiry,
            ssl=httpx.create_ssl_context(),
        )
        self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def _timeout(self, request: httpx.Request) -> aiohttp.ClientTimeout:
        given = request.extensions.get("timeout") or {}
        key = (given.get("connect"), given.get("read"), given.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(
                sock_connect=key[0], sock_read=key[1], connect=key[2]
            )
        return timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        body: Any
        try:
            body = request.content or None
        except httpx.RequestNotRead:  # a streamed upload: aiohttp frames it itself
            body = request.stream
            request.headers.pop("transfer-encoding", None)
        try:
            response = await session.request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=body,
                timeout=self._timeout(request),
                allow_redirects=False,
                auto_decompress=False,
            )
        except aiohttp.ClientError as error:
            raise _httpx_error(error) from error
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=_AiohttpBody(response),
            request=request,
            extensions=extensions,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class _AiohttpBody(httpx.AsyncByteStream):
    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except aiohttp.ClientError as error:
            raise _httpx_error(error) from error

    async def aclose(self) -> None:
        # Back to the pool when read to the end; closed when not (aiohttp decides).
        self._response.release()
        try:
            await self._response.wait_for_close()
        except aiohttp.ClientError as error:
            raise _httpx_error(error) from error


def _httpx_error(cause: aiohttp.ClientError) -> httpx.TransportError:
    message = str(cause) or type(cause).__name__
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(cause, aiohttp.ServerTimeoutError):  # SocketTimeoutError: between reads
        return httpx.ReadTimeout(message)
    if isinstance(cause, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        return httpx.ProxyError(message)
    if isinstance(cause, aiohttp.ClientConnectorError):  # refused, DNS, TLS handshake
        return httpx.ConnectError(message)
    if isinstance(
        cause,
        aiohttp.ClientPayloadError | aiohttp.ClientOSError | aiohttp.ClientConnectionResetError,
    ):
        return httpx.ReadError(message)  # body cut short, connection reset
    if isinstance(cause, aiohttp.InvalidUrlClientError | aiohttp.NonHttpUrlClientError):
        return httpx.UnsupportedProtocol(message)
    if isinstance(cause, aiohttp.ClientConnectionError | aiohttp.ClientResponseError):
        # Server closed the connection, or sent something that is not HTTP.
        return httpx.RemoteProtocolError(message)
    return httpx.TransportError(message)

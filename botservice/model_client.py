"""The model port over any OpenAI-compatible `/chat/completions` endpoint, with httpx.

One `httpx.AsyncClient` lives as long as the `OpenAIChatClient`, so every request
reuses pooled connections (building a client per request costs ~20 ms). Its
transport is aiohttp's (httpx-aiohttp), not httpcore's: with many answers
streaming at once, httpcore polls every pooled connection's socket on every
request, and its pool took about half of the event loop's time. With aiohttp,
bench/bench_core.py went from ~230 to ~340 replies/s at 50 concurrent
conversations. Proxies from the environment still go through httpx's own
transport.

Failures are retried only while nothing has been shown to the user: once a text
delta has been yielded, a retry would repeat or contradict it, so the stream
raises instead. Logs carry status codes, attempts and waits, never message
contents, request/response bodies or the API key.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import aiohttp
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from botservice.errors import (
    ModelEmptyAnswer,
    ModelError,
    ModelRateLimited,
    ModelRefused,
    ModelServerError,
    ModelStreamBroken,
    ModelTimeout,
    ModelUnreachable,
)
from botservice.ports import ChatRequest, ChatResult, Usage
from botservice.settings import ModelSettings
from botservice.sse import SSEDataDecoder

log = logging.getLogger(__name__)

T = TypeVar("T")

_REASON_LIMIT = 200
# Connections open at once, busy or idle; idle ones close after httpx's default
# keep-alive expiry (5 s), which httpx-aiohttp hands on to aiohttp.
_MAX_CONNECTIONS = 200
_KEY_LIKE = re.compile(r"\b(?:sk|key)-[\w*.-]{6,}")


class _Retryable(Exception):
    """One attempt failed in a way another attempt may fix.

    `error` is what the caller gets if no attempt is left; `wait` is the delay the
    server asked for (429), None to use jittered backoff.
    """

    def __init__(self, error: ModelError, wait: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.wait = wait


class OpenAIChatClient:
    """`ModelClient` for OpenAI, Azure-compatible proxies, vLLM, Ollama, llama.cpp...

    Pass `http_client` to share a pool with other code (it is then not closed by
    `aclose`), or `transport` to route requests elsewhere (tests, proxies).
    """

    def __init__(
        self,
        settings: ModelSettings,
        *,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._url = settings.base_url.rstrip("/") + "/chat/completions"
        self._timeout = httpx.Timeout(
            settings.read_timeout_seconds, connect=settings.connect_timeout_seconds
        )
        self._headers = {"Content-Type": "application/json"}
        self._secret = settings.api_key.get_secret_value() if settings.api_key else ""
        # Local servers (Ollama, llama.cpp) need no key and some reject an empty one.
        if self._secret:
            self._headers["Authorization"] = f"Bearer {self._secret}"
        self._stream_headers = {
            **self._headers,
            "Accept": "text/event-stream",
            "Cache-Control": "no-store",
        }
        self._owns_http = http_client is None
        # With a client of our own, requests go straight to its transport (see `_send`).
        self._transport = None if http_client else transport or pooled_transport()
        self.http: httpx.AsyncClient = http_client or httpx.AsyncClient(
            timeout=self._timeout, transport=self._transport
        )
        if self._transport is not None:
            self._direct_url = httpx.URL(self._url)
            # What httpx's client adds to every request; built once, copied per request.
            self._direct_headers = {
                key: self.http.headers[key] for key in ("Accept", "Accept-Encoding", "User-Agent")
            }
            self._direct_extensions = {"timeout": self._timeout.as_dict()}

    def stream(self, request: ChatRequest) -> OpenAIChatStream:
        """Nothing is sent until the returned stream is iterated."""
        return OpenAIChatStream(self, request)

    async def complete(self, request: ChatRequest) -> ChatResult:
        return await self._with_retries(lambda: self._complete_once(request))

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    # --- one attempt ---------------------------------------------------------

    async def _send(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """POST `body`; the response's body is left to read (or close).

        With a client of our own, the request goes straight to its transport:
        `AsyncClient.send` builds the request from the client's defaults, runs auth,
        redirect, cookie and event-hook machinery this client never configures, and
        wraps the body once more; that was about a fifth of the client's CPU per
        streamed request on bench/bench_model_client.py. A client given by the
        caller keeps all of that, since its configuration is not ours to skip.
        """
        if self._transport is None:
            request = self.http.build_request(
                "POST", self._url, content=body, headers=headers, timeout=self._timeout
            )
            return await self.http.send(request, stream=True)
        request = httpx.Request(
            "POST",
            self._direct_url,
            headers={**self._direct_headers, **headers},
            content=body,
            extensions=dict(self._direct_extensions),
        )
        response = await self._transport.handle_async_request(request)
        response.request = request
        return response

    async def _complete_once(self, request: ChatRequest) -> ChatResult:
        try:
            response = await self._send(_encode(request, stream=False), self._headers)
            try:
                await response.aread()
            finally:
                await _close(response)
        except httpx.HTTPError as error:
            raise _transport_failure(error, response_started=False) from error
        self._check_status(response)
        return _parse_completion(response.content)

    def _check_status(self, response: httpx.Response) -> None:
        """Raise for anything but 2xx; the body must already be read."""
        status = response.status_code
        if status < 400:
            return
        if status == 429:
            wait = _requested_wait(response.headers)
            if wait is not None and wait > self._settings.retry_after_cap_seconds:
                # Waiting this long in silence is worse than telling the user now.
                log.warning("model endpoint HTTP 429, asks to wait %.1f s: over the cap", wait)
                raise ModelRateLimited(retry_after=wait)
            raise _Retryable(ModelRateLimited(retry_after=wait), wait=wait)
        if status >= 500:
            raise _Retryable(ModelServerError(status))
        log.warning("model endpoint refused the request: HTTP %d", status)
        raise ModelRefused(status, self._reason(response))

    def _reason(self, response: httpx.Response) -> str:
        reason = response.reason_phrase or f"HTTP {response.status_code}"
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            error = body["error"]
            reason = str(error.get("message") or error.get("code") or reason)
        elif isinstance(body, dict) and isinstance(body.get("error"), str):
            reason = body["error"]  # Ollama and llama.cpp answer {"error": "..."}.
        return self._scrub(reason)[:_REASON_LIMIT]

    def _scrub(self, text: str) -> str:
        # Some endpoints echo the key they rejected, whole or masked ("sk-ab***yz");
        # neither may reach users or logs.
        if self._secret:
            text = text.replace(self._secret, "***")
        return _KEY_LIKE.sub("***", text)

    # --- retries -------------------------------------------------------------

    async def _with_retries(self, attempt_once: Callable[[], Awaitable[T]]) -> T:
        attempt = 1
        while True:
            try:
                return await attempt_once()
            except _Retryable as failure:
                await self._before_retry(failure, attempt)
            attempt += 1

    async def _before_retry(self, failure: _Retryable, attempt: int) -> None:
        """Sleep before attempt `attempt + 1`, or raise the final error if none is left."""
        max_attempts = self._settings.max_attempts
        if attempt >= max_attempts:
            log.warning("model request failed after %d attempts: %s", attempt, failure.error)
            raise failure.error from failure.__cause__
        wait = failure.wait if failure.wait is not None else self._backoff(attempt)
        log.warning(
            "model request attempt %d/%d failed (%s); retrying in %.2f s",
            attempt,
            max_attempts,
            failure.error,
            wait,
        )
        await asyncio.sleep(wait)

    def _backoff(self, attempt: int) -> float:
        # Full jitter: many bots hitting one endpoint must not retry in lockstep.
        return random.uniform(0, self._settings.backoff_base_seconds * 2 ** (attempt - 1))


class OpenAIChatStream:
    """One streamed answer. Iterate it once; `usage` and `finished` are set as it ends.

    Also an async context manager: leaving it closes the HTTP response even if
    the consumer stopped iterating early.
    """

    def __init__(self, client: OpenAIChatClient, request: ChatRequest) -> None:
        self._client = client
        self._request = request
        self._iterator: AsyncIterator[str] | None = None
        self.usage: Usage | None = None
        self.finished = False
        self.finish_reason: str | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        if self._iterator is not None:
            raise RuntimeError("a ChatStream can be iterated only once")
        self._iterator = self._deltas()
        return self._iterator

    async def __aenter__(self) -> OpenAIChatStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        aclose = getattr(self._iterator, "aclose", None)
        if aclose is not None:
            await aclose()

    async def _deltas(self) -> AsyncIterator[str]:
        attempt = 1
        while True:
            shown = False
            try:
                async for delta in self._attempt():
                    shown = True
                    yield delta
                return
            except _Retryable as failure:
                if shown:  # _attempt never asks for a retry after text; be sure anyway.
                    raise failure.error from failure.__cause__
                await self._client._before_retry(failure, attempt)
            attempt += 1

    async def _attempt(self) -> AsyncIterator[str]:
        client = self._client
        started = time.monotonic()
        self.usage, self.finished, self.finish_reason = None, False, None
        shown = done = False
        response: httpx.Response | None = None
        response_started = False
        try:
            response = await client._send(
                _encode(self._request, stream=True), client._stream_headers
            )
            response_started = True
            if response.status_code >= 400:
                await response.aread()
                client._check_status(response)
            content_type = response.headers.get("content-type", "")
            if "text/event-stream" not in content_type:
                # Some servers ignore `stream: true` and answer with one JSON body.
                result = _parse_completion(await response.aread())
                self.usage, self.finished = result.usage, True
                yield result.text
                return
            decoder = SSEDataDecoder()
            chunks = response.aiter_bytes()
            while True:
                chunk = await anext(chunks, None)
                for data in decoder.feed(chunk) if chunk is not None else decoder.end():
                    if done:
                        continue  # Read on to the end so the connection goes back to the pool.
                    if data.strip() == b"[DONE]":
                        done = self.finished = True
                        continue
                    delta = self._read_chunk(data, shown=shown)
                    if delta:
                        shown = True
                        yield delta
                if chunk is None:
                    break
        except httpx.HTTPError as error:
            if not shown:
                raise _transport_failure(error, response_started=response_started) from error
            if not self.finished:
                raise ModelStreamBroken(f"stream failed after text: {error!r}") from error
            # finish_reason had come: the answer is whole, only usage or [DONE] was lost.
            log.info("model stream dropped after its finish_reason: %r", error)
        finally:
            # Also when the consumer stopped early (GeneratorExit at a yield).
            if response is not None:
                await _close(response)
        if not self.finished:
            if shown:
                raise ModelStreamBroken("stream ended before [DONE]")
            raise _Retryable(ModelStreamBroken("stream ended before any text"))
        if not shown:
            raise ModelEmptyAnswer("the stream finished without any text")
        log.debug(
            "model stream finished in %.2f s (finish_reason=%s)",
            time.monotonic() - started,
            self.finish_reason,
        )

    def _read_chunk(self, data: bytes, *, shown: bool) -> str:
        """Take usage and finish_reason from one chunk; return its text delta."""
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            # orjson refuses the NaN and Infinity that Python-based servers may
            # write (in logprobs, say); json takes them, so such a chunk still counts.
            try:
                chunk = json.loads(data)
            except ValueError:
                log.debug("ignored a stream event that is not JSON")
                return ""
        if not isinstance(chunk, dict):
            return ""
        if "error" in chunk:
            raise _error_in_stream(chunk["error"], shown=shown, scrub=self._client._scrub)
        usage = _parse_usage(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        choices = chunk.get("choices") or []  # The usage chunk has none.
        if not choices or not isinstance(choices[0], dict):
            return ""
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])
            self.finished = True
        content = (choice.get("delta") or {}).get("content")
        return content if isinstance(content, str) else ""


# --- transport -----------------------------------------------------------------


def pooled_transport() -> httpx.AsyncBaseTransport:
    """The transport an `OpenAIChatClient` uses unless given one."""
    return _AiohttpTransport(limits=httpx.Limits(max_connections=_MAX_CONNECTIONS))


class _AiohttpTransport(AiohttpTransport):
    """httpx-aiohttp's transport, raising the httpx errors that httpx's own would.

    httpx-aiohttp 0.2 turns every `aiohttp.ClientConnectionError` into
    `httpx.ConnectTimeout`: a refused connection, a reset, or a keep-alive
    connection the server had closed would all look like timeouts. Here each
    aiohttp error is mapped again from the error itself (`__cause__`).
    """

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except Exception as error:
            _reraise_as_httpx_error(error)
        response.stream = _ResponseBody(response.stream)
        return response


class _ResponseBody(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream | httpx.SyncByteStream) -> None:
        assert isinstance(inner, httpx.AsyncByteStream)
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except Exception as error:
            _reraise_as_httpx_error(error)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        except Exception as error:
            _reraise_as_httpx_error(error)


def _reraise_as_httpx_error(error: Exception) -> NoReturn:
    """Raise the httpx error for an aiohttp failure (mapped or not); anything else as is."""
    cause = error.__cause__ if isinstance(error, httpx.HTTPError) else error
    if not isinstance(cause, aiohttp.ClientError):
        raise error
    mapped = _httpx_error(cause)
    if mapped is None:
        raise error
    raise mapped from cause


def _httpx_error(cause: aiohttp.ClientError) -> httpx.TransportError | None:
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
    if isinstance(cause, aiohttp.ClientConnectionError | aiohttp.ClientResponseError):
        # Server closed the connection, or sent something that is not HTTP.
        return httpx.RemoteProtocolError(message)
    return None  # e.g. a URL aiohttp refuses: httpx-aiohttp's own mapping stands


# --- helpers -------------------------------------------------------------------


def _encode(request: ChatRequest, *, stream: bool) -> bytes:
    body: dict[str, Any] = {"model": request.model, "messages": list(request.messages)}
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    # orjson: ~12x faster than json.dumps on a prompt of 200 history messages (~150 us
    # -> ~13 us).
    return orjson.dumps(body)


async def _close(response: httpx.Response) -> None:
    # What was read decides the outcome; a failure to close only costs the connection.
    try:
        await response.aclose()
    except httpx.HTTPError as error:
        log.debug("closing a model response failed: %r", error)


def _parse_completion(raw: bytes) -> ChatResult:
    try:
        body = json.loads(raw)
        message = body["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ModelError("the model endpoint sent a response that is not a completion") from None
    text = message.get("content") if isinstance(message, dict) else None
    if not isinstance(text, str) or not text:
        raise ModelEmptyAnswer("the completion has no text")
    return ChatResult(text=text, usage=_parse_usage(body.get("usage")))


def _parse_usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
    )


def _requested_wait(headers: httpx.Headers) -> float | None:
    """Seconds a 429 asks us to wait: `retry-after-ms` (OpenAI) or `Retry-After`."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _transport_failure(error: httpx.HTTPError, *, response_started: bool) -> Exception:
    """Map an httpx failure that happened before any text to what to do about it."""
    if isinstance(error, httpx.TimeoutException):
        return _Retryable(ModelTimeout(f"{type(error).__name__} from the model endpoint"))
    if isinstance(error, httpx.ConnectError):
        return _Retryable(ModelUnreachable(f"cannot connect to the model endpoint: {error}"))
    if isinstance(error, httpx.NetworkError | httpx.RemoteProtocolError):
        # Typically a pooled keep-alive connection the server had already closed.
        if response_started:
            return _Retryable(ModelStreamBroken(f"stream failed before any text: {error!r}"))
        return _Retryable(ModelUnreachable(f"connection lost before a response: {error!r}"))
    # Bad URL, unsupported scheme, ...: another attempt cannot help.
    return ModelUnreachable(f"cannot send to the model endpoint: {error!r}")


def _error_in_stream(raw: Any, *, shown: bool, scrub: Callable[[str], str]) -> ModelError:
    """vLLM and some proxies report failures as an `error` chunk inside a 200 stream."""
    message = raw.get("message") if isinstance(raw, dict) else raw
    code = raw.get("code") if isinstance(raw, dict) else None
    reason = scrub(str(message or "error in stream"))[:_REASON_LIMIT]
    log.warning("model endpoint reported an error inside the stream (code %s)", code)
    if shown:
        return ModelStreamBroken(f"error in stream after text (code {code})")
    if isinstance(code, int) and 400 <= code < 500 and code != 429:
        return ModelRefused(code, reason)
    return ModelServerError(code if isinstance(code, int) and code >= 500 else 500)

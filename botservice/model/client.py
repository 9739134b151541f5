"""The model port over any OpenAI-compatible `/chat/completions` endpoint, with httpx.

One `httpx.AsyncClient` lives as long as the `OpenAIChatClient`, so every request
reuses pooled connections (building a client per request costs ~20 ms). Its
transport is aiohttp's pool (botservice/model/aiohttp_transport.py), not httpcore's:
with many answers streaming at once, httpcore polls every pooled connection's socket
on every request, and its pool took about half of the event loop's time. The console
passes h11 instead (botservice/model/h11_transport.py), cheaper to import. Streams
are read with botservice/model/sse.py and orjson. Per streamed request this costs
about 1.3x the CPU of a bare aiohttp client doing the same work
(bench/bench_model_client.py); with httpx's client layers, httpx-aiohttp and
httpx-sse it was about 2.9x.

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
from typing import Any, TypeVar

import httpx
import orjson

from botservice.core.errors import (
    ModelAnswerIncomplete,
    ModelContextExceeded,
    ModelEmptyAnswer,
    ModelError,
    ModelRateLimited,
    ModelRefused,
    ModelServerError,
    ModelStreamBroken,
    ModelTimeout,
    ModelUnreachable,
)
from botservice.core.ports import ChatRequest, ChatResult, GeneratedFile, RateLimits, Usage
from botservice.core.redact import scrub
from botservice.core.settings import ModelSettings
from botservice.core.telemetry import NO_TELEMETRY, Telemetry
from botservice.core.tools import ToolCall, ToolSpec
from botservice.model.discovery import WindowDiscovery
from botservice.model.sse import SSEDataDecoder
from botservice.model.tool_calls import ToolCallAccumulator

log = logging.getLogger(__name__)

T = TypeVar("T")

_REASON_LIMIT = 200
# Connections open at once, busy or idle; idle ones close after httpx's default
# keep-alive expiry (5 s).
_MAX_CONNECTIONS = 200


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
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        self._settings = settings
        self.telemetry = telemetry
        self._url = settings.base_url.rstrip("/") + self.path
        self._timeout = httpx.Timeout(
            settings.read_timeout_seconds, connect=settings.connect_timeout_seconds
        )
        self._headers = {"Content-Type": "application/json"}
        self._secret = settings.api_key.get_secret_value() if settings.api_key else ""
        # Local servers (Ollama, llama.cpp) need no key and some reject an empty one.
        if self._secret:
            self._headers["Authorization"] = f"Bearer {self._secret}"
        stream_headers = {
            **self._headers,
            "Accept": "text/event-stream",
            "Cache-Control": "no-store",
        }
        self._request_headers = {False: self._headers, True: stream_headers}
        self._owns_http = http_client is None
        # With a client of our own, requests go straight to its transport (see `_send`).
        self._transport = None if http_client else transport or pooled_transport()
        self.http: httpx.AsyncClient = http_client or httpx.AsyncClient(
            timeout=self._timeout, transport=self._transport
        )
        if self._transport is not None:
            self._direct_url = httpx.URL(self._url)
            # With what httpx's client adds to every request, and the Host header httpx
            # adds to a request with a body. Built as httpx.Headers once: a request
            # copies their normalized list instead of normalizing them again.
            defaults = {
                key: self.http.headers[key] for key in ("Accept", "Accept-Encoding", "User-Agent")
            }
            host = self._direct_url.netloc.decode("ascii")
            self._direct_headers = {
                stream: httpx.Headers({"Host": host, **defaults, **headers})
                for stream, headers in self._request_headers.items()
            }
            self._direct_extensions = {"timeout": self._timeout.as_dict()}
        # Tasks reading out bodies after [DONE] (see `_read_out`), kept from the GC.
        self._readers: set[asyncio.Task[None]] = set()
        self._windows = WindowDiscovery(
            self.http,
            base_url=settings.base_url,
            headers=self._headers,
            connect_timeout=settings.connect_timeout_seconds,
        )

    # Where requests go, below the base URL; the Responses client changes it.
    path = "/chat/completions"

    def stream(self, request: ChatRequest) -> OpenAIChatStream:
        """Nothing is sent until the returned stream is iterated."""
        return OpenAIChatStream(self, request)

    def encode(self, request: ChatRequest, *, stream: bool) -> bytes:
        """The request body this API takes."""
        return _encode(request, stream=stream, parallel=self._settings.parallel_tool_calls)

    def parse_result(self, raw: bytes) -> ChatResult:
        """A whole (not streamed) answer's body."""
        return _parse_completion(raw)

    async def complete(self, request: ChatRequest) -> ChatResult:
        return await self._with_retries(lambda: self._complete_once(request), request.model)

    async def list_models(self) -> list[str]:
        """The model ids the endpoint lists at `/models` (no retries: a person is waiting)."""
        url = self._settings.base_url.rstrip("/") + "/models"
        try:
            response = await self.http.get(url, headers=self._headers, timeout=self._timeout)
        except httpx.HTTPError as error:
            failure = _transport_failure(error, response_started=False)
            raise (failure.error if isinstance(failure, _Retryable) else failure) from error
        if response.status_code >= 400:
            log.warning("model endpoint refused to list models: HTTP %d", response.status_code)
            raise ModelRefused(
                response.status_code, self._reason(response, _json_or_none(response))
            )
        try:
            listed = response.json()["data"]
            return [str(item["id"]) for item in listed if isinstance(item, dict) and item.get("id")]
        except (ValueError, KeyError, TypeError):
            raise ModelError("the model endpoint sent a model list it cannot read") from None

    async def context_window(self, model: str, *, fresh: bool = False) -> int | None:
        """What the endpoint reports (see botservice/model/discovery.py), remembered;
        `fresh` asks again (a channel switched to this model)."""
        if fresh:
            self._windows.forget(model)
        return await self._windows.context_window(model)

    async def aclose(self) -> None:
        # Bodies still read out after their [DONE]: their connections close with the client.
        readers = list(self._readers)
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        if self._owns_http:
            await self.http.aclose()

    async def drain(self) -> None:
        """Wait for the bodies still read out after their [DONE] (used by tests)."""
        while self._readers:
            await asyncio.wait(list(self._readers))

    def _read_out(self, response: httpx.Response, chunks: AsyncIterator[bytes]) -> None:
        """Read the rest of a body whose answer is complete, then close it, in a task."""
        reader = asyncio.get_running_loop().create_task(_read_out(response, chunks))
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)

    # --- one attempt ---------------------------------------------------------

    async def _send(self, body: bytes, *, stream: bool) -> httpx.Response:
        """POST `body`; the response's body is left to read (or close).

        With a client of our own, the request goes straight to its transport:
        `AsyncClient.send` builds the request from the client's defaults, runs auth,
        redirect, cookie and event-hook machinery this client never configures, and
        wraps the body once more: about 30 % of the event loop's CPU in a py-spy
        profile of bench/bench_model_client.py. A client given by the caller keeps
        all of that, since its configuration is not ours to skip.
        """
        if self._transport is None:
            request = self.http.build_request(
                "POST",
                self._url,
                content=body,
                headers=self._request_headers[stream],
                timeout=self._timeout,
            )
            return await self.http.send(request, stream=True)
        # Given as a stream, the body is taken as it is: with `content=`, httpx works
        # out the Host and length headers and normalizes every header once more
        # (about 25 us a request, a third of this method's time). The headers above
        # lack only the length.
        request = httpx.Request(
            "POST",
            self._direct_url,
            headers=self._direct_headers[stream],
            stream=httpx.ByteStream(body),
            extensions=dict(self._direct_extensions),
        )
        request.headers["Content-Length"] = str(len(body))
        # The copy forgot it: found again, it would cost a scan of every header.
        request.headers.encoding = self._direct_headers[stream].encoding
        request.read()  # `content` is the body, for transports that read it whole
        response = await self._transport.handle_async_request(request)
        response.request = request
        return response

    async def _complete_once(self, request: ChatRequest) -> ChatResult:
        try:
            response = await self._send(self.encode(request, stream=False), stream=False)
            try:
                await response.aread()
            finally:
                await _close(response)
        except httpx.HTTPError as error:
            self.telemetry.model_request(request.model, "transport")
            raise _transport_failure(error, response_started=False) from error
        self.telemetry.model_request(request.model, status_class(response.status_code))
        self._check_status(response)
        return self.parse_result(response.content)

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
        try:
            body = response.json()
        except ValueError:
            body = None
        reason = self._reason(response, body)
        if status in (400, 413, 422) and (window := context_overflow(body, reason)) is not False:
            raise ModelContextExceeded(status, reason, window=window)
        raise ModelRefused(status, reason)

    def _reason(self, response: httpx.Response, body: Any = None) -> str:
        reason = response.reason_phrase or f"HTTP {response.status_code}"
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            error = body["error"]
            reason = str(error.get("message") or error.get("code") or reason)
        elif isinstance(body, dict) and isinstance(body.get("error"), str):
            reason = body["error"]  # Ollama and llama.cpp answer {"error": "..."}.
        elif isinstance(body, dict) and isinstance(body.get("message"), str):
            reason = body["message"]  # vLLM before 0.10: {"object": "error", "message": ...}
        return self._scrub(reason)[:_REASON_LIMIT]

    def _scrub(self, text: str) -> str:
        # Some endpoints echo the key they rejected, whole or masked ("sk-ab***yz");
        # neither may reach users or logs.
        return scrub(text, self._secret)

    # --- retries -------------------------------------------------------------

    async def _with_retries(self, attempt_once: Callable[[], Awaitable[T]], model: str) -> T:
        attempt = 1
        while True:
            try:
                return await attempt_once()
            except _Retryable as failure:
                await self._before_retry(failure, attempt, model)
            attempt += 1

    async def _before_retry(self, failure: _Retryable, attempt: int, model: str) -> None:
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
        self.telemetry.model_retry(
            model, wait, rate_limited=isinstance(failure.error, ModelRateLimited)
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
        self.rate_limits: RateLimits | None = None
        self.tool_calls: list[ToolCall] = []
        self.reasoning_items: list[dict[str, Any]] = []
        self.generated_files: list[GeneratedFile] = []
        self._calls = ToolCallAccumulator()
        # Set when text was shown by an earlier attempt this stream continues (a
        # resumed background response): a failure then cannot be retried from scratch.
        self._shown_before = False
        # An id the endpoint named that the request's `on_started` must hear of.
        self._announce: str | None = None

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
                await self._client._before_retry(failure, attempt, self._request.model)
            attempt += 1

    async def _attempt(self) -> AsyncIterator[str]:
        client = self._client
        started = time.monotonic()
        self._begin_attempt()
        shown, done = self._shown_before, False
        response: httpx.Response | None = None
        response_started = False
        try:
            response = await self._open()
            response_started = True
            self.rate_limits = read_rate_limits(response.headers)
            client.telemetry.model_request(self._request.model, status_class(response.status_code))
            if response.status_code >= 400:
                await response.aread()
                client._check_status(response)
            content_type = response.headers.get("content-type", "")
            if "text/event-stream" not in content_type:
                # Some servers ignore `stream: true` and answer with one JSON body.
                body = await response.aread()
                self._whole_calls(body)
                if self._calls:
                    self.tool_calls = self._calls.calls()
                    self.finished = True
                    return
                result = client.parse_result(body)
                self.usage, self.finished = result.usage, True
                yield result.text
                return
            decoder = SSEDataDecoder()
            chunks = _body_chunks(response)
            while True:
                chunk = await anext(chunks, None)
                for data in decoder.feed(chunk) if chunk is not None else decoder.end():
                    if done:
                        continue  # Nothing follows [DONE]; what does is not read.
                    if data.strip() == b"[DONE]":
                        done = self.finished = True
                        continue
                    delta = self._read_chunk(data, shown=shown)
                    if self._announce is not None:
                        await self._announced()
                    if delta:
                        shown = True
                        yield delta
                if chunk is None:
                    break
                if done:
                    # The answer is whole at [DONE]: the rest of the body (the end of
                    # its chunked encoding, usually) is read beside the caller, who
                    # shows the final text now instead of after the server's last
                    # write. Read to its end, the connection goes back to the pool.
                    client._read_out(response, chunks)
                    response = None
                    break
        except httpx.HTTPError as error:
            if not response_started:
                client.telemetry.model_request(self._request.model, "transport")
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
        if self._calls:
            # Calls are a tool round whatever the finish_reason said ("stop" from some
            # servers, "length" when cut: then the arguments show as malformed), and
            # also when the body ended cleanly without [DONE] or a finish_reason.
            self.tool_calls = self._calls.calls()
            self.finished = True
            log.debug("model stream ended with %d tool calls", len(self.tool_calls))
            return
        if not self.finished:
            if shown:
                raise ModelStreamBroken("stream ended before [DONE]")
            # The body ended cleanly with nothing in it: the server meant it (llama.cpp
            # servers answer so to a prompt over their window). Asking again would get
            # the same; the core decides whether a shorter prompt is worth a try.
            raise ModelEmptyAnswer("the stream ended without any text", unfinished=True)
        incomplete = _INCOMPLETE_REASONS.get(self.finish_reason or "")
        if incomplete is not None:
            raise ModelAnswerIncomplete(incomplete)
        if not shown:
            raise ModelEmptyAnswer("the stream finished without any text")
        log.debug(
            "model stream finished in %.2f s (finish_reason=%s)",
            time.monotonic() - started,
            self.finish_reason,
        )

    def _begin_attempt(self) -> None:
        """Forget what an earlier attempt read: this one starts the answer again."""
        self.usage, self.finished, self.finish_reason = None, False, None
        self.tool_calls, self._calls = [], ToolCallAccumulator()
        self.reasoning_items = []
        self.generated_files = []

    async def _open(self) -> httpx.Response:
        """Send the request; the response's body is left to read."""
        client = self._client
        return await client._send(client.encode(self._request, stream=True), stream=True)

    async def _announced(self) -> None:
        """Tell the request's `on_started` the id the endpoint named."""
        response_id, self._announce = self._announce, None
        if response_id is not None and self._request.on_started is not None:
            await self._request.on_started(response_id)

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
        return self._read_event(chunk, shown=shown)

    def _read_event(self, chunk: dict[str, Any], *, shown: bool) -> str:
        """One chat-completion chunk: take usage and finish_reason; return its text."""
        if "error" in chunk:
            raise _error_in_stream(chunk["error"], shown=shown, scrub=self._client._scrub)
        raw_usage = chunk.get("usage")
        if raw_usage is not None:  # on one chunk of a stream, or none
            usage = _parse_usage(raw_usage)
            if usage is not None:
                self.usage = usage
        choices = chunk.get("choices") or []  # The usage chunk has none.
        if not choices or not isinstance(choices[0], dict):
            return ""
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])
            self.finished = True
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            return ""
        if "tool_calls" in delta:
            self._calls.feed(delta["tool_calls"])
        content = delta.get("content")
        return content if isinstance(content, str) else ""

    def _whole_calls(self, raw: bytes) -> None:
        """Tool calls of an answer sent whole (a server that ignored `stream: true`)."""
        try:
            message = orjson.loads(raw)["choices"][0]["message"]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            return
        if isinstance(message, dict):
            self._calls.feed(message.get("tool_calls"))


# --- transport -----------------------------------------------------------------


def pooled_transport() -> httpx.AsyncBaseTransport:
    """The transport an `OpenAIChatClient` uses unless given one: aiohttp's pool (see
    botservice/model/aiohttp_transport.py), imported here, when a client is made, so
    that importing this module costs no aiohttp (the console talks over
    botservice/model/h11_transport.py and never loads it)."""
    from botservice.model.aiohttp_transport import AiohttpTransport

    return AiohttpTransport(max_connections=_MAX_CONNECTIONS)


# --- helpers -------------------------------------------------------------------


def status_class(status: int) -> str:
    """A bounded label for an HTTP status: 429 on its own, the rest by hundreds."""
    if status == 429:
        return "429"
    return f"{status // 100}xx"


def _encode(request: ChatRequest, *, stream: bool, parallel: bool = True) -> bytes:
    body: dict[str, Any] = {"model": request.model, "messages": list(request.messages)}
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.tools:
        body["tools"] = [
            {"type": "function", "function": function_spec(spec)} for spec in request.tools
        ]
        # "none" at a limit: the tools stay declared so the earlier rounds in the
        # messages remain valid, but the model must answer in text.
        body["tool_choice"] = "none" if request.no_more_tools else "auto"
        if parallel and not request.no_more_tools:
            body["parallel_tool_calls"] = True
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    # orjson: ~12x faster than json.dumps on a prompt of 200 history messages (~150 us
    # -> ~13 us).
    return orjson.dumps(body)


def function_spec(spec: ToolSpec) -> dict[str, Any]:
    """A tool as the function-calling APIs declare it: name, description, parameters."""
    parameters = dict(spec.parameters) or {"type": "object", "properties": {}}
    return {"name": spec.name, "description": spec.description, "parameters": parameters}


def _body_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body's bytes as they arrive. One without a content coding (model servers
    send streams so) is read straight from the transport's stream: httpx's decoding
    iterators add two async generators per chunk that would change nothing."""
    stream = response.stream
    coding = response.headers.get("content-encoding")
    if (not coding or coding.lower() == "identity") and isinstance(stream, httpx.AsyncByteStream):
        return aiter(stream)
    return response.aiter_bytes()


async def _read_out(response: httpx.Response, chunks: AsyncIterator[bytes]) -> None:
    try:
        async for _chunk in chunks:
            pass
    except httpx.HTTPError as error:
        # The answer was whole already; only this connection is lost.
        log.debug("the end of a finished model stream was lost: %r", error)
    finally:
        await _close(response)


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
    """Chat Completions' `usage` (prompt/completion), or the Responses API's
    (input/output); the details objects carry cached and reasoning tokens."""
    if not isinstance(raw, dict):
        return None
    prompt_details = raw.get("prompt_tokens_details") or raw.get("input_tokens_details")
    completion_details = raw.get("completion_tokens_details") or raw.get("output_tokens_details")
    return Usage(
        prompt_tokens=_int(raw.get("prompt_tokens", raw.get("input_tokens"))),
        completion_tokens=_int(raw.get("completion_tokens", raw.get("output_tokens"))),
        cached_tokens=_int(_get(prompt_details, "cached_tokens")),
        reasoning_tokens=_int(_get(completion_details, "reasoning_tokens")),
    )


def _get(raw: Any, key: str) -> Any:
    return raw.get(key) if isinstance(raw, dict) else None


def _int(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


# finish_reason values (and Responses' incomplete reasons) that end an answer early.
_INCOMPLETE_REASONS = {
    "length": "max_output_tokens",
    "max_output_tokens": "max_output_tokens",
    "content_filter": "content_filter",
}

# How OpenAI, vLLM, llama.cpp, llama-cpp-python and Ollama word a prompt too long
# for the window; the codes OpenAI, llama-cpp-python and llama.cpp send with it.
_CONTEXT_CODES = {"context_length_exceeded", "exceed_context_size_error"}
_CONTEXT_WORDS = re.compile(
    r"context[ _-]?(length|window|size)|maximum context|exceeds? (the )?(available )?context"
    r"|prompt is too long|too many tokens|input is too large|n_ctx",
    re.IGNORECASE,
)
_WINDOW_IN_TEXT = (
    re.compile(r"maximum context length is (\d+)", re.IGNORECASE),  # OpenAI, vLLM
    re.compile(r"context window of (\d+)", re.IGNORECASE),  # llama-cpp-python
    re.compile(r"context size \(?(\d+)", re.IGNORECASE),
    re.compile(r"n_ctx\W{0,4}(\d+)", re.IGNORECASE),
)


def context_overflow(body: Any, reason: str) -> int | bool | None:
    """Whether an error says the prompt was over the window: False when it does not,
    else the window it names (None when it names none)."""
    error = body.get("error") if isinstance(body, dict) else None
    details = error if isinstance(error, dict) else body if isinstance(body, dict) else {}
    code = details.get("code") if isinstance(details, dict) else None
    kind = details.get("type") if isinstance(details, dict) else None
    if (
        code not in _CONTEXT_CODES
        and kind not in _CONTEXT_CODES
        and not _CONTEXT_WORDS.search(reason)
    ):
        return False
    n_ctx = details.get("n_ctx") if isinstance(details, dict) else None  # llama.cpp
    if isinstance(n_ctx, int) and n_ctx > 0:
        return n_ctx
    for pattern in _WINDOW_IN_TEXT:
        if match := pattern.search(reason):
            return int(match.group(1))
    return None


def read_rate_limits(headers: httpx.Headers) -> RateLimits | None:
    """OpenAI's `x-ratelimit-*` headers (also sent by Azure, Groq, most proxies);
    None when the response has none."""
    if "x-ratelimit-remaining-requests" not in headers and (
        "x-ratelimit-remaining-tokens" not in headers
    ):
        return None
    return RateLimits(
        limit_requests=_header_int(headers, "x-ratelimit-limit-requests"),
        remaining_requests=_header_int(headers, "x-ratelimit-remaining-requests"),
        reset_requests_seconds=parse_duration(headers.get("x-ratelimit-reset-requests")),
        limit_tokens=_header_int(headers, "x-ratelimit-limit-tokens"),
        remaining_tokens=_header_int(headers, "x-ratelimit-remaining-tokens"),
        reset_tokens_seconds=parse_duration(headers.get("x-ratelimit-reset-tokens")),
    )


def _header_int(headers: httpx.Headers, name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return max(0, int(float(value)))
    except ValueError:
        return None


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(value: str | None) -> float | None:
    """OpenAI writes resets as Go durations ("1s", "6m0s", "20ms", "1h2m3.5s");
    some proxies write plain seconds ("0.5")."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(number) * scale[unit] for number, unit in parts)


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
        return _Retryable(
            ModelUnreachable(f"cannot connect to the model endpoint: {scrub(str(error))}")
        )
    if isinstance(error, httpx.NetworkError | httpx.RemoteProtocolError):
        # Typically a pooled keep-alive connection the server had already closed.
        if response_started:
            return _Retryable(
                ModelStreamBroken(f"stream failed before any text: {scrub(repr(error))}")
            )
        return _Retryable(
            ModelUnreachable(f"connection lost before a response: {scrub(repr(error))}")
        )
    # Bad URL, unsupported scheme, ...: another attempt cannot help.
    return ModelUnreachable(f"cannot send to the model endpoint: {scrub(repr(error))}")


def _error_in_stream(raw: Any, *, shown: bool, scrub: Callable[[str], str]) -> ModelError:
    """vLLM and some proxies report failures as an `error` chunk inside a 200 stream."""
    message = raw.get("message") if isinstance(raw, dict) else raw
    code = raw.get("code") if isinstance(raw, dict) else None
    reason = scrub(str(message or "error in stream"))[:_REASON_LIMIT]
    log.warning("model endpoint reported an error inside the stream (code %s)", code)
    if shown:
        return ModelStreamBroken(f"error in stream after text (code {code})")
    if (window := context_overflow(raw if isinstance(raw, dict) else {}, reason)) is not False:
        return ModelContextExceeded(code if isinstance(code, int) else 400, reason, window=window)
    if isinstance(code, int) and 400 <= code < 500 and code != 429:
        return ModelRefused(code, reason)
    return ModelServerError(code if isinstance(code, int) and code >= 500 else 500)

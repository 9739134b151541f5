"""A fake OpenAI-compatible model server on 127.0.0.1: real HTTP, real SSE.

Tests drive it through the `fake_model` fixture:

    fake_model.script(RateLimited(retry_after=0.1), Reply("Hello"))

queues one-shot behaviours, consumed one per chat request; once the queue is
empty every request gets the default answer, `answer(body)` (by default
"You said: <last user message>"). Every request is recorded in `.requests`.

A context window makes it behave like a local server run with a small one:

    fake_model.context_window = 2048     # prompts over it (its own count) overflow
    fake_model.overflow = "empty"        # ...answered 200 with an empty stream, or
                                         # "openai" | "vllm" | "llamacpp" | "llama-cpp-python":
                                         # HTTP 400 in that server's words and shape
    fake_model.discovery = "llamacpp"    # what it tells about its window: "none",
                                         # "vllm" (/v1/models max_model_len), "llamacpp"
                                         # (/props n_ctx, /v1/models meta.n_ctx_train),
                                         # "ollama" (/api/show), "llama-cpp-python" (nothing)

A rate limit makes it count requests in fixed windows, say how many are left in
OpenAI's `x-ratelimit-*` headers, and answer 429 beyond it:

    fake_model.rate_limit = (20, 1.0)    # 20 requests a window of 1 s ("a minute", fast)

Tool calls, in the styles real servers stream them (see `ToolCalls`):

    fake_model.script(ToolCalls(CallTool("current_time")), Reply("It is noon."))
    fake_model.endless = ToolCalls(CallTool("search"))   # an endless caller: every
                                         # request offering tools calls one more

A request with `tool_choice: "none"` is answered in text, as OpenAI does.

It also serves `/v1/audio/speech` (a WAV tone, 24 kHz mono 16-bit, longer for
longer input) and `/v1/audio/transcriptions` (returns `.transcript`).

Standalone, for benchmarks and CLI tests:

    python -m tests.fakes.model_server --port 0      # prints "READY <base_url>"
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import io
import itertools
import json
import math
import re
import signal
import ssl
import sys
import time
import wave
from array import array
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
import pytest_asyncio
from aiohttp import BodyPartReader, web

from tests.fakes.responses_events import ResponseEvents, responses_usage

# --- behaviours ------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """Answer `text` (None: the server's default answer) in chunks of `chunk_size`
    characters (None: word by word), optionally pausing between chunks."""

    text: str | None = None
    chunk_size: int | None = None
    delay_between_chunks: float = 0.0
    finish_reason: str = "stop"
    include_usage: bool = True  # False: omit usage even when asked, like Ollama
    # Set: after `data: [DONE]` the body stays open until this is set (a server, or a
    # proxy, slow to end the body it has finished writing).
    end_after: asyncio.Event | None = None


@dataclass(frozen=True)
class RateLimited:
    """HTTP 429. `retry_after` goes into `Retry-After` as given (seconds or an HTTP-date)."""

    retry_after: float | str | None = 1
    retry_after_ms: float | None = None
    omit_header: bool = False


@dataclass(frozen=True)
class ServerError:
    status: int = 500
    message: str = "The server had an error while processing your request."


@dataclass(frozen=True)
class Refuse:
    """A 4xx other than 429, with an OpenAI-style error body."""

    status: int = 400
    message: str = "Invalid request."
    code: str | None = None


@dataclass(frozen=True)
class CutMidway:
    """Stream `text_before_cut`, then drop the connection without finishing the body."""

    text_before_cut: str = "Partial ans"
    chunk_size: int | None = None
    clean_end: bool = False  # True: end the HTTP body properly, only [DONE] is missing.
    after_finish_reason: bool = False  # True: cut after the finish_reason chunk, before usage.


@dataclass(frozen=True)
class EmptyAnswer:
    """A well-formed stream (finish_reason, [DONE]) that carries no text."""


@dataclass(frozen=True)
class Slow:
    """Wait before sending anything (not even headers), then answer `then`."""

    delay_before_first_byte: float
    then: Reply = field(default_factory=Reply)


@dataclass(frozen=True)
class PlainJson:
    """Ignore `stream: true` and answer with one JSON completion, as some servers do."""

    text: str | None = None


@dataclass(frozen=True)
class ErrorInStream:
    """A 200 stream whose first event is `{"error": ...}` (vLLM does this)."""

    message: str = "This model's maximum context length is 8192 tokens."
    code: int = 400


@dataclass(frozen=True)
class Incomplete:
    """Stream `text`, then stop short: Chat's `finish_reason` "length" (or
    "content_filter"), the Responses API's `response.incomplete` with that reason."""

    text: str = "The beginning of a long"
    reason: str = "max_output_tokens"  # or "content_filter"


@dataclass(frozen=True)
class ErrorEvent:
    """The Responses API's `error` event before any text (Chat: an error chunk)."""

    code: str = "server_error"
    message: str = "Something went wrong."


@dataclass(frozen=True)
class Failed:
    """The Responses API's `response.failed` (Chat: an error chunk)."""

    code: str = "server_error"
    message: str = "The model failed to generate a response."


@dataclass(frozen=True)
class CallTool:
    """One call in a `ToolCalls` round. `arguments`: JSON text as the model writes it
    (malformed on purpose, if a test wants), or an object to be written as JSON."""

    name: str
    arguments: str | dict[str, Any] = "{}"
    id: str | None = None  # None: "call_<n>"

    def text(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


@dataclass(frozen=True)
class ToolCalls:
    """A round of tool calls, streamed in one of the styles servers use:

    - "openai": per call, a first fragment with id and name at the call's own
      `index`, then the arguments in fragments of `fragment_size` characters;
    - "whole": each call whole in one chunk, at its own index;
    - "ollama": each call whole, every one at `index: 0`, told apart by its id.

    `finish_reason` "tool_calls" as OpenAI says; "stop" as some servers say with
    calls. `text`: words before the calls. `done_marker` False: no `data: [DONE]`.
    `delay_between_chunks`: a pause after each chunk (the words reach the bot first).
    """

    calls: tuple[CallTool, ...]
    style: str = "openai"
    finish_reason: str = "tool_calls"
    text: str = ""
    done_marker: bool = True
    fragment_size: int = 7
    delay_between_chunks: float = 0.0
    # Responses API only: the round opens with a reasoning item whose encrypted content
    # is this (sent only when the request's `include` asks for it), as reasoning models do.
    reasoning: str | None = None

    def __init__(
        self,
        *calls: CallTool,
        style: str = "openai",
        finish_reason: str = "tool_calls",
        text: str = "",
        done_marker: bool = True,
        fragment_size: int = 7,
        delay_between_chunks: float = 0.0,
        reasoning: str | None = None,
    ) -> None:
        object.__setattr__(self, "reasoning", reasoning)
        object.__setattr__(self, "calls", calls)
        object.__setattr__(self, "style", style)
        object.__setattr__(self, "finish_reason", finish_reason)
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "done_marker", done_marker)
        object.__setattr__(self, "fragment_size", fragment_size)
        object.__setattr__(self, "delay_between_chunks", delay_between_chunks)


@dataclass(frozen=True)
class Dropped:
    """Responses API, background mode: answer `then` as a background response kept
    whole at the fake, but drop the first connection after `after` events (the rest
    is there for `GET /v1/responses/{id}?stream=true&starting_after=<n>`). `hold`:
    instead of dropping, stop sending and keep the connection open (a model still
    thinking) until the client goes away.

    `resume`: how the fake answers a request to stream the response again: "stream"
    (it does), "cut" (it starts to, and the connection is cut before any event: a
    proxy that cuts every stream), "refused" (HTTP 400: an endpoint that keeps responses but cannot
    stream a stored one), "whole" (it ignores `stream=true` and answers the response
    as it stands, in JSON). `running_polls`: so many reads of the response find it
    still in progress (its text not yet there) before it is completed."""

    after: int
    then: Reply = field(default_factory=Reply)
    hold: bool = False
    resume: Literal["stream", "cut", "refused", "whole"] = "stream"
    running_polls: int = 0


@dataclass(frozen=True)
class McpApproval:
    """Responses API: a remote MCP server's call waiting for approval
    (`mcp_approval_request`): the response ends there, with no text."""

    server_label: str
    name: str
    arguments: str = "{}"
    id: str = "mcpr_1"


@dataclass(frozen=True)
class Drawn:
    """Responses API: hosted image generation made `image` (streamed as a partial image,
    then the whole one in its item), then the model wrote `text`."""

    image: bytes
    text: str = "Here is your picture."
    output_format: str = "png"


Behaviour = (
    Drawn
    | McpApproval
    | Dropped
    | ToolCalls
    | Reply
    | Incomplete
    | ErrorEvent
    | Failed
    | RateLimited
    | ServerError
    | Refuse
    | CutMidway
    | EmptyAnswer
    | Slow
    | PlainJson
    | ErrorInStream
)


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]  # parsed JSON, or the form fields of a multipart upload
    files: dict[str, bytes] = field(default_factory=dict)
    received_at: float = 0.0
    # When the whole answer had been written (a streamed one's last byte), if it was.
    finished_at: float | None = None
    size: int = 0  # bytes of the body
    peer: tuple[str, int] | None = None  # client address: tells connection reuse apart

    @property
    def last_user_text(self) -> str:
        return last_user_text(self.body)


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or body.get("input") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(
                    part.get("text", "")
                    for part in content
                    if part.get("type") in ("text", "input_text")
                )
            return str(content or "")
    return ""


def echo_answer(body: dict[str, Any]) -> str:
    return f"You said: {last_user_text(body)}"


# --- server --------------------------------------------------------------------


class FakeModelServer:
    def __init__(
        self,
        *,
        answer: Callable[[dict[str, Any]], str] = echo_answer,
        default_delay_between_chunks: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        keep_requests: int | None = None,
    ) -> None:
        self.answer = answer
        # How many of the latest requests `.requests` keeps: all (None) for tests, which
        # read them; the standalone server keeps some, so that a long benchmark's
        # prompts neither fill its memory nor slow its parsing (with every 200-message
        # body kept, each was parsed into fresh memory: 48 us instead of 18).
        self._keep_requests = keep_requests
        # Served over https with this context's certificate when set.
        self._tls = tls
        self.default_delay_between_chunks = default_delay_between_chunks
        self.transcript = "hello from the fake transcriber"
        # Seconds a transcription takes (a long clip on a busy endpoint).
        self.transcription_delay = 0.0
        # Set: the audio endpoints answer with this HTTP status and an error that
        # echoes the key they were sent, whole and masked, as some providers do.
        self.audio_key_rejected: int | None = None
        self.requests: list[RecordedRequest] = []
        self.context_window: int | None = None
        self.overflow = "empty"
        # How many characters the server's tokenizer counts as one token (the bot's
        # counts about 4 for English; a byte-level one counts 1).
        self.chars_per_token = 4
        self.discovery = "none"
        # The window /v1/models reports as trained (llama.cpp), when it differs.
        self.trained_window: int | None = None
        # Reported in usage on both APIs (prompt cache hits, reasoning tokens).
        self.cached_tokens = 0
        self.reasoning_tokens = 0
        # False: reasoning items come without encrypted content even when asked for
        # (a server that ignores `include`).
        self.sends_encrypted_reasoning = True
        # Background responses by id: every event, as `GET /v1/responses/{id}` replays them.
        self.background: dict[str, list[bytes]] = {}
        # How each background response answers a request to stream it again, and how
        # many more reads find it still running (`Dropped.resume`, `.running_polls`).
        self.resume_modes: dict[str, str] = {}
        self.running_polls: dict[str, int] = {}
        self.overflows = 0  # chat requests refused or emptied for being over the window
        self.rate_limit: tuple[int, float] | None = None
        self.rate_limited = 0  # 429s answered because of `rate_limit`
        self._window_started = 0.0
        self._window_used = 0
        self._script: deque[Behaviour] = deque()
        # With the script empty, every request that offers tools gets this (an endless
        # caller), unless it says `tool_choice: "none"`.
        self.endless: ToolCalls | None = None
        # With the script empty: a request that offers tools and ends with the user's
        # message gets this round; the request with its results gets the answer.
        self.call_once: ToolCalls | None = None
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._ids = itertools.count(1)
        self.base_url = ""

    # --- control ---

    def script(self, *behaviours: Behaviour) -> None:
        """Queue one-shot behaviours for the next chat requests, in order."""
        self._script.extend(behaviours)

    @property
    def pending_script(self) -> int:
        return len(self._script)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def responses_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/responses")]

    @property
    def follow_requests(self) -> list[RecordedRequest]:
        """`GET /v1/responses/{id}`: a background response streamed again or polled."""
        return [r for r in self.requests if r.path.startswith("/v1/responses/")]

    @property
    def model_requests(self) -> list[RecordedRequest]:
        """Requests for an answer, on either API."""
        return [r for r in self.requests if r.path.endswith(("/chat/completions", "/responses"))]

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._tracked(self._chat))
        app.router.add_post("/v1/responses", self._tracked(self._responses))
        app.router.add_get("/v1/responses/{response_id}", self._tracked(self._follow))
        app.router.add_post("/v1/audio/speech", self._tracked(self._speech))
        app.router.add_post("/v1/audio/transcriptions", self._tracked(self._transcription))
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/props", self._props)
        app.router.add_post("/api/show", self._show)
        # No access log: the benchmark pushes hundreds of requests a second through here.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._tls)
        await site.start()
        port = self._runner.addresses[0][1]
        scheme = "https" if self._tls is not None else "http"
        self.base_url = f"{scheme}://{self._host}:{port}/v1"

    async def stop(self) -> None:
        # Slow/delayed handlers would otherwise hold shutdown until their sleeps end.
        for task in list(self._handlers):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeModelServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _tracked(self, handler: Callable[[web.Request], Any]) -> Callable[[web.Request], Any]:
        async def run(request: web.Request) -> web.StreamResponse:
            task = asyncio.current_task()
            assert task is not None
            self._handlers.add(task)
            try:
                response: web.StreamResponse = await handler(request)
                return response
            finally:
                self._handlers.discard(task)

        return run

    def _record(
        self,
        request: web.Request,
        body: dict[str, Any],
        files: dict[str, bytes] | None = None,
        *,
        size: int = 0,
    ) -> RecordedRequest:
        recorded = RecordedRequest(
            path=request.path,
            headers=dict(request.headers),
            body=body,
            files=files or {},
            size=size,
            received_at=time.monotonic(),
            peer=request.transport.get_extra_info("peername") if request.transport else None,
        )
        self.requests.append(recorded)
        if self._keep_requests is not None and len(self.requests) >= 2 * self._keep_requests:
            del self.requests[: -self._keep_requests]
        return recorded

    def _finished(self, recorded: RecordedRequest) -> None:
        """Note when the answer to `recorded` was all written. Found by identity, from
        the newest: other requests may have been recorded since."""
        for position in range(len(self.requests) - 1, -1, -1):
            if self.requests[position] is recorded:
                self.requests[position] = dataclasses.replace(
                    recorded, finished_at=time.monotonic()
                )
                return

    # --- chat ---

    async def _take(
        self, request: web.Request
    ) -> tuple[RecordedRequest, Behaviour, dict[str, str]] | web.StreamResponse:
        """What both APIs do first: record the request, answer it at once when it is
        over the rate limit or the context window, else take the next scripted
        behaviour (after its delay) and the rate-limit headers to send, with the
        request as recorded."""
        # orjson, as a real endpoint parses in native code: the benchmarks time replies
        # through this fake, and the json module's reading of a 200-message prompt
        # (70 us, against 30) was most of what a long thread's reply measured longer.
        raw = await request.read()
        body = orjson.loads(raw)
        recorded = self._record(request, body, size=len(raw))
        limit_headers = self._take_rate()
        if limit_headers is None:
            return self._over_rate()
        if (
            self.context_window is not None
            and prompt_tokens(body, self.chars_per_token) > self.context_window
        ):
            self.overflows += 1
            return await self._overflow(request, body)
        if self._script:
            behaviour: Behaviour = self._script.popleft()
        elif self.endless is not None and body.get("tools"):
            behaviour = self.endless
        elif self.call_once is not None and body.get("tools") and _ends_with_user(body):
            behaviour = self.call_once
        else:
            behaviour = Reply()
        if isinstance(behaviour, Slow):
            await asyncio.sleep(behaviour.delay_before_first_byte)
            behaviour = behaviour.then
        if isinstance(behaviour, ToolCalls) and body.get("tool_choice") == "none":
            behaviour = Reply()
        return recorded, behaviour, limit_headers

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        taken = await self._take(request)
        if isinstance(taken, web.StreamResponse):
            return taken
        recorded, behaviour, limit_headers = taken
        body = recorded.body
        streaming = bool(body.get("stream"))
        if isinstance(behaviour, RateLimited):
            return _rate_limited(behaviour)
        if isinstance(behaviour, ServerError):
            return _error(behaviour.status, behaviour.message, "server_error")
        if isinstance(behaviour, Refuse):
            return _error(behaviour.status, behaviour.message, behaviour.code)
        if isinstance(behaviour, PlainJson) or not streaming:
            text = self._text_of(behaviour, body)
            return web.json_response(self._completion(recorded, text), headers=limit_headers)
        response = await self._stream(request, recorded, behaviour, limit_headers)
        self._finished(recorded)
        return response

    def _details(self, usage: dict[str, Any]) -> dict[str, Any]:
        if self.cached_tokens or self.reasoning_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return usage

    def _take_rate(self) -> dict[str, str] | None:
        """Count one request against `rate_limit`: its headers, or None when over."""
        if self.rate_limit is None:
            return {}
        limit, seconds = self.rate_limit
        now = time.monotonic()
        if now - self._window_started >= seconds:
            self._window_started, self._window_used = now, 0
        reset = self._window_started + seconds - now
        if self._window_used >= limit:
            return None
        self._window_used += 1
        return {
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(limit - self._window_used),
            "x-ratelimit-reset-requests": f"{reset:.3f}s",
            "x-ratelimit-limit-tokens": "10000000",
            "x-ratelimit-remaining-tokens": "9990000",
            "x-ratelimit-reset-tokens": "6ms",
        }

    def _over_rate(self) -> web.Response:
        assert self.rate_limit is not None
        self.rate_limited += 1
        reset = self._window_started + self.rate_limit[1] - time.monotonic()
        response = _error(429, "Rate limit reached for requests.", "rate_limit_exceeded")
        response.headers["retry-after-ms"] = str(max(1, int(reset * 1000)))
        return response

    def _text_of(self, behaviour: Behaviour, body: dict[str, Any]) -> str:
        if isinstance(behaviour, Reply | PlainJson):
            return behaviour.text if behaviour.text is not None else self.answer(body)
        if isinstance(behaviour, CutMidway):
            return behaviour.text_before_cut
        return ""

    async def _stream(
        self,
        request: web.Request,
        recorded: RecordedRequest,
        behaviour: Behaviour,
        extra_headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        body = recorded.body
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                **(extra_headers or {}),
            }
        )
        await response.prepare(request)
        chunk_id = f"chatcmpl-fake-{next(self._ids)}"
        model = str(body.get("model", "fake-model"))
        if isinstance(behaviour, ErrorInStream | ErrorEvent | Failed):
            error = {"error": {"message": behaviour.message, "code": behaviour.code}}
            await response.write(_event(error))
            await response.write_eof()
            return response
        if isinstance(behaviour, ToolCalls):
            events = self._tool_call_events(chunk_id, model, behaviour)
            await self._send(response, events, behaviour.delay_between_chunks)
            await response.write_eof()
            return response
        if isinstance(behaviour, Incomplete):
            behaviour = Reply(
                behaviour.text,
                finish_reason="length"
                if behaviour.reason == "max_output_tokens"
                else behaviour.reason,
            )

        text = self._text_of(behaviour, body)
        chunk_size = behaviour.chunk_size if isinstance(behaviour, Reply | CutMidway) else None
        pieces = _split(text, chunk_size)
        events = [_event(_chunk(chunk_id, model, {"role": "assistant", "content": ""}))]
        events += [_event(_chunk(chunk_id, model, {"content": piece})) for piece in pieces]

        if isinstance(behaviour, CutMidway):
            if behaviour.after_finish_reason:
                events.append(_event(_chunk(chunk_id, model, {}, finish_reason="stop")))
            await self._send(response, events, 0.0)
            if behaviour.clean_end:
                await response.write_eof()
            else:
                assert request.transport is not None
                request.transport.close()  # The chunked body never ends: a real cut.
            return response

        finish_reason = behaviour.finish_reason if isinstance(behaviour, Reply) else "stop"
        events.append(_event(_chunk(chunk_id, model, {}, finish_reason=finish_reason)))
        wants_usage = (body.get("stream_options") or {}).get("include_usage")
        if wants_usage and not (isinstance(behaviour, Reply) and not behaviour.include_usage):
            usage_chunk = _chunk(chunk_id, model, None)
            usage_chunk["usage"] = self._details(_usage(recorded, len(pieces)))
            events.append(_event(usage_chunk))
        events.append(b"data: [DONE]\n\n")
        delay = (
            behaviour.delay_between_chunks
            if isinstance(behaviour, Reply) and behaviour.delay_between_chunks
            else self.default_delay_between_chunks
        )
        await self._send(response, events, delay)
        if isinstance(behaviour, Reply) and behaviour.end_after is not None:
            await behaviour.end_after.wait()
        await response.write_eof()
        return response

    def _call_id(self, call: CallTool) -> str:
        return call.id or f"call_{next(self._ids)}"

    def _tool_call_events(self, chunk_id: str, model: str, round_: ToolCalls) -> list[bytes]:
        events = [_event(_chunk(chunk_id, model, {"role": "assistant", "content": None}))]
        events += [
            _event(_chunk(chunk_id, model, {"content": p})) for p in _split(round_.text, None)
        ]
        for index, call in enumerate(round_.calls):
            call_id, arguments = self._call_id(call), call.text()
            if round_.style == "openai":
                first = {"index": index, "id": call_id, "type": "function"}
                first["function"] = {"name": call.name, "arguments": ""}
                events.append(_event(_chunk(chunk_id, model, {"tool_calls": [first]})))
                size = round_.fragment_size
                for start in range(0, len(arguments), size):
                    piece = {
                        "index": index,
                        "function": {"arguments": arguments[start : start + size]},
                    }
                    events.append(_event(_chunk(chunk_id, model, {"tool_calls": [piece]})))
            else:
                whole = {
                    "index": 0 if round_.style == "ollama" else index,
                    "id": call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": arguments},
                }
                events.append(_event(_chunk(chunk_id, model, {"tool_calls": [whole]})))
        events.append(_event(_chunk(chunk_id, model, {}, finish_reason=round_.finish_reason)))
        if round_.done_marker:
            events.append(b"data: [DONE]\n\n")
        return events

    @staticmethod
    async def _send(response: web.StreamResponse, events: list[bytes], delay: float) -> None:
        if not delay:
            await response.write(b"".join(events))  # One write: keeps the fake fast.
            return
        for event in events:
            await response.write(event)
            await asyncio.sleep(delay)

    def _completion(self, recorded: RecordedRequest, text: str) -> dict[str, Any]:
        body = recorded.body
        return {
            "id": f"chatcmpl-fake-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model", "fake-model")),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": self._details(_usage(recorded, len(_split(text, None)))),
        }

    # --- responses ---

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        """The Responses API: the same behaviours as chat, in its own events."""
        taken = await self._take(request)
        if isinstance(taken, web.StreamResponse):
            return taken
        recorded, behaviour, limit_headers = taken
        body = recorded.body
        if isinstance(behaviour, RateLimited):
            return _rate_limited(behaviour)
        if isinstance(behaviour, ServerError):
            return _error(behaviour.status, behaviour.message, "server_error")
        if isinstance(behaviour, Refuse):
            return _error(behaviour.status, behaviour.message, behaviour.code)
        events = ResponseEvents(f"resp_fake{next(self._ids)}", str(body.get("model", "fake")))
        if isinstance(behaviour, Drawn):
            encoded = base64.b64encode(behaviour.image).decode()
            item = {"id": "ig_1", "type": "image_generation_call", "status": "generating"}
            done = {
                **item,
                "status": "completed",
                "output_format": behaviour.output_format,
                "result": encoded,
            }
            pieces = _split(behaviour.text, None)
            completed = events.response(
                "completed", behaviour.text, usage=responses_usage(10, len(pieces))
            )
            completed["output"] = [done, *completed["output"]]
            sequence = [
                *events.opening(),
                events.event("response.output_item.added", output_index=0, item=item),
                events.event(
                    "response.image_generation_call.partial_image",
                    output_index=0,
                    item_id="ig_1",
                    partial_image_index=0,
                    partial_image_b64=encoded[: len(encoded) // 2],
                ),
                events.event("response.output_item.done", output_index=0, item=done),
                *events.text(pieces),
                *events.text_done(behaviour.text),
                events.event("response.completed", response=completed),
            ]
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await self._send(response, sequence, 0.0)
            await response.write_eof()
            return response
        if isinstance(behaviour, McpApproval):
            item = {
                "id": behaviour.id,
                "type": "mcp_approval_request",
                "server_label": behaviour.server_label,
                "name": behaviour.name,
                "arguments": behaviour.arguments,
            }
            completed = events.response("completed", usage=responses_usage(10, 0))
            completed["output"] = [item]
            sequence = [
                *events.opening(),
                events.event("response.output_item.added", output_index=0, item=item),
                events.event("response.output_item.done", output_index=0, item=item),
                events.event("response.completed", response=completed),
            ]
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await self._send(response, sequence, 0.0)
            await response.write_eof()
            return response
        if isinstance(behaviour, ToolCalls):
            calls = [(self._call_id(call), call.name, call.text()) for call in behaviour.calls]
            sequence = events.opening()
            reasoning = None
            if behaviour.reasoning is not None:
                asked = self.sends_encrypted_reasoning and "reasoning.encrypted_content" in (
                    body.get("include") or []
                )
                streamed, reasoning = events.reasoning(behaviour.reasoning if asked else None)
                sequence += streamed
            sequence += events.function_calls(calls, reasoning=reasoning)
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await self._send(response, sequence, 0.0)
            await response.write_eof()
            return response
        dropped = behaviour if isinstance(behaviour, Dropped) else None
        if dropped is not None:
            behaviour = dropped.then
        text = self._text_of(behaviour, body)
        if isinstance(behaviour, Incomplete):
            text = behaviour.text
        pieces = _split(
            text, behaviour.chunk_size if isinstance(behaviour, Reply | CutMidway) else None
        )
        usage = responses_usage(prompt_tokens(body), len(pieces))
        usage["input_tokens_details"]["cached_tokens"] = self.cached_tokens
        usage["output_tokens_details"]["reasoning_tokens"] = self.reasoning_tokens
        if not body.get("stream"):
            return web.json_response(
                events.response("completed", text, usage=usage), headers=limit_headers
            )
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                **limit_headers,
            }
        )
        await response.prepare(request)
        sequence = events.opening()
        if isinstance(behaviour, ErrorInStream | ErrorEvent):
            code = (
                behaviour.code if isinstance(behaviour, ErrorEvent) else "context_length_exceeded"
            )
            sequence.append(events.error(str(code), behaviour.message))
        elif isinstance(behaviour, Failed):
            sequence.append(events.failed(behaviour.code, behaviour.message))
        elif isinstance(behaviour, CutMidway):
            sequence += events.text(pieces)
            await self._send(response, sequence, 0.0)
            if behaviour.clean_end:
                await response.write_eof()
            else:
                assert request.transport is not None
                request.transport.close()
            return response
        elif isinstance(behaviour, Incomplete):
            sequence += events.text(pieces) + events.text_done(text, "incomplete")
            sequence.append(events.incomplete(text, behaviour.reason, usage))
        else:
            sequence += events.text(pieces) + events.text_done(text)
            sequence.append(events.completed(text, usage))
        if body.get("background"):
            self.background[events.response_id] = sequence
            if dropped is not None:
                self.resume_modes[events.response_id] = dropped.resume
                self.running_polls[events.response_id] = dropped.running_polls
                await self._send(response, sequence[: dropped.after], 0.0)
                if dropped.hold:
                    await asyncio.Event().wait()  # until the client goes (or the fake stops)
                assert request.transport is not None
                request.transport.close()
                return response
        delay = (
            behaviour.delay_between_chunks
            if isinstance(behaviour, Reply) and behaviour.delay_between_chunks
            else self.default_delay_between_chunks
        )
        await self._send(response, sequence, delay)
        await response.write_eof()
        return response

    async def _follow(self, request: web.Request) -> web.StreamResponse:
        """`GET /v1/responses/{id}`: a background response's events after
        `starting_after` (`stream=true`), or the response as it stands."""
        self._record(request, {"query": dict(request.query)})
        response_id = request.match_info["response_id"]
        events = self.background.get(response_id)
        if events is None:
            return _error(404, "Response not found.", "not_found")
        mode = self.resume_modes.get(response_id, "stream")
        if request.query.get("stream") == "true" and mode == "refused":
            return _error(400, "Streaming a stored response is not supported.", "unsupported")
        if request.query.get("stream") != "true" or mode == "whole":
            last = json.loads(events[-1].split(b"data: ", 1)[1])
            final = last.get("response") or {}
            if self.running_polls.get(response_id, 0) > 0:
                self.running_polls[response_id] -= 1
                final = {**final, "status": "in_progress", "output": [], "usage": None}
            return web.json_response(final)
        after = int(request.query.get("starting_after", "-1"))
        later = [
            e for e in events if json.loads(e.split(b"data: ", 1)[1])["sequence_number"] > after
        ]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if mode == "cut":
            assert request.transport is not None
            request.transport.close()
            return response
        await self._send(response, later, 0.0)
        await response.write_eof()
        return response

    async def _overflow(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """A prompt over the window, answered as each kind of server answers it."""
        window, used = self.context_window, prompt_tokens(body, self.chars_per_token)
        if self.overflow == "empty":
            # llama.cpp-based servers have been seen to answer 200 with an empty body.
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write_eof()
            return response
        if self.overflow == "openai":
            message = (
                f"This model's maximum context length is {window} tokens. However, your "
                f"messages resulted in {used} tokens. Please reduce the length of the messages."
            )
            return _error(400, message, "context_length_exceeded")
        if self.overflow == "vllm":  # vLLM before 0.10: the error at the top level
            return web.json_response(
                {
                    "object": "error",
                    "message": f"This model's maximum context length is {window} tokens. "
                    f"However, you requested {used} tokens in the messages. "
                    "Please reduce the length of the messages.",
                    "type": "BadRequestError",
                    "param": None,
                    "code": 400,
                },
                status=400,
            )
        if self.overflow == "llamacpp":
            return web.json_response(
                {
                    "error": {
                        "code": 400,
                        "message": "the request exceeds the available context size, "
                        "try increasing it",
                        "type": "exceed_context_size_error",
                        "n_prompt_tokens": used,
                        "n_ctx": window,
                    }
                },
                status=400,
            )
        assert self.overflow == "llama-cpp-python", self.overflow
        message = f"Requested tokens ({used}) exceed context window of {window}"
        response = _error(400, message, "context_length_exceeded")
        return response

    async def _props(self, request: web.Request) -> web.Response:
        self._record(request, {})
        if self.discovery != "llamacpp":
            raise web.HTTPNotFound()
        return web.json_response(
            {
                "default_generation_settings": {"n_ctx": self.context_window, "temperature": 0.8},
                "total_slots": 1,
                "model_path": "/models/tiny.gguf",
            }
        )

    async def _show(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._record(request, body)
        if self.discovery != "ollama":
            raise web.HTTPNotFound()
        parameters = f'num_ctx                        {self.context_window}\nstop "<|eot_id|>"'
        return web.json_response(
            {
                "modelfile": "FROM /models/tiny.gguf",
                "parameters": parameters,
                "model_info": {
                    "general.architecture": "llama",
                    "llama.context_length": self.trained_window or self.context_window,
                },
            }
        )

    # --- audio ---

    async def _speech(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._record(request, body)
        if self.audio_key_rejected is not None:
            return self._key_rejected(request)
        text = str(body.get("input", ""))
        pcm_only = body.get("response_format") == "pcm"
        return web.Response(
            body=tone(seconds=speech_seconds(text), wav=not pcm_only),
            content_type="audio/pcm" if pcm_only else "audio/wav",
        )

    async def _transcription(self, request: web.Request) -> web.Response:
        fields: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader) or part.name is None:
                continue
            if part.filename:
                files[part.name] = bytes(await part.read())
            else:
                fields[part.name] = await part.text()
        self._record(request, fields, files)
        if self.audio_key_rejected is not None:
            return self._key_rejected(request)
        if self.transcription_delay:
            await asyncio.sleep(self.transcription_delay)
        if fields.get("response_format") == "text":
            return web.Response(text=self.transcript)
        return web.json_response({"text": self.transcript})

    def _key_rejected(self, request: web.Request) -> web.Response:
        assert self.audio_key_rejected is not None
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        masked = f"{key[:7]}{'*' * 12}{key[-4:]}"
        message = f"Incorrect API key provided: {key} ({masked})."
        return _error(self.audio_key_rejected, message, "invalid_api_key")

    async def _models(self, request: web.Request) -> web.Response:
        self._record(request, {})
        entry: dict[str, Any] = {"id": "fake-model", "object": "model"}
        if self.discovery == "vllm":
            entry.update(owned_by="vllm", max_model_len=self.context_window)
        elif self.discovery == "llamacpp":
            entry.update(
                owned_by="llamacpp",
                meta={"n_ctx_train": self.trained_window or self.context_window, "n_vocab": 32000},
            )
        return web.json_response({"object": "list", "data": [entry]})


# --- wire helpers ----------------------------------------------------------------


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _chunk(
    chunk_id: str, model: str, delta: dict[str, Any] | None, finish_reason: str | None = None
) -> dict[str, Any]:
    choices = (
        [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    )
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }


_WORDS = re.compile(r"\s*\S+\s*")


def _split(text: str, chunk_size: int | None) -> list[str]:
    if not text:
        return []
    if chunk_size:
        return [text[i : i + chunk_size] for i in range(0, len(text), chunk_size)]
    return _WORDS.findall(text) or [text]


def prompt_tokens(body: dict[str, Any], chars_per_token: int = 4) -> int:
    """The fake's own token count of a prompt: a quarter of the characters (about what
    English costs in a BPE tokenizer; `chars_per_token` for a server whose tokenizer
    counts otherwise), 4 more per message, as servers add framing."""
    messages = body.get("messages") or body.get("input") or []
    total = 0
    for message in messages if isinstance(messages, list) else [messages]:
        content = message.get("content", "") if isinstance(message, dict) else message
        if isinstance(content, list):
            content = " ".join(str(part.get("text", "")) for part in content)
        total += math.ceil(len(str(content)) / chars_per_token) + 4
    if isinstance(body.get("instructions"), str):
        total += math.ceil(len(body["instructions"]) / chars_per_token) + 4
    return total


def _ends_with_user(body: dict[str, Any]) -> bool:
    messages = body.get("messages") or body.get("input") or []
    return bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "user"


def _usage(request: RecordedRequest, completion_tokens: int) -> dict[str, int]:
    # A quarter of the request's bytes: counted without reading the prompt again (the
    # benchmarks time replies through this fake: splitting a 200-message prompt's
    # words took 50 us of each, against 3 us for a 10-message one).
    prompt_tokens = max(1, request.size // 4)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _rate_limited(behaviour: RateLimited) -> web.Response:
    headers: dict[str, str] = {}
    if not behaviour.omit_header:
        if behaviour.retry_after is not None:
            headers["Retry-After"] = str(behaviour.retry_after)
        if behaviour.retry_after_ms is not None:
            headers["retry-after-ms"] = str(behaviour.retry_after_ms)
    response = _error(429, "Rate limit reached for requests.", "rate_limit_exceeded")
    response.headers.update(headers)
    return response


def _error(status: int, message: str, code: str | None) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "fake_error", "param": None, "code": code}},
        status=status,
    )


SAMPLE_RATE = 24_000


def speech_seconds(text: str) -> float:
    """About 15 characters a second, like real speech; never under 0.2 s."""
    return min(60.0, max(0.2, len(text) / 15))


def tone(*, seconds: float, wav: bool = True, frequency: int = 400) -> bytes:
    """A quiet sine tone, 24 kHz mono 16-bit; WAV, or raw PCM when `wav` is False."""
    period = SAMPLE_RATE // frequency  # 400 Hz divides 24 kHz: one period repeats exactly.
    one = array("h", (int(3000 * math.sin(2 * math.pi * i / period)) for i in range(period)))
    frames = one * max(1, int(seconds * SAMPLE_RATE) // period)
    if sys.byteorder == "big":
        frames.byteswap()
    pcm = frames.tobytes()
    if not wav:
        return pcm
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm)
    return buffer.getvalue()


# --- pytest fixture ----------------------------------------------------------------


@pytest_asyncio.fixture
async def fake_model() -> AsyncIterator[FakeModelServer]:
    """A started fake model server; `fake_model.base_url` ends with /v1."""
    server = FakeModelServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# --- standalone ------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> None:
    server = FakeModelServer(
        port=args.port,
        keep_requests=100,
        default_delay_between_chunks=0.0 if args.instant else args.chunk_delay,
        answer=(lambda body: args.answer) if args.answer else echo_answer,
    )
    if args.call_tool:
        server.call_once = ToolCalls(CallTool(args.call_tool, "{}"), style="whole")
    await server.start()
    print(f"READY {server.base_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible model server.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--instant",
        action="store_true",
        default=True,
        help="answer at once, whole stream in one write (the default)",
    )
    parser.add_argument(
        "--chunk-delay",
        type=float,
        default=0.0,
        help="seconds between streamed chunks; implies not --instant",
    )
    parser.add_argument("--answer", default="", help="fixed answer instead of the echo")
    parser.add_argument(
        "--call-tool",
        default="",
        help="answer a request that offers tools with one call of this tool first",
    )
    args = parser.parse_args(argv)
    if args.chunk_delay:
        args.instant = False
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()

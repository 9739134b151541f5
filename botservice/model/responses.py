"""The model port over OpenAI's Responses API (`POST /v1/responses`), which OpenAI,
Ollama, vLLM and llama.cpp's server serve beside Chat Completions.

Same transport, retries, failures and stream protocol as the Chat Completions client
(botservice/model/client.py): only the request body and the events differ. Stateless:
`store: false`, and every turn sends the whole input from the bot's own history (the
bot's database is the memory; the provider keeps nothing beyond its own retention).

Tools: the core composes chat-completions messages (an assistant message with
`tool_calls`, `role: tool` results); they are sent as `function_call` and
`function_call_output` items, and the `function_call` items of the output are read
back as the stream's `tool_calls` (from `response.output_item.added`, the
`response.function_call_arguments.*` events, and `response.output_item.done`).

Events read: `response.output_text.delta` (and `response.refusal.delta`: a refusal
is the answer the person sees), then one terminal event: `response.completed`,
`response.incomplete` (length limit or content filter: like Chat's
`finish_reason: length`), `response.failed`, or `error`. Everything else (created,
in_progress, output_item.added, content_part.*, reasoning summaries...) is read past.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from urllib.parse import quote

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
from botservice.core.hosted_tools import MCP_APPROVED, MCP_PREFIX
from botservice.core.ports import ChatRequest, ChatResult, GeneratedFile
from botservice.core.prompt import REASONING_ITEMS
from botservice.core.settings import ModelSettings
from botservice.model.client import (
    _INCOMPLETE_REASONS,
    OpenAIChatClient,
    OpenAIChatStream,
    _close,
    _parse_usage,
    _requested_wait,
    context_overflow,
    function_spec,
)
from botservice.model.tool_calls import ToolCallAccumulator

log = logging.getLogger(__name__)

# How often a dropped background stream is resumed, and the pause before each try
# (growing with each).
MAX_RESUMES = 5
RESUME_PAUSE_SECONDS = 0.2
# A background response that cannot be streamed again is read whole until it ends:
# the first pause between reads, and the longest (each one doubles). All of it within
# the model's read timeout.
POLL_FIRST_PAUSE_SECONDS = 0.25
POLL_LONGEST_PAUSE_SECONDS = 5.0
# A response's statuses after which it changes no more.
_TERMINAL = frozenset({"completed", "failed", "incomplete", "cancelled"})
# What a dropped connection looks like once the client's own retries are spent.
_DROPS = (ModelStreamBroken, ModelTimeout, ModelUnreachable, ModelServerError)
# A response id as the endpoint names it; anything else is not followed.
_RESPONSE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
# The Responses API refuses a max_output_tokens below this.
MIN_OUTPUT_TOKENS = 16
_TEXT_DELTAS = {"response.output_text.delta", "response.refusal.delta"}
_REASON_LIMIT = 200
_CODE = re.compile(r"[A-Za-z0-9_.-]{1,40}")


class ResponsesError(ModelError):
    """A failure the endpoint named with a code this client does not know."""

    def __init__(self, code: str) -> None:
        super().__init__(f"the model endpoint reported an error ({code})")
        self.code = code

    @property
    def user_message(self) -> str:  # type: ignore[override]
        return f"The model endpoint reported an error ({self.code}); please try again."


class OpenAIResponsesClient(OpenAIChatClient):
    """`ModelClient` over `/responses`; selected with `[model] api = "responses"`."""

    path = "/responses"

    def stream(self, request: ChatRequest) -> ResponsesStream:
        return ResponsesStream(self, request)

    async def follow(self, response_id: str, *, after: int | None) -> httpx.Response:
        """Stream a background response's events again, those after event `after`
        (None: from its first); the body is left to read."""
        url = f"{self._url}/{quote(response_id, safe='')}"
        params = {"stream": "true"}
        if after is not None:
            params["starting_after"] = str(after)
        request = self.http.build_request(
            "GET", url, params=params, headers=self._request_headers[True], timeout=self._timeout
        )
        return await self.http.send(request, stream=True)

    async def poll(self, response_id: str) -> dict[str, Any]:
        """Read a background response (`GET /responses/{id}`) until its status is
        terminal, pausing longer after each read; within the read timeout in all.
        A failed read (the connection, a 5xx, a 429) is read again; a refusal is raised."""
        url = f"{self._url}/{quote(response_id, safe='')}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.read_timeout_seconds
        pause = POLL_FIRST_PAUSE_SECONDS
        while True:
            wait = pause
            try:
                response = await self.http.get(
                    url, headers=self._request_headers[False], timeout=self._timeout
                )
            except httpx.HTTPError as error:
                log.info("reading a background response failed (%s)", type(error).__name__)
            else:
                status = response.status_code
                if status == 429:
                    wait = max(pause, _requested_wait(response.headers) or 0.0)
                elif status == 404:
                    # Not "no such model", as a 404 to a request means: this response.
                    raise ModelError("the background response is gone from the endpoint")
                elif status < 500:
                    self._check_status(response)  # a refusal (no right, say) ends it
                    body = _response_body(response.content)
                    if body.get("status") in _TERMINAL:
                        return body
            if loop.time() + wait > deadline:
                raise ModelTimeout("the background response did not end within the read timeout")
            await asyncio.sleep(wait)
            pause = min(pause * 2, POLL_LONGEST_PAUSE_SECONDS)

    def encode(self, request: ChatRequest, *, stream: bool) -> bytes:
        approvals = _approval_ids(request.messages)
        body: dict[str, Any] = {
            "model": request.model,
            "input": [
                item for message in request.messages for item in _input_items(message, approvals)
            ],
            "store": False,
            # Stateless, so a reasoning model's thinking can only come back to it within
            # a turn as the encrypted items it returned (see `_input_items`).
            "include": ["reasoning.encrypted_content"],
        }
        if request.tools or request.hosted_tools:
            body["tools"] = [
                *({"type": "function", **function_spec(spec)} for spec in request.tools),
                *(dict(entry) for entry in request.hosted_tools),
            ]
            body["tool_choice"] = "none" if request.no_more_tools else "auto"
            if self._settings.parallel_tool_calls and request.tools and not request.no_more_tools:
                body["parallel_tool_calls"] = True
        if request.background:
            # OpenAI runs a response in the background only when it may keep it (for its
            # own retention): resuming and polling read it back by id.
            body["background"] = True
            body["store"] = True
        if request.max_tokens is not None:
            body["max_output_tokens"] = max(MIN_OUTPUT_TOKENS, request.max_tokens)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if stream:
            body["stream"] = True
        return orjson.dumps(body)

    def parse_result(self, raw: bytes) -> ChatResult:
        body = _response_body(raw)
        if "output" not in body:
            raise ModelError("the model endpoint sent a response that is not a response")
        output = body["output"]
        if body.get("status") == "failed" or body.get("error"):
            raise _error(body.get("error") or {}, shown=False, scrub=self._scrub)
        text = "".join(_output_text(output))
        if not text:
            raise ModelEmptyAnswer("the response has no text")
        return ChatResult(text=text, usage=_parse_usage(body.get("usage")))


# Events that carry nothing this client reads; three of them repeat the whole text.
_PASSED_OVER = frozenset(
    {
        b"response.created",
        b"response.in_progress",
        b"response.output_item.added",
        b"response.content_part.added",
        b"response.output_text.done",
        b"response.content_part.done",
        b"response.output_item.done",
    }
)
_TYPE_FIRST = b'{"type":"'
# Of those, the ones that announce or restate a function call when they carry one,
# or (done) a reasoning item.
_ITEM_EVENTS = frozenset({b"response.output_item.added", b"response.output_item.done"})
_KEPT_ITEMS = (
    b"function_call",
    b'"type":"reasoning"',
    b"mcp_approval_request",
    b"image_generation_call",
)
# An image's name and type by the format the endpoint made it in.
_IMAGE_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
# At most this many bytes of images are taken from one response (base64 decoded).
MAX_IMAGE_BYTES = 20 * 1024 * 1024


class ResponsesStream(OpenAIChatStream):
    """One streamed response, with the same conduct as a chat stream.

    In background mode (`ChatRequest.background`, or `resume_response` after a
    restart) the response's id is read from `response.created` (and handed to
    `on_started`), the `sequence_number` of every event is followed, and a stream that
    drops is resumed where it stopped (`GET /responses/{id}?stream=true&starting_after=
    <n>`) instead of asking again; a restart's `resume_response` is followed from its
    first event (a response the endpoint no longer has is asked for again). An
    endpoint that keeps the response but will not stream it again (it refuses, or
    answers the response whole) is read until the response ends (`poll`), and the
    text not yet shown comes as one last delta.
    """

    _client: OpenAIResponsesClient

    def __init__(self, client: OpenAIResponsesClient, request: ChatRequest) -> None:
        super().__init__(client, request)
        self.response_id: str | None = request.resume_response
        self._sequence: int | None = None
        self._resumes = 0
        # The endpoint itself reported a failure (an `error` or `response.failed`
        # event): that is the answer, not a dropped connection to resume.
        self._endpoint_failed = False
        # The text given out so far: a polled answer comes whole, and only what
        # follows it is still to show.
        self._given: list[str] = []

    @property
    def _background(self) -> bool:
        return self._request.background or self.response_id is not None

    async def _deltas(self) -> AsyncIterator[str]:
        while True:
            try:
                async for delta in super()._deltas():
                    self._shown_before = True
                    self._given.append(delta)
                    yield delta
                return
            except _NotStreamedAgain:
                break
            except _DROPS as error:
                if self.response_id is None or self._endpoint_failed:
                    raise
                if self._resumes >= MAX_RESUMES:
                    # Every stream drops (a proxy that cuts long connections, say):
                    # the response goes on at the endpoint all the same.
                    log.info("background response stream lost again; reading it whole instead")
                    break
                self._resumes += 1
                log.info(
                    "background response stream lost (%s); resuming after event %s",
                    type(error).__name__,
                    self._sequence,
                )
                await asyncio.sleep(min(RESUME_PAUSE_SECONDS * self._resumes, 5.0))
        async for delta in self._polled():
            yield delta

    def _begin_attempt(self) -> None:
        if self.response_id is not None and self._sequence is not None:
            return  # a resumed stream goes on from what was read
        super()._begin_attempt()

    async def _open(self) -> httpx.Response:
        if self.response_id is None:
            return await super()._open()
        client = self._client
        response = await client.follow(self.response_id, after=self._sequence)
        if (
            response.status_code == 404
            and self._sequence is None
            and self.response_id == self._request.resume_response
        ):
            # The endpoint no longer has it (expired, another key): ask again, once.
            await _close(response)
            log.warning("the background response to resume is gone; asking the model again")
            self.response_id = None
            return await super()._open()
        status = response.status_code
        streamed = "text/event-stream" in response.headers.get("content-type", "")
        if (status >= 400 and status != 429) or (status < 300 and not streamed):
            await _close(response)
            log.info("the endpoint does not stream the background response again (HTTP %d)", status)
            raise _NotStreamedAgain
        return response

    async def _polled(self) -> AsyncIterator[str]:
        """The background response read whole once it has ended; the text not yet
        shown is the one delta."""
        assert self.response_id is not None
        client = self._client
        body = await client.poll(self.response_id)
        status = body.get("status")
        if status == "failed":
            self._endpoint_failed = True
            failure = body.get("error")
            raise _error(
                failure if isinstance(failure, dict) else {},
                shown=bool(self._given),
                scrub=client._scrub,
            )
        if status == "cancelled":
            raise ModelError("the background response was cancelled at the endpoint")
        # The whole response is the truth: forget what the stream had read of it.
        self._calls, self.reasoning_items, self.generated_files = ToolCallAccumulator(), [], []
        reason = "stop"
        if status == "incomplete":
            details = body.get("incomplete_details")
            reason = str(
                (details.get("reason") if isinstance(details, dict) else None)
                or "max_output_tokens"
            )
        self._end({"response": body}, reason)
        text = "".join(_output_text(body.get("output")))
        shown = "".join(self._given)
        if not text.startswith(shown):
            log.warning("the background response read whole does not begin with the text shown")
        rest = text[len(shown) :]
        if rest:
            yield rest
        if self._calls:
            self.tool_calls = self._calls.calls()
            return
        incomplete = _INCOMPLETE_REASONS.get(reason) if status == "incomplete" else None
        if incomplete is not None:
            raise ModelAnswerIncomplete(incomplete)
        if not text:
            raise ModelEmptyAnswer("the background response has no text")

    def _read_chunk(self, data: bytes, *, shown: bool) -> str:
        # OpenAI writes `type` first: an event known to carry nothing needed is passed
        # over unparsed (a long answer's text comes three more times in them). Any
        # other layout is parsed whole, as is every event of a background response
        # (each one's sequence number is where a resumed stream starts).
        if data.startswith(_TYPE_FIRST) and not self._background:
            end = data.find(b'"', len(_TYPE_FIRST))
            kind = data[len(_TYPE_FIRST) : end]
            if kind in _PASSED_OVER and not (
                kind in _ITEM_EVENTS and any(marker in data for marker in _KEPT_ITEMS)
            ):
                return ""
        return super()._read_chunk(data, shown=shown)

    def _read_event(self, chunk: dict[str, Any], *, shown: bool) -> str:
        kind = chunk.get("type")
        if self._background:
            sequence = chunk.get("sequence_number")
            if isinstance(sequence, int):
                self._sequence = sequence
            if kind in ("response.created", "response.queued") and self.response_id is None:
                response = chunk.get("response")
                response_id = response.get("id") if isinstance(response, dict) else None
                if isinstance(response_id, str) and _RESPONSE_ID.fullmatch(response_id):
                    self.response_id = self._announce = response_id
        if kind in _TEXT_DELTAS:
            delta = chunk.get("delta")
            return delta if isinstance(delta, str) else ""
        if kind in ("response.output_item.added", "response.output_item.done"):
            self._function_call(chunk.get("output_index"), chunk.get("item"))
            if kind == "response.output_item.done":
                self._reasoning(chunk.get("item"))
                self._image(chunk.get("item"))
        elif kind == "response.function_call_arguments.delta":
            index, delta = chunk.get("output_index"), chunk.get("delta")
            if isinstance(index, int) and isinstance(delta, str):
                self._calls.feed([{"index": index, "function": {"arguments": delta}}])
        elif kind == "response.completed":
            self._end(chunk, "stop")
        elif kind == "response.incomplete":
            response = chunk.get("response")
            details = response.get("incomplete_details") if isinstance(response, dict) else None
            reason = details.get("reason") if isinstance(details, dict) else None
            self._end(chunk, str(reason or "max_output_tokens"))
        elif kind == "response.failed":
            response = chunk.get("response")
            failure = response.get("error") if isinstance(response, dict) else None
            self._endpoint_failed = True
            raise _error(failure or {}, shown=shown, scrub=self._client._scrub)
        elif kind == "error":
            self._endpoint_failed = True
            raise _error(chunk, shown=shown, scrub=self._client._scrub)
        return ""

    def _function_call(self, index: Any, item: Any) -> None:
        if not isinstance(index, int) or not isinstance(item, dict):
            return
        if item.get("type") == "mcp_approval_request":
            self._approval_request(index, item)
            return
        if item.get("type") != "function_call":
            return
        self._calls.replace(
            index,
            call_id=str(item.get("call_id") or ""),
            name=str(item.get("name") or ""),
            arguments=str(item.get("arguments") or ""),
        )

    def _approval_request(self, index: int, item: dict[str, Any]) -> None:
        """A remote MCP server's call waiting for approval, as a call of the tool loop's
        (`McpApprovals`): its name is the server's policy name, its arguments say which
        of the server's tools, with what."""
        label, name, request_id = item.get("server_label"), item.get("name"), item.get("id")
        if not (isinstance(label, str) and isinstance(name, str) and isinstance(request_id, str)):
            return
        raw = item.get("arguments")
        try:
            arguments = json.loads(raw) if isinstance(raw, str) and raw else {}
        except ValueError:
            arguments = raw
        self._calls.replace(
            index,
            call_id=request_id,
            name=MCP_PREFIX + label,
            arguments=json.dumps({"tool": name, "arguments": arguments}),
        )

    def _image(self, item: Any) -> None:
        """Keep an image the endpoint's image generation made, to post in the thread."""
        if not isinstance(item, dict) or item.get("type") != "image_generation_call":
            return
        result = item.get("result")
        if not isinstance(result, str) or not result:
            return
        try:
            data = base64.b64decode(result, validate=True)
        except ValueError:
            log.warning("an image from the endpoint could not be decoded; left out")
            return
        if sum(len(f.data) for f in self.generated_files) + len(data) > MAX_IMAGE_BYTES:
            log.warning("an image from the endpoint is over the size limit; left out")
            return
        kind = str(item.get("output_format") or "png")
        kind = kind if kind in _IMAGE_TYPES else "png"
        number = len(self.generated_files) + 1
        self.generated_files.append(
            GeneratedFile(name=f"image-{number}.{kind}", data=data, content_type=_IMAGE_TYPES[kind])
        )

    def _reasoning(self, item: Any) -> None:
        """Keep a reasoning item to send back with this round's calls. Only one with its
        encrypted content is of use: with `store: false` the endpoint cannot look an id up."""
        if not isinstance(item, dict) or item.get("type") != "reasoning":
            return
        encrypted = item.get("encrypted_content")
        if not isinstance(encrypted, str) or not encrypted:
            return
        summary = item.get("summary")
        kept: dict[str, Any] = {
            "type": "reasoning",
            "summary": summary if isinstance(summary, list) else [],
            "encrypted_content": encrypted,
        }
        if isinstance(item.get("id"), str):
            kept["id"] = item["id"]
        self.reasoning_items.append(kept)

    def _end(self, chunk: dict[str, Any], finish_reason: str) -> None:
        response = chunk.get("response")
        if isinstance(response, dict):
            usage = _parse_usage(response.get("usage"))
            if usage is not None:
                self.usage = usage
            output = response.get("output")
            output = output if isinstance(output, list) else []
            if not self._calls:  # a server that streamed no item events
                for index, item in enumerate(output):
                    self._function_call(index, item)
            if not self.reasoning_items:
                for item in output:
                    self._reasoning(item)
            if not self.generated_files:
                for item in output:
                    self._image(item)
        self.finish_reason = finish_reason
        self.finished = True


def open_model_client(settings: ModelSettings, **options: Any) -> OpenAIChatClient:
    """The client for the API `[model] api` names (`options`: as `OpenAIChatClient`'s)."""
    if settings.api == "responses":
        return OpenAIResponsesClient(settings, **options)
    return OpenAIChatClient(settings, **options)


def _approval_ids(messages: Sequence[dict[str, Any]]) -> frozenset[str]:
    """The ids of the calls in `messages` that are remote MCP approval requests."""
    ids: set[str] = set()
    for message in messages:
        for call in message.get("tool_calls") or () if message.get("role") == "assistant" else ():
            if str((call.get("function") or {}).get("name", "")).startswith(MCP_PREFIX):
                ids.add(str(call.get("id", "")))
    return frozenset(ids)


def _approval_items(call: dict[str, Any]) -> dict[str, Any]:
    """A remote MCP approval request (see `_approval_request`) as the endpoint sent it."""
    function = call.get("function") or {}
    try:
        asked = json.loads(function.get("arguments") or "{}")
    except ValueError:
        asked = {}
    asked = asked if isinstance(asked, dict) else {}
    arguments = asked.get("arguments", {})
    return {
        "type": "mcp_approval_request",
        "id": call.get("id", ""),
        "server_label": str(function.get("name", "")).removeprefix(MCP_PREFIX),
        "name": str(asked.get("tool", "")),
        "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
    }


def _input_items(
    message: dict[str, Any], approvals: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """A chat message as Responses input items (system and developer roles, and plain
    string content, are taken as they are): an assistant message with tool calls is
    the reasoning items the model returned with them in this turn (if any, in order),
    its text (if any) and one `function_call` item per call; a `role: tool` result is
    a `function_call_output`."""
    if message.get("role") == "tool" and message.get("tool_call_id") in approvals:
        return [
            {
                "type": "mcp_approval_response",
                "approval_request_id": message.get("tool_call_id", ""),
                "approve": message.get("content") == MCP_APPROVED,
            }
        ]
    if message.get("role") == "tool":
        return [
            {
                "type": "function_call_output",
                "call_id": message.get("tool_call_id", ""),
                "output": str(message.get("content") or ""),
            }
        ]
    content = message.get("content")
    calls = message.get("tool_calls") if message.get("role") == "assistant" else None
    if calls:
        items = [dict(item) for item in message.get(REASONING_ITEMS) or ()]
        if content:
            items.append({"role": "assistant", "content": content})
        for call in calls:
            if call.get("id") in approvals:
                items.append(_approval_items(call))
                continue
            function = call.get("function") or {}
            items.append(
                {
                    "type": "function_call",
                    "call_id": call.get("id", ""),
                    "name": function.get("name", ""),
                    "arguments": function.get("arguments", ""),
                }
            )
        return items
    if isinstance(content, list):
        content = [_input_part(part) for part in content]
    return [{"role": message["role"], "content": content}]


def _input_part(part: dict[str, Any]) -> dict[str, Any]:
    if part.get("type") == "text":
        return {"type": "input_text", "text": part.get("text", "")}
    if part.get("type") == "image_url":
        image = part.get("image_url") or {}
        url = image.get("url") if isinstance(image, dict) else image
        return {"type": "input_image", "image_url": url}
    return part


def _output_text(output: Any) -> list[str]:
    texts: list[str] = []
    for item in output if isinstance(output, list) else []:
        if not isinstance(item, dict) or item.get("type") != "message":
            continue
        for part in item.get("content") or []:
            if isinstance(part, dict) and part.get("type") in ("output_text", "refusal"):
                texts.append(str(part.get("text") or part.get("refusal") or ""))
    return texts


class _NotStreamedAgain(Exception):
    """The endpoint keeps the background response but will not stream it again."""


def _response_body(raw: bytes) -> dict[str, Any]:
    """A response object as the endpoint sent it whole."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ModelError("the model endpoint sent a response that is not a response")
    return body


def _error(raw: dict[str, Any], *, shown: bool, scrub: Callable[[str], str]) -> ModelError:
    """An `error` event or a failed response's `error`, as the error the core knows."""
    code = str(raw.get("code") or "")
    reason = scrub(str(raw.get("message") or code or "error"))[:_REASON_LIMIT]
    log.warning("the model endpoint reported an error in the response (code %s)", code or "none")
    if shown:
        return ModelStreamBroken(f"error in stream after text (code {code})")
    if (window := context_overflow(raw, reason)) is not False:
        return ModelContextExceeded(400, reason, window=window)
    if code == "rate_limit_exceeded":
        return ModelRateLimited(retry_after=None)
    if code in ("server_error", "internal_error", "vector_store_timeout"):
        return ModelServerError(500)
    if code.startswith("invalid_") or code in ("bad_request", "content_policy_violation"):
        return ModelRefused(400, reason)
    return ResponsesError(code if _CODE.fullmatch(code) else "unknown")

"""OpenTelemetry traces (the `otel` extra): a span per turn, with children for the store
operations, the model call and the platform API calls, exported over OTLP/HTTP.

Only imported when the extra is installed and `OTEL_EXPORTER_OTLP_ENDPOINT` is set
(`botservice.app.runtime.wanted_tracing`): otherwise no opentelemetry module is loaded.

What a span carries is chosen so that a trace backend never holds what people wrote:
the turn's ids and outcome, the model's name and token counts (GenAI semantic
conventions, without the optional content attributes), the store operation's name,
a platform call's method and status. Never message text, instructions, user names
or ids, channel ids, or the endpoint's URL path and credentials.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from typing import Any, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from botservice import __version__
from botservice.core.ports import (
    ChatRequest,
    ChatResult,
    ChatStream,
    ModelClient,
    RateLimits,
    Usage,
)
from botservice.core.settings import ModelSettings
from botservice.core.telemetry import Telemetry, TurnOutcome

# Spans of a turn still open when it ends (a model stream the core stopped reading):
# ended with the turn so none is lost.
_open_spans: ContextVar[list[Span] | None] = ContextVar("botservice_open_spans", default=None)


class Tracing:
    """The tracer provider and the wrappers that put spans around the turn's parts."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("botservice", __version__)

    @classmethod
    def from_environment(cls) -> Tracing:
        """Spans batched and sent to `OTEL_EXPORTER_OTLP_ENDPOINT` (+ `/v1/traces`); the
        exporter and the batch processor read the standard `OTEL_*` variables."""
        resource = Resource.create({"service.version": __version__}).merge(
            Resource.create({"service.name": _service_name()})
        )
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return cls(provider)

    # --- the core's span port ---

    @contextlib.contextmanager
    def turn(self, platform: str, *, turn_id: int, conversation_id: int) -> Iterator[None]:
        opened: list[Span] = []
        reset = _open_spans.set(opened)
        try:
            with self._tracer.start_as_current_span(
                "turn",
                kind=SpanKind.INTERNAL,
                attributes={
                    "botservice.platform": platform,
                    "botservice.turn.id": turn_id,
                    "botservice.conversation.id": conversation_id,
                },
                # An exception's message may hold a statement's values or the model's
                # words: the class name only (`_failed`).
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    yield
                except BaseException as error:
                    _failed(span, error)
                    raise
                finally:
                    for child in opened:
                        if child.is_recording():
                            child.set_status(Status(StatusCode.ERROR, "abandoned"))
                            child.end()
        finally:
            _open_spans.reset(reset)

    # --- wrappers ---

    def telemetry(self, inner: Telemetry) -> Telemetry:
        return TracingTelemetry(inner, self._tracer)

    def store(self, store: Any, *, system: str) -> Any:
        return TracedStore(store, self._tracer, system=system)

    def model(self, client: ModelClient, settings: ModelSettings) -> ModelClient:
        return TracedModelClient(client, self._tracer, settings)

    def shutdown(self) -> None:
        """Send what is buffered and stop (blocking: an HTTP request; run it in a thread)."""
        self._provider.shutdown()


def _service_name() -> str:
    # Given attributes win over the environment's in `Resource.create`: read it here.
    return os.environ.get("OTEL_SERVICE_NAME") or "botservice"


class TracingTelemetry:
    """The `Telemetry` port passed on to `inner` (Prometheus or nothing), with what a
    trace shows: the turn's outcome, model attempts and retries as events on the model
    span, and each platform API call as a child span of its turn."""

    def __init__(self, inner: Telemetry, tracer: trace.Tracer) -> None:
        self._inner = inner
        self._tracer = tracer

    # --- passed on as they are ---

    def message_accepted(self, platform: str) -> None:
        self._inner.message_accepted(platform)

    def message_redelivered(self, platform: str) -> None:
        self._inner.message_redelivered(platform)

    def turn_started(self, platform: str, *, resumed: bool) -> None:
        self._inner.turn_started(platform, resumed=resumed)
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("botservice.turn.resumed", resumed)

    def first_text(self, platform: str, model: str, seconds: float) -> None:
        self._inner.first_text(platform, model, seconds)

    def final_text(self, platform: str, model: str, seconds: float) -> None:
        self._inner.final_text(platform, model, seconds)

    def tokens(
        self,
        model: str,
        *,
        prompt: int,
        completion: int,
        cached: int = 0,
        reasoning: int = 0,
    ) -> None:
        # On the model span already (`TracedStream`), from the same usage.
        self._inner.tokens(
            model, prompt=prompt, completion=completion, cached=cached, reasoning=reasoning
        )

    def edit_budget(self, platform: str, in_use: float) -> None:
        self._inner.edit_budget(platform, in_use)

    def edit_skipped(self, platform: str) -> None:
        self._inner.edit_skipped(platform)

    def purged(self, kind: str, count: int) -> None:
        self._inner.purged(kind, count)

    def voice_session(self, platform: str, delta: int) -> None:
        self._inner.voice_session(platform, delta)

    def spoken(self, platform: str, seconds: float) -> None:
        self._inner.spoken(platform, seconds)

    # --- also shown in the trace ---

    def turn_finished(self, platform: str, outcome: TurnOutcome, reason: str = "") -> None:
        self._inner.turn_finished(platform, outcome, reason)
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("botservice.turn.outcome", outcome)
            if reason:
                span.set_attribute("botservice.turn.failure_reason", reason)
            if outcome == "failed":
                span.set_status(Status(StatusCode.ERROR, reason or None))

    def model_request(self, model: str, status: str) -> None:
        self._inner.model_request(model, status)
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event("model.attempt", {"botservice.model.status": status})

    def model_retry(self, model: str, wait_seconds: float, *, rate_limited: bool) -> None:
        self._inner.model_retry(model, wait_seconds, rate_limited=rate_limited)
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(
                "model.retry",
                {
                    "botservice.model.wait_seconds": wait_seconds,
                    "botservice.rate_limited": rate_limited,
                },
            )

    def platform_call(
        self, platform: str, method: str, status: str, *, seconds: float = 0.0
    ) -> None:
        self._inner.platform_call(platform, method, status, seconds=seconds)
        if not trace.get_current_span().is_recording():
            return  # outside a turn (start-up, commands): no trace to join
        ended = time.time_ns()
        span = self._tracer.start_span(
            f"{platform} {method}",
            kind=SpanKind.CLIENT,
            start_time=ended - int(seconds * 1e9),
            attributes={
                "botservice.platform": platform,
                "botservice.platform.method": method,
                "botservice.platform.status": status,
            },
        )
        if status != "ok":
            span.set_status(Status(StatusCode.ERROR, status))
        span.end(end_time=ended)


class TracedStore:
    """The store with each operation inside a turn as a child span named after the
    operation (the `Store` port's method names; never the statement or its values)."""

    def __init__(self, store: Any, tracer: trace.Tracer, *, system: str) -> None:
        self._store = store
        self._tracer = tracer
        self._system = system
        self._wrapped: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        wrapped = self._wrapped.get(name)
        if wrapped is not None:
            return wrapped
        value = getattr(self._store, name)
        if not inspect.iscoroutinefunction(value):
            return value
        tracer = self._tracer
        attributes = {"db.system.name": self._system, "db.operation.name": name}

        @functools.wraps(value)
        async def traced(*args: Any, **kwargs: Any) -> Any:
            # The heartbeat and the sweep run outside turns every few seconds: they
            # would each be a trace of their own, all noise.
            if not trace.get_current_span().is_recording():
                return await value(*args, **kwargs)
            with tracer.start_as_current_span(
                f"store {name}",
                kind=SpanKind.CLIENT,
                attributes=attributes,
                # SQLAlchemy's messages quote the statement and its parameters.
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    return await value(*args, **kwargs)
                except BaseException as error:
                    _failed(span, error)
                    raise

        self._wrapped[name] = traced
        return traced


class TracedModelClient:
    """The model client with each completion as a GenAI client span: operation, system,
    requested model, token counts; never the prompt or the answer."""

    def __init__(self, client: ModelClient, tracer: trace.Tracer, settings: ModelSettings) -> None:
        self._client = client
        self._tracer = tracer
        address = urllib.parse.urlsplit(settings.base_url)
        # Host and port only: a URL's path and query may hold a deployment or a key.
        self._server: dict[str, str | int] = {"server.address": address.hostname or ""}
        if address.port is not None:
            self._server["server.port"] = address.port

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _start(self, request: ChatRequest) -> Span:
        attributes: dict[str, str | int] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": "openai",
            "gen_ai.request.model": request.model,
            **self._server,
        }
        if request.max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = request.max_tokens
        return self._tracer.start_span(
            f"chat {request.model}", kind=SpanKind.CLIENT, attributes=attributes
        )

    def stream(self, request: ChatRequest) -> ChatStream:
        span = self._start(request)
        opened = _open_spans.get()
        if opened is not None:
            opened.append(span)
        # Read-only views of the inner stream's fields: a `ChatStream` to its reader.
        return cast(ChatStream, TracedStream(self._client.stream(request), span))

    async def complete(self, request: ChatRequest) -> ChatResult:
        span = self._start(request)
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False):
                result = await self._client.complete(request)
        except BaseException as error:
            _end(span, None, error)
            raise
        _end(span, result.usage, None)
        return result

    async def list_models(self) -> list[str]:
        return await self._client.list_models()

    async def context_window(self, model: str, *, fresh: bool = False) -> int | None:
        return await self._client.context_window(model, fresh=fresh)

    async def aclose(self) -> None:
        await self._client.aclose()


class TracedStream:
    """A `ChatStream` whose span is current while the client reads the next delta (so
    attempts and retries land on it) and ends with the stream, carrying its usage."""

    def __init__(self, inner: ChatStream, span: Span) -> None:
        self._inner = inner
        self._span = span
        self._deltas: AsyncIterator[str] | None = None
        self._answering = False

    @property
    def usage(self) -> Usage | None:
        return self._inner.usage

    @property
    def finished(self) -> bool:
        return self._inner.finished

    @property
    def rate_limits(self) -> RateLimits | None:
        return self._inner.rate_limits

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __aiter__(self) -> AsyncIterator[str]:
        self._deltas = self._inner.__aiter__()
        return self

    async def __anext__(self) -> str:
        if self._deltas is None:
            self._deltas = self._inner.__aiter__()
        if self._answering:
            # Past the first delta the client makes no more attempts: no context to set.
            try:
                return await self._deltas.__anext__()
            except StopAsyncIteration:
                _end(self._span, self._inner.usage, None)
                raise
            except BaseException as error:
                _end(self._span, None, error)
                raise
        # Current only around the read, never across the yield to the core.
        token = otel_context.attach(trace.set_span_in_context(self._span))
        try:
            delta = await self._deltas.__anext__()
        except StopAsyncIteration:
            _end(self._span, self._inner.usage, None)
            raise
        except BaseException as error:
            _end(self._span, None, error)
            raise
        finally:
            otel_context.detach(token)
        self._answering = True
        return delta


def _end(span: Span, usage: Usage | None, error: BaseException | None) -> None:
    if not span.is_recording():
        return
    if usage is not None:
        span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
        if usage.cached_tokens:
            span.set_attribute("gen_ai.usage.cache_read.input_tokens", usage.cached_tokens)
        if usage.reasoning_tokens:
            span.set_attribute("gen_ai.usage.reasoning.output_tokens", usage.reasoning_tokens)
    if error is not None:
        _failed(span, error)
    span.end()


def _failed(span: Span, error: BaseException) -> None:
    # The class name only: an error's message may quote the request, the model's words
    # or a statement's values.
    span.set_attribute("error.type", type(error).__name__)
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))

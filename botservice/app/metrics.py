"""Prometheus metrics for `botservice run`: the `Telemetry` port over prometheus-client,
the gauges read from the core at scrape time, the store's latency, and `GET /metrics`.

Each process exposes its own metrics on its own HTTP port (no shared files, no
multiprocess mode): a deployment of several processes is scraped as several targets
(README "Metrics"). Labels are platforms, models, outcomes, API method names and status
classes: never a user, a channel or any text, so the number of series is bounded
whatever the traffic. Model names come from the operator's configuration (or the
endpoint's list); past `MAX_MODEL_LABELS` distinct names, the rest count as "other".
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from botservice import __version__
from botservice.core.conversation import CoreLoad
from botservice.core.settings import Settings
from botservice.core.telemetry import TurnOutcome

MAX_MODEL_LABELS = 50
OTHER = "other"
# Seconds from a message to the model's first text / the final text: chat answers take
# from well under a second (a small local model) to minutes (a long reasoning answer).
_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300)
_WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60)
_QUERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
_TOKEN_KINDS = ("prompt", "completion", "cached", "reasoning")

# Every metric name this module exports (the dashboard test checks its queries against it).
EXPORTED = (
    "botservice_info",
    "botservice_messages_accepted_total",
    "botservice_messages_redelivered_total",
    "botservice_turns_started_total",
    "botservice_turns_total",
    "botservice_time_to_first_text_seconds",
    "botservice_time_to_final_text_seconds",
    "botservice_model_requests_total",
    "botservice_model_retries_total",
    "botservice_model_retry_wait_seconds",
    "botservice_model_tokens_total",
    "botservice_model_cost_dollars_total",
    "botservice_platform_calls_total",
    "botservice_edit_budget_in_use_ratio",
    "botservice_edits_skipped_total",
    "botservice_pending_turns",
    "botservice_running_turns",
    "botservice_model_calls_running",
    "botservice_model_calls_waiting",
    "botservice_store_operation_seconds",
    "botservice_purged_rows_total",
    "botservice_voice_sessions",
    "botservice_spoken_seconds_total",
)


class PrometheusTelemetry:
    """`botservice.core.telemetry.Telemetry` recorded in a registry of its own."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._settings = settings
        self._models: set[str] = set(settings.configured_models)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        Gauge("botservice_info", "The running version.", ["version"], registry=r).labels(
            __version__
        ).set(1)
        self._accepted = Counter(
            "botservice_messages_accepted",
            "New messages stored to be answered.",
            ["platform"],
            registry=r,
        )
        self._redelivered = Counter(
            "botservice_messages_redelivered",
            "Messages dropped because they had been taken already (redeliveries, repeats).",
            ["platform"],
            registry=r,
        )
        self._started = Counter(
            "botservice_turns_started",
            "Turns this process began to answer; resumed: after a stop or a takeover.",
            ["platform", "resumed"],
            registry=r,
        )
        self._turns = Counter(
            "botservice_turns",
            "Turns by how they ended (answered, failed with a reason, interrupted, taken_over).",
            ["platform", "outcome", "reason"],
            registry=r,
        )
        self._first = Histogram(
            "botservice_time_to_first_text_seconds",
            "Seconds from the message being stored to the model's first text.",
            ["platform", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._final = Histogram(
            "botservice_time_to_final_text_seconds",
            "Seconds from the message being stored to the final text being shown.",
            ["platform", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._requests = Counter(
            "botservice_model_requests",
            "HTTP attempts at the model endpoint by status class (2xx, 4xx, 429, 5xx, transport).",
            ["model", "status"],
            registry=r,
        )
        self._retries = Counter(
            "botservice_model_retries",
            "Model requests tried again; cause: rate_limited (429) or error.",
            ["model", "cause"],
            registry=r,
        )
        self._waits = Histogram(
            "botservice_model_retry_wait_seconds",
            "Seconds waited before trying a model request again.",
            ["model", "cause"],
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self._tokens = Counter(
            "botservice_model_tokens",
            "Tokens the model endpoint reported: prompt (in), completion (out), and of "
            "those, cached and reasoning.",
            ["model", "kind"],
            registry=r,
        )
        self._cost = Counter(
            "botservice_model_cost_dollars",
            "Cost of the tokens at the configured prices per model.",
            ["model"],
            registry=r,
        )
        self._platform_calls = Counter(
            "botservice_platform_calls",
            "Platform API calls by method and outcome.",
            ["platform", "method", "status"],
            registry=r,
        )
        self._budget = Gauge(
            "botservice_edit_budget_in_use_ratio",
            "Share of the busiest workspace's streaming-edit budget that is spent (1: edits "
            "are being skipped).",
            ["platform"],
            registry=r,
        )
        self._skipped = Counter(
            "botservice_edits_skipped",
            "Streaming edits skipped to keep the budget for final texts.",
            ["platform"],
            registry=r,
        )
        self._store_seconds = Histogram(
            "botservice_store_operation_seconds",
            "Seconds one store operation took (each is one or a few database statements).",
            ["operation"],
            buckets=_QUERY_BUCKETS,
            registry=r,
        )
        self._purged = Counter(
            "botservice_purged_rows",
            "Rows the expiry job deleted.",
            ["kind"],
            registry=r,
        )
        self._voice = Gauge(
            "botservice_voice_sessions",
            "Voice channels the bot is in now.",
            ["platform"],
            registry=r,
        )
        self._spoken = Counter(
            "botservice_spoken_seconds",
            "Seconds of speech played into voice channels.",
            ["platform"],
            registry=r,
        )

    # --- bounded labels ---

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, remembered: prometheus-client takes a lock and builds
        a key on every `labels` call (several microseconds); the label sets are few."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _model(self, model: str) -> str:
        if model in self._models:
            return model
        if len(self._models) < MAX_MODEL_LABELS:
            self._models.add(model)
            return model
        return OTHER

    # --- the port ---

    def message_accepted(self, platform: str) -> None:
        self._child(self._accepted, platform).inc()

    def message_redelivered(self, platform: str) -> None:
        self._child(self._redelivered, platform).inc()

    def turn_started(self, platform: str, *, resumed: bool) -> None:
        self._child(self._started, platform, "true" if resumed else "false").inc()

    def turn_finished(self, platform: str, outcome: TurnOutcome, reason: str = "") -> None:
        self._child(self._turns, platform, outcome, reason).inc()

    def first_text(self, platform: str, model: str, seconds: float) -> None:
        self._child(self._first, platform, self._model(model)).observe(seconds)

    def final_text(self, platform: str, model: str, seconds: float) -> None:
        self._child(self._final, platform, self._model(model)).observe(seconds)

    def model_request(self, model: str, status: str) -> None:
        self._child(self._requests, self._model(model), status).inc()

    def model_retry(self, model: str, wait_seconds: float, *, rate_limited: bool) -> None:
        cause = "rate_limited" if rate_limited else "error"
        label = self._model(model)
        self._child(self._retries, label, cause).inc()
        self._child(self._waits, label, cause).observe(wait_seconds)

    def tokens(
        self,
        model: str,
        *,
        prompt: int,
        completion: int,
        cached: int = 0,
        reasoning: int = 0,
    ) -> None:
        label = self._model(model)
        for kind, count in zip(_TOKEN_KINDS, (prompt, completion, cached, reasoning), strict=True):
            if count:
                self._child(self._tokens, label, kind).inc(count)
        cost = self._settings.token_cost(model, prompt=prompt, completion=completion, cached=cached)
        if cost:
            self._child(self._cost, label).inc(cost)

    def platform_call(
        self, platform: str, method: str, status: str, *, seconds: float = 0.0
    ) -> None:
        self._child(self._platform_calls, platform, method, status).inc()

    def edit_budget(self, platform: str, in_use: float) -> None:
        self._child(self._budget, platform).set(in_use)

    def edit_skipped(self, platform: str) -> None:
        self._child(self._skipped, platform).inc()

    def purged(self, kind: str, count: int) -> None:
        self._child(self._purged, kind).inc(count)

    def voice_session(self, platform: str, delta: int) -> None:
        self._child(self._voice, platform).inc(delta)

    def spoken(self, platform: str, seconds: float) -> None:
        self._child(self._spoken, platform).inc(seconds)

    # --- the rest ---

    def store_operation(self, operation: str, seconds: float) -> None:
        self._child(self._store_seconds, operation).observe(seconds)

    def watch_core(self, load: Callable[[], CoreLoad]) -> None:
        """Read the core's pending and running turns and its model-call queue at each scrape."""
        self.registry.register(_CoreLoadCollector(load))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def handle(self, request: web.Request) -> web.Response:
        """`GET /metrics` in Prometheus' text format."""
        return web.Response(body=self.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


class _CoreLoadCollector(Collector):
    def __init__(self, load: Callable[[], CoreLoad]) -> None:
        self._load = load

    def collect(self) -> Iterator[GaugeMetricFamily]:
        load = self._load()
        for name, help_text, value in (
            (
                "botservice_pending_turns",
                "Turns accepted or claimed by this process and not started yet.",
                load.pending_turns,
            ),
            ("botservice_running_turns", "Turns this process is answering.", load.running_turns),
            (
                "botservice_model_calls_running",
                "Model calls running now (at most limits.max_concurrent_model_calls).",
                load.model_calls_running,
            ),
            (
                "botservice_model_calls_waiting",
                "Turns queued for a model call (at most limits.max_queued_turns).",
                load.model_calls_waiting,
            ),
        ):
            yield GaugeMetricFamily(name, help_text, value=value)


class TimedStore:
    """The store with each operation timed into `botservice_store_operation_seconds`,
    labelled by the operation's name (a fixed set: the `Store` port's methods).

    A proxy rather than code in the store: storage stays free of metrics, and the
    timing includes waiting for a connection, which is what a slow turn feels.
    """

    def __init__(self, store: Any, telemetry: PrometheusTelemetry) -> None:
        self._store = store
        self._telemetry = telemetry
        self._wrapped: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        wrapped = self._wrapped.get(name)
        if wrapped is not None:
            return wrapped
        value = getattr(self._store, name)
        if not inspect.iscoroutinefunction(value):
            return value  # properties and plain methods pass straight through
        observe = self._telemetry.store_operation

        @functools.wraps(value)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await value(*args, **kwargs)
            finally:
                observe(name, time.perf_counter() - started)

        self._wrapped[name] = timed
        return timed

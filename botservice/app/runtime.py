"""Wiring: settings -> store, model client, core -> adapters, HTTP server, scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from botservice.app import preflight
from botservice.app.expiry import start_expiry_soon
from botservice.app.tool_sources import (
    build_tool_sources,
    close_tool_sources,
    start_tool_sources,
)
from botservice.core.accept_loop import AcceptLoop, AcceptsOnOwnLoop
from botservice.core.conversation import ConversationCore
from botservice.core.errors import ConfigError
from botservice.core.ports import Adapter, PendingTurn, ReplySink, Store
from botservice.core.redact import redact_url
from botservice.core.settings import Settings
from botservice.core.telemetry import NO_TELEMETRY, Telemetry
from botservice.core.tools import ToolSource
from botservice.core.tracing import NO_TRACER
from botservice.core.usage import UsageLedger
from botservice.model.client import OpenAIChatClient
from botservice.model.responses import open_model_client
from botservice.model.tokens import TokenCounter
from botservice.storage.opening import open_store

if TYPE_CHECKING:
    import httpx
    from aiohttp import web
    from sqlalchemy.ext.asyncio import AsyncEngine

    from botservice.app.metrics import PrometheusTelemetry
    from botservice.app.tracing import Tracing
    from botservice.storage.repository import SqlStore

log = logging.getLogger(__name__)

READY_CHECK_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    store: SqlStore
    model: OpenAIChatClient
    core: ConversationCore
    usage: UsageLedger
    # Set for `botservice run` (served at /metrics); None for the console and tools.
    metrics: PrometheusTelemetry | None = None
    # Where the model's tools come from: the built-in tools, then each MCP server.
    tool_sources: Sequence[ToolSource] = ()

    @property
    def telemetry(self) -> Telemetry:
        return self.metrics if self.metrics is not None else NO_TELEMETRY

    @property
    def database(self) -> AsyncEngine:
        """The one engine, for libraries that keep tables of their own in it (slack-sdk's
        OAuth stores); see `library_engine`."""
        return library_engine(self.store)


def library_engine(store: SqlStore) -> AsyncEngine:
    """The store's engine as handed to a library that runs its own statements on our
    migrated tables (slack-sdk's OAuth stores).

    On SQLite each of its transactions takes the write lock when it begins: the
    stores' writes read first (find the row, then insert or update), and a read
    that turns into a write fails with SQLITE_BUSY, without waiting, once another
    connection has written in between. Their reads are one short SELECT each. The
    option is ignored on PostgreSQL. The store owns and disposes of the engine.
    """
    from botservice.storage.engine import SQLITE_WRITE_OPTION

    return store.engine.execution_options(**{SQLITE_WRITE_OPTION: True})


def require_model_endpoint(settings: Settings) -> None:
    """The one configuration mistake every newcomer makes first gets a sentence of its own."""
    preflight.require_model_endpoint(settings.model.base_url, settings.model.api_key)


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    metrics: bool = False,
    traces: bool = False,
    tools: bool = False,
    console: bool = False,
) -> AsyncIterator[Services]:
    """Open the database (bringing SQLite up to date by itself), the model client and the core;
    with `metrics`, each of them reports to one `PrometheusTelemetry`; with `traces`, turns
    are traced when the environment asks for it (`open_tracing`); with `tools`, the tool
    sources are built and started (the bot answering: `run`, `chat`; never `purge` or
    reports, which would start MCP servers for nothing); with `console`, the model client
    talks over `H11Transport` (one person's turns, one after another) instead of
    aiohttp's pool, whose import would be a good part of the wait for the first answer."""
    # The hot path's pool: as many connections as turns may call the model at once.
    opened = await open_store(
        settings.database_url, concurrency=settings.limits.max_concurrent_model_calls
    )
    store, usage = opened.store, opened.usage
    try:
        tool_sources = build_tool_sources(settings, store) if tools else []
    except BaseException:
        if opened.importing_rest is not None:
            opened.importing_rest.cancel()
        await store.aclose()
        raise
    telemetry: PrometheusTelemetry | None = None
    reports: Telemetry = NO_TELEMETRY
    core_store: Store = store
    if metrics:
        # Imported here: prometheus-client and the timing wrappers cost the console
        # (`botservice chat`, no /metrics) a tenth of its start-up.
        from botservice.app.metrics import PrometheusTelemetry, TimedStore

        telemetry = PrometheusTelemetry(settings)
        reports = telemetry
        core_store = cast(Store, TimedStore(store, telemetry))
    tracing = open_tracing() if traces else None
    if tracing is not None:
        reports = tracing.telemetry(reports)
        core_store = cast(Store, tracing.store(core_store, system=tracing_system(store)))
    model = open_model_client(
        settings.model, telemetry=reports, transport=_model_transport(console)
    )
    # Exact counts from a second after start; over-estimates until then (TokenCounter).
    tokens = TokenCounter(load_now=False)
    core = ConversationCore(
        settings=settings,
        store=core_store,
        model=tracing.model(model, settings.model) if tracing is not None else model,
        tokens=tokens,
        telemetry=reports,
        usage=usage,
        feedback=store,
        tracer=tracing if tracing is not None else NO_TRACER,
        tool_sources=tool_sources,
    )
    if telemetry is not None:
        core_load = core
        telemetry.watch_core(lambda: core_load.load)
    exact_counts = tokens.load_exact_soon()
    try:
        # MCP servers that are down are retried in the background: this never fails.
        await start_tool_sources(tool_sources)
        yield Services(
            settings=settings,
            store=store,
            model=model,
            core=core,
            usage=usage,
            metrics=telemetry,
            tool_sources=tool_sources,
        )
    finally:
        exact_counts.cancel()
        if opened.importing_rest is not None:
            opened.importing_rest.cancel()
        await core.stop()
        await close_tool_sources(tool_sources)
        await model.aclose()
        await store.aclose()
        if tracing is not None:
            # Sends the spans still batched: a blocking HTTP request, off the loop.
            await asyncio.to_thread(tracing.shutdown)


def _model_transport(console: bool) -> httpx.AsyncBaseTransport | None:
    """The console's transport, or None for the model client's own (aiohttp's pool, which
    many answers streaming at once need)."""
    if not console:
        return None
    from botservice.model.h11_transport import H11Transport

    return H11Transport()


def open_tracing() -> Tracing | None:
    """OpenTelemetry traces when `OTEL_EXPORTER_OTLP_ENDPOINT` (or its traces-only form)
    is set and the `otel` extra is installed; otherwise None, and no opentelemetry
    module is imported at all."""
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not endpoint or os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    try:
        from botservice.app.tracing import Tracing
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the otel extra is not installed "
            "(pip install 'botservice[otel]'); traces are off"
        )
        return None
    return Tracing.from_environment()


def tracing_system(store: SqlStore) -> str:
    return "postgresql" if store.shared else "sqlite"


async def serve(
    services: Services,
    adapters: Sequence[Adapter],
    *,
    with_http: bool,
    stop: asyncio.Event | None = None,
) -> None:
    """Start adapters, the HTTP server and the expiry scheduler; run until SIGINT/SIGTERM
    (or until `stop` is set, for an embedding program)."""
    settings = services.settings
    stop_expiry = start_expiry_soon(
        services.store, settings.storage, telemetry=services.telemetry, usage=services.usage
    )
    runner: web.AppRunner | None = None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    accept_loop, accepting = (
        open_accept_loop(services.store, adapters)
        if with_http and settings.http.accept_thread
        else (None, [])
    )
    try:
        if with_http:
            # Before Slack can call: no acknowledgement waits for a new connection.
            accepting_connections = services.store.open_accept_connections()
            await (
                accepting_connections
                if accept_loop is None
                else accept_loop.run(accepting_connections)
            )
            serving = start_http_server(
                services.store,
                adapters,
                settings.http.port,
                host=settings.http.host,
                metrics=services.metrics,
                accept_loop=accept_loop,
                accepting=accepting,
            )
            runner = await (serving if accept_loop is None else accept_loop.run(serving))
        for adapter in adapters:
            await adapter.start()
            log.info("%s adapter started", adapter.platform)
        log.info(
            "%s",
            startup_summary(
                settings,
                adapters,
                metrics=services.metrics is not None,
                tool_sources=services.tool_sources,
            ),
        )
        # Answers what a stop left behind, then sweeps for turns of processes that
        # die while others run on the same database.
        await services.core.start(_sink_router(adapters))
        await stop.wait()
    finally:
        # Answers in flight finish while their platforms are still connected;
        # messages arriving meanwhile are stored and answered after the restart.
        await services.core.stop()
        for adapter in adapters:
            with contextlib.suppress(Exception):
                await adapter.stop()
        if runner is not None:
            cleanup = runner.cleanup()
            await (cleanup if accept_loop is None else accept_loop.run(cleanup))
        if accept_loop is not None:
            await accept_loop.stop()
        stop_expiry()


def open_accept_loop(
    store: SqlStore, adapters: Sequence[Adapter]
) -> tuple[AcceptLoop | None, list[Adapter]]:
    """The accept loop (botservice.core.accept_loop), started, and the adapters that
    acknowledge on it (`[http] accept_thread`), when the store is shared (PostgreSQL)
    and one can; otherwise None (SQLite, the console, Socket Mode only): everything
    stays on the main loop."""
    if not store.shared or not any(isinstance(a, AcceptsOnOwnLoop) for a in adapters):
        return None, []
    accept_loop = AcceptLoop()
    # Closed last: the connections the store opened on that loop.
    accept_loop.on_stop(store.leave_loop)
    accepting: list[Adapter] = [
        a for a in adapters if isinstance(a, AcceptsOnOwnLoop) and a.accept_on(accept_loop)
    ]
    if not accepting:
        accept_loop.loop.close()  # never started
        return None, []
    accept_loop.start()
    log.info("acknowledging %s events on their own thread", ",".join(a.platform for a in accepting))
    return accept_loop, accepting


def startup_summary(
    settings: Settings,
    adapters: Sequence[Adapter],
    *,
    metrics: bool,
    tool_sources: Sequence[ToolSource] = (),
) -> str:
    """The one line that says what this process serves (no secrets: URLs lose their
    credentials). `tools=` counts the tools each source offers (an MCP server that is
    down has none yet)."""
    database = redact_url(settings.database_url)
    platforms = ",".join(adapter.platform for adapter in adapters) or "none"
    tools = ",".join(f"{source.name}:{len(source.tools())}" for source in tool_sources) or "none"
    return (
        f"botservice started: adapters={platforms} database={database} "
        f"model_endpoint={redact_url(settings.model.base_url)} model={settings.model.name} "
        f"tools={tools} metrics={'/metrics' if metrics else 'off'}"
    )


async def start_http_server(
    store: Store,
    adapters: Sequence[Adapter],
    port: int,
    *,
    metrics: PrometheusTelemetry | None = None,
    host: str = "0.0.0.0",
    accept_loop: AcceptLoop | None = None,
    accepting: Sequence[Adapter] = (),
) -> web.AppRunner:
    """Serve HTTP on the running loop. With `accept_loop` (run there), the routes of an
    adapter that does not acknowledge on it are run on the main loop."""
    # Imported here: `botservice chat` serves no HTTP and starts faster without it.
    from aiohttp import web

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", Readiness(store, adapters).handle)
    if metrics is not None:
        app.router.add_get("/metrics", metrics.handle)
    for adapter in adapters:
        routes = adapter.http_routes()
        if accept_loop is not None and adapter not in accepting:
            routes = [_on_home(route, accept_loop) for route in routes]
        app.router.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host=host, port=port)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        # A taken or forbidden port is the port's fault; an unknown name or an
        # address this machine does not have is the host's.
        port_problem = error.errno in (errno.EADDRINUSE, errno.EACCES)
        raise ConfigError(
            "PORT" if port_problem else "http.host",
            f"cannot listen on {host}:{port} ({error.strerror})",
        ) from None
    log.info("HTTP server listening on %s:%d", host, port)
    return runner


def _on_home(route: web.AbstractRouteDef, accept_loop: AcceptLoop) -> web.AbstractRouteDef:
    """The route with its handler run on the main loop (its body read here first: the
    request's stream belongs to the accept loop, a read body is kept in memory)."""
    from aiohttp import web

    if not isinstance(route, web.RouteDef):
        return route
    handler = route.handler

    async def on_home(request: web.Request) -> web.StreamResponse:
        await request.read()
        return await accept_loop.on_home(handler(request))  # type: ignore[arg-type]

    return web.route(route.method, route.path, on_home, **route.kwargs)


async def _healthz(request: web.Request) -> web.Response:
    """Liveness: the process serves HTTP. Nothing it depends on is asked."""
    from aiohttp import web

    return web.json_response({"status": "ok"})


class Readiness:
    """`GET /readyz`: 200 when the database answers and every enabled platform
    connection is up, 503 naming what is not (for load balancers: send no traffic
    to a process that could not store it)."""

    def __init__(self, store: Store, adapters: Sequence[Adapter]) -> None:
        self._store = store
        self._adapters = adapters

    async def handle(self, request: web.Request) -> web.Response:
        from aiohttp import web

        problems: dict[str, str] = {}
        try:
            async with asyncio.timeout(READY_CHECK_TIMEOUT_SECONDS):
                reachable = await self._store.ping()
        except TimeoutError:
            reachable = False
        if not reachable:
            problems["database"] = "unreachable"
        for adapter in self._adapters:
            if not adapter.is_connected():
                problems[adapter.platform] = "disconnected"
        if problems:
            return web.json_response({"status": "not ready", **problems}, status=503)
        return web.json_response({"status": "ready"})


def _sink_router(adapters: Sequence[Adapter]) -> Callable[[PendingTurn], ReplySink | None]:
    by_platform = {adapter.platform: adapter for adapter in adapters}

    def sink_for(turn: PendingTurn) -> ReplySink | None:
        adapter = by_platform.get(turn.platform)
        return adapter.sink_for(turn) if adapter is not None else None

    return sink_for

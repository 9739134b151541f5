"""Wiring: settings -> store, model client, core -> adapters, HTTP server, scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from botservice.app.expiry import start_expiry_scheduler
from botservice.core.conversation import ConversationCore
from botservice.core.errors import ConfigError
from botservice.core.ports import Adapter, PendingTurn, ReplySink, Store
from botservice.core.settings import Settings
from botservice.model.client import OpenAIChatClient
from botservice.model.tokens import TokenCounter
from botservice.storage.engine import check_connection, create_engine, is_sqlite
from botservice.storage.migrate import current_revision, head_revision, upgrade
from botservice.storage.repository import SqlStore

log = logging.getLogger(__name__)

READY_CHECK_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    store: SqlStore
    model: OpenAIChatClient
    core: ConversationCore


def require_model_endpoint(settings: Settings) -> None:
    """The one configuration mistake every newcomer makes first gets a sentence of its own."""
    if settings.model.api_key is None and "api.openai.com" in settings.model.base_url:
        raise ConfigError(
            "OPENAI_API_KEY",
            "no model endpoint is configured: set OPENAI_API_KEY to use OpenAI, or point "
            "OPENAI_BASE_URL at a local OpenAI-compatible server, e.g. "
            "OPENAI_BASE_URL=http://localhost:11434/v1 for Ollama",
        )


@contextlib.asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    """Open the database (bringing SQLite up to date by itself), the model client and the core."""
    engine = create_engine(settings.database_url)
    try:
        await check_connection(engine)
        if is_sqlite(engine):
            await upgrade(engine)
        else:
            # Several processes share a PostgreSQL database: migrating is an
            # operator's step (`botservice db upgrade`), never a race at start-up.
            if await current_revision(engine) != head_revision():
                raise ConfigError(
                    "DATABASE_URL",
                    "the database schema is not up to date; run `botservice db upgrade` once",
                )
    except BaseException:
        await engine.dispose()
        raise
    store = SqlStore(engine)
    model = OpenAIChatClient(settings.model)
    core = ConversationCore(
        settings=settings, store=store, model=model, tokens=TokenCounter(), feedback=store
    )
    try:
        yield Services(settings=settings, store=store, model=model, core=core)
    finally:
        await core.stop()
        await model.aclose()
        await store.aclose()


async def serve(services: Services, adapters: Sequence[Adapter], *, with_http: bool) -> None:
    """Start adapters, the HTTP server and the expiry scheduler; run until SIGINT/SIGTERM."""
    settings = services.settings
    scheduler = start_expiry_scheduler(services.store, settings.storage)
    runner: web.AppRunner | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    try:
        if with_http:
            runner = await start_http_server(services.store, adapters, settings.server.port)
        for adapter in adapters:
            await adapter.start()
            log.info("%s adapter started", adapter.platform)
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
            await runner.cleanup()
        scheduler.shutdown(wait=False)


async def start_http_server(store: Store, adapters: Sequence[Adapter], port: int) -> web.AppRunner:
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", Readiness(store, adapters).handle)
    for adapter in adapters:
        app.router.add_routes(adapter.http_routes())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host="0.0.0.0", port=port)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise ConfigError("PORT", f"cannot listen on port {port} ({error.strerror})") from None
    log.info("HTTP server listening on port %d", port)
    return runner


async def _healthz(request: web.Request) -> web.Response:
    """Liveness: the process serves HTTP. Nothing it depends on is asked."""
    return web.json_response({"status": "ok"})


class Readiness:
    """`GET /readyz`: 200 when the database answers and every enabled platform
    connection is up, 503 naming what is not (for load balancers: send no traffic
    to a process that could not store it)."""

    def __init__(self, store: Store, adapters: Sequence[Adapter]) -> None:
        self._store = store
        self._adapters = adapters

    async def handle(self, request: web.Request) -> web.Response:
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

"""A fake OpenTelemetry collector on 127.0.0.1: OTLP/HTTP with protobuf bodies.

`POST /v1/traces` takes an `ExportTraceServiceRequest` (gzip or not), decodes it with
the opentelemetry-proto message classes and keeps every span; `.bodies` keeps the
exported bytes as they arrived (decompressed), so a test can search them for text
that must never leave the process.

Standalone, for benchmarks (prints "READY <base_url>"; keeps a count, not the spans):

    python -m tests.fakes.otlp_collector
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest_asyncio
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass(frozen=True)
class CollectedSpan:
    name: str
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    kind: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int
    start_ns: int
    end_ns: int
    resource: dict[str, Any]


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


class FakeCollector:
    def __init__(self, *, keep: bool = True) -> None:
        self.keep = keep
        self.span_count = 0
        self.spans: list[CollectedSpan] = []
        self.bodies: list[bytes] = []
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _traces(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415, text="protobuf only")
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        if not self.keep:
            self.span_count += sum(
                len(scope.spans) for rs in export.resource_spans for scope in rs.scope_spans
            )
            return _ok()
        self.bodies.append(body)
        for resource_spans in export.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        CollectedSpan(
                            name=span.name,
                            trace_id=span.trace_id,
                            span_id=span.span_id,
                            parent_span_id=span.parent_span_id,
                            kind=span.kind,
                            attributes=_attributes(span.attributes),
                            events=[(e.name, _attributes(e.attributes)) for e in span.events],
                            status_code=span.status.code,
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            resource=resource,
                        )
                    )
        return _ok()

    def named(self, name: str) -> list[CollectedSpan]:
        return [span for span in self.spans if span.name == name]

    def children_of(self, parent: CollectedSpan) -> list[CollectedSpan]:
        return [s for s in self.spans if s.parent_span_id == parent.span_id]

    async def wait_for(self, condition: Callable[[], bool], seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"the collector never got {what}: {self.spans}")
            await asyncio.sleep(0.05)


def _ok() -> web.Response:
    return web.Response(
        body=ExportTraceServiceResponse().SerializeToString(),
        content_type="application/x-protobuf",
    )


@pytest_asyncio.fixture
async def otlp_collector() -> AsyncIterator[FakeCollector]:
    collector = FakeCollector()
    await collector.start()
    try:
        yield collector
    finally:
        await collector.close()


async def _serve() -> None:
    collector = FakeCollector(keep=False)
    await collector.start()
    print(f"READY {collector.base_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    print(f"SPANS {collector.span_count}", flush=True)
    await collector.close()


if __name__ == "__main__":
    asyncio.run(_serve())

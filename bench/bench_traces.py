"""What traces cost the core: bench/bench_core.py's load through `botservice run`'s
wiring with metrics only, and with metrics and traces, beside no telemetry, in one run.

- off: no telemetry (what `botservice chat` runs without OTEL_EXPORTER_OTLP_ENDPOINT);
- metrics: `PrometheusTelemetry` as `botservice run` wires it (bench_metrics' variant);
- metrics + traces: the same with `botservice.app.tracing` on top (a span per turn, its
  store operations, the model call), batched and exported over OTLP/HTTP to the fake
  collector in a process of its own (`tests/fakes/otlp_collector.py`), as in production.

Rounds alternate between the variants. Prints replies/s and this process's CPU time per
reply at 50 concurrent conversations (the export thread included), and the core-added
latency at 1 conversation (median, p99). CPU per reply is the steadier figure on a
shared machine.

    python -m bench.bench_traces [--conversations 50] [--turns 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

from bench.bench_core import (
    ROOT,
    Row,
    TimedTransport,
    pct,
    print_table,
    start_fake_model,
)
from bench.bench_metrics import measure_variants
from botservice.app.metrics import PrometheusTelemetry, TimedStore
from botservice.app.runtime import open_tracing
from botservice.core.conversation import ConversationCore
from botservice.core.ports import Store
from botservice.core.settings import Settings
from botservice.core.telemetry import Telemetry
from botservice.model.client import OpenAIChatClient, pooled_transport
from botservice.storage.repository import SqlStore

VARIANTS = ("off", "metrics", "metrics + traces")


@contextlib.asynccontextmanager
async def variant_core(
    name: str, settings: Settings, store: SqlStore
) -> AsyncIterator[tuple[ConversationCore, TimedTransport]]:
    transport = TimedTransport(pooled_transport())
    if name == "off":
        client = OpenAIChatClient(settings.model, transport=transport)
        core = ConversationCore(settings=settings, store=store, model=client)
        try:
            yield core, transport
        finally:
            await core.stop()
            await client.aclose()
        return
    metrics = PrometheusTelemetry(settings)
    telemetry: Telemetry = metrics
    core_store = cast(Store, TimedStore(store, metrics))
    tracing = open_tracing() if name == "metrics + traces" else None
    if tracing is not None:
        telemetry = tracing.telemetry(telemetry)
        core_store = cast(Store, tracing.store(core_store, system="sqlite"))
    client = OpenAIChatClient(settings.model, transport=transport, telemetry=telemetry)
    core = ConversationCore(
        settings=settings,
        store=core_store,
        model=tracing.model(client, settings.model) if tracing is not None else client,
        telemetry=telemetry,
        **({"tracer": tracing} if tracing is not None else {}),
    )
    metrics.watch_core(lambda: core.load)
    try:
        yield core, transport
    finally:
        await core.stop()
        await client.aclose()
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)


async def main_async(args: argparse.Namespace, base_url: str, database: Path) -> list[Row]:
    results = await measure_variants(args, base_url, database, VARIANTS, variant_core)
    n = args.conversations
    base = results["off"]
    base_rate = statistics.median(base.rates)
    base_cpu = statistics.median(base.cpu_ms)
    base_p99 = pct(base.added_ms, 0.99)
    rows: list[Row] = []
    for name in VARIANTS:
        r = results[name]
        rate = statistics.median(r.rates)
        cpu = statistics.median(r.cpu_ms)
        p99 = pct(r.added_ms, 0.99)
        vs = name != "off"
        rows.append(
            Row(
                f"replies/s at {n} conversations, {name}",
                f"{rate:.0f}",
                note=(f"{(rate - base_rate) / base_rate:+.1%} vs off; " if vs else "")
                + ", ".join(f"{x:.0f}" for x in r.rates),
            )
        )
        rows.append(
            Row(
                f"CPU per reply at {n} conversations, {name}",
                f"{cpu:.2f} ms",
                note=(f"{(cpu - base_cpu) / base_cpu:+.1%} vs off; " if vs else "")
                + ", ".join(f"{x:.2f}" for x in r.cpu_ms),
            )
        )
        rows.append(
            Row(
                f"core-added latency, 1 conversation, {name}, median / p99",
                f"{statistics.median(r.added_ms):.2f} / {p99:.2f} ms",
                note=f"{p99 - base_p99:+.2f} ms vs off" if vs else "",
            )
        )
    return rows


def start_collector() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.otlp_collector"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().split()
    assert line and line[0] == "READY", line
    return process, line[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--turns", type=int, default=20, help="per conversation and run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant")
    parser.add_argument("--single-turns", type=int, default=100, help="turns at 1 conversation")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model, base_url = start_fake_model()
    collector, collector_url = start_collector()
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector_url
    try:
        with tempfile.TemporaryDirectory() as folder:
            rows = asyncio.run(main_async(args, base_url, Path(folder) / "bench.db"))
    finally:
        model.terminate()
        model.wait()
        collector.terminate()
        spans, _ = collector.communicate(timeout=10)
    print_table(rows)
    print(spans.strip())


if __name__ == "__main__":
    main()

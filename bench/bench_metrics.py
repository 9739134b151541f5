"""What metrics cost the core: bench/bench_core.py's load with metrics off and on, in one run.

Three cores over one SQLite file and one loopback fake model (in a process of its own):

- off: no telemetry (what `botservice chat` and the tests run);
- metrics: `PrometheusTelemetry` wired as `botservice run` wires it (the core, the model
  client and every store operation timed), with `/metrics` scraped every second;
- metrics + usage: the same, and each answer's usage row written (one more write a turn).

Rounds alternate between the variants, so a change in the machine's load hits all
alike. Prints replies/s and this process's CPU time per reply at 50 concurrent
conversations, and the core-added latency at 1 conversation (median, p99), each variant
beside "off". On a machine shared with other work the wall-clock figures swing with its
load; CPU per reply does not, so it is the one to compare.

    python -m bench.bench_metrics [--conversations 50] [--turns 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from bench.bench_core import (
    ROOT,
    Row,
    TimedTransport,
    Timings,
    drive,
    pct,
    print_table,
    start_fake_model,
)
from botservice.app.config import load_settings
from botservice.app.metrics import PrometheusTelemetry, TimedStore
from botservice.core.conversation import ConversationCore
from botservice.core.ports import Store
from botservice.core.settings import Settings
from botservice.model.client import OpenAIChatClient, pooled_transport
from botservice.storage.repository import SqlStore
from botservice.storage.usage_ledger import SqlUsage

VARIANTS = ("off", "metrics", "metrics + usage")
TARGET_APART = 0.03


@dataclass
class Results:
    rates: list[float] = field(default_factory=list)
    added_ms: list[float] = field(default_factory=list)
    # CPU seconds of this process (every thread: the event loop and SQLite's) per reply
    # under load. Other processes on a shared machine slow the wall clock, not this.
    cpu_ms: list[float] = field(default_factory=list)


@contextlib.asynccontextmanager
async def variant_core(
    name: str, settings: Settings, store: SqlStore
) -> AsyncIterator[tuple[ConversationCore, TimedTransport]]:
    transport = TimedTransport(pooled_transport())
    telemetry = PrometheusTelemetry(settings) if name != "off" else None
    scraper: asyncio.Task[None] | None = None
    if telemetry is None:
        client = OpenAIChatClient(settings.model, transport=transport)
        core = ConversationCore(settings=settings, store=store, model=client)
    else:
        client = OpenAIChatClient(settings.model, transport=transport, telemetry=telemetry)
        core = ConversationCore(
            settings=settings,
            store=cast(Store, TimedStore(store, telemetry)),
            model=client,
            telemetry=telemetry,
            usage=SqlUsage(store) if name == "metrics + usage" else None,
        )
        telemetry.watch_core(lambda: core.load)

        async def scrape_every_second() -> None:
            while True:
                await asyncio.sleep(1.0)
                telemetry.exposition()

        scraper = asyncio.create_task(scrape_every_second())
    try:
        yield core, transport
    finally:
        if scraper is not None:
            scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scraper
        await core.stop()
        await client.aclose()


VariantCore = Callable[
    [str, Settings, SqlStore], contextlib.AbstractAsyncContextManager[tuple[Any, Any]]
]


async def measure_variants(
    args: argparse.Namespace,
    base_url: str,
    database: Path,
    variants: Sequence[str],
    variant_core: VariantCore,
) -> dict[str, Results]:
    """bench_core's load through each variant's core, rounds interleaved (round 0 warms
    up): added latency at one conversation, then replies/s and CPU per reply at
    `args.conversations`. Shared by bench_metrics and bench_traces."""
    settings: Settings = load_settings(
        {
            "OPENAI_BASE_URL": base_url,
            "OPENAI_API_KEY": "sk-bench",
            "BOTSERVICE_CONFIG": str(ROOT / "config" / "botservice.toml"),
            "BOTSERVICE_LIMITS__MESSAGES_PER_MINUTE": "0",
        }
    )
    store = await SqlStore.open(f"sqlite+aiosqlite:///{database}")
    results = {name: Results() for name in variants}
    n = args.conversations
    try:
        for round_number in range(args.rounds + 1):
            for name in variants:
                async with variant_core(name, settings, store) as (core, transport):
                    tag = f"{name}.{round_number}"
                    if round_number == 0:  # warm-up: connections, SQLite pages, code paths
                        await drive(core, Timings(), [f"warm{tag}.{i}" for i in range(n)], 3)
                        continue
                    single = transport.timings = Timings()
                    await drive(core, single, [f"single{tag}"], args.single_turns)
                    results[name].added_ms += single.added_ms()
                    cpu = time.process_time()
                    rate = await drive(
                        core, Timings(), [f"load{tag}.{i}" for i in range(n)], args.turns
                    )
                    cpu = time.process_time() - cpu
                    results[name].rates.append(rate)
                    results[name].cpu_ms.append(1000 * cpu / (n * args.turns))
    finally:
        await store.aclose()

    return results


async def main_async(args: argparse.Namespace, base_url: str, database: Path) -> list[Row]:
    results = await measure_variants(args, base_url, database, VARIANTS, variant_core)
    n = args.conversations
    base = results["off"]
    base_rate = statistics.median(base.rates)
    base_p99 = pct(base.added_ms, 0.99)
    rows: list[Row] = []
    for name in VARIANTS:
        result = results[name]
        rate = statistics.median(result.rates)
        apart = "" if name == "off" else f"{(rate - base_rate) / base_rate:+.1%} vs off"
        rows.append(
            Row(
                f"replies/s at {n} conversations, {name}",
                f"{rate:.0f}",
                "" if name == "off" else f"within {TARGET_APART:.0%}",
                f"{apart}; median of {args.rounds}: " + ", ".join(f"{r:.0f}" for r in result.rates),
            )
        )
    base_cpu = statistics.median(base.cpu_ms)
    for name in VARIANTS:
        result = results[name]
        cpu = statistics.median(result.cpu_ms)
        rows.append(
            Row(
                f"CPU per reply at {n} conversations, {name}",
                f"{cpu:.2f} ms",
                "" if name == "off" else f"within {TARGET_APART:.0%}",
                ("" if name == "off" else f"{(cpu - base_cpu) / base_cpu:+.1%} vs off; ")
                + f"median of {args.rounds}: "
                + ", ".join(f"{c:.2f}" for c in result.cpu_ms),
            )
        )
    for name in VARIANTS:
        result = results[name]
        p99 = pct(result.added_ms, 0.99)
        note = "" if name == "off" else f"{p99 - base_p99:+.2f} ms vs off"
        rows.append(
            Row(
                f"core-added latency, 1 conversation, {name}, median / p99",
                f"{statistics.median(result.added_ms):.2f} / {p99:.2f} ms",
                note=note,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--turns", type=int, default=20, help="per conversation and run")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each variant")
    parser.add_argument("--single-turns", type=int, default=100, help="turns at 1 conversation")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    process, base_url = start_fake_model()
    try:
        with tempfile.TemporaryDirectory() as folder:
            rows = asyncio.run(main_async(args, base_url, Path(folder) / "bench.db"))
    finally:
        process.terminate()
        process.wait()
    print_table(rows)


if __name__ == "__main__":
    main()

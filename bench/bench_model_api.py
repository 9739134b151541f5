"""Responses API backend vs Chat Completions backend, side by side in one run.

The conversation core through a null sink against the loopback fake model (in a
process of its own, answering instantly: `/v1/chat/completions` and `/v1/responses`
from the same server), each backend on a SQLite file of its own. The two backends
take turns, round by round, so a change in machine load hits both alike.

Prints, per backend and their ratio (goal: within 10 %):

- the latency the core adds to one reply at 1 conversation, median and p99 (message
  in -> request handed to the transport, plus last byte of the answer -> sink
  finished: the model's own time left out, the client's parsing of its events in);
- replies per second at 50 concurrent conversations (median of `--rounds` runs).

    python -m bench.bench_model_api [--conversations 50] [--turns 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.bench_core import (
    ROOT,
    TimedTransport,
    Timings,
    drive,
    pct,
    start_fake_model,
)
from botservice.app.config import load_settings
from botservice.core.conversation import ConversationCore
from botservice.model.client import OpenAIChatClient, pooled_transport
from botservice.model.responses import OpenAIResponsesClient
from botservice.storage.repository import SqlStore

APIS = ("chat", "responses")
GOAL = 0.10


@dataclass
class Backend:
    api: str
    core: ConversationCore
    transport: TimedTransport
    client: OpenAIChatClient
    store: SqlStore
    added: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)


async def open_backend(api: str, base_url: str, database: Path) -> Backend:
    settings = load_settings(
        {
            "OPENAI_BASE_URL": base_url,
            "OPENAI_API_KEY": "sk-bench",
            "BOTSERVICE_CONFIG": str(ROOT / "config" / "botservice.toml"),
            "BOTSERVICE_MODEL__API": api,
            "BOTSERVICE_LIMITS__MESSAGES_PER_MINUTE": "0",
        }
    )
    store = await SqlStore.open(f"sqlite+aiosqlite:///{database}")
    transport = TimedTransport(pooled_transport())
    kind = OpenAIResponsesClient if api == "responses" else OpenAIChatClient
    client = kind(settings.model, transport=transport)
    core = ConversationCore(settings=settings, store=store, model=client)
    return Backend(api, core, transport, client, store)


async def main_async(args: argparse.Namespace, base_url: str, folder: Path) -> list[Row]:
    backends = [await open_backend(api, base_url, folder / f"{api}.db") for api in APIS]
    n = args.conversations
    try:
        for backend in backends:  # warm-up: connections, SQLite pages, code paths
            await drive(backend.core, Timings(), [f"warm{i}" for i in range(n)], 3)
        for run in range(args.rounds):
            for backend in backends if run % 2 == 0 else reversed(backends):
                single = backend.transport.timings = Timings()
                await drive(backend.core, single, [f"single{run}"], args.single_turns)
                backend.added += single.added_ms()
                backend.transport.timings = Timings()
                threads = [f"load{run}.{i}" for i in range(n)]
                backend.rates.append(
                    await drive(backend.core, backend.transport.timings, threads, args.turns)
                )
    finally:
        for backend in backends:
            await backend.client.aclose()
            await backend.store.aclose()
    chat, responses = backends
    rows = []
    for label, pick in (
        ("core-added latency, 1 conversation, median (ms)", lambda b: statistics.median(b.added)),
        ("core-added latency, 1 conversation, p99 (ms)", lambda b: pct(b.added, 0.99)),
        (f"replies/s at {n} concurrent conversations", lambda b: statistics.median(b.rates)),
    ):
        a, b = pick(chat), pick(responses)
        rows.append(Row(label, f"{a:.2f}", f"{b:.2f}", f"{b / a:.2f}x"))
    rows.append(
        Row(
            "runs of replies/s",
            ", ".join(f"{r:.0f}" for r in chat.rates),
            ", ".join(f"{r:.0f}" for r in responses.rates),
            f"goal: within {GOAL:.0%}",
        )
    )
    return rows


@dataclass(frozen=True)
class Row:
    measure: str
    chat: str
    responses: str
    ratio: str


def print_table(rows: list[Row]) -> None:
    table = [Row("measure", "chat", "responses", "responses/chat"), *rows]
    widths = [
        max(len(getattr(row, name)) for row in table) for name in ("measure", "chat", "responses")
    ]
    for row in table:
        print(
            f"{row.measure:<{widths[0]}}  {row.chat:>{widths[1]}}  "
            f"{row.responses:>{widths[2]}}  {row.ratio}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--turns", type=int, default=10, help="per conversation and run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per backend")
    parser.add_argument("--single-turns", type=int, default=100, help="turns at 1 conversation")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    process, base_url = start_fake_model()
    try:
        with tempfile.TemporaryDirectory() as folder:
            rows = asyncio.run(main_async(args, base_url, Path(folder)))
    finally:
        process.terminate()
        process.wait()
    print_table(rows)


if __name__ == "__main__":
    main()

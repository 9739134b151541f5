"""Core benchmark: the conversation core through a fake sink, against the loopback fake
model answering instantly (in a process of its own), on SQLite.

Prints replies per second at 50 concurrent conversations; the latency the core adds
(message in -> model request sent, plus model stream ended -> sink finished), median
and p99, at 1 and at 50 concurrent conversations; and time per reply in a thread that
already holds 10 vs 5,000 messages.

    python -m bench.bench_core [--conversations 50] [--turns 20]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from botservice.conversation import ConversationCore
from botservice.events import IncomingMessage
from botservice.model_client import OpenAIChatClient
from botservice.ports import ChatRequest, ChatStream, ModelClient, Usage
from botservice.settings import Settings, load_settings
from storage.repository import SqlStore

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Timings:
    submitted: dict[str, float] = field(default_factory=dict)
    request_sent: dict[str, float] = field(default_factory=dict)
    stream_ended: dict[str, float] = field(default_factory=dict)
    finished: dict[str, float] = field(default_factory=dict)

    def added_ms(self) -> list[float]:
        return [
            1000
            * (
                (self.request_sent[key] - self.submitted[key])
                + (self.finished[key] - self.stream_ended[key])
            )
            for key in self.finished
        ]


class TimedStream:
    """Notes when the model request goes out and when its stream ends."""

    def __init__(self, inner: ChatStream, key: str, timings: Timings) -> None:
        self._inner, self._key, self._timings = inner, key, timings
        self.usage: Usage | None = None
        self.finished = False

    async def __aiter__(self) -> AsyncIterator[str]:
        self._timings.request_sent[self._key] = time.perf_counter()
        async for delta in self._inner:
            yield delta
        self._timings.stream_ended[self._key] = time.perf_counter()
        self.usage, self.finished = self._inner.usage, self._inner.finished


class TimedModel:
    """The real model client, with the bench's stopwatch around each stream."""

    def __init__(self, inner: ModelClient, timings: Timings) -> None:
        self._inner, self._timings = inner, timings
        self.current_key: dict[str, str] = {}

    def stream(self, request: ChatRequest) -> ChatStream:
        key = str(request.messages[-1]["content"])
        return TimedStream(self._inner.stream(request), key, self._timings)  # type: ignore[return-value]

    async def complete(self, request: ChatRequest):  # type: ignore[no-untyped-def]
        return await self._inner.complete(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class NullSink:
    def __init__(self, key: str, timings: Timings) -> None:
        self._key, self._timings = key, timings

    async def begin(self, existing_ref: str | None) -> str | None:
        return None

    async def update(self, text: str) -> None:
        return None

    async def finish(self, text: str) -> None:
        self._timings.finished[self._key] = time.perf_counter()

    async def notice(self, text: str, *, private: bool = True) -> None:
        return None


def start_fake_model() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.model_server", "--port", "0", "--instant"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().split()
    assert line and line[0] == "READY", line
    return process, line[1]


def message(conversation: int, turn: int, *, thread: str | None = None) -> IncomingMessage:
    return IncomingMessage(
        platform="bench",
        workspace="W",
        channel="C",
        thread=thread or f"T{conversation}",
        user_id="U",
        user_name="bench user",
        text=f"conversation {conversation} turn {turn}: how do I reverse a list in Python?",
        message_key=f"{thread or conversation}:{turn}",
    )


async def drive(core: ConversationCore, timings: Timings, conversations: int, turns: int) -> float:
    """Each conversation sends its turns one after another; all conversations at once."""

    async def one_conversation(number: int) -> None:
        for turn in range(turns):
            incoming = message(number, turn)
            timings.submitted[incoming.text] = time.perf_counter()
            await core.handle(incoming, NullSink(incoming.text, timings))

    started = time.perf_counter()
    await asyncio.gather(*(one_conversation(n) for n in range(conversations)))
    return time.perf_counter() - started


async def seed_thread(store: SqlStore, thread: str, messages: int) -> None:
    for turn in range(messages // 2):
        incoming = message(0, -turn - 1, thread=thread)
        accepted = await store.accept(incoming, text=incoming.text, tokens=20)
        assert accepted is not None
        await store.store_answer(
            accepted.turn_id, text="Use reversed() or slicing.", tokens=8, usage=None,
            status="complete", model="bench",
        )


async def per_reply_seconds(core: ConversationCore, thread: str, replies: int) -> float:
    timings = Timings()
    started = time.perf_counter()
    for turn in range(replies):
        incoming = message(0, turn, thread=thread)
        await core.handle(incoming, NullSink(incoming.text, timings))
    return (time.perf_counter() - started) / replies


def pct(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def main_async(args: argparse.Namespace, base_url: str, database: Path) -> None:
    settings: Settings = load_settings(
        {
            "OPENAI_BASE_URL": base_url,
            "OPENAI_API_KEY": "sk-bench",
            "BOTSERVICE_CONFIG": str(ROOT / "config" / "botservice.toml"),
        }
    )
    store = await SqlStore.open(f"sqlite+aiosqlite:///{database}")
    client = OpenAIChatClient(settings.model)
    rows: list[tuple[str, str]] = []
    try:
        # Warm-up: connections, SQLite pages, code paths.
        warm = ConversationCore(settings=settings, store=store, model=TimedModel(client, Timings()))
        await drive(warm, Timings(), 5, 5)

        single = Timings()
        core = ConversationCore(settings=settings, store=store, model=TimedModel(client, single))
        await drive(core, single, 1, args.turns * 5)

        loaded = Timings()
        core = ConversationCore(settings=settings, store=store, model=TimedModel(client, loaded))
        elapsed = await drive(core, loaded, args.conversations, args.turns)
        replies = args.conversations * args.turns

        for label, timings in (("1 conversation", single), (f"{args.conversations} conversations", loaded)):
            added = timings.added_ms()
            rows.append((f"core-added latency, {label}, median", f"{statistics.median(added):.2f} ms"))
            rows.append((f"core-added latency, {label}, p99", f"{pct(added, 0.99):.2f} ms"))
        rows.insert(0, (f"replies/s at {args.conversations} concurrent conversations", f"{replies / elapsed:.0f}"))

        await seed_thread(store, "small", 10)
        await seed_thread(store, "large", 5000)
        core = ConversationCore(settings=settings, store=store, model=client)
        await per_reply_seconds(core, "small", 5)  # warm-up
        small = await per_reply_seconds(core, "small", args.thread_replies)
        large = await per_reply_seconds(core, "large", args.thread_replies)
        rows.append(("time per reply, thread of 10 messages", f"{small * 1000:.2f} ms"))
        rows.append(("time per reply, thread of 5,000 messages", f"{large * 1000:.2f} ms"))
        rows.append(("5,000-message / 10-message", f"{large / small:.2f}x"))
    finally:
        await client.aclose()
        await store.aclose()

    width = max(len(name) for name, _ in rows)
    print(f"{'measure':<{width}}  value")
    print(f"{'-' * width}  -----")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--thread-replies", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    process, base_url = start_fake_model()
    try:
        with tempfile.TemporaryDirectory() as folder:
            asyncio.run(main_async(args, base_url, Path(folder) / "bench.db"))
    finally:
        process.terminate()
        process.wait()


if __name__ == "__main__":
    main()

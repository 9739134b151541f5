"""Core benchmark: the conversation core through a null sink, against the loopback fake
model answering instantly (in a process of its own), on a SQLite file.

Prints, each beside its target:

- replies per second at 50 concurrent conversations (median of `--rounds` runs);
- the latency the core adds to one reply, median and p99, at 1 and at 50 concurrent
  conversations: message in -> model request handed to the HTTP transport, plus
  last byte of the answer received -> sink finished. The model's own time is left
  out; the client's parsing of the stream is in. At 50 conversations every turn
  waits behind the others on the one event loop, so that figure is mostly queueing,
  not work: the 1-conversation figure is the core's own cost;
- time per reply in a thread that already holds 10 messages vs 5,000, and the ratio.

Runs on 127.0.0.1 only, in well under two minutes.

`--instructions` counts instead of timing: the machine instructions this process
executes per reply (every thread: the loop's and the database's) over one run at
full concurrency, under valgrind's callgrind (Debian's `valgrind`). A count does not
move with the load of a shared machine as CPU times do, so it tells changes of a
few percent apart; the run takes a few minutes.

    python -m bench.bench_core [--conversations 50] [--turns 20] [--rounds 3]
    python -m bench.bench_core --instructions [--conversations 50] [--turns 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import text

from botservice.app.config import load_settings
from botservice.core.conversation import ConversationCore
from botservice.core.events import IncomingMessage
from botservice.core.settings import Settings
from botservice.model.client import OpenAIChatClient, pooled_transport
from botservice.storage.repository import SqlStore

ROOT = Path(__file__).resolve().parent.parent
TARGET_REPLIES_PER_SECOND = 300
TARGET_P99_MS = 10.0
TARGET_THREAD_RATIO = 1.3

# The message key of the turn being answered. The core answers in a task it creates
# while `handle` runs, and a task starts with a copy of its creator's context, so the
# transport below sees the key of the turn it is sending for.
_turn: contextvars.ContextVar[str] = contextvars.ContextVar("bench_turn")


@dataclass
class Timings:
    submitted: dict[str, float] = field(default_factory=dict)
    sent: dict[str, float] = field(default_factory=dict)
    received: dict[str, float] = field(default_factory=dict)
    finished: dict[str, float] = field(default_factory=dict)

    def added_ms(self) -> list[float]:
        return [
            1000 * ((self.sent[key] - self.submitted[key]) + (end - self.received[key]))
            for key, end in self.finished.items()
        ]


class TimedTransport(httpx.AsyncBaseTransport):
    """The client's real transport, noting when each request goes out and when the
    last bytes of its answer come in."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner
        self.timings = Timings()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        key = _turn.get(None)
        if key is not None:
            self.timings.sent[key] = time.perf_counter()
        response = await self._inner.handle_async_request(request)
        if key is not None:
            response.stream = _TimedBody(response.stream, key, self.timings)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _TimedBody(httpx.AsyncByteStream):
    def __init__(
        self, inner: httpx.AsyncByteStream | httpx.SyncByteStream, key: str, timings: Timings
    ) -> None:
        assert isinstance(inner, httpx.AsyncByteStream)
        self._inner, self._key, self._timings = inner, key, timings

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            # Before handing the chunk on: parsing it is the client's work, not the model's.
            self._timings.received[self._key] = time.perf_counter()
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class NullSink:
    def __init__(self, key: str, timings: Timings) -> None:
        self._key, self._timings = key, timings

    async def begin(self, existing_ref: str | None, *, turn_tag: str, resumed: bool) -> str | None:
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


def message(thread: str, turn: int) -> IncomingMessage:
    return IncomingMessage(
        platform="bench",
        workspace="W",
        channel="C",
        thread=thread,
        user_id="U",
        user_name="bench user",
        text=f"{thread} turn {turn}: how do I reverse a list in Python?",
        message_key=f"{thread}:{turn}",
    )


async def reply(core: ConversationCore, incoming: IncomingMessage, timings: Timings) -> None:
    key = incoming.message_key
    _turn.set(key)
    timings.submitted[key] = time.perf_counter()
    assert await core.handle(incoming, NullSink(key, timings))


async def drive(core: ConversationCore, timings: Timings, threads: list[str], turns: int) -> float:
    """Each conversation sends its turns one after another; all conversations at once.
    Returns replies per second."""

    async def one_conversation(thread: str) -> None:
        for turn in range(turns):
            await reply(core, message(thread, turn), timings)

    started = time.perf_counter()
    await asyncio.gather(*(one_conversation(thread) for thread in threads))
    return len(threads) * turns / (time.perf_counter() - started)


async def seed_thread(store: SqlStore, thread: str, messages: int) -> None:
    for turn in range(messages // 2):
        incoming = message(thread, -turn - 1)
        accepted = await store.accept(incoming, text=incoming.text, tokens=20)
        assert accepted is not None
        await store.store_answer(
            accepted.turn_id,
            text="Use reversed() or slicing.",
            tokens=8,
            usage=None,
            status="complete",
            model="bench",
        )


async def as_vacuumed(store: SqlStore) -> None:
    """A seeded thread was written in a moment; a real one of 5,000 messages took weeks,
    in which PostgreSQL's autovacuum ran (after each hundredth of `messages`, migration
    0013) and marked its pages all-visible, so its window reads the index alone. Do
    here what autovacuum would have done by then. Nothing on SQLite."""
    if store.engine.dialect.name != "postgresql":
        return
    async with store.engine.connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text("VACUUM (ANALYZE) messages"))


async def timed_reply(core: ConversationCore, thread: str, turn: int) -> float:
    started = time.perf_counter()
    await reply(core, message(thread, turn), Timings())
    return time.perf_counter() - started


def pct(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def main_async(args: argparse.Namespace, base_url: str, database: Path) -> list[Row]:
    settings: Settings = load_settings(
        {
            "OPENAI_BASE_URL": base_url,
            "OPENAI_API_KEY": "sk-bench",
            "BOTSERVICE_CONFIG": str(ROOT / "config" / "botservice.toml"),
            # One person sends the whole load; the per-person rate is not measured here.
            "BOTSERVICE_LIMITS__MESSAGES_PER_MINUTE": "0",
        }
    )
    store = await SqlStore.open(f"sqlite+aiosqlite:///{database}")
    transport = TimedTransport(pooled_transport())
    client = OpenAIChatClient(settings.model, transport=transport)
    core = ConversationCore(settings=settings, store=store, model=client)
    n = args.conversations
    rows: list[Row] = []
    try:
        # Warm-up: connections, SQLite pages, code paths.
        await drive(core, Timings(), [f"warm{i}" for i in range(n)], 3)
        if args.instructions:
            callgrind("-i", "on")  # counted from here: one run at full concurrency
            await drive(core, Timings(), [f"counted{i}" for i in range(n)], args.turns)
            callgrind("-d")
            callgrind("-i", "off")
            return rows

        single = transport.timings = Timings()
        await drive(core, single, ["single"], args.single_turns)

        loaded = transport.timings = Timings()
        rates = [
            await drive(core, loaded, [f"load{run}.{i}" for i in range(n)], args.turns)
            for run in range(args.rounds)
        ]
        rows.append(
            Row(
                f"replies/s at {n} concurrent conversations",
                f"{statistics.median(rates):.0f}",
                f">= {TARGET_REPLIES_PER_SECOND}",
                f"median of {args.rounds} runs of {n * args.turns} replies: "
                + ", ".join(f"{rate:.0f}" for rate in rates),
            )
        )
        for label, timings, target, note in (
            ("1 conversation", single, f"< {TARGET_P99_MS:.0f} ms", "the core's own cost"),
            (
                f"{n} conversations",
                loaded,
                "",
                f"mostly waiting behind {n - 1} other turns on the one event loop",
            ),
        ):
            added = timings.added_ms()
            rows.append(
                Row(f"core-added latency, {label}, median", f"{statistics.median(added):.2f} ms")
            )
            rows.append(
                Row(f"core-added latency, {label}, p99", f"{pct(added, 0.99):.2f} ms", target, note)
            )

        # Many threads of 10, so each measured reply finds exactly 10 messages; one of
        # 5,000 (it grows by 2 a reply, which does not matter there). Replies alternate
        # between the two so a change in machine load hits both alike.
        replies = args.thread_replies
        small_threads = [f"small{i}" for i in range(replies + 5)]
        for thread in small_threads:
            await seed_thread(store, thread, 10)
        await seed_thread(store, "large", 5000)
        small, large = [], []
        for turn, thread in enumerate(small_threads):
            small_time = await timed_reply(core, thread, 0)
            large_time = await timed_reply(core, "large", turn)
            if turn >= 5:  # The first pairs warm code paths and the large thread's cache.
                small.append(small_time)
                large.append(large_time)
        ratio = statistics.median(large) / statistics.median(small)
        note = f"median of {replies} replies each"
        rows.append(
            Row(
                "time per reply, thread of 10 messages",
                f"{statistics.median(small) * 1000:.2f} ms",
                note=note,
            )
        )
        rows.append(
            Row(
                "time per reply, thread of 5,000 messages",
                f"{statistics.median(large) * 1000:.2f} ms",
                note=note,
            )
        )
        rows.append(
            Row("5,000-message / 10-message", f"{ratio:.2f}x", f"<= {TARGET_THREAD_RATIO}x")
        )
    finally:
        await client.aclose()
        await store.aclose()
    return rows


@dataclass(frozen=True)
class Row:
    measure: str
    value: str
    target: str = ""
    note: str = ""


def print_table(rows: list[Row]) -> None:
    header = Row("measure", "value", "target", "note")
    table = [header, Row("-" * 7, "-" * 5, "-" * 6, "-" * 4), *rows]
    widths = [max(len(row.measure) for row in table), max(len(row.value) for row in table)]
    widths.append(max(len(row.target) for row in table))
    for row in table:
        line = f"{row.measure:<{widths[0]}}  {row.value:<{widths[1]}}  {row.target:<{widths[2]}}"
        print(f"{line}  {row.note}".rstrip())


# Set in the process that runs under callgrind (see `count_instructions`).
_UNDER_CALLGRIND = "BENCH_CORE_UNDER_CALLGRIND"


def callgrind(*command: str) -> None:
    """Tell the callgrind running this process to turn counting on or off, or dump."""
    subprocess.run(
        ["callgrind_control", *command, str(os.getpid())], check=True, capture_output=True
    )


def count_instructions(args: argparse.Namespace) -> None:
    """Run this benchmark again under callgrind, counting one run at full
    concurrency only (not start-up or warm-up), and print instructions per reply."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "callgrind.out"
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
        command += [f"--callgrind-out-file={out}", sys.executable, "-m", "bench.bench_core"]
        command += ["--instructions", f"--conversations={args.conversations}"]
        command += [f"--turns={args.turns}"]
        environment = {**os.environ, _UNDER_CALLGRIND: "1"}
        subprocess.run(command, cwd=ROOT, env=environment, check=True, capture_output=True)
        dumps = sorted(Path(folder).glob("callgrind.out.*"))
        assert dumps, "callgrind wrote no dump of the counted run"
        totals = re.search(rb"^(?:summary|totals): (\d+)", dumps[0].read_bytes(), re.MULTILINE)
        assert totals is not None, dumps[0]
    replies = args.conversations * args.turns
    print_table(
        [
            Row(
                f"instructions per reply, {args.conversations} conversations",
                f"{int(totals[1]) / replies / 1e6:.3f} M",
                note=f"callgrind, {replies} replies, every thread of this process",
            )
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--turns", type=int, default=20, help="per conversation and run")
    parser.add_argument("--rounds", type=int, default=3, help="runs at full concurrency")
    parser.add_argument("--single-turns", type=int, default=200, help="turns at 1 conversation")
    parser.add_argument("--thread-replies", type=int, default=100)
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions per reply (callgrind)"
    )
    args = parser.parse_args()
    if args.instructions and not os.environ.get(_UNDER_CALLGRIND):
        count_instructions(args)
        return
    logging.basicConfig(level=logging.WARNING)
    process, base_url = start_fake_model()
    try:
        with tempfile.TemporaryDirectory() as folder:
            rows = asyncio.run(main_async(args, base_url, Path(folder) / "bench.db"))
    finally:
        process.terminate()
        process.wait()
    if not args.instructions:
        print_table(rows)


if __name__ == "__main__":
    main()

"""Where one turn's time goes (issue 11): the steps of `ConversationCore.handle` at one
conversation, timed turn by turn, on SQLite and on PostgreSQL, against the instant fake
model in a process of its own (bench_core's setup).

Each step is timed from outside the core: the store's calls through a wrapper that
notes when each starts and ends, the model request through a timed transport around
the client's own (sent, headers, last byte), the sink's finish. What lies between two timed
calls is named by what the core does there:

- before accept: the redelivery check, cleaning the text, the limits, counting tokens;
- accept: the accepting statement (on PostgreSQL it claims the turn too; its commit
  waits for the WAL flush);
- to the driver: the task that answers the turn starting, `sink.begin`;
- reads: the channel's settings and the history window, from the start of the one to
  the end of the other (on PostgreSQL, for a turn claimed as its message was accepted,
  read in the accepting statement: no round trip here);
- prompt and request: the prompt, the context window, the model-call gate and pacer,
  encoding the request and handing it to the transport;
- model: sent to last byte (the fake's own time is in it, and not in the core-added
  latency);
- to the final text: the end of the stream read, the last update, `sink.finish`;
- save: the answer with the claim of a next turn (after the final text: not in the
  core-added latency, which is bench_core's (sent - submitted) + (finish - last byte)).

Printed per backend: each step's median, p90, p99 and maximum; the core-added
latency's p50/p99; and, for the turns at or above the p99 of the core-added latency
(and above its p90), the mean share of each step, which says what the slow turns
were slow in. With `--threads N`, each step's median in N replies to threads of 10, 200
and 5,000 messages, taking turns (a fresh 10- or 200-message thread for each reply,
so those find exactly that many and, on SQLite, read their window cold; one
5,000-message thread, whose window is kept warm). With `--window`, the per-turn work
that grows with the history window, for windows of 10 and 200 stored messages, each
timed alone in this process: `build_prompt`, encoding the request body, and the fake
model's reading of it (a request's time to its response headers, one at a time).

PostgreSQL only with `--flush`: the accepting statement's time with and without
waiting for its commit's WAL flush (the same statement in a transaction with
`SET LOCAL synchronous_commit = off`, which this benchmark uses to measure only; the
store never does), so the flush's share of the accept is measured, not guessed.

Runs on 127.0.0.1 only; a fresh PostgreSQL database is created and dropped.

    python -m bench.bench_turn_steps [--turns 400] [--backends sqlite,postgres]
                                     [--threads 60] [--window] [--flush]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.bench_core import (
    Row,
    as_vacuumed,
    message,
    pct,
    print_table,
    seed_thread,
    start_fake_model,
)
from bench.bench_hot_path import bench_settings
from botservice.core.conversation import ConversationCore
from botservice.core.ports import ChatRequest, StoredMessage
from botservice.core.prompt import build_prompt
from botservice.core.prompt_windows import PromptWindows
from botservice.model.client import OpenAIChatClient, _encode, pooled_transport
from botservice.storage.migrate import upgrade
from botservice.storage.repository import SqlStore
from tests.db import _find_postgres

# The store's calls on a turn's path, timed.
TIMED_CALLS = (
    "accept",
    "channel_settings",
    "history",
    "store_answer_and_claim_next",
)

STEPS = (
    "before accept",
    "accept",
    "to the driver",
    "reads",
    "prompt and request",
    "model",
    "to the final text",
    "save",
)
# Thread sizes compared (`--threads`): the 10 and 5,000, and 200 (one full
# history window), which tells the thread's length from the window's size.
SIZES = (10, 200, 5000)
# Steps inside the core-added latency (the model and the save are not).
ADDED = frozenset(STEPS) - {"model", "save"}


@dataclass
class TurnMarks:
    """perf_counter times of one turn's events."""

    at: dict[str, float] = field(default_factory=dict)

    def steps(self) -> dict[str, float]:
        """Each step's milliseconds."""
        a = self.at

        def span(start: str, end: str) -> float:
            return 1000 * (a[end] - a[start])

        reads = ("channel_settings>", "history<")
        return {
            "before accept": span("submitted", "accept>"),
            "accept": span("accept>", "accept<"),
            "to the driver": span("accept<", reads[0]),
            "reads": span(*reads),
            "prompt and request": span(reads[1], "sent"),
            "model": span("sent", "received"),
            "to the final text": span("received", "finished"),
            "save": span("store_answer_and_claim_next>", "store_answer_and_claim_next<"),
        }

    def added(self) -> float:
        return sum(value for step, value in self.steps().items() if step in ADDED)


class Recorder:
    """The marks of the turn under way (one conversation: one turn at a time)."""

    def __init__(self) -> None:
        self.turns: list[TurnMarks] = []
        self.current = TurnMarks()

    def mark(self, name: str) -> None:
        self.current.at.setdefault(name, time.perf_counter())

    def next_turn(self) -> None:
        self.turns.append(self.current)
        self.current = TurnMarks()


class TimedStore:
    """The store, with the start and end of the turn path's calls noted."""

    def __init__(self, store: SqlStore, recorder: Recorder) -> None:
        self._store = store
        self._recorder = recorder

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._store, name)
        if name not in TIMED_CALLS:
            return found
        recorder = self._recorder

        async def timed(*args: Any, **kwargs: Any) -> Any:
            recorder.mark(f"{name}>")
            try:
                return await found(*args, **kwargs)
            finally:
                recorder.mark(f"{name}<")

        return timed


class StepTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, recorder: Recorder) -> None:
        self._inner, self._recorder = inner, recorder

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._recorder.mark("sent")
        response = await self._inner.handle_async_request(request)
        self._recorder.mark("headers")
        response.stream = _StepBody(response.stream, self._recorder)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _StepBody(httpx.AsyncByteStream):
    def __init__(self, inner: Any, recorder: Recorder) -> None:
        self._inner, self._recorder = inner, recorder

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._recorder.current.at["received"] = time.perf_counter()
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class StepSink:
    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    async def begin(self, existing_ref: str | None, *, turn_tag: str, resumed: bool) -> str | None:
        return None

    async def update(self, text: str) -> None:
        return None

    async def finish(self, text: str) -> None:
        self._recorder.mark("finished")

    async def notice(self, text: str, *, private: bool = True) -> None:
        return None


@contextlib.asynccontextmanager
async def timed_core(
    base_url: str, url: str, recorder: Recorder
) -> AsyncIterator[tuple[ConversationCore, SqlStore]]:
    settings = bench_settings(base_url)
    store = await SqlStore.open(url, migrate=False)
    client = OpenAIChatClient(settings.model, transport=StepTransport(pooled_transport(), recorder))
    core = ConversationCore(
        settings=settings,
        store=TimedStore(store, recorder),  # type: ignore[arg-type]
        model=client,
    )
    try:
        yield core, store
    finally:
        await client.aclose()
        await store.aclose()


async def trace_turns(base_url: str, url: str, turns: int) -> list[TurnMarks]:
    recorder = Recorder()
    async with timed_core(base_url, url, recorder) as (core, _store):
        for turn in range(-20, turns):  # the first 20 warm connections and code paths
            recorder.mark("submitted")
            assert await core.handle(message("steps", turn), StepSink(recorder))
            recorder.next_turn()
    return recorder.turns[20:]


async def trace_threads(
    base_url: str, url: str, replies: int, sizes: tuple[int, ...]
) -> dict[int, list[TurnMarks]]:
    """Replies alternating between threads of each size (as bench_hot_path measures
    the thread ratio): a fresh seeded thread for every reply to the smaller sizes
    (each then finds exactly that many messages), one thread for the largest."""
    recorder = Recorder()
    marks: dict[int, list[TurnMarks]] = {size: [] for size in sizes}
    async with timed_core(base_url, url, recorder) as (core, store):
        largest = max(sizes)
        await seed_thread(store, f"threads{largest}", largest)
        for size in sizes:
            if size != largest:
                for reply in range(replies + 5):
                    await seed_thread(store, f"threads{size}.{reply}", size)
        await as_vacuumed(store)
        for reply in range(replies + 5):
            for size in sizes:
                thread = f"threads{size}" if size == largest else f"threads{size}.{reply}"
                recorder.mark("submitted")
                assert await core.handle(message(thread, reply), StepSink(recorder))
                recorder.next_turn()
                if reply >= 5:  # the first pairs warm code paths and caches
                    marks[size].append(recorder.turns[-1])
    return marks


def thread_rows(name: str, marks: dict[int, list[TurnMarks]]) -> list[Row]:
    rows = []
    whole = {
        size: [1000 * (t.at["finished"] - t.at["submitted"]) for t in turns]
        for size, turns in marks.items()
    }
    smallest = min(marks)
    for step in STEPS:
        medians = {
            size: statistics.median(t.steps()[step] for t in turns) for size, turns in marks.items()
        }
        rows.append(
            Row(
                f"{name}: {step}, by thread size",
                " / ".join(f"{value:.3f}" for value in medians.values()),
                "",
                "ms, median, threads of " + " / ".join(f"{size:,}" for size in medians),
            )
        )
    medians = {size: statistics.median(values) for size, values in whole.items()}
    rows.append(
        Row(
            f"{name}: submitted to final text, by thread size",
            " / ".join(f"{value:.3f}" for value in medians.values()),
            "",
            "ratios to the smallest: "
            + ", ".join(
                f"{size:,}: {value / medians[smallest]:.3f}x" for size, value in medians.items()
            ),
        )
    )
    return rows


def step_rows(name: str, turns: list[TurnMarks]) -> list[Row]:
    per_step = {step: [turn.steps()[step] for turn in turns] for step in STEPS}
    added = [turn.added() for turn in turns]
    rows = [
        Row(
            f"{name}: {step}",
            f"{statistics.median(values):.3f}",
            "",
            f"p90 {pct(values, 0.9):.3f}, p99 {pct(values, 0.99):.3f}, max {max(values):.3f}"
            + ("" if step in ADDED else " (not in the core-added latency)"),
        )
        for step, values in per_step.items()
    ]
    rows.append(
        Row(
            f"{name}: core-added latency",
            f"{statistics.median(added):.3f}",
            "",
            f"p90 {pct(added, 0.9):.3f}, p99 {pct(added, 0.99):.3f}, max {max(added):.3f}"
            f" ({len(turns)} turns)",
        )
    )
    for label, fraction in (("p99", 0.99), ("p90", 0.9)):
        threshold = pct(added, fraction)
        slow = [turn for turn in turns if turn.added() >= threshold]
        means = {
            step: statistics.mean(turn.steps()[step] for turn in slow)
            for step in STEPS
            if step in ADDED
        }
        rows.append(
            Row(
                f"{name}: turns at or over the {label} ({threshold:.2f} ms)",
                f"{len(slow)}",
                "",
                "mean ms: " + ", ".join(f"{step} {value:.2f}" for step, value in means.items()),
            )
        )
    return rows


# --- the window's share --------------------------------------------------------------


def window_history(messages: int) -> list[StoredMessage]:
    """A window as the store hands it over: questions and their answers, oldest first."""
    history = []
    for index in range(messages // 2):
        question, answer = 2 * index + 1, 2 * index + 2
        history.append(
            StoredMessage(
                id=question,
                role="user",
                author_id="U",
                author_name="bench user",
                text=f"steps turn {index}: how do I reverse a list in Python?",
                tokens=20,
            )
        )
        history.append(
            StoredMessage(
                id=answer,
                role="assistant",
                author_id="",
                author_name="",
                text="You said: how do I reverse a list in Python?",
                tokens=12,
                reply_to_id=question,
            )
        )
    return history


def microseconds(work: Callable[[], object], repeat: int = 2000) -> float:
    """Median of `repeat` timings of `work`, in microseconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return 1e6 * statistics.median(times)


def followed_microseconds(size: int, turns: int = 2000) -> float:
    """Median time of `PromptWindows.build` for a conversation's successive windows of
    `size` messages, each its last one moved on by a question and its answer (as a
    long thread's turns are; a window under `FOLLOWED_FROM` messages is built whole)."""
    thread = window_history(size + 2 * turns)
    prompts = PromptWindows()
    times = []
    for turn in range(turns):
        history = thread[2 * turn : 2 * turn + size - 1]  # ends with a question
        started = time.perf_counter()
        prompts.build(
            1,
            instructions="You are a helpful assistant.",
            instructions_role="system",
            instructions_tokens=8,
            history=history,
            budget_tokens=100_000,
        )
        times.append(time.perf_counter() - started)
    return 1e6 * statistics.median(times)


async def window_rows(base_url: str, sizes: tuple[int, ...] = (10, 200)) -> list[Row]:
    rows = []
    transport = pooled_transport()
    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}

    async def to_headers(body: bytes) -> float:
        request = httpx.Request("POST", url, headers=headers, content=body)
        started = time.perf_counter()
        response = await transport.handle_async_request(request)
        elapsed = time.perf_counter() - started
        await response.aread()
        await response.aclose()
        return elapsed

    async def request_ms(body: bytes, repeat: int = 300) -> float:
        for _ in range(20):
            await to_headers(body)
        return 1000 * statistics.median([await to_headers(body) for _ in range(repeat)])

    try:
        bodies = {}
        for size in sizes:
            history = window_history(size)

            def prompt(history: list[StoredMessage] = history) -> Any:
                return build_prompt(
                    instructions="You are a helpful assistant.",
                    instructions_role="system",
                    instructions_tokens=8,
                    history=history,
                    budget_tokens=100_000,
                )

            messages = prompt().messages
            request = ChatRequest(model="bench", messages=messages, max_tokens=1024)
            body = bodies[size] = _encode(request, stream=True)
            rows += [
                Row(f"window of {size}: build_prompt", f"{microseconds(prompt):.1f} us"),
                Row(
                    f"window of {size}: the prompt followed from the last turn's",
                    f"{followed_microseconds(size):.1f} us",
                    "",
                    "PromptWindows.build, the window moved on by a question and its answer",
                ),
                Row(
                    f"window of {size}: encoding the request",
                    f"{microseconds(lambda request=request: _encode(request, stream=True)):.1f} us",
                    "",
                    f"{len(body):,} bytes",
                ),
            ]
        for size, body in bodies.items():
            rows.append(
                Row(
                    f"window of {size}: request to its headers (fake model)",
                    f"{await request_ms(body):.3f} ms",
                    "",
                    "median of 300, sent one at a time; the fake parses and records it",
                )
            )
    finally:
        await transport.aclose()
    return rows


# --- the accept's flush --------------------------------------------------------------


async def flush_rows(dsn: str, turns: int) -> list[Row]:
    """The accepting statement (as the store runs it, claiming) with and without
    waiting for the commit's WAL flush."""
    from botservice.storage import hot_rows
    from botservice.storage.compiled import POSTGRESQL
    from botservice.storage.postgres_hot import _bound

    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "INSERT INTO conversations (platform, workspace, channel, thread, created_at,"
            " updated_at, trim_noticed) VALUES ('bench', 'W', 'C', 'flush', now(), now(), false)"
        )
        statement = POSTGRESQL["accept"]
        assert statement.sql

        async def accept(turn: int, *, flushed: bool) -> float:
            incoming = message("flush", turn)
            now = hot_rows.utcnow()
            values = {
                **{f"k_{k}": v for k, v in hot_rows.key_values(incoming.conversation).items()},
                **{f"t_{k}": v for k, v in hot_rows.turn_values(incoming, now).items()},
                **{
                    f"m_{k}": v
                    for k, v in hot_rows.user_message_values(
                        incoming, text=incoming.text, tokens=20, now=now
                    ).items()
                },
            }
            sql, args = _bound("accept", values)
            started = time.perf_counter()
            if flushed:
                await connection.fetchrow(sql, *args)
            else:
                async with connection.transaction():
                    await connection.execute("SET LOCAL synchronous_commit = off")
                    await connection.fetchrow(sql, *args)
            return 1000 * (time.perf_counter() - started)

        flushed: list[float] = []
        unflushed: list[float] = []
        for turn in range(turns):  # alternating, so the machine's load hits both alike
            flushed.append(await accept(2 * turn, flushed=True))
            unflushed.append(await accept(2 * turn + 1, flushed=False))
    finally:
        await connection.close()
    return [
        Row(
            f"PostgreSQL: accept, {label}",
            f"{statistics.median(values):.3f} ms",
            "",
            f"p90 {pct(values, 0.9):.3f}, p99 {pct(values, 0.99):.3f}, max {max(values):.3f}",
        )
        for label, values in (
            ("committed (waits for the WAL flush)", flushed),
            ("not waiting for the flush (measurement only)", unflushed),
        )
    ]


# --- main ------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace, base_url: str, folder: Path) -> list[Row]:
    rows: list[Row] = []
    if "sqlite" in args.backends:
        url = f"sqlite+aiosqlite:///{folder / 'steps.db'}"
        await upgrade(url)
        rows += step_rows("SQLite", await trace_turns(base_url, url, args.turns))
        if args.threads:
            rows += thread_rows("SQLite", await trace_threads(base_url, url, args.threads, SIZES))
    if "postgres" in args.backends:
        server = await _find_postgres()
        name = f"botservice_bench_{secrets.token_hex(6)}"
        await server.create_database(name)
        try:
            url = server.url(name)
            await upgrade(url)
            rows += step_rows("PostgreSQL", await trace_turns(base_url, url, args.turns))
            if args.threads:
                rows += thread_rows(
                    "PostgreSQL", await trace_threads(base_url, url, args.threads, SIZES)
                )
            if args.flush:
                rows += await flush_rows(server.dsn(name), args.turns)
        finally:
            await server.drop_database(name)
    if args.window:
        rows += await window_rows(base_url)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=400, help="at one conversation")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--window", action="store_true", help="the window's share of a turn")
    parser.add_argument(
        "--threads", type=int, default=0, help="replies per thread size (10, 200, 5,000)"
    )
    parser.add_argument("--flush", action="store_true", help="the accept's WAL flush")
    args = parser.parse_args()
    args.backends = set(args.backends.split(","))
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

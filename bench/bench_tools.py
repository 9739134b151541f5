"""Tool-round benchmark: what the core adds to an answer for one round of tool calls.

Each turn: the fake model (a process of its own, on 127.0.0.1) answers the first
request with one call of a read-only tool, a tool source here returns at once, and
the model answers the request that carries the result. Measured per turn, from the
last byte of the first answer received to the second request handed to the HTTP
transport, less the tool's own time: reading the calls, storing the round, checking
the channel's policy, running the call, storing its result, building the next
prompt and encoding the request. Prints median and p99 beside the goal (< 5 ms),
with the same turn's figures for a turn without tools for scale. SQLite file store.

    python -m bench.bench_tools [--turns 300]
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from botservice.app.config import load_settings
from botservice.core.conversation import ConversationCore
from botservice.core.events import IncomingMessage
from botservice.core.tools import BUILTIN, ToolContext, ToolOutput, ToolSpec
from botservice.model.client import OpenAIChatClient, pooled_transport
from botservice.storage.repository import SqlStore

ROOT = Path(__file__).resolve().parent.parent
GOAL_MS = 5.0
TOOL = "current_time"

_turn: contextvars.ContextVar[str] = contextvars.ContextVar("bench_turn")


@dataclass
class Turn:
    # Per model request of the turn: when it was handed to the transport, when the
    # last byte of its answer came.
    sent: list[float] = field(default_factory=list)
    received: list[float] = field(default_factory=list)
    tool_seconds: float = 0.0


class TimedTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, turns: dict[str, Turn]) -> None:
        self._inner, self._turns = inner, turns

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        key = _turn.get(None)
        if key is None:
            return await self._inner.handle_async_request(request)
        turn = self._turns.setdefault(key, Turn())
        turn.sent.append(time.perf_counter())
        turn.received.append(0.0)
        response = await self._inner.handle_async_request(request)
        response.stream = _TimedBody(response.stream, turn, len(turn.sent) - 1)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _TimedBody(httpx.AsyncByteStream):
    def __init__(self, inner: Any, turn: Turn, index: int) -> None:
        self._inner, self._turn, self._index = inner, turn, index

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._turn.received[self._index] = time.perf_counter()
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class InstantTool:
    """A built-in, read-only tool that answers at once and notes its own time."""

    name = BUILTIN
    trusted = True

    def __init__(self, turns: dict[str, Turn]) -> None:
        self._turns = turns
        self._specs = [
            ToolSpec(
                name=TOOL,
                description="The time now.",
                parameters={"type": "object", "properties": {}},
                source=BUILTIN,
                read_only=True,
                destructive=False,
                trusted=True,
            )
        ]

    def tools(self) -> list[ToolSpec]:
        return self._specs

    async def call(
        self, name: str, arguments: Mapping[str, Any], context: ToolContext
    ) -> ToolOutput:
        started = time.perf_counter()
        output = ToolOutput("2026-11-30T12:00:00+00:00")
        self._turns[_turn.get()].tool_seconds += time.perf_counter() - started
        return output

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class NullSink:
    async def begin(self, existing_ref: str | None, *, turn_tag: str, resumed: bool) -> str | None:
        return None

    async def update(self, text: str) -> None:
        return None

    async def finish(self, text: str) -> None:
        return None

    async def notice(self, text: str, *, private: bool = True) -> None:
        return None


def start_fake_model() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.model_server", "--port", "0", "--call-tool", TOOL],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().split()
    assert line and line[0] == "READY", line
    return process, line[1]


def pct(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def run(base_url: str, database: Path, turns: int, *, with_tools: bool) -> list[Turn]:
    settings = load_settings(
        {
            "OPENAI_BASE_URL": base_url,
            "OPENAI_API_KEY": "sk-bench",
            "BOTSERVICE_CONFIG": str(ROOT / "config" / "botservice.toml"),
            "BOTSERVICE_CONVERSATION__STREAM_UPDATE_INTERVAL_SECONDS": "0",
            # One person sends every turn; the per-person rate is not measured here.
            "BOTSERVICE_LIMITS__MESSAGES_PER_MINUTE": "0",
        }
    )
    timed: dict[str, Turn] = {}
    transport = TimedTransport(pooled_transport(), timed)
    model = OpenAIChatClient(settings.model, transport=transport)
    store = await SqlStore.open(f"sqlite+aiosqlite:///{database}")
    sources = [InstantTool(timed)] if with_tools else []
    core = ConversationCore(settings=settings, store=store, model=model, tool_sources=sources)
    try:
        for number in range(turns):
            key = f"{'tools' if with_tools else 'plain'}-{number}"
            _turn.set(key)
            incoming = IncomingMessage(
                platform="bench",
                workspace="W",
                channel="C",
                thread=key,  # a conversation each: the driver task carries this turn's key
                user_id="U",
                user_name="bench user",
                text="What time is it?",
                message_key=key,
            )
            assert await core.handle(incoming, NullSink())
    finally:
        await core.stop()
        await model.aclose()
        await store.aclose()
    return list(timed.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    process, base_url = start_fake_model()
    try:
        with tempfile.TemporaryDirectory() as directory:
            database = Path(directory) / "bench.db"
            measured = asyncio.run(
                run(base_url, database, args.warmup + args.turns, with_tools=True)
            )[args.warmup :]
            plain = asyncio.run(
                run(base_url, database, args.warmup + args.turns, with_tools=False)
            )[args.warmup :]
    finally:
        process.terminate()
        process.wait()
    assert all(len(turn.sent) == 2 for turn in measured), "every turn should make one round"
    assert all(len(turn.sent) == 1 for turn in plain)
    added = [1000 * (turn.sent[1] - turn.received[0] - turn.tool_seconds) for turn in measured]
    tool = [1000 * turn.tool_seconds for turn in measured]
    first_request = [1000 * (turn.received[0] - turn.sent[0]) for turn in measured]
    plain_request = [1000 * (turn.received[0] - turn.sent[0]) for turn in plain]
    rows = [
        ("core's added time per tool round", added, f"< {GOAL_MS:g} ms"),
        ("the tool's own time (left out above)", tool, ""),
        ("first model request, with tools offered", first_request, ""),
        ("the model request of a turn without tools", plain_request, ""),
    ]
    print(f"{args.turns} turns, one tool round each (after {args.warmup} warm-up turns)")
    print(f"{'measure':<44} {'median ms':>10} {'p99 ms':>8}  goal")
    for name, values, goal in rows:
        print(f"{name:<44} {statistics.median(values):>10.3f} {pct(values, 0.99):>8.3f}  {goal}")
    verdict = "meets" if pct(added, 0.99) < GOAL_MS else "misses"
    print(f"p99 {verdict} the goal of {GOAL_MS:g} ms per round")


if __name__ == "__main__":
    main()

"""Where a bot's Slack acknowledgement spends its wall time, measured from outside its code.

`bench_scale_out --trace-acks DIR` starts each bot with bench/ack_trace_site on
PYTHONPATH, whose sitecustomize calls `install(DIR)` before `botservice run`
starts. That wraps, at class level, the steps an event goes through before its
200 (nothing in botservice/, adapters/ or storage/ is edited):

    handler      SlackAdapter._handle_events, the whole server-side handling
    signature    SignatureCheck.problem          envelope   read_envelope
    dispatch     AsyncApp.async_dispatch (Bolt: middleware + our listener)
    listener     SlackAdapter._on_event          known      has_conversation (store)
    users        UserDirectory.lookup            thread     read_thread_once
    submit       ConversationCore.submit         accept     SqlStore.accept
    checkout     AsyncConnection.start: a connection from SQLAlchemy's pool (a
                 new one connects and sets up its type codecs first)
    pg_connect   asyncpg.connect (a new database connection)

Each request's times go to DIR/trace-<pid>.jsonl as one line, with `at` (its
start, time.monotonic); the event loop's lag (how late a 20 ms sleep wakes up) is
written there every second. Wall times include waiting for the loop, so a step
that only awaits can still look slow when the loop is busy with something else.

    python -m bench.ack_trace DIR     # per-step p50 / p99 / mean and share of the handler
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, TextIO

_current: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "ack_trace", default=None
)
_outside: dict[str, float] = defaultdict(float)  # steps run outside any request
_out: TextIO | None = None
_lags: list[float] = []
# Statements this process sent, by kind (first words of the SQL), since it started.
_statements: dict[str, int] = defaultdict(int)
_monitor: asyncio.Task[None] | None = None


def _add(step: str, seconds: float) -> None:
    record = _current.get()
    # A task the request started (the turn) inherits its context; once the request
    # is done ("handler" set) what that task does is outside any request.
    target = record if record is not None and "handler" not in record else _outside
    target[step] = target.get(step, 0.0) + seconds
    target[f"{step}#"] = target.get(f"{step}#", 0.0) + 1


def _timed(owner: Any, name: str, step: str) -> None:
    original = getattr(owner, name)
    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                _add(step, time.perf_counter() - started)

        setattr(owner, name, timed_async)
    else:

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                _add(step, time.perf_counter() - started)

        setattr(owner, name, timed)


def _write(data: dict[str, Any]) -> None:
    if _out is not None:
        _out.write(json.dumps(data) + "\n")


async def _watch_loop() -> None:
    written = time.monotonic()
    while True:
        started = time.perf_counter()
        await asyncio.sleep(0.02)
        _lags.append(time.perf_counter() - started - 0.02)
        if time.monotonic() - written >= 1.0:
            _write(
                {
                    "lag": _lags[:],
                    "outside": dict(_outside),
                    "statements": dict(_statements),
                    "at": time.monotonic(),
                }
            )
            _lags.clear()
            written = time.monotonic()


def _statement_kind(statement: str) -> str:
    words = statement.split()
    if not words:
        return "?"
    verb = words[0].upper()
    if verb in ("INSERT", "DELETE") and len(words) > 2:
        return f"{verb} {words[2]}"
    if verb == "UPDATE" and len(words) > 1:
        return f"{verb} {words[1]}"
    if verb == "WITH":
        return "WITH " + " ".join(w for w in words[1:6] if w.isidentifier())
    if verb == "SELECT" and "FROM" in (upper := [w.upper() for w in words]):
        return f"SELECT FROM {words[upper.index('FROM') + 1]}"
    return verb


def _count_statements() -> None:
    """Count what the bot sends: SQLAlchemy's statements (the sweep, cold paths) by
    their first words, and the hot path's (asyncpg directly) by their name in
    storage/compiled.py, with the outcomes that show work done for nothing: an
    accept that found the message taken (a duplicate delivery), a claim that found
    nothing to claim (`-> nothing`) or another process's claim (`-> taken`)."""
    import asyncpg
    from sqlalchemy import Engine, event

    from botservice.storage.compiled import POSTGRESQL

    @event.listens_for(Engine, "before_cursor_execute")
    def count(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        _statements[f"sqlalchemy {_statement_kind(statement)}"] += 1

    names = {statement.sql: name for name, statement in POSTGRESQL.items()}

    def counted(method: str) -> None:
        original = getattr(asyncpg.Connection, method)

        @functools.wraps(original)
        async def run(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
            kind = names.get(query) or f"asyncpg {_statement_kind(query)}"
            _statements[kind] += 1
            try:
                result = await original(self, query, *args, **kwargs)
            except asyncpg.UniqueViolationError:
                _statements[f"{kind} -> taken"] += 1
                raise
            if method == "fetchrow":
                if result is None:
                    _statements[f"{kind} -> nothing"] += 1
                elif kind.startswith("accept") and result[1] is None and result[0] is not None:
                    _statements[f"{kind} -> duplicate"] += 1
            return result

        setattr(asyncpg.Connection, method, run)

    for method in ("fetchrow", "fetch", "execute", "fetchval"):
        counted(method)


def install(directory: str) -> None:
    global _out
    import asyncpg
    from slack_bolt.async_app import AsyncApp
    from sqlalchemy.ext.asyncio import AsyncConnection

    import botservice.adapters.slack.app as slack_app
    from botservice.adapters.slack.signature import SignatureCheck
    from botservice.adapters.slack.users import UserDirectory
    from botservice.core.conversation import ConversationCore
    from botservice.storage.repository import SqlStore

    Path(directory).mkdir(parents=True, exist_ok=True)
    _out = open(Path(directory) / f"trace-{os.getpid()}.jsonl", "a", buffering=1)  # noqa: SIM115

    original = slack_app.SlackAdapter._handle_events

    @functools.wraps(original)
    async def handle_events(self: Any, request: Any) -> Any:
        global _monitor
        if _monitor is None:
            _monitor = asyncio.get_running_loop().create_task(_watch_loop())
        record: dict[str, float] = {}
        token = _current.set(record)
        at = time.monotonic()
        started = time.perf_counter()
        try:
            response = await original(self, request)
            record["status"] = response.status
            return response
        finally:
            record["handler"] = time.perf_counter() - started
            _current.reset(token)
            _write({"at": at, **record})

    slack_app.SlackAdapter._handle_events = handle_events  # type: ignore[method-assign]
    _timed(SignatureCheck, "problem", "signature")
    _timed(slack_app, "read_envelope", "envelope")
    _timed(AsyncApp, "async_dispatch", "dispatch")
    _timed(slack_app.SlackAdapter, "_on_event", "listener")
    _timed(slack_app.SlackAdapter, "_core_knows", "known")
    _timed(UserDirectory, "lookup", "users")
    _timed(slack_app, "read_thread_once", "thread")
    _timed(ConversationCore, "submit", "submit")
    _timed(SqlStore, "accept", "accept")
    _timed(AsyncConnection, "start", "checkout")
    _timed(asyncpg, "connect", "pg_connect")
    _count_statements()


# --- reading the traces ----------------------------------------------------------------

STEPS = (
    "handler",
    "signature",
    "envelope",
    "dispatch",
    "listener",
    "known",
    "users",
    "thread",
    "submit",
    "accept",
    "checkout",
    "pg_connect",
)


def _quantile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summarize(directory: Path, *, since: float = 0.0, until: float = float("inf")) -> str:
    """Per step over the requests that started in [since, until]: how many ran it,
    p50 / p99 / mean wall ms, and its share of all handler time."""
    steps: dict[str, list[float]] = defaultdict(list)
    lags: list[float] = []
    outside: dict[str, float] = {}
    for path in sorted(directory.glob("trace-*.jsonl")):
        for line in path.read_text().splitlines():
            data = json.loads(line)
            if not since <= data["at"] <= until:
                continue
            if "lag" in data:
                lags += data["lag"]
                outside = data["outside"]  # cumulative, the last one wins per file
                continue
            for step in STEPS:
                if step in data:
                    steps[step].append(data[step])
    total = sum(steps["handler"]) or 1.0
    lines = [f"  {'step':<11}{'requests':>9}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'share':>8}"]
    for step in STEPS:
        values = steps.get(step)
        if not values:
            continue
        lines.append(
            f"  {step:<11}{len(values):>9}{_quantile(values, 0.5) * 1000:>9.1f}"
            f"{_quantile(values, 0.99) * 1000:>9.1f}{sum(values) / len(values) * 1000:>9.1f}"
            f"{sum(values) / total:>8.0%}"
        )
    if lags:
        lines.append(
            f"  event-loop lag (20 ms sleeps, {len(lags)}): p50 {_quantile(lags, 0.5) * 1000:.1f} ms, "
            f"p99 {_quantile(lags, 0.99) * 1000:.1f} ms, max {max(lags) * 1000:.1f} ms"
        )
    if outside:
        connects = int(outside.get("pg_connect#", 0))
        lines.append(f"  outside requests (last process read): {connects} asyncpg connects")
    return "\n".join(lines)


def statements_per_reply(directory: Path, *, since: float, until: float, replies: int) -> str:
    """The statements the bots sent between `since` and `until` (each process's
    cumulative counts: the last written before `since`, the first written after
    `until`), per reply, by kind."""
    sent: dict[str, int] = defaultdict(int)
    for path in sorted(directory.glob("trace-*.jsonl")):
        before: dict[str, int] = {}
        last: dict[str, int] = {}
        for line in path.read_text().splitlines():
            data = json.loads(line)
            if "statements" not in data:
                continue
            if data["at"] < since:
                before = data["statements"]
            last = data["statements"]
            if data["at"] >= until:
                break  # the first count written after `until` has all of the run's
        for kind, count in last.items():
            sent[kind] += count - before.get(kind, 0)
    if not replies or not sent:
        return ""
    # Outcomes ("kind -> what") are counted besides their statement, not as more.
    total = sum(count for kind, count in sent.items() if " -> " not in kind)
    lines = [f"  statements per reply: {total / replies:.2f}"]
    for kind, count in sorted(sent.items(), key=lambda item: -item[1]):
        if count:
            lines.append(f"    {count / replies:6.2f}  {kind}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1])))

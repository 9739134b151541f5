"""Hot-path benchmark (issue 11): the core's path beside this machine's floor, on SQLite
and on PostgreSQL, against one instant fake model in a process of its own.

The floor is what the same machine does for one reply with nothing but the drivers:
a bare aiohttp client posting the JSON prompt and reading the streamed SSE answer,
and raw driver statements equal to one turn's database work (sqlite3 on a WAL file
with synchronous=NORMAL like the store's, run on the loop; asyncpg through a pool of
the store's size) on the real, migrated schema:

- accept, one transaction: insert the turn (dedupe on the message key), find or
  create the conversation, insert the message, link the turn to it;
- claim the turn (one UPDATE ... RETURNING, the store's partial-unique-index claim);
- read the history window (the last 200 messages, text included) and the settings;
- finish, one transaction: finish the turn, insert the answer, claim the next turn.

The core's path is `ConversationCore.handle` through a null sink, as in
bench/bench_core.py. Floor and core runs alternate, so a change in machine load hits
both alike; ratios are taken from the medians of the same run.

Printed per backend: replies/s at 50 concurrent conversations; CPU ms per reply
(this process's CPU time / replies, and for PostgreSQL the CPU of the backends
serving the benchmark's database, from /proc); the core as a fraction of the floor's
throughput and its CPU ratio; core-added latency p50/p99 at one conversation (as
bench_core measures it); time per reply in a 5,000- vs a 10-message thread (and vs a
200-message one, whose history window is as full: the thread's length alone), with this
process's CPU over the 10- and 5,000-message replies (the bot's own work: the fake
model's reading of the longer prompt is in its own process); and for
PostgreSQL the round trips, statements, transactions and connections opened per
reply, counted on the wire by a counting proxy on 127.0.0.1 in a separate pass
(round trips = the server's ReadyForQuery messages; transactions = those that
leave the session idle, i.e. the end of an explicit or implicit transaction;
writing ones = those that ran an INSERT, UPDATE, DELETE or MERGE: each that
changed rows waits for a WAL flush at commit while synchronous_commit is on).

Runs on 127.0.0.1 only (PostgreSQL at 127.0.0.1:5432, trust auth, or
BOTSERVICE_TEST_POSTGRES_URL; a fresh database is created and dropped), in about
three minutes at the defaults on a quiet machine.

    python -m bench.bench_hot_path [--conversations 50] [--turns 10] [--rounds 3]
                                   [--single-turns 200] [--thread-replies 50]
                                   [--backends sqlite,postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import math
import os
import re
import secrets
import sqlite3
import statistics
import struct
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import asyncpg
import httpx
import orjson

from bench.bench_core import (
    ROOT,
    Row,
    TimedTransport,
    Timings,
    _TimedBody,
    as_vacuumed,
    drive,
    message,
    pct,
    print_table,
    seed_thread,
    start_fake_model,
    timed_reply,
)
from botservice.app.config import load_settings
from botservice.core.conversation import ConversationCore
from botservice.core.settings import Settings
from botservice.model.client import OpenAIChatClient, pooled_transport
from botservice.storage.migrate import upgrade
from botservice.storage.repository import SqlStore
from tests.db import PostgresServer, _find_postgres

TARGET_THROUGHPUT_FRACTION = 0.5
TARGET_SQLITE_CPU_RATIO = 2.2
TARGET_ROUND_TRIPS = 8
TARGET_PG_CPU_VS_SQLITE = 1.5
TARGET_P99_MS = 5.0
TARGET_THREAD_RATIO = 1.1

HISTORY_LIMIT = 200
PROMPT_SYSTEM = {"role": "system", "content": "You are a helpful assistant."}

# --- the floor: raw driver statements ------------------------------------------------

_ACCEPT_TURN = (
    "INSERT INTO turns (platform, message_key, user_id, is_channel_admin, status,"
    " reply_target, claims, created_at) VALUES ({}, {}, {}, {}, 'pending', {}, 0, {})"
    " ON CONFLICT (platform, message_key) DO NOTHING RETURNING id"
)
_FIND_CONVERSATION = (
    "SELECT id FROM conversations WHERE platform = {} AND workspace = {} AND channel = {}"
    " AND thread = {}"
)
_CREATE_CONVERSATION = (
    "INSERT INTO conversations (platform, workspace, channel, thread, created_at, updated_at,"
    " trim_noticed) VALUES ({}, {}, {}, {}, {}, {}, {})"
    " ON CONFLICT (platform, workspace, channel, thread) DO NOTHING RETURNING id"
)
_INSERT_USER_MESSAGE = (
    "INSERT INTO messages (conversation_id, role, author_id, author_name, text,"
    " platform_message_id, tokens, status, created_at)"
    " VALUES ({}, 'user', {}, {}, {}, {}, {}, 'complete', {}) RETURNING id"
)
_LINK_TURN = "UPDATE turns SET conversation_id = {}, user_message_id = {} WHERE id = {}"
_CLAIM = (
    "UPDATE turns SET status = 'running', claimed_by = {}, alive_until = {},"
    " claims = claims + 1"
    " WHERE id = (SELECT id FROM turns WHERE conversation_id = {} AND status = 'pending'"
    " ORDER BY id LIMIT 1) AND status = 'pending'"
    " AND NOT EXISTS (SELECT 1 FROM turns AS running WHERE running.conversation_id = {}"
    " AND running.status = 'running')"
    " RETURNING id, user_message_id, reply_target, claims"
)
_HISTORY = (
    "SELECT id, role, text, reply_to_id FROM messages WHERE conversation_id = {} AND id <= {}"
    " ORDER BY id DESC LIMIT {}"
)
_SETTINGS = (
    "SELECT channel, instructions, model FROM channel_settings WHERE platform = {}"
    " AND workspace = {} AND (channel = {} OR channel = '')"
)
_FINISH = (
    "UPDATE turns SET status = 'answered', finished_at = {}, alive_until = NULL"
    " WHERE id = {} AND claimed_by = {} AND status IN ('pending', 'running')"
    " RETURNING conversation_id, user_message_id"
)
_INSERT_ANSWER = (
    "INSERT INTO messages (conversation_id, role, author_id, author_name, text,"
    " platform_message_id, tokens, prompt_tokens, completion_tokens, model, status,"
    " reply_to_id, created_at)"
    " VALUES ({}, 'assistant', '', '', {}, '', {}, {}, {}, {}, 'complete', {}, {}) RETURNING id"
)
_SEED_MESSAGE = (
    "INSERT INTO messages (conversation_id, role, author_id, author_name, text,"
    " platform_message_id, tokens, status, reply_to_id, created_at)"
    " VALUES ({}, {}, 'U', 'bench user', {}, '', 8, 'complete', {}, {})"
)


def _sqlite(statement: str) -> str:
    return statement.replace("{}", "?")


def _postgres(statement: str) -> str:
    return statement.format(*(f"${n}" for n in range(1, statement.count("{}") + 1)))


@dataclass(frozen=True)
class FloorTurn:
    turn_id: int
    conversation_id: int
    message_id: int


class FloorDatabase(Protocol):
    async def accept(self, thread: str, key: str, text: str) -> FloorTurn: ...
    async def claim(self, conversation_id: int) -> Any: ...
    async def read(self, conversation_id: int, up_to: int) -> tuple[list[Any], list[Any]]: ...
    async def finish(self, turn: FloorTurn, text: str, usage: dict[str, int] | None) -> None: ...
    async def seed(self, conversation_id: int, messages: int) -> None: ...
    async def aclose(self) -> None: ...


HOLDER = f"floor:{os.getpid()}"


def _alive_until() -> datetime:
    return datetime.now(UTC) + timedelta(seconds=20)


def _naive(value: datetime) -> str:
    # How the store's UTCDateTime writes SQLite: naive UTC ISO text that sorts lexically.
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


class SqliteFloor:
    """The statements on the loop, as sqlite3 runs them with no thread in between."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in (
            "busy_timeout = 5000",
            "foreign_keys = ON",
            "journal_mode = WAL",
            "synchronous = NORMAL",
        ):
            self._db.execute(f"PRAGMA {pragma}")
        self._statements = {
            name: _sqlite(statement)
            for name, statement in globals().items()
            if name.startswith("_") and name.isupper() and isinstance(statement, str)
        }

    def _one(self, name: str, *parameters: Any) -> Any:
        return self._db.execute(self._statements[name], parameters).fetchone()

    async def accept(self, thread: str, key: str, text: str) -> FloorTurn:
        now = _naive(datetime.now(UTC))
        self._db.execute("BEGIN IMMEDIATE")
        try:
            (turn_id,) = self._one("_ACCEPT_TURN", "floor", key, "U", False, "{}", now)
            where = ("floor", "W", "C", thread)
            row = self._one("_FIND_CONVERSATION", *where)
            if row is None:
                row = self._one("_CREATE_CONVERSATION", *where, now, now, False)
            conversation_id = row[0]
            (message_id,) = self._one(
                "_INSERT_USER_MESSAGE", conversation_id, "U", "bench user", text, key, 20, now
            )
            self._db.execute(self._statements["_LINK_TURN"], (conversation_id, message_id, turn_id))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return FloorTurn(turn_id, conversation_id, message_id)

    async def claim(self, conversation_id: int) -> Any:
        alive = _naive(_alive_until())
        return self._one("_CLAIM", HOLDER, alive, conversation_id, conversation_id)

    async def read(self, conversation_id: int, up_to: int) -> tuple[list[Any], list[Any]]:
        history = self._db.execute(
            self._statements["_HISTORY"], (conversation_id, up_to, HISTORY_LIMIT)
        ).fetchall()
        settings = self._db.execute(self._statements["_SETTINGS"], ("floor", "W", "C")).fetchall()
        return history, settings

    async def finish(self, turn: FloorTurn, text: str, usage: dict[str, int] | None) -> None:
        now = _naive(datetime.now(UTC))
        usage = usage or {}
        self._db.execute("BEGIN IMMEDIATE")
        try:
            finished = self._one("_FINISH", now, turn.turn_id, HOLDER)
            assert finished is not None
            self._one(
                "_INSERT_ANSWER",
                turn.conversation_id,
                text,
                8,
                usage.get("prompt_tokens"),
                usage.get("completion_tokens"),
                "bench",
                turn.message_id,
                now,
            )
            alive = _naive(_alive_until())
            self._one("_CLAIM", HOLDER, alive, turn.conversation_id, turn.conversation_id)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    async def seed(self, conversation_id: int, messages: int) -> None:
        await asyncio.to_thread(self._seed, conversation_id, messages)

    def _seed(self, conversation_id: int, messages: int) -> None:
        now = _naive(datetime.now(UTC))
        statement = self._statements["_SEED_MESSAGE"]
        with self._db:
            self._db.execute("BEGIN")
            for _ in range(messages // 2):
                (question,) = self._db.execute(
                    statement + " RETURNING id",
                    (conversation_id, "user", "how do I reverse a list?", None, now),
                ).fetchone()
                self._db.execute(
                    statement, (conversation_id, "assistant", "Use reversed().", question, now)
                )

    async def aclose(self) -> None:
        self._db.close()


async def _no_reset(connection: asyncpg.Connection) -> None:
    # asyncpg's default reset sends a query on every release; these statements leave
    # no session state behind (SQLAlchemy's pool does not reset asyncpg sessions either).
    return None


class PostgresFloor:
    """The statements through an asyncpg pool, each phase on a connection of its own."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._statements = {
            name: _postgres(statement)
            for name, statement in globals().items()
            if name.startswith("_") and name.isupper() and isinstance(statement, str)
        }

    @classmethod
    async def open(cls, dsn: str, pool_size: int) -> PostgresFloor:
        pool = await asyncpg.create_pool(
            dsn, min_size=pool_size, max_size=pool_size, reset=_no_reset
        )
        return cls(pool)

    async def accept(self, thread: str, key: str, text: str) -> FloorTurn:
        now = datetime.now(UTC)
        s = self._statements
        async with self._pool.acquire() as connection, connection.transaction():
            turn_id = await connection.fetchval(
                s["_ACCEPT_TURN"], "floor", key, "U", False, "{}", now
            )
            where = ("floor", "W", "C", thread)
            conversation_id = await connection.fetchval(s["_FIND_CONVERSATION"], *where)
            if conversation_id is None:
                conversation_id = await connection.fetchval(
                    s["_CREATE_CONVERSATION"], *where, now, now, False
                )
            message_id = await connection.fetchval(
                s["_INSERT_USER_MESSAGE"], conversation_id, "U", "bench user", text, key, 20, now
            )
            await connection.execute(s["_LINK_TURN"], conversation_id, message_id, turn_id)
        return FloorTurn(turn_id, conversation_id, message_id)

    async def claim(self, conversation_id: int) -> Any:
        async with self._pool.acquire() as connection:
            return await connection.fetchrow(
                self._statements["_CLAIM"], HOLDER, _alive_until(), conversation_id, conversation_id
            )

    async def read(self, conversation_id: int, up_to: int) -> tuple[list[Any], list[Any]]:
        s = self._statements
        async with self._pool.acquire() as connection:
            history = await connection.fetch(s["_HISTORY"], conversation_id, up_to, HISTORY_LIMIT)
            settings = await connection.fetch(s["_SETTINGS"], "floor", "W", "C")
        return history, settings

    async def finish(self, turn: FloorTurn, text: str, usage: dict[str, int] | None) -> None:
        now = datetime.now(UTC)
        usage = usage or {}
        s = self._statements
        async with self._pool.acquire() as connection, connection.transaction():
            finished = await connection.fetchrow(s["_FINISH"], now, turn.turn_id, HOLDER)
            assert finished is not None
            await connection.fetchval(
                s["_INSERT_ANSWER"],
                turn.conversation_id,
                text,
                8,
                usage.get("prompt_tokens"),
                usage.get("completion_tokens"),
                "bench",
                turn.message_id,
                now,
            )
            await connection.fetchrow(
                s["_CLAIM"], HOLDER, _alive_until(), turn.conversation_id, turn.conversation_id
            )

    async def seed(self, conversation_id: int, messages: int) -> None:
        now = datetime.now(UTC)
        statement = self._statements["_SEED_MESSAGE"]
        async with self._pool.acquire() as connection, connection.transaction():
            for _ in range(messages // 2):
                question = await connection.fetchval(
                    statement + " RETURNING id",
                    conversation_id,
                    "user",
                    "how do I reverse a list?",
                    None,
                    now,
                )
                await connection.execute(
                    statement, conversation_id, "assistant", "Use reversed().", question, now
                )

    async def aclose(self) -> None:
        await self._pool.close()


class FloorClient:
    """The floor's reply: the turn's statements around a bare aiohttp request whose
    SSE answer is read line by line and decoded with orjson."""

    def __init__(self, database: FloorDatabase, base_url: str) -> None:
        self.database = database
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))

    async def reply(self, thread: str, turn: int) -> str:
        incoming = message(thread, turn)
        accepted = await self.database.accept(thread, incoming.message_key, incoming.text)
        claimed = await self.database.claim(accepted.conversation_id)
        assert claimed is not None
        history, _settings = await self.database.read(accepted.conversation_id, accepted.message_id)
        messages = [PROMPT_SYSTEM]
        messages += [{"role": row[1], "content": row[2]} for row in reversed(history)]
        body = orjson.dumps(
            {
                "model": "bench",
                "messages": messages,
                "max_tokens": 1024,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        )
        parts: list[str] = []
        usage = None
        async with self._http.post(self._url, data=body, headers=self._headers) as response:
            assert response.status == 200
            async for line in response.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    continue
                chunk = orjson.loads(data)
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        parts.append(content)
        text = "".join(parts)
        assert text
        await self.database.finish(accepted, text, usage)
        return text

    async def aclose(self) -> None:
        await self._http.close()
        await self.database.aclose()


async def drive_floor(floor: FloorClient, threads: list[str], turns: int) -> float:
    async def one_conversation(thread: str) -> None:
        for turn in range(turns):
            await floor.reply(thread, turn)

    started = time.perf_counter()
    await asyncio.gather(*(one_conversation(thread) for thread in threads))
    return len(threads) * turns / (time.perf_counter() - started)


# --- measuring -------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # utime and stime are fields 14 and 15 of stat, 12 and 13 after "pid (comm)".
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BackendCpu:
    """CPU seconds of the PostgreSQL backends serving one database, from /proc.

    A backend's title names its database ("postgres: <user> <db> <addr> <state>").
    Backends come and go with pooled connections, so /proc is sampled while a run
    lasts and each backend counts from its first sample (0 if it started mid-run).
    Sampling reads only the postmaster's children, and each one's title once, so
    the sampler costs this process little beside the run it measures.
    """

    def __init__(self, database: str) -> None:
        self._database = f" {database} "
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._ours: dict[int, bool] = {}  # backend pid -> serves our database
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._children = _postmaster_children()

    def _backends(self) -> dict[int, float]:
        try:
            pids = [int(pid) for pid in self._children.read_text().split()]
        except OSError:
            return {}
        found = {}
        for pid in pids:
            ours = self._ours.get(pid)
            if ours is None:
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                ours = self._ours[pid] = self._database in f"{title.decode()} "
            if ours and (cpu := proc_cpu_seconds(pid)) is not None:
                found[pid] = cpu
        return found

    def _sample(self, *, first: bool) -> None:
        for pid, cpu in self._backends().items():
            self._first.setdefault(pid, cpu if first else 0.0)
            self._last[pid] = cpu

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            self._sample(first=False)

    def __enter__(self) -> BackendCpu:
        self._sample(first=True)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self._sample(first=False)

    @property
    def seconds(self) -> float:
        return sum(self._last[pid] - self._first[pid] for pid in self._last)


def _postmaster_children() -> Path:
    """/proc's list of the postmaster's children: the server's processes, backends too."""

    def program(pid: str) -> bytes:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            return b""

    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not program(entry.name).endswith(b"/postgres"):
            continue
        try:
            parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            continue
        # The postmaster runs the postgres binary and is not a child of another one.
        if not program(parent).endswith(b"/postgres"):
            return entry / "task" / entry.name / "children"
    raise RuntimeError("no PostgreSQL server process found in /proc (is it on this machine?)")


@dataclass
class Run:
    rate: float
    replies: int
    cpu: float  # seconds of this process
    server_cpu: float = math.nan  # seconds of the database's backends

    def cpu_ms(self) -> float:
        return 1000 * self.cpu / self.replies

    def server_cpu_ms(self) -> float:
        return 1000 * self.server_cpu / self.replies


async def measured(go: Callable[[], Awaitable[float]], replies: int, database: str | None) -> Run:
    backends = BackendCpu(database) if database else None
    with backends or contextlib.nullcontext():
        cpu = time.process_time()
        rate = await go()
        cpu = time.process_time() - cpu
    return Run(rate, replies, cpu, backends.seconds if backends else math.nan)


@dataclass
class WireCounts:
    connections: int = 0
    round_trips: int = 0  # ReadyForQuery messages after start-up
    transactions: int = 0  # ReadyForQuery leaving the session idle
    writes: int = 0  # of those, transactions that ran a writing statement
    statements: int = 0  # Execute + simple Query messages


class CountingProxy:
    """A TCP proxy on 127.0.0.1 in front of PostgreSQL that counts protocol messages.

    Frontend and backend messages are a type byte and a length; only start-up
    messages (SSLRequest, StartupMessage) have no type byte.
    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self.counts = WireCounts()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        self.counts.connections += 1
        server_in, server_out = await asyncio.open_connection(*self._target)
        try:
            while True:  # untyped start-up: SSLRequest / GSSENCRequest, then StartupMessage
                head = await client_in.readexactly(4)
                body = await client_in.readexactly(struct.unpack("!I", head)[0] - 4)
                server_out.write(head + body)
                if struct.unpack("!I", body[:4])[0] not in _ENCRYPTION_REQUESTS:
                    break
                answer = await server_in.readexactly(1)
                assert answer == b"N", "the counting proxy cannot read an encrypted session"
                client_out.write(answer)
            session = _Session()
            await asyncio.gather(
                self._frontend(client_in, server_out, session),
                self._backend(server_in, client_out, session),
            )
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            for writer in (client_out, server_out):
                writer.close()

    async def _frontend(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: _Session
    ) -> None:
        while True:
            head = await reader.readexactly(5)
            body = await reader.readexactly(struct.unpack("!I", head[1:])[0] - 4)
            kind = head[:1]
            if kind == b"P":  # Parse: statement name, query text
                name, query, _ = body.split(b"\0", 2)
                session.writes[name] = bool(_WRITE_STATEMENT.search(query))
            elif kind == b"B":  # Bind: portal name, statement name
                session.bound = body.split(b"\0", 2)[1]
            elif kind == b"E":
                self.counts.statements += 1
                session.wrote |= session.writes.get(session.bound, False)
            elif kind == b"Q":  # a simple query (BEGIN, COMMIT, ...)
                self.counts.statements += 1
                session.wrote |= bool(_WRITE_STATEMENT.search(body))
            writer.write(head + body)
            await writer.drain()
            if kind == b"X":  # Terminate
                return

    async def _backend(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: _Session
    ) -> None:
        started = False  # the first ReadyForQuery ends the start-up, not a round trip of work
        while True:
            head = await reader.readexactly(5)
            body = await reader.readexactly(struct.unpack("!I", head[1:])[0] - 4)
            if head[:1] == b"Z":  # ReadyForQuery; its status byte: I(dle), T(ransaction), E
                if started:
                    self.counts.round_trips += 1
                    if body == b"I":
                        self.counts.transactions += 1
                        self.counts.writes += session.wrote
                        session.wrote = False
                started = True
            writer.write(head + body)
            await writer.drain()


_ENCRYPTION_REQUESTS = (80877103, 80877104)
# A statement that writes rows (not `SELECT ... FOR UPDATE`). Told by its text: a
# DML statement run with a row limit (asyncpg's fetchval/fetchrow) ends in
# PortalSuspended, with no CommandComplete tag to read.
_WRITE_STATEMENT = re.compile(rb"(?<!FOR )\b(?:INSERT|UPDATE|DELETE|MERGE)\b", re.IGNORECASE)


@dataclass
class _Session:
    """What the counting proxy knows about one connection."""

    writes: dict[bytes, bool] = field(default_factory=dict)  # prepared statement -> writes
    bound: bytes = b""  # the statement of the portal last bound
    wrote: bool = False  # the open transaction ran a writing statement


# --- one backend -------------------------------------------------------------------------


@dataclass
class Backend:
    name: str
    url: str  # SQLAlchemy URL of a migrated database
    open_floor: Callable[[int], Awaitable[FloorDatabase]]  # pool size -> floor
    database: str | None = None  # PostgreSQL: the database whose backends' CPU counts
    proxied: Callable[[int], tuple[str, str]] | None = None  # port -> (core URL, floor DSN)


@dataclass
class Results:
    floor: list[Run] = field(default_factory=list)
    core: list[Run] = field(default_factory=list)
    added_ms: list[float] = field(default_factory=list)
    small_ms: list[float] = field(default_factory=list)
    window_ms: list[float] = field(default_factory=list)  # a 200-message thread
    large_ms: list[float] = field(default_factory=list)
    # This process's CPU over each of those replies: the bot's own work (the fake
    # model's is in its own process; for PostgreSQL, the server's is left out).
    small_cpu_ms: list[float] = field(default_factory=list)
    large_cpu_ms: list[float] = field(default_factory=list)
    floor_wire: WireCounts | None = None
    core_wire: WireCounts | None = None
    wire_replies: int = 0
    pool_size: int = 1  # of the store's engine, and so of the floor's asyncpg pool


def bench_settings(base_url: str) -> Settings:
    return load_settings(
        {
            "OPENAI_BASE_URL": base_url,
            "OPENAI_API_KEY": "sk-bench",
            "BOTSERVICE_CONFIG": str(ROOT / "config" / "botservice.toml"),
            # One made-up person sends the whole load: no per-person rate.
            "BOTSERVICE_LIMITS__MESSAGES_PER_MINUTE": "0",
        }
    )


# The message key of the turn a request answers, from its last user message as
# bench_core's `message` writes it ("<thread> turn <n>: how do I ...").
_KEY_IN_PROMPT = re.compile(rb'"content":"([^" ]+) turn (-?\d+): ')


class PromptTimedTransport(TimedTransport):
    """bench_core's timed transport, telling turns apart by their prompt.

    bench_core finds the turn from a context variable set where `handle` is called.
    Since turns are claimed (a process that finishes a turn claims the next one of
    its conversation itself), the task sending a request may have been started for
    an earlier turn, and carries that turn's key.
    """

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sent = time.perf_counter()
        # From the last user message on: a search of the whole body would cost the
        # benchmark 34 us more in a 200-message window than in a 10-message one.
        content = request.content
        found = _KEY_IN_PROMPT.search(content, max(0, content.rfind(b'"role":"user"')))
        key = f"{found[1].decode()}:{int(found[2])}" if found else None
        if key is not None:
            self.timings.sent[key] = sent
        response = await self._inner.handle_async_request(request)
        if key is not None:
            response.stream = _TimedBody(response.stream, key, self.timings)
        return response


@contextlib.asynccontextmanager
async def running_core(
    settings: Settings, url: str
) -> AsyncIterator[tuple[ConversationCore, TimedTransport, SqlStore]]:
    store = await SqlStore.open(url, migrate=False)
    transport = PromptTimedTransport(pooled_transport())
    client = OpenAIChatClient(settings.model, transport=transport)
    try:
        yield ConversationCore(settings=settings, store=store, model=client), transport, store
    finally:
        await client.aclose()
        await store.aclose()


async def measure_backend(args: argparse.Namespace, base_url: str, backend: Backend) -> Results:
    settings = bench_settings(base_url)
    results = Results()
    n, turns = args.conversations, args.turns

    @contextlib.asynccontextmanager
    async def floor_client(label: str) -> AsyncIterator[FloorClient]:
        # Open only while it runs: PostgreSQL's connection slots are shared with
        # whatever else runs on this machine, and the store keeps its own open.
        floor = FloorClient(await backend.open_floor(results.pool_size), base_url)
        try:
            # Connections and prepared statements, on threads of their own.
            await drive_floor(floor, [f"{label}.{i}" for i in range(n)], 1)
            yield floor
        finally:
            await floor.aclose()

    async with running_core(settings, backend.url) as (core, transport, store):
        results.pool_size = pool_size(store)
        async with floor_client("open-warm") as floor:
            await drive_floor(floor, [f"warm{i}" for i in range(n)], 2)
        await drive(core, Timings(), [f"warm{i}" for i in range(n)], 3)
        for run in range(args.rounds):
            threads = [f"load{run}.{i}" for i in range(n)]
            # Alternate which goes first, so a trend in the machine's load evens out.
            for name in ("floor", "core") if run % 2 == 0 else ("core", "floor"):
                if name == "floor":
                    async with floor_client(f"open{run}") as floor:
                        outcome = await measured(
                            functools.partial(drive_floor, floor, threads, turns),
                            n * turns,
                            backend.database,
                        )
                    results.floor.append(outcome)
                else:
                    outcome = await measured(
                        functools.partial(drive, core, Timings(), threads, turns),
                        n * turns,
                        backend.database,
                    )
                    results.core.append(outcome)

        single = transport.timings = Timings()
        await drive(core, single, ["single"], args.single_turns)
        results.added_ms = single.added_ms()

        # Threads of 10 (each measured reply finds exactly 10 messages), one of 200 (a
        # full history window, as the long thread's: the two differ in length only)
        # and one of 5,000, replies taking turns between them (as bench_core does).
        replies = args.thread_replies
        small_threads = [f"small{i}" for i in range(replies + 5)]
        for thread in small_threads:
            await seed_thread(store, thread, 10)
        await seed_thread(store, "window", HISTORY_LIMIT)
        large_id = await conversation_id_of(store, "large")
        async with floor_client("open-seed") as floor:
            await floor.database.seed(large_id, 4998)
        await as_vacuumed(store)
        for turn, thread in enumerate(small_threads):
            small_cpu = time.process_time()
            small_time = await timed_reply(core, thread, 0)
            small_cpu = time.process_time() - small_cpu
            window_time = await timed_reply(core, "window", turn)
            large_cpu = time.process_time()
            large_time = await timed_reply(core, "large", turn)
            large_cpu = time.process_time() - large_cpu
            if turn >= 5:
                results.small_ms.append(small_time * 1000)
                results.window_ms.append(window_time * 1000)
                results.large_ms.append(large_time * 1000)
                results.small_cpu_ms.append(small_cpu * 1000)
                results.large_cpu_ms.append(large_cpu * 1000)

    if backend.proxied is not None:
        await count_round_trips(args, settings, base_url, backend, results)
    return results


def pool_size(store: SqlStore) -> int:
    """The floor's asyncpg pool is as large as the store's hot-path pool."""
    return store.pool_size


async def conversation_id_of(store: SqlStore, thread: str) -> int:
    incoming = message(thread, -1)  # measured turns count from 0
    pending = await store.accept(incoming, text="one more", tokens=2)
    assert pending is not None
    await store.store_answer(
        pending.turn_id, text="ok", tokens=1, usage=None, status="complete", model="bench"
    )
    return pending.conversation_id


async def count_round_trips(
    args: argparse.Namespace, settings: Settings, base_url: str, backend: Backend, results: Results
) -> None:
    """A pass of its own through the counting proxy (which costs CPU in this process)."""
    assert backend.proxied is not None
    n, turns = args.conversations, args.count_turns
    async with CountingProxy("127.0.0.1", 5432) as proxy:
        core_url, floor_dsn = backend.proxied(proxy.port)
        floor = FloorClient(await PostgresFloor.open(floor_dsn, results.pool_size), base_url)
        try:
            await drive_floor(floor, [f"count-warm{i}" for i in range(n)], 2)
            proxy.counts = WireCounts()
            await drive_floor(floor, [f"count{i}" for i in range(n)], turns)
            results.floor_wire, proxy.counts = proxy.counts, WireCounts()
        finally:
            await floor.aclose()
        async with running_core(settings, core_url) as (core, _transport, _store):
            await drive(core, Timings(), [f"count-warm{i}" for i in range(n)], 2)
            proxy.counts = WireCounts()
            await drive(core, Timings(), [f"count{i}" for i in range(n)], turns)
            results.core_wire = proxy.counts
    results.wire_replies = n * turns


# --- report ------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def spread(values: list[float], digits: int = 0) -> str:
    return ", ".join(f"{value:.{digits}f}" for value in values)


def backend_rows(
    name: str, args: argparse.Namespace, results: Results, sqlite_core_cpu: float | None
) -> list[Row]:
    n = args.conversations
    rows: list[Row] = []
    note = f"median of {args.rounds} runs of {n * args.turns}: "
    floor_rate = median([run.rate for run in results.floor])
    core_rate = median([run.rate for run in results.core])
    floor_cpu = median([run.cpu_ms() for run in results.floor])
    core_cpu = median([run.cpu_ms() for run in results.core])
    rows += [
        Row(
            f"{name}: floor replies/s, {n} conversations",
            f"{floor_rate:.0f}",
            "",
            note + spread([run.rate for run in results.floor]),
        ),
        Row(
            f"{name}: core replies/s, {n} conversations",
            f"{core_rate:.0f}",
            "",
            note + spread([run.rate for run in results.core]),
        ),
        Row(
            f"{name}: core / floor throughput",
            f"{core_rate / floor_rate:.0%}",
            f">= {TARGET_THROUGHPUT_FRACTION:.0%}",
            "per run: "
            + spread(
                [c.rate / f.rate * 100 for c, f in zip(results.core, results.floor, strict=True)]
            )
            + " %",
        ),
        Row(
            f"{name}: floor CPU ms per reply (this process)",
            f"{floor_cpu:.2f}",
            "",
            spread([run.cpu_ms() for run in results.floor], 2),
        ),
        Row(
            f"{name}: core CPU ms per reply (this process)",
            f"{core_cpu:.2f}",
            "",
            spread([run.cpu_ms() for run in results.core], 2),
        ),
        Row(
            f"{name}: core / floor CPU per reply",
            f"{core_cpu / floor_cpu:.2f}x",
            f"<= {TARGET_SQLITE_CPU_RATIO}x" if name == "SQLite" else "",
        ),
    ]
    if results.floor and not math.isnan(results.floor[0].server_cpu):
        floor_server = median([run.server_cpu_ms() for run in results.floor])
        core_server = median([run.server_cpu_ms() for run in results.core])
        rows += [
            Row(
                f"{name}: floor server CPU ms per reply",
                f"{floor_server:.2f}",
                "",
                "the database's backends, /proc: "
                + spread([r.server_cpu_ms() for r in results.floor], 2),
            ),
            Row(
                f"{name}: core server CPU ms per reply",
                f"{core_server:.2f}",
                "",
                spread([r.server_cpu_ms() for r in results.core], 2),
            ),
        ]
    if sqlite_core_cpu is not None:
        rows.append(
            Row(
                f"{name}: core CPU per reply / SQLite's",
                f"{core_cpu / sqlite_core_cpu:.2f}x",
                f"<= {TARGET_PG_CPU_VS_SQLITE}x",
                "this process only, both medians of this run",
            )
        )
    rows += [
        Row(
            f"{name}: core-added latency, 1 conversation, p50", f"{median(results.added_ms):.2f} ms"
        ),
        Row(
            f"{name}: core-added latency, 1 conversation, p99",
            f"{pct(results.added_ms, 0.99):.2f} ms",
            f"< {TARGET_P99_MS:.0f} ms",
            f"{len(results.added_ms)} replies, as bench_core measures it",
        ),
    ]
    small, large = median(results.small_ms), median(results.large_ms)
    window = median(results.window_ms)
    rows += [
        Row(
            f"{name}: time per reply, 10 / 200 / 5,000-message thread",
            f"{small:.2f} / {window:.2f} / {large:.2f} ms",
            "",
            f"median of {len(results.small_ms)} each",
        ),
        Row(
            f"{name}: 5,000-message / 10-message",
            f"{large / small:.2f}x",
            f"<= {TARGET_THREAD_RATIO}x",
        ),
        Row(
            f"{name}: 5,000-message / 200-message",
            f"{large / window:.2f}x",
            "",
            "the same 200-message window: the thread's length alone",
        ),
        Row(
            f"{name}: bot CPU per reply, 10 / 5,000-message thread",
            f"{median(results.small_cpu_ms):.2f} / {median(results.large_cpu_ms):.2f} ms",
            "",
            f"this process: {median(results.large_cpu_ms) / median(results.small_cpu_ms):.2f}x"
            + (", the server's CPU left out" if name == "PostgreSQL" else "")
            + "; the fake model's reading of the longer prompt is in neither",
        ),
    ]
    for label, wire, target in (
        ("floor", results.floor_wire, ""),
        ("core", results.core_wire, f"<= {TARGET_ROUND_TRIPS}"),
    ):
        if wire is None:
            continue
        per = results.wire_replies
        rows.append(
            Row(
                f"{name}: {label} round trips per reply",
                f"{wire.round_trips / per:.1f}",
                target,
                f"{wire.statements / per:.1f} statements, {wire.transactions / per:.1f} "
                f"transactions ({wire.writes / per:.1f} writing), {wire.connections} "
                f"connections opened in {per} replies",
            )
        )
    return rows


# --- main --------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace, base_url: str, folder: Path) -> list[Row]:
    rows: list[Row] = []
    sqlite_core_cpu: float | None = None
    if "sqlite" in args.backends:
        path = folder / "bench.db"
        url = f"sqlite+aiosqlite:///{path}"
        await upgrade(url)

        async def open_sqlite(_pool_size: int) -> FloorDatabase:
            return SqliteFloor(path)

        results = await measure_backend(args, base_url, Backend("SQLite", url, open_sqlite))
        sqlite_core_cpu = median([run.cpu_ms() for run in results.core])
        rows += backend_rows("SQLite", args, results, None)
    if "postgres" in args.backends:
        server = await _find_postgres()
        name = f"botservice_bench_{secrets.token_hex(6)}"
        await server.create_database(name)
        try:
            url = server.url(name)
            await upgrade(url)

            async def open_postgres(pool_size: int) -> FloorDatabase:
                return await PostgresFloor.open(server.dsn(name), pool_size)

            backend = Backend(
                "PostgreSQL",
                url,
                open_postgres,
                database=name,
                proxied=lambda port: proxied_urls(server, name, port),
            )
            results = await measure_backend(args, base_url, backend)
            rows += backend_rows("PostgreSQL", args, results, sqlite_core_cpu)
        finally:
            await server.drop_database(name)
    return rows


def proxied_urls(server: PostgresServer, database: str, port: int) -> tuple[str, str]:
    from sqlalchemy.engine import make_url

    url = make_url(server.url(database)).set(host="127.0.0.1", port=port)
    dsn = make_url(server.dsn(database)).set(host="127.0.0.1", port=port)
    return url.render_as_string(hide_password=False), dsn.render_as_string(hide_password=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--turns", type=int, default=10, help="per conversation and run")
    parser.add_argument("--rounds", type=int, default=3, help="floor/core runs at full concurrency")
    parser.add_argument("--single-turns", type=int, default=200, help="turns at 1 conversation")
    parser.add_argument("--thread-replies", type=int, default=50)
    parser.add_argument("--count-turns", type=int, default=4, help="per conversation, wire count")
    parser.add_argument("--backends", default="sqlite,postgres")
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

"""Message search benchmark (issue 12): what `search_history` costs the model's turn, and
what keeping the search index costs every stored message, on SQLite and PostgreSQL.

A fresh, migrated database per backend gets `--channels` channels of `--messages`
messages each (words drawn from a fixed vocabulary, so common and rare words exist).
Then, through the real tool (`BuiltinTools.call`, as the core calls it):

- search latency, median and p99 over `--searches` calls, for a rare word, a common
  word, and two words that rarely meet (all of them must match, then any);
- accepting one message (`SqlStore.accept`, the hot path's first write), median and
  p99, with the index and again after dropping it (SQLite: the FTS5 triggers;
  PostgreSQL: the GIN expression index): the difference is the index's cost per
  message. The two passes alternate in blocks so machine load hits both alike.

Runs on 127.0.0.1 only (PostgreSQL at 127.0.0.1:5432, trust auth, or
BOTSERVICE_TEST_POSTGRES_URL; a fresh database is created and dropped).

    python -m bench.bench_search [--channels 20] [--messages 2000] [--searches 200]
                                 [--accepts 400] [--backends sqlite,postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import insert, text

from botservice.core.events import ConversationKey
from botservice.core.tools import ToolContext
from botservice.storage.engine import create_engine
from botservice.storage.migrate import MIGRATIONS, upgrade
from botservice.storage.repository import SqlStore
from botservice.storage.tables import CONVERSATIONS, MESSAGES
from botservice.tools.builtin import builtin_tools
from tests.db import POSTGRES_ADMIN_URL, PostgresServer, _find_postgres, incoming, sqlite_url

COMMON = ["deploy", "meeting", "review", "release", "question", "update"]
FILLER = [f"word{index}" for index in range(3000)]
RARE = "zeppelin"
PAIR = ("invoice", "kangaroo")


@dataclass
class Row:
    backend: str
    what: str
    median_ms: float
    p99_ms: float
    note: str = ""


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def sentence(rng: random.Random, index: int) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(8, 30))]
    words.insert(rng.randrange(len(words)), rng.choice(COMMON))
    if index % 997 == 0:
        words.append(RARE)
    if index % 50 == 0:
        words.append(PAIR[0])
    if index % 70 == 0:
        words.append(PAIR[1])
    return " ".join(words)


async def populate(store: SqlStore, channels: int, messages: int) -> None:
    rng = random.Random(12)
    now = datetime.now(UTC)
    async with store.engine.begin() as connection:
        for channel in range(channels):
            result = await connection.execute(
                insert(CONVERSATIONS)
                .values(
                    platform="bench",
                    workspace="W1",
                    channel=f"C{channel}",
                    thread="T1",
                    created_at=now,
                    updated_at=now,
                    trim_noticed=False,
                )
                .returning(CONVERSATIONS.c.id)
            )
            conversation_id = result.scalar_one()
            rows = [
                {
                    "conversation_id": conversation_id,
                    "role": "user" if index % 2 == 0 else "assistant",
                    "author_id": f"U{index % 7}",
                    "author_name": f"Person {index % 7}",
                    "text": sentence(rng, index),
                    "platform_message_id": "",
                    "tokens": 10,
                    "status": "complete",
                    "created_at": now,
                }
                for index in range(messages)
            ]
            await connection.execute(insert(MESSAGES), rows)


async def timed(call: Callable[[], Awaitable[object]], times: int) -> list[float]:
    spent: list[float] = []
    for _ in range(times):
        started = time.perf_counter()
        await call()
        spent.append((time.perf_counter() - started) * 1000)
    return spent


async def drop_index(store: SqlStore) -> None:
    async with store.engine.begin() as connection:
        if store.engine.dialect.name == "sqlite":
            for trigger in ("insert", "delete", "update"):
                await connection.execute(text(f"DROP TRIGGER messages_fts_{trigger}"))
        else:
            await connection.execute(text("DROP INDEX ix_messages_text_search"))


def _migration() -> Any:
    path = Path(MIGRATIONS) / "versions" / "0007_message_search.py"
    spec = importlib.util.spec_from_file_location("message_search_migration", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def restore_index(store: SqlStore) -> None:
    """The migration's own statements again (on SQLite the rows accepted meanwhile stay
    out of the index: this database is thrown away)."""
    migration = _migration()
    if store.engine.dialect.name == "sqlite":
        statements = [s for s in migration._SQLITE_UP if s.startswith("CREATE TRIGGER")]
    else:
        statements = [
            "CREATE INDEX ix_messages_text_search ON messages "
            "USING gin (to_tsvector('simple'::regconfig, text))"
        ]
    async with store.engine.begin() as connection:
        for statement in statements:
            await connection.execute(text(statement))


async def measure(name: str, url: str, args: argparse.Namespace) -> list[Row]:
    await upgrade(url)
    store = SqlStore(create_engine(url))
    rows: list[Row] = []
    try:
        await populate(store, args.channels, args.messages)
        if store.engine.dialect.name == "postgresql":
            # The steady state autovacuum keeps: statistics, and GIN's pending list of
            # fresh entries (scanned linearly by every search until then; at most
            # gin_pending_list_limit, 4 MB by default) merged into the index.
            autocommit = store.engine.execution_options(isolation_level="AUTOCOMMIT")
            async with autocommit.connect() as connection:
                await connection.execute(text("VACUUM ANALYZE messages"))
        tools = builtin_tools(store, timezone=ZoneInfo("UTC"), default_retention_days=30)
        context = ToolContext(
            conversation=ConversationKey("bench", "W1", "C3", "T1"),
            conversation_id=4,
            user_id="U1",
            turn_id=0,
        )
        total = args.channels * args.messages
        for label, query in (
            (f"search_history, a rare word ({RARE})", RARE),
            ("search_history, a common word", COMMON[0]),
            ("search_history, two words rarely together", " ".join(PAIR)),
        ):
            await tools.call("search_history", {"query": query}, context)  # warm up
            spent = await timed(
                lambda query=query: tools.call("search_history", {"query": query}, context),
                args.searches,
            )
            rows.append(
                Row(name, label, statistics.median(spent), p99(spent), f"{total:,} messages")
            )

        counter = iter(range(10**9))

        async def accept() -> None:
            number = next(counter)
            words = sentence(random.Random(number), number)
            message = incoming(f"a{number}", text=words, platform="bench", thread=f"A{number}")
            await store.accept(message, text=words, tokens=10)

        await timed(accept, 20)  # warm up
        with_index: list[float] = []
        without_index: list[float] = []
        block = max(1, args.accepts // 4)
        for _ in range(4):
            with_index += await timed(accept, block)
            await drop_index(store)
            without_index += await timed(accept, block)
            await restore_index(store)
        rows.append(
            Row(
                name,
                "accept one message, with the index",
                statistics.median(with_index),
                p99(with_index),
            )
        )
        rows.append(
            Row(
                name,
                "accept one message, index dropped",
                statistics.median(without_index),
                p99(without_index),
                "the difference is the index's cost",
            )
        )
    finally:
        await store.aclose()
    return rows


async def main_async(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    backends = args.backends.split(",")
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory() as folder:
            rows += await measure("sqlite", sqlite_url(Path(folder) / "bench.db"), args)
    if "postgres" in backends:
        server: PostgresServer = await _find_postgres()
        database = f"botservice_bench_{secrets.token_hex(4)}"
        await server.create_database(database)
        try:
            rows += await measure("postgres", server.url(database), args)
        finally:
            await server.drop_database(database)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--messages", type=int, default=2000, help="per channel")
    parser.add_argument("--searches", type=int, default=200)
    parser.add_argument("--accepts", type=int, default=400)
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    rows = asyncio.run(main_async(args))
    print(f"{'backend':9} {'what':48} {'median ms':>10} {'p99 ms':>8}  note")
    for row in rows:
        print(f"{row.backend:9} {row.what:48} {row.median_ms:10.2f} {row.p99_ms:8.2f}  {row.note}")
    print(f"(PostgreSQL: {POSTGRES_ADMIN_URL.rsplit('@', 1)[-1]})")


if __name__ == "__main__":
    main()

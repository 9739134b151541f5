"""The store's hot path (issue 11): its SQL compiled from the Core definitions, no
SQLAlchemy on the turn path, nothing answered from a stale copy in memory, and a SQLite
write lock held elsewhere never blocking the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from botservice.core.ports import Claim
from botservice.storage import hot_rows
from botservice.storage.compile_statements import TARGET, generate
from botservice.storage.compiled import POSTGRESQL
from botservice.storage.migrate import upgrade
from botservice.storage.postgres_hot import _bound
from botservice.storage.repository import SqlStore
from tests.db import PostgresServer, StoreFactory, incoming


def test_the_compiled_statements_are_what_their_definitions_compile_to() -> None:
    assert TARGET.read_text(encoding="utf-8") == generate(), (
        "storage/compiled.py is out of date: run `python -m botservice.storage.compile_statements`"
    )


def test_the_turn_path_imports_no_sqlalchemy() -> None:
    probe = (
        "import sys\n"
        "import botservice.storage.sqlite_hot, botservice.storage.postgres_hot\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'sqlmodel')))\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert shown.strip() == "[]"


async def test_a_setting_changed_by_another_process_shows_in_the_next_turn(
    make_store: StoreFactory,
) -> None:
    answering, command_line = await make_store(), await make_store()
    assert (await answering.channel_settings("test", "W1", "C1")).model is None

    await command_line.change_setting(
        "test", "W1", "C1", field="model", value="gpt-other", changed_by="U9"
    )

    assert (await answering.channel_settings("test", "W1", "C1")).model == "gpt-other"


async def _conversation(store: SqlStore) -> tuple[int, int]:
    """Two turns answered; the conversation's id and its last message id."""
    conversation_id, last = 0, 0
    for number, user in ((1, "U1"), (2, "U2")):
        message = incoming(f"k{number}", text=f"question {number}", user_id=user)
        accepted = await store.accept(message, text=message.text, tokens=2)
        assert accepted is not None
        saved = await store.store_answer(
            accepted.turn_id,
            text=f"answer {number}",
            tokens=2,
            usage=None,
            status="complete",
            model="m",
        )
        assert saved is not None
        conversation_id, last = accepted.conversation_id, saved
    return conversation_id, last


async def test_history_shows_a_forget_me_by_another_process_at_once(
    make_store: StoreFactory,
) -> None:
    answering, command_line = await make_store(), await make_store()
    conversation_id, last = await _conversation(answering)
    before = await answering.history(conversation_id, up_to_message_id=last, limit=50)
    assert [m.text for m in before] == ["question 1", "answer 1", "question 2", "answer 2"]

    await command_line.forget_user("test", "U1")

    after = await answering.history(conversation_id, up_to_message_id=last, limit=50)
    assert [m.text for m in after] == ["question 2", "answer 2"]


async def test_history_shows_a_reset_and_a_deletion_by_another_process_at_once(
    make_store: StoreFactory,
) -> None:
    answering, other = await make_store(), await make_store()
    conversation_id, last = await _conversation(answering)
    assert len(await answering.history(conversation_id, up_to_message_id=last, limit=50)) == 4

    await other.delete_platform_message("test", "W1", "C1", "pm-k2")
    shown = await answering.history(conversation_id, up_to_message_id=last, limit=50)
    assert [m.text for m in shown] == ["question 1", "answer 1", "answer 2"]

    await other.reset_conversation(incoming("k1").conversation)
    assert await answering.history(conversation_id, up_to_message_id=last, limit=50) == []
    message = incoming("k3", text="question 3")
    accepted = await answering.accept(message, text=message.text, tokens=2)
    assert accepted is not None
    fresh = await answering.history(
        conversation_id, up_to_message_id=accepted.user_message_id, limit=50
    )
    assert [m.text for m in fresh] == ["question 3"]


async def test_a_window_kept_between_turns_shows_what_changed_since(
    make_store: StoreFactory,
) -> None:
    """A conversation's last window is kept as built (PostgreSQL: so the next turn looks
    up only the messages it adds). It moves on with the conversation, a message whose
    text changed since (its audio heard) is shown as it is now, and a message deleted
    since is gone."""
    store = await make_store()
    conversation_id, last = await _conversation(store)
    window = await store.history(conversation_id, up_to_message_id=last, limit=4)
    assert [m.text for m in window] == ["question 1", "answer 1", "question 2", "answer 2"]

    message = incoming("k3", text="question 3")
    accepted = await store.accept(message, text=message.text, tokens=2)
    assert accepted is not None
    moved = await store.history(conversation_id, up_to_message_id=accepted.user_message_id, limit=4)
    assert [m.text for m in moved] == ["answer 1", "question 2", "answer 2", "question 3"]

    await store.heard(accepted.user_message_id, text="question 3, heard", tokens=3)
    heard = await store.history(conversation_id, up_to_message_id=accepted.user_message_id, limit=4)
    assert [m.text for m in heard] == ["answer 1", "question 2", "answer 2", "question 3, heard"]

    await store.delete_platform_message("test", "W1", "C1", "pm-k2")
    deleted = await store.history(
        conversation_id, up_to_message_id=accepted.user_message_id, limit=4
    )
    assert [m.text for m in deleted] == ["question 1", "answer 1", "answer 2", "question 3, heard"]


async def test_a_write_lock_held_by_another_process_never_blocks_the_event_loop(
    sqlite_store: SqlStore, sqlite_database_url: str
) -> None:
    """The loop's connection waits for no lock: the turn's write goes to the worker
    thread, which waits there, and the loop keeps serving meanwhile."""
    path = Path(sqlite_database_url.split(":///", 1)[1])
    warm = incoming("warm")
    assert await sqlite_store.accept(warm, text=warm.text, tokens=1) is not None
    other_process = sqlite3.connect(path, isolation_level=None)
    other_process.execute("BEGIN IMMEDIATE")
    longest_pause = 0.0

    async def tick() -> None:
        nonlocal longest_pause
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            longest_pause = max(longest_pause, time.monotonic() - before)

    ticker = asyncio.create_task(tick())
    try:
        message = incoming("while-locked")
        accepting = asyncio.create_task(
            sqlite_store.accept(
                message,
                text=message.text,
                tokens=1,
                claim=Claim(holder="me", alive_until=datetime.now(UTC) + timedelta(minutes=1)),
            )
        )
        await asyncio.sleep(0.5)
        assert not accepting.done()  # waiting for the lock, on the worker
        other_process.execute("COMMIT")
        accepted = await asyncio.wait_for(accepting, 5)
    finally:
        ticker.cancel()
        other_process.close()
    assert accepted is not None
    history = await sqlite_store.history(
        accepted.conversation_id, up_to_message_id=accepted.user_message_id, limit=10
    )
    assert [m.text for m in history] == ["hello", "hello"]
    assert longest_pause < 0.25


async def test_history_kept_in_memory_says_what_the_database_says(
    make_store: StoreFactory,
) -> None:
    """A long conversation, answers stored late, a reset by another process: every window
    the store returns (on SQLite, from memory) is the history statement's answer."""
    store, other = await make_store(), await make_store()
    questions: list[int] = []
    late: int | None = None
    conversation_id = 0

    async def answer(turn_id: int, number: int) -> None:
        saved = await store.store_answer(
            turn_id, text=f"a{number}", tokens=1, usage=None, status="complete", model="m"
        )
        assert saved is not None

    async def check(*up_tos: int) -> None:
        for up_to in up_tos or (questions[-1], questions[len(questions) // 2], questions[0]):
            for limit in (1, 5, 20, 200):
                shown = await store.history(conversation_id, up_to_message_id=up_to, limit=limit)
                expected = await _history_ids(store, conversation_id, up_to, limit)
                assert [m.id for m in shown] == expected, (up_to, limit)

    for number in range(90):
        message = incoming(f"q{number}", text=f"q{number}")
        accepted = await store.accept(message, text=message.text, tokens=1)
        assert accepted is not None
        conversation_id = accepted.conversation_id
        questions.append(accepted.user_message_id)
        if late is not None:
            await answer(late, number - 1)  # answered after the next question came
            late = None
        if 41 <= number < 50 or 61 <= number < 70:
            await check(accepted.user_message_id)  # as a turn reads it, before its answer
        # Late answers early on and again after 40, when the window was read again.
        if number % 7 == 3 and (number < 20 or 42 <= number < 48):
            late = accepted.turn_id
        else:
            await answer(accepted.turn_id, number)
        if number == 40:  # another process writes: what is kept is read again
            await other.change_setting(
                "test", "W1", "C1", field="model", value="m2", changed_by="U9"
            )
        if number % 10 == 9 or number == 41:
            await check()
        if number == 60:
            await other.reset_conversation(incoming("q0").conversation)
            await check()


async def _history_ids(store: SqlStore, conversation_id: int, up_to: int, limit: int) -> list[int]:
    """The SQLAlchemy path's history statement, through the engine: the database's word."""
    from botservice.storage.history import _HISTORY_IDS

    async with store.engine.connect() as connection:
        rows = (
            await connection.execute(
                _HISTORY_IDS, {"conversation_id": conversation_id, "up_to": up_to, "limit": limit}
            )
        ).all()
    return [row[0] for row in sorted(rows, key=lambda row: (row[1] or row[0], row[0]))]


async def test_the_write_ahead_log_is_checkpointed_while_turns_are_written_on_the_loop(
    sqlite_store: SqlStore, sqlite_database_url: str
) -> None:
    """The loop's connection never checkpoints (that fsync would stall the loop); the
    worker does, so the log does not grow with every turn ever written."""
    log = Path(sqlite_database_url.split(":///", 1)[1] + "-wal")
    for number in range(700):
        message = incoming(f"k{number}", thread=f"T{number % 10}", text="x" * 2000)
        accepted = await sqlite_store.accept(message, text=message.text, tokens=1)
        assert accepted is not None
        saved = await sqlite_store.store_answer(
            accepted.turn_id, text="y" * 2000, tokens=1, usage=None, status="complete", model="m"
        )
        assert saved is not None
    # 1,400 commits of several pages each: uncheckpointed, the log passes 100 MB.
    assert log.stat().st_size < 50_000_000  # noqa: ASYNC240 (a stat, once)


async def test_the_reads_made_with_an_accepting_claim_say_what_the_database_says(
    make_store: StoreFactory,
) -> None:
    """A turn claimed as its message is accepted may have its reads made in that step
    (PostgreSQL): its `history` and `channel_settings` still answer as the database
    does, through late answers, limits shorter than the thread, settings changed and
    another process's reset between turns."""
    store, other = await make_store(), await make_store()
    late: int | None = None
    for number in range(14):
        limit = (1, 3, 200)[number % 3]
        message = incoming(f"k{number}", text=f"q{number}")
        claim = Claim(
            holder="me", alive_until=datetime.now(UTC) + timedelta(minutes=1), history_limit=limit
        )
        accepted = await store.accept(message, text=message.text, tokens=1, claim=claim)
        assert accepted is not None
        if late is not None:  # the previous turn's answer, stored after this message came
            await store.store_answer(
                late, holder="me", text="late", tokens=1, usage=None, status="complete", model="m"
            )
            late = None
        if accepted.claimed is None:  # the previous turn was running: claimed after it
            claimed = await store.claim_next_turn(
                accepted.conversation_id, holder="me", alive_until=claim.alive_until
            )
            assert claimed is not None and claimed.turn_id == accepted.turn_id
        settings = await store.channel_settings(
            "test", "W1", "C1", for_message=accepted.user_message_id
        )
        history = await store.history(
            accepted.conversation_id, up_to_message_id=accepted.user_message_id, limit=limit
        )
        assert [m.id for m in history] == await _history_ids(
            store, accepted.conversation_id, accepted.user_message_id, limit
        )
        assert history[-1].text == f"q{number}"
        assert settings == await store.channel_settings("test", "W1", "C1")
        if number == 4:
            late = accepted.turn_id
        else:
            saved = await store.store_answer(
                accepted.turn_id,
                holder="me",
                text=f"a{number}",
                tokens=1,
                usage=None,
                status="complete",
                model="m",
            )
            assert saved is not None
        if number == 6:
            await other.change_setting("test", "W1", "", field="model", value="m2", changed_by="U9")
        if number == 8:
            await other.change_setting(
                "test", "W1", "C1", field="instructions", value="Be brief.", changed_by="U9"
            )
        if number == 10:
            await other.reset_conversation(message.conversation)


async def test_the_reads_made_with_the_claim_of_a_next_turn_say_what_the_database_says(
    make_store: StoreFactory,
) -> None:
    """The turn a process claims as it saves an answer was accepted by another process
    (PostgreSQL reads its question, window and settings with that claim): its message,
    `history` and `channel_settings` are the database's, through two questions waiting
    at once, limits shorter than the thread, settings changed and a reset elsewhere."""
    answering, accepting, other = await make_store(), await make_store(), await make_store()
    key = incoming("k").conversation

    def claim(limit: int) -> Claim:
        return Claim(
            holder="me", alive_until=datetime.now(UTC) + timedelta(minutes=1), history_limit=limit
        )

    first = incoming("k0", text="q0")
    running = await answering.accept(first, text=first.text, tokens=1, claim=claim(200))
    assert running is not None and running.claimed is not None
    turn_id, conversation_id, number = running.turn_id, running.conversation_id, 1
    for round_ in range(8):
        if round_ == 3:
            await other.change_setting("test", "W1", "", field="model", value="m2", changed_by="U9")
        if round_ == 4:
            await other.change_setting(
                "test", "W1", "C1", field="instructions", value="Be brief.", changed_by="U9"
            )
        if round_ == 6:
            await other.reset_conversation(key)
        # One question waits while a turn runs, every third round two do.
        waiting = []
        for _ in range(2 if round_ % 3 == 2 else 1):
            message = incoming(f"k{number}", text=f"q{number}")
            accepted = await accepting.accept(
                message, text=message.text, tokens=1, claim=claim(200)
            )
            assert accepted is not None and accepted.claimed is None  # one is running
            waiting.append(accepted)
            number += 1
        for expected in waiting:
            limit = (2, 3, 200)[round_ % 3]
            _, claimed = await answering.store_answer_and_claim_next(
                turn_id,
                claim=claim(limit),
                conversation_id=conversation_id,
                key=key,
                text=f"answer to {turn_id}",
                tokens=1,
                usage=None,
                status="complete",
                model="m",
            )
            assert claimed is not None and claimed.turn_id == expected.turn_id
            assert claimed.user_message_id == expected.user_message_id
            settings = await answering.channel_settings(
                "test", "W1", "C1", for_message=claimed.user_message_id
            )
            history = await answering.history(
                conversation_id, up_to_message_id=claimed.user_message_id, limit=limit
            )
            assert [m.id for m in history] == await _history_ids(
                answering, conversation_id, claimed.user_message_id, limit
            )
            # (With a limit of 1 the window may be the answer stored after it came.)
            question = next(m for m in history[-2:] if m.id == expected.user_message_id)
            assert question.text == f"q{number - len(waiting) + waiting.index(expected)}"
            assert settings == await other.channel_settings("test", "W1", "C1")
            turn_id = claimed.turn_id


async def test_a_window_never_reads_the_messages_of_busier_conversations(
    postgres_server: PostgresServer,
) -> None:
    """PostgreSQL plans a prepared statement generically after five runs on a connection.
    Written as `conversation_id = :c AND id >= :from ORDER BY id DESC`, that plan
    walked the primary key back from the newest message of any conversation: a quiet
    thread's window read everything a busy one wrote since (9,900 rows here). Its
    window statements now read about the window, whatever the plan."""
    async with _busy_and_quiet(postgres_server) as (connection, quiet_start):
        await connection.execute("ANALYZE")
        await connection.execute("SET plan_cache_mode = force_generic_plan")
        values = {"conversation_id": 1, "up_to": 10**9, "limit": 200, "from_id": quiet_start}
        scans = await _message_scans(connection, *_bound("history_ids", values))
        read = sum(scan["Actual Rows"] + scan.get("Rows Removed by Filter", 0) for scan in scans)
        assert read < 1_000
        # The window read with a claim: the same index, never the primary key's order.
        plan_text = "\n".join(
            row[0]
            for row in await connection.fetch(
                "EXPLAIN " + POSTGRESQL["accept_claimed_reading"].sql,
                *_bound("accept_claimed_reading", _accept_values(quiet_start))[1],
            )
        )
        assert "on ix_messages_conversation_id_id" in plan_text
        assert "Backward using messages_pkey" not in plan_text


async def test_a_channel_with_settings_reads_a_turns_window_once(
    postgres_server: PostgresServer,
) -> None:
    """A turn's reads come one row per settings row (the workspace's and the channel's):
    the window, read beside them, was read once for each, 0.5 ms more in a long thread
    of a channel whose instructions were set. A message accepted behind a waiting turn
    claims nothing, and reads no window."""
    async with _busy_and_quiet(postgres_server) as (connection, quiet_start):
        for channel in ("", "C1"):
            await connection.execute(
                "INSERT INTO channel_settings (platform, workspace, channel, instructions,"
                " updated_by, updated_at) VALUES ('test', 'W1', $1, 'Be brief.', 'U1', now())",
                channel,
            )
        accepting = await _window_scan_loops(
            connection, "accept_claimed_reading", _accept_values(quiet_start)
        )
        # A turn waiting in the quiet thread, for `claim_next_reading` to claim.
        question = await connection.fetchval(
            "SELECT max(id) FROM messages WHERE conversation_id = 1"
        )
        await connection.execute(
            "INSERT INTO turns (platform, message_key, user_id, is_channel_admin, status,"
            " reply_target, claims, created_at, conversation_id, user_message_id)"
            " VALUES ('test', 'waiting', 'U1', false, 'pending', '{}', 0, now(), 1, $1)",
            question,
        )
        behind = await _window_scan_loops(
            connection, "accept_claimed_reading", _accept_values(quiet_start)
        )
        claiming = await _window_scan_loops(
            connection,
            "claim_next_reading",
            {
                "b_conversation_id": 1,
                "b_holder": "me",
                "b_alive_until": datetime.now(UTC) + timedelta(minutes=1),
                "limit": 200,
                "from_id": quiet_start,
                "platform": "test",
                "workspace": "W1",
                "channel": "C1",
            },
        )
    assert (accepting, behind, claiming) == ([1], [], [1])


async def _window_scan_loops(
    connection: asyncpg.Connection, name: str, values: dict[str, Any]
) -> list[int]:
    """How many times the statement read a window (a scan of more than one message), in
    a transaction rolled back after (it writes)."""
    transaction = connection.transaction()
    await transaction.start()
    try:
        scans = await _message_scans(connection, *_bound(name, values))
    finally:
        await transaction.rollback()
    return [scan["Actual Loops"] for scan in scans if scan["Actual Rows"] > 1]


async def test_a_long_threads_window_is_read_from_the_index_alone(
    postgres_server: PostgresServer,
) -> None:
    """A window's order needs each message's `reply_to_id` (an answer follows its
    question). Read from the table, each of a long thread's 200 rows was one more page
    fetch, 0.13 ms of the database's time a turn that a ten-message thread does not
    pay; the index holds it now, so where the table's pages are all-visible (all but
    the newest) the window costs no table read at all."""
    async with _busy_and_quiet(postgres_server) as (connection, quiet_start):
        await connection.execute("VACUUM (ANALYZE) messages")
        values = {"conversation_id": 1, "up_to": 10**9, "limit": 200, "from_id": quiet_start}
        scans = await _message_scans(connection, *_bound("history_ids", values))
        # In a transaction that is rolled back: the statement inserts.
        transaction = connection.transaction()
        await transaction.start()
        try:
            scans += await _message_scans(
                connection, *_bound("accept_claimed_reading", _accept_values(quiet_start))
            )
        finally:
            await transaction.rollback()
    assert [scan["Node Type"] for scan in scans] == ["Index Only Scan"] * 2
    # The accept's one: the message it inserts, whose index entry the window passes.
    assert [scan["Heap Fetches"] for scan in scans] == [0, 1]
    assert all(scan["Actual Rows"] >= 199 for scan in scans)


@contextlib.asynccontextmanager
async def _busy_and_quiet(
    postgres_server: PostgresServer,
) -> AsyncIterator[tuple[asyncpg.Connection, int]]:
    """A migrated database of its own holding `_BUSY_AND_QUIET`, a connection to it, and
    where the quiet conversation's newest 200 messages begin (a window's `from_id`)."""
    name = f"botservice_plan_{secrets.token_hex(4)}"
    await postgres_server.create_database(name)
    try:
        await upgrade(postgres_server.url(name))
        connection = await asyncpg.connect(postgres_server.dsn(name))
        try:
            await connection.execute(_BUSY_AND_QUIET)
            quiet_start = await connection.fetchval(
                "SELECT min(id) FROM messages WHERE conversation_id = 1 AND id > 250"
            )
            yield connection, quiet_start
        finally:
            await connection.close()
    finally:
        await postgres_server.drop_database(name)


async def _message_scans(
    connection: asyncpg.Connection, sql: str, args: list[Any]
) -> list[dict[str, Any]]:
    """The nodes of the statement's executed plan that read `messages` rows."""
    plan = json.loads(
        await connection.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args, column=0)
    )
    scans = []
    nodes = [plan[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        if node.get("Relation Name") == "messages" and "Scan" in node["Node Type"]:
            scans.append(node)
        nodes.extend(node.get("Plans", []))
    return scans


# Two conversations: a quiet one with 200 messages, then a busy one with 10,000
# written after them, then 200 more of the quiet one, interleaved with 50 each.
_BUSY_AND_QUIET = """
INSERT INTO conversations (id, platform, workspace, channel, thread, created_at,
                           updated_at, trim_noticed)
VALUES (1, 'test', 'W1', 'C1', 'quiet', now(), now(), false),
       (2, 'test', 'W1', 'C1', 'busy', now(), now(), false);
INSERT INTO messages (conversation_id, role, author_id, author_name, text,
                      platform_message_id, tokens, status, created_at)
SELECT CASE WHEN n <= 200 OR n % 51 = 0 THEN 1 ELSE 2 END, 'user', 'U1', 'Ada', 'hi',
       'pm-' || n, 1, 'complete', now()
FROM generate_series(1, 10400) AS n;
"""


def _accept_values(from_id: int) -> dict[str, Any]:
    message = incoming("plan-check", thread="quiet")
    now = datetime.now(UTC)
    return {
        **{f"k_{name}": value for name, value in hot_rows.key_values(message.conversation).items()},
        **{f"t_{name}": value for name, value in hot_rows.turn_values(message, now).items()},
        **{
            f"m_{name}": value
            for name, value in hot_rows.user_message_values(
                message, text="hi", tokens=1, now=now
            ).items()
        },
        "b_holder": "me",
        "b_alive_until": now + timedelta(minutes=1),
        "window_limit": 199,
        "from_id": from_id,
        "platform": "test",
        "workspace": "W1",
        "channel": "C1",
    }

"""Expiry on SQLite and PostgreSQL: retention per channel, batches, dedupe markers, claims."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from botservice.core.ports import AcceptedTurn, PurgeCounts
from botservice.storage.repository import SqlStore
from botservice.storage.tables import CONVERSATIONS, MESSAGES, TURNS
from tests.db import StoreFactory, incoming

DAY = timedelta(days=1)


async def ask(store: SqlStore, key: str, text: str = "hello", **fields: Any) -> AcceptedTurn:
    turn = await store.accept(incoming(key, text=text, **fields), text=text, tokens=1)
    assert turn is not None
    return turn


async def exchange(store: SqlStore, key: str, text: str = "hello", **fields: Any) -> AcceptedTurn:
    """A question and its answer: two messages, a finished turn."""
    turn = await ask(store, key, text, **fields)
    await store.store_answer(
        turn.turn_id, text=f"re: {text}", tokens=1, usage=None, status="complete", model="m"
    )
    return turn


async def count(store: SqlStore, table: Any) -> int:
    async with store.engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(table))).scalar_one())


async def purge(store: SqlStore, now: datetime, **options: Any) -> PurgeCounts:
    settings: dict[str, Any] = {"default_retention_days": 30, "dedupe_days": 2, "batch_size": 100}
    settings.update(options)
    return await store.purge(now=now, **settings)


def later(days: float) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


async def test_messages_expire_after_the_default_retention(store: SqlStore) -> None:
    turn = await exchange(store, "m1")
    early = await purge(store, later(29))
    assert (early.messages, early.conversations) == (0, 0)
    assert await count(store, MESSAGES) == 2

    counts = await purge(store, later(31))

    assert counts.messages == 2
    assert counts.conversations == 1
    assert await count(store, MESSAGES) == 0
    assert await count(store, CONVERSATIONS) == 0
    assert await store.history(turn.conversation_id, up_to_message_id=10**9, limit=10) == []


async def test_a_channel_retention_overrides_the_workspace_and_the_default(store: SqlStore) -> None:
    await exchange(store, "short", channel="C-short")
    await exchange(store, "workspace", channel="C-workspace")
    await exchange(store, "long", channel="C-long", workspace="W2")
    await store.change_setting("test", "W1", "", field="retention_days", value=10, changed_by="A")
    await store.change_setting(
        "test", "W1", "C-short", field="retention_days", value=3, changed_by="A"
    )

    assert (await purge(store, later(4))).messages == 2  # C-short only
    assert (await purge(store, later(11))).messages == 2  # then the rest of workspace W1
    assert (await purge(store, later(29))).messages == 0  # W2 keeps the default of 30
    assert (await purge(store, later(31))).messages == 2
    assert await count(store, MESSAGES) == 0


async def test_retention_zero_keeps_nothing_older_than_now(store: SqlStore) -> None:
    await exchange(store, "m1", channel="C-zero")
    await exchange(store, "m2", channel="C-kept")
    await store.change_setting(
        "test", "W1", "C-zero", field="retention_days", value=0, changed_by="A"
    )

    counts = await purge(store, datetime.now(UTC) + timedelta(seconds=1))

    assert (counts.messages, counts.conversations) == (2, 1)
    assert await count(store, MESSAGES) == 2


async def test_purge_deletes_in_batches_of_at_most_batch_size(
    store: SqlStore, caplog: pytest.LogCaptureFixture
) -> None:
    for index in range(5):
        await exchange(store, f"m{index}", thread=f"T{index}")
    assert await count(store, MESSAGES) == 10

    with caplog.at_level(logging.DEBUG, logger="botservice.storage"):
        counts = await purge(store, later(31), batch_size=3)

    assert (counts.messages, counts.conversations) == (10, 5)
    assert await count(store, MESSAGES) == 0
    # One transaction per batch, each logged with its size.
    batches = [
        (match[2], int(match[1]))
        for record in caplog.records
        if (match := re.fullmatch(r"purge removed (\d+) (.+) in one batch", record.getMessage()))
    ]
    assert batches == [
        ("messages", 3),
        ("messages", 3),
        ("messages", 3),
        ("messages", 1),
        ("conversations", 3),
        ("conversations", 2),
        ("dedupe markers", 3),
        ("dedupe markers", 2),
    ]


async def test_replies_keep_flowing_while_a_purge_runs(store: SqlStore) -> None:
    for index in range(30):
        await exchange(store, f"old{index}")

    await store.change_setting(
        "test", "W1", "C-fresh", field="retention_days", value=365, changed_by="A"
    )

    async def reply_meanwhile() -> int:
        turn = await ask(store, "fresh", channel="C-fresh")
        return await store.store_answer(
            turn.turn_id, text="ok", tokens=1, usage=None, status="complete", model="m"
        )

    purge_task = asyncio.create_task(purge(store, later(31), batch_size=2))
    answer_id = await reply_meanwhile()
    counts = await purge_task
    assert counts.messages >= 60
    assert await store.message_text(answer_id) is not None


async def test_old_dedupe_markers_go_but_pending_turns_stay(store: SqlStore) -> None:
    pending = await ask(store, "waiting", thread="T-waiting")
    await exchange(store, "answered", thread="T-answered")
    failed = await ask(store, "failed", thread="T-failed")
    await store.fail_turn(failed.turn_id)
    assert await store.claim_key("test", "command")

    assert (await purge(store, later(1), default_retention_days=365)).turns == 0
    counts = await purge(store, later(3), default_retention_days=365)

    assert counts.turns == 3
    assert [turn.turn_id for turn in await store.pending_turns()] == [pending.turn_id]
    # A marker that is gone no longer blocks its key; the pending one still does.
    assert await store.claim_key("test", "command")
    assert await store.accept(incoming("waiting"), text="again", tokens=1) is None


async def test_a_pending_question_and_its_conversation_survive_any_retention(
    store: SqlStore,
) -> None:
    pending = await ask(store, "waiting", "still thinking")
    await store.change_setting("test", "W1", "C1", field="retention_days", value=0, changed_by="A")

    counts = await purge(store, later(400))

    assert (counts.messages, counts.conversations, counts.turns) == (0, 0, 0)
    kept = await store.message_text(pending.user_message_id)
    assert kept is not None and kept.text == "still thinking"
    # Once answered, both may go.
    await store.store_answer(
        pending.turn_id, text="done", tokens=1, usage=None, status="complete", model="m"
    )
    assert await purge(store, later(400)) == PurgeCounts(messages=2, conversations=1, turns=1)


async def test_conversations_with_messages_left_are_kept(store: SqlStore) -> None:
    await exchange(store, "old", thread="T-old")
    await exchange(store, "mixed", "mixed", thread="T-mixed")
    await store.change_setting("test", "W1", "C1", field="retention_days", value=5, changed_by="A")
    cutoff = later(6)
    # A message written after the first ones, still inside retention at `cutoff`.
    async with store.engine.begin() as connection:
        await connection.execute(
            MESSAGES.update().where(MESSAGES.c.text == "re: mixed").values(created_at=later(2))
        )

    counts = await purge(store, cutoff)

    assert (counts.messages, counts.conversations) == (3, 1)
    assert await count(store, CONVERSATIONS) == 1


async def test_a_period_is_purged_by_one_process_only(make_store: StoreFactory) -> None:
    first, second = await make_store(), await make_store()
    await exchange(first, "m1")

    results = await asyncio.gather(
        purge(first, later(31), period="2026-11-25T14"),
        purge(second, later(31), period="2026-11-25T14"),
    )

    assert sorted(result.claimed for result in results) == [False, True]
    assert sum(result.messages for result in results) == 2
    assert await purge(first, later(31), period="2026-11-25T14") == PurgeCounts(claimed=False)
    assert (await purge(second, later(31), period="2026-11-25T15")).claimed is True


async def test_a_dry_run_counts_without_deleting(store: SqlStore) -> None:
    for index in range(4):
        await exchange(store, f"m{index}", thread=f"T{index}")
    await ask(store, "waiting", thread="T-waiting")
    before = (
        await count(store, MESSAGES),
        await count(store, CONVERSATIONS),
        await count(store, TURNS),
    )

    dry = await purge(store, later(31), batch_size=3, dry_run=True, period="2026-11-25T14")

    assert (
        await count(store, MESSAGES),
        await count(store, CONVERSATIONS),
        await count(store, TURNS),
    ) == before
    assert dry == PurgeCounts(messages=8, conversations=4, turns=4)
    # The dry run claimed nothing: the real run for that period still happens, and
    # removes exactly what the dry run counted.
    assert await purge(store, later(31), batch_size=3, period="2026-11-25T14") == dry


async def test_purge_logs_counts_never_text(
    store: SqlStore, caplog: pytest.LogCaptureFixture
) -> None:
    await exchange(store, "m1", "my bank password is swordfish")
    with caplog.at_level(logging.INFO, logger="botservice.storage"):
        await purge(store, later(31))
        await store.forget_user("test", "U1")
    assert "removed 2 messages, 1 conversations, 1 dedupe markers" in caplog.text
    assert "swordfish" not in caplog.text


async def test_purge_refuses_a_naive_now(store: SqlStore) -> None:
    with pytest.raises(ValueError):
        await purge(store, datetime.now())

"""A turn's history window where the process kept the conversation's last one.

Each backend keeps a conversation's last window between its turns (SQLite: the
messages in memory, checked against the file's `data_version`; PostgreSQL: the
messages built for the ids the turn's statement reads, looked up again only where the
window moved). Whatever another process did meanwhile (answered turns, deleted or
reset, committed a message late, answered an earlier question again), the window is
what a fresh read finds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url

from botservice.core.ports import AcceptedTurn, Claim, StoredMessage
from botservice.storage.repository import SqlStore
from tests.db import StoreFactory, incoming

LIMIT = 20  # a history limit small enough to fill quickly

on_postgres = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


class Turns:
    """Turns of one thread taken by `store`, as a bot process takes them: accepted and
    claimed at once, the history read, the answer stored."""

    def __init__(self, store: SqlStore, make_store: StoreFactory) -> None:
        self.store, self._make_store = store, make_store
        self.numbers = iter(range(1, 10_000))

    async def ask(self, user: str = "U1") -> tuple[AcceptedTurn, list[StoredMessage]]:
        number = next(self.numbers)
        message = incoming(f"k{number}", text=f"question {number}", user_id=user)
        claim = Claim(
            holder="A", alive_until=datetime.now(UTC) + timedelta(minutes=1), history_limit=LIMIT
        )
        accepted = await self.store.accept(message, text=message.text, tokens=2, claim=claim)
        assert accepted is not None and accepted.claimed is not None
        history = await self.store.history(
            accepted.conversation_id, up_to_message_id=accepted.user_message_id, limit=LIMIT
        )
        return accepted, history

    async def answer(self, accepted: AcceptedTurn) -> int:
        saved = await self.store.store_answer(
            accepted.turn_id,
            holder="A",
            text=f"answer to {accepted.user_message_id}",
            tokens=2,
            usage=None,
            status="complete",
            model="m",
        )
        assert saved is not None
        return saved

    async def turn(self, user: str = "U1") -> tuple[AcceptedTurn, list[StoredMessage]]:
        """One whole turn; its window is checked against a fresh read."""
        accepted, history = await self.ask(user)
        await self.check(accepted, history)
        await self.answer(accepted)
        return accepted, history

    async def check(self, accepted: AcceptedTurn, history: list[StoredMessage]) -> None:
        fresh = await self._make_store()  # no window kept, nothing cached
        expected = await fresh.history(
            accepted.conversation_id, up_to_message_id=accepted.user_message_id, limit=LIMIT
        )
        assert [(m.id, m.text) for m in history] == [(m.id, m.text) for m in expected]


@pytest_asyncio.fixture
async def turns(make_store: StoreFactory) -> Turns:
    return Turns(await make_store(), make_store)


@pytest_asyncio.fixture
async def raw(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """Another process's connection to the test's PostgreSQL database."""
    dsn = make_url(database_url).set(drivername="postgresql")
    connection = await asyncpg.connect(dsn.render_as_string(hide_password=False))
    yield connection
    await connection.close()


async def test_a_long_threads_windows_move_on_as_fresh_reads_find_them(turns: Turns) -> None:
    for _ in range(LIMIT + 5):  # past a full window, then moving on
        await turns.turn()


async def test_what_another_process_deleted_or_reset_leaves_the_next_window(
    turns: Turns, make_store: StoreFactory
) -> None:
    other = await make_store()
    for _ in range(LIMIT):
        await turns.turn(user="U2")
    accepted, _ = await turns.turn(user="U1")  # one question of U1's, in the window
    await other.forget_user("test", "U1")  # takes it and its answer
    await turns.turn()
    await other.delete_platform_message("test", "W1", "C1", "pm-k5")
    await turns.turn()
    await other.reset_conversation(incoming("k1").conversation)
    accepted, history = await turns.turn()
    assert [m.id for m in history] == [accepted.user_message_id]
    await turns.turn()


@pytest.mark.parametrize("elsewhere_turns", [1, LIMIT])
async def test_turns_another_process_took_meanwhile_are_in_the_next_window(
    turns: Turns, make_store: StoreFactory, elsewhere_turns: int
) -> None:
    """One, then more than a window holds: this process's kept window lacks them all."""
    for _ in range(LIMIT):
        await turns.turn()
    elsewhere = Turns(await make_store(), make_store)
    elsewhere.numbers = turns.numbers
    for _ in range(elsewhere_turns):
        await elsewhere.turn(user="U2")
    _, history = await turns.turn()
    assert {m.author_id for m in history if m.role == "user"} == {"U1", "U2"}


@on_postgres
async def test_an_answer_to_an_earlier_question_goes_where_that_question_is(
    turns: Turns, raw: asyncpg.Connection
) -> None:
    """Newer than the kept window, but in the middle of it in question order (a second
    answer to a question in it, from a process that took that turn over), until its
    question and then it leave the window."""
    for _ in range(LIMIT):
        await turns.turn()
    accepted, history = await turns.turn()
    earlier = history[-5]
    assert earlier.role == "user"
    await raw.execute(
        "INSERT INTO messages (conversation_id, role, author_id, author_name, text,"
        " platform_message_id, tokens, status, reply_to_id, created_at)"
        " VALUES ($1, 'assistant', 'bot', 'bot', 'a second answer', 'pm-again', 2,"
        " 'complete', $2, now())",
        accepted.conversation_id,
        earlier.id,
    )
    _, history = await turns.turn()
    assert "a second answer" in [m.text for m in history]
    for _ in range(LIMIT + 5):  # until its question, then it, leave the window
        await turns.turn()


@on_postgres
async def test_answers_to_earlier_questions_after_a_turn_that_failed_go_where_theirs_are(
    turns: Turns, raw: asyncpg.Connection
) -> None:
    """Newer than the kept window, in order among themselves, but each after an earlier
    question in it (and no answer of the last turn's to come after the window)."""
    for _ in range(LIMIT):
        await turns.turn()
    accepted, history = await turns.ask()
    assert await turns.store.fail_turn(accepted.turn_id, holder="A")  # no answer stored
    first, second = history[-7], history[-5]
    assert first.role == second.role == "user"
    for question in (first, second):
        await _insert_message(raw, None, accepted.conversation_id, reply_to=question.id)
    await turns.turn()
    await turns.turn()


async def test_two_questions_answered_after_both_came_are_in_question_order(
    turns: Turns, make_store: StoreFactory
) -> None:
    """Another process accepted two questions, then answered them: all newer than the
    kept window and after it, but the first answer's id after the second question's."""
    for _ in range(LIMIT):
        await turns.turn()
    other = await make_store()
    waiting = []
    for key in ("z1", "z2"):
        accepted = await other.accept(incoming(key, text=key), text=key, tokens=1)
        assert accepted is not None
        waiting.append(accepted)
    for accepted in waiting:
        await other.store_answer(
            accepted.turn_id, text="answered", tokens=2, usage=None, status="complete", model="m"
        )
    await turns.turn()
    await turns.turn()


@on_postgres
async def test_a_message_committed_late_before_a_threads_first_is_in_its_next_window(
    turns: Turns, raw: asyncpg.Connection
) -> None:
    """Drawn before the thread's first message, committed after its second turn."""
    late_id = await raw.fetchval("SELECT nextval(pg_get_serial_sequence('messages', 'id'))")
    accepted, _ = await turns.turn()
    await turns.turn()
    await _insert_message(raw, late_id, accepted.conversation_id)
    await turns.turn()


@on_postgres
@pytest.mark.parametrize("with_a_deletion", [False, True])
async def test_a_message_committed_late_into_the_kept_range_is_in_the_next_window(
    turns: Turns, raw: asyncpg.Connection, with_a_deletion: bool
) -> None:
    """Alone, and beside a deletion in the range: as many messages in it as before, but
    not the same ones."""
    for _ in range(LIMIT):
        await turns.turn()
    # Its id is drawn before the next window is read, its row committed after: older
    # than messages that window holds, yet not in it.
    late_id = await raw.fetchval("SELECT nextval(pg_get_serial_sequence('messages', 'id'))")
    accepted, history = await turns.ask()
    await turns.answer(accepted)
    assert late_id not in [m.id for m in history]
    gone = history[-3].id  # an earlier answer, inside the kept range
    await _insert_message(raw, late_id, accepted.conversation_id)
    if with_a_deletion:
        await raw.execute("DELETE FROM messages WHERE id = $1", gone)
    _, history = await turns.turn()
    assert late_id in [m.id for m in history]
    assert (gone in [m.id for m in history]) is not with_a_deletion


async def _insert_message(
    raw: asyncpg.Connection,
    message_id: int | None,
    conversation_id: int,
    *,
    reply_to: int | None = None,
) -> None:
    """A question of another person's (with `message_id`, drawn earlier), or an answer
    to `reply_to`, written by another process."""
    await raw.execute(
        "INSERT INTO messages (id, conversation_id, role, author_id, author_name, text,"
        " platform_message_id, tokens, status, reply_to_id, created_at)"
        " VALUES (coalesce($1, nextval(pg_get_serial_sequence('messages', 'id'))), $2, $3,"
        " 'U3', 'Cy', 'written elsewhere', 'pm-' || gen_random_uuid(), 2, 'complete', $4, now())",
        message_id,
        conversation_id,
        "user" if reply_to is None else "assistant",
        reply_to,
    )

"""Who answers a turn, decided by the database: several cores ("processes", each with
its own engine) share one PostgreSQL database, as `botservice run` processes behind
a load balancer do. Each message is answered once, in order per conversation, and
a turn whose process stops is taken over.

The platform here is a fake one: every core's adapter posts into the same
`Platform`, and rebuilds a sink for any turn from its reply target, as the Slack
and Discord adapters do.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.engine import make_url

from botservice.core.conversation import ConversationCore
from botservice.core.ports import Claim, PendingTurn, UsageRecord
from botservice.model.client import OpenAIChatClient
from botservice.storage.repository import SqlStore
from botservice.storage.tables import USAGE
from tests.chat_kit import Chat, settings_for
from tests.db import StoreFactory
from tests.fakes.model_server import FakeModelServer, Reply

pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


@dataclass
class Platform:
    """What people see: every final text posted, per thread, in the order posted."""

    finals: dict[str, list[str]] = field(default_factory=dict)
    posted: asyncio.Event = field(default_factory=asyncio.Event)

    def sink(self, thread: str) -> ThreadSink:
        return ThreadSink(self, thread)

    def sink_for(self, turn: PendingTurn) -> ThreadSink:
        return self.sink(turn.reply_target["thread"])

    def count(self) -> int:
        return sum(len(texts) for texts in self.finals.values())

    async def wait_for(self, total: int, *, within: float) -> None:
        async with asyncio.timeout(within):
            while self.count() < total:
                self.posted.clear()
                await self.posted.wait()


@dataclass
class ThreadSink:
    platform: Platform
    thread: str

    async def begin(self, existing_ref: str | None, *, turn_tag: str, resumed: bool) -> str | None:
        return existing_ref or f"placeholder-in-{self.thread}"

    async def update(self, text: str) -> None:
        return None

    async def finish(self, text: str) -> None:
        self.platform.finals.setdefault(self.thread, []).append(text)
        self.platform.posted.set()

    async def notice(self, text: str, *, private: bool = True) -> None:
        return None


@pytest_asyncio.fixture
async def processes(
    make_store: StoreFactory, fake_model: FakeModelServer
) -> AsyncIterator[Callable[..., asyncio.Future[list[ConversationCore]]]]:
    """Start N cores on the test's database, each sweeping like `botservice run`."""
    started: list[ConversationCore] = []
    clients: list[OpenAIChatClient] = []

    async def start(count: int, platform: Platform, **overrides: str) -> list[ConversationCore]:
        settings = settings_for(fake_model.base_url, **overrides)
        cores = []
        for _ in range(count):
            client = OpenAIChatClient(settings.model)
            clients.append(client)
            core = ConversationCore(settings=settings, store=await make_store(), model=client)
            await core.start(platform.sink_for)
            cores.append(core)
        started.extend(cores)
        return cores

    yield start  # type: ignore[misc]
    for core in started:
        await core.stop()
    for client in clients:
        await client.aclose()


def answers_in(platform: Platform, thread: str) -> list[str]:
    return platform.finals.get(thread, [])


async def test_many_processes_answer_each_message_once_in_order_with_the_previous_answer(
    processes: Callable[..., asyncio.Future[list[ConversationCore]]],
    fake_model: FakeModelServer,
) -> None:
    platform = Platform()
    cores = await processes(3, platform)
    fake_model.default_delay_between_chunks = 0.01  # turns overlap
    threads, per_thread = 8, 5
    chats = [Chat(core, platform="slack") for core in cores]
    deliveries = random.Random(8)

    async def conversation(thread: int) -> None:
        for number in range(per_thread):
            # One person a thread: 40 messages from one person would meet the message rate.
            message = chats[0].message(
                f"t{thread} m{number}", thread=f"T{thread}", user=f"U{thread}"
            )
            # Delivered 1-4 times to random processes, each waiting for its "ack".
            for _ in range(deliveries.randint(1, 4)):
                core = deliveries.choice(cores)
                await core.submit(message, platform.sink(message.thread))

    await asyncio.gather(*(conversation(thread) for thread in range(threads)))
    await platform.wait_for(threads * per_thread, within=30)
    for core in cores:
        await core.drain()

    for thread in range(threads):
        assert answers_in(platform, f"T{thread}") == [
            f"You said: t{thread} m{number}" for number in range(per_thread)
        ], f"thread T{thread} was answered out of order or more than once"
    assert len(fake_model.chat_requests) == threads * per_thread
    for request in fake_model.chat_requests:
        asked = request.last_user_text
        thread, number = asked.split()
        if number != "m0":
            previous = f"You said: {thread} m{int(number[1:]) - 1}"
            contents = [m["content"] for m in request.body["messages"]]
            assert contents[-2] == previous, f"the prompt for {asked!r} lacks {previous!r}"


async def test_a_turn_that_runs_longer_than_the_takeover_time_is_answered_once(
    processes: Callable[..., asyncio.Future[list[ConversationCore]]],
    fake_model: FakeModelServer,
) -> None:
    platform = Platform()
    first, second = await processes(
        2,
        platform,
        conversation__turn_takeover_seconds="0.6",
        conversation__turn_heartbeat_seconds="0.15",
        model__read_timeout_seconds="10",
    )
    # Ten chunks 0.25 s apart: 2.5 s of streaming, four takeover periods.
    fake_model.script(
        Reply(
            "one two three four five six seven eight nine ten",
            chunk_size=5,
            delay_between_chunks=0.25,
        )
    )
    message = Chat(first, platform="slack").message("a long answer, please", thread="T1")
    await first.submit(message, platform.sink("T1"))
    await platform.wait_for(1, within=10)
    await asyncio.sleep(1.0)  # a takeover would have started by now
    await asyncio.gather(first.drain(), second.drain())

    assert answers_in(platform, "T1") == ["one two three four five six seven eight nine ten"]
    assert len(fake_model.chat_requests) == 1


async def test_the_turns_of_a_process_that_died_are_taken_over_within_the_takeover_time(
    processes: Callable[..., asyncio.Future[list[ConversationCore]]],
    store: SqlStore,
    fake_model: FakeModelServer,
) -> None:
    platform = Platform()
    # What a killed process leaves: a running turn whose heartbeat will not come, and
    # a message of the same thread waiting behind it.
    chat = Chat(platform="slack")
    held = chat.message("asked of the process that died", thread="T1")
    behind = chat.message("asked right after", thread="T1")
    accepted = await store.accept(held, text=held.text, tokens=5)
    assert accepted is not None
    died_at = time.monotonic()
    await store.claim_next_turn(
        accepted.conversation_id,
        holder="dead-process",
        alive_until=datetime.now(UTC) + timedelta(seconds=1),
    )
    await store.accept(behind, text=behind.text, tokens=4)

    await processes(
        2,
        platform,
        conversation__turn_takeover_seconds="1",
        conversation__turn_heartbeat_seconds="0.2",
    )
    await platform.wait_for(2, within=10)
    taken_over_after = time.monotonic() - died_at

    assert answers_in(platform, "T1") == [
        "You said: asked of the process that died",
        "You said: asked right after",
    ]
    assert taken_over_after < 1 + 2 * 0.2 + 1.0, f"took {taken_over_after:.1f} s"
    assert len(fake_model.chat_requests) == 2


async def test_a_message_accepted_as_the_holders_turn_ended_without_claiming_it_is_answered(
    processes: Callable[..., asyncio.Future[list[ConversationCore]]],
    store: SqlStore,
) -> None:
    platform = Platform()
    # The sweep is minutes away: only the accepting process's own look can find it.
    (core,) = await processes(1, platform, conversation__turn_heartbeat_seconds="300")
    chat = Chat(core, platform="slack")
    first = chat.message("answered elsewhere", thread="T1")
    accepted = await store.accept(first, text=first.text, tokens=2)
    assert accepted is not None
    alive = datetime.now(UTC) + timedelta(minutes=1)
    held = await store.claim_next_turn(
        accepted.conversation_id, holder="other-process", alive_until=alive
    )
    assert held is not None

    # Accepted while the other process's turn runs: that process would claim it with
    # its answer, so it is not claimed here...
    started = time.monotonic()
    behind = chat.message("asked meanwhile", thread="T1")
    assert await core.submit(behind, platform.sink("T1")) is not None
    # ...but that turn ends without claiming the next one, as when the accept and
    # the holder's save cross: the message waits with nobody answering it.
    assert await store.fail_turn(held.turn_id, holder="other-process")
    await platform.wait_for(1, within=5)

    assert answers_in(platform, "T1") == ["You said: asked meanwhile"]
    assert time.monotonic() - started < 3


# --- the store's rules ------------------------------------------------------------


async def test_only_one_of_many_simultaneous_claims_wins_and_claims_follow_the_order(
    make_store: StoreFactory,
) -> None:
    stores = [await make_store() for _ in range(6)]
    chat = Chat()
    turns = []
    for number in range(3):
        message = chat.message(f"m{number}", thread="T1")
        accepted = await stores[0].accept(message, text=message.text, tokens=1)
        assert accepted is not None
        turns.append(accepted)
    conversation = turns[0].conversation_id
    alive = datetime.now(UTC) + timedelta(minutes=1)

    claims = await asyncio.gather(
        *(
            store.claim_next_turn(conversation, holder=f"p{index}", alive_until=alive)
            for index, store in enumerate(stores)
        )
    )
    won = [claim for claim in claims if claim is not None]
    assert [claim.turn_id for claim in won] == [turns[0].turn_id]
    assert await stores[1].claim_next_turn(conversation, holder="late", alive_until=alive) is None

    winner = f"p{claims.index(won[0])}"
    assert await stores[0].fail_turn(turns[0].turn_id, holder=winner)
    following = await stores[2].claim_next_turn(conversation, holder="p2", alive_until=alive)
    assert following is not None and following.turn_id == turns[1].turn_id


async def test_finishing_a_turn_needs_its_claim(store: SqlStore) -> None:
    chat = Chat()
    message = chat.message("who answers me?")
    accepted = await store.accept(message, text=message.text, tokens=3)
    assert accepted is not None
    conversation = accepted.conversation_id
    past = datetime.now(UTC) - timedelta(seconds=1)
    await store.claim_next_turn(conversation, holder="cut-off", alive_until=past)

    assert await store.release_stale_turns(now=datetime.now(UTC)) == [conversation]
    # Reset to pending but claimed by nobody else: the holder that was only cut off
    # from the database may still save the answer it showed.
    assert await store.renew_claims("cut-off", [accepted.turn_id], alive_until=past) == 0
    later = datetime.now(UTC) + timedelta(minutes=1)
    taken = await store.claim_next_turn(conversation, holder="successor", alive_until=later)
    assert taken is not None and taken.claims == 2

    def save(holder: str) -> asyncio.Future[int | None]:
        # Each call's usage row goes with its answer: only a saved answer has one.
        ledger = UsageRecord(
            turn_id=accepted.turn_id,
            platform="test",
            workspace="W1",
            channel="C1",
            user_id="U1",
            model=f"model of {holder}",
            prompt_tokens=5,
            completion_tokens=3,
        )
        return asyncio.ensure_future(
            store.store_answer(
                accepted.turn_id,
                holder=holder,
                text=f"answer by {holder}",
                tokens=3,
                usage=None,
                status="complete",
                model="m",
                ledger=ledger,
            )
        )

    assert await save("cut-off") is None
    assert await save("successor") is not None
    history = await store.history(conversation, up_to_message_id=10**9, limit=10)
    assert [m.text for m in history] == ["who answers me?", "answer by successor"]
    async with store.engine.connect() as connection:
        models = (await connection.execute(select(USAGE.c.model))).scalars().all()
    assert models == ["model of successor"]


async def test_accepting_a_message_does_not_wait_for_a_lock_on_its_conversation(
    store: SqlStore, database_url: str
) -> None:
    """Accepting is short and contention-free: it never writes the conversation row,
    so a long transaction holding that row (a reset, a purge batch) does not hold up
    the platform's acknowledgement."""
    chat = Chat()
    first = chat.message("first")
    accepted = await store.accept(first, text=first.text, tokens=1)
    assert accepted is not None
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    blocker = await asyncpg.connect(dsn)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute(
            "UPDATE conversations SET trim_noticed = trim_noticed WHERE id = $1",
            accepted.conversation_id,
        )
        second = chat.message("second")
        started = time.monotonic()
        async with asyncio.timeout(3):
            assert await store.accept(second, text=second.text, tokens=1) is not None
        assert time.monotonic() - started < 1.0
        await transaction.rollback()
    finally:
        await blocker.close()


async def test_a_message_in_a_quiet_conversation_is_claimed_as_it_is_accepted(
    make_store: StoreFactory,
) -> None:
    here, elsewhere = await make_store(), await make_store()
    chat = Chat()
    alive = datetime.now(UTC) + timedelta(minutes=1)
    first = chat.message("first", thread="T1")
    accepted = await here.accept(first, text=first.text, tokens=1, claim=Claim("here", alive))
    assert accepted is not None and accepted.claimed is not None
    assert accepted.claimed.turn_id == accepted.turn_id
    assert accepted.claimed.claims == 1
    assert accepted.claimed.reply_target == first.reply_target
    conversation = accepted.conversation_id
    # Running, held by `here`: no one else takes it.
    assert await elsewhere.claim_next_turn(conversation, holder="there", alive_until=alive) is None

    # With a turn running, the next message waits for it, in order.
    second = chat.message("second", thread="T1")
    queued = await elsewhere.accept(second, text=second.text, tokens=1, claim=Claim("there", alive))
    assert queued is not None and queued.claimed is None
    assert await here.renew_claims("here", [accepted.turn_id], alive_until=alive) == 1
    assert await here.fail_turn(accepted.turn_id, holder="here")
    following = await elsewhere.claim_next_turn(conversation, holder="there", alive_until=alive)
    assert following is not None and following.turn_id == queued.turn_id


async def test_a_claim_taken_elsewhere_as_a_message_comes_in_leaves_its_turn_waiting(
    store: SqlStore, database_url: str
) -> None:
    """Accepting claims a quiet conversation's turn in the same statement; another
    process claiming one of its turns at that moment wins, and the message is still
    accepted, once, its turn waiting for that one."""
    chat = Chat()
    alive = datetime.now(UTC) + timedelta(minutes=1)
    earlier = chat.message("earlier")
    done = await store.accept(earlier, text=earlier.text, tokens=1)
    assert done is not None
    assert await store.fail_turn(done.turn_id, holder=None)
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    elsewhere = await asyncpg.connect(dsn)
    try:
        transaction = elsewhere.transaction()
        await transaction.start()
        # Another process's claim, not committed yet: invisible to the accept, whose
        # own claim then waits on `uq_turns_one_running` and fails when this commits.
        await elsewhere.execute(
            "UPDATE turns SET status = 'running', claimed_by = 'elsewhere' WHERE id = $1",
            done.turn_id,
        )
        message = chat.message("now")
        accepting = asyncio.ensure_future(
            store.accept(message, text=message.text, tokens=1, claim=Claim("here", alive))
        )
        await asyncio.sleep(0.3)
        await transaction.commit()
        async with asyncio.timeout(5):
            accepted = await accepting
    finally:
        await elsewhere.close()
    assert accepted is not None and accepted.claimed is None
    conversation = accepted.conversation_id
    assert await store.claim_next_turn(conversation, holder="here", alive_until=alive) is None
    assert await store.fail_turn(done.turn_id, holder="elsewhere")
    taken = await store.claim_next_turn(conversation, holder="here", alive_until=alive)
    assert taken is not None and taken.turn_id == accepted.turn_id
    history = await store.history(conversation, up_to_message_id=10**9, limit=10)
    assert [m.text for m in history] == ["earlier", "now"]

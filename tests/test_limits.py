"""Cost and abuse limits, through the core against the fake model server and real stores:
messages a minute per person, the cap on model calls at once with its bounded queue,
daily token budgets, and which models `/model set` accepts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import pytest
import pytest_asyncio

from botservice.core.conversation import ConversationCore
from botservice.core.limits import BUSY, MessageRate, ModelCallGate
from botservice.core.ports import Store
from botservice.model.client import OpenAIChatClient
from tests.chat_kit import Chat, RecordingSink, settings_for
from tests.fakes.model_server import FakeModelServer, Reply, Slow


@pytest_asyncio.fixture
async def make_chat(fake_model: FakeModelServer, sqlite_store: Store) -> AsyncIterator[ChatFactory]:
    clients: list[OpenAIChatClient] = []

    def build(store: Store | None = None, **overrides: str) -> Chat:
        settings = settings_for(fake_model.base_url, **overrides)
        client = OpenAIChatClient(settings.model)
        clients.append(client)
        return Chat(ConversationCore(settings=settings, store=store or sqlite_store, model=client))

    yield build
    for client in clients:
        await client.aclose()


class ChatFactory(Protocol):
    def __call__(self, store: Store | None = None, **overrides: str) -> Chat: ...


async def wait_for(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "waited too long"
        await asyncio.sleep(0.01)


def showing_placeholder(sink: RecordingSink) -> Callable[[], bool]:
    return lambda: sink.begun == 1


def user_texts(fake_model: FakeModelServer) -> list[str]:
    return [request.last_user_text for request in fake_model.chat_requests]


# --- messages a minute ---------------------------------------------------------------


async def test_the_eleventh_message_in_a_minute_is_refused_and_never_reaches_the_model(
    make_chat: ChatFactory, fake_model: FakeModelServer, sqlite_store: Store
) -> None:
    chat = make_chat()  # the shipped default: 10 a minute
    for n in range(10):
        answered = await chat.say(f"question {n}", thread=f"T{n}")
        assert answered.final == f"You said: question {n}"

    refused = await chat.say("one too many", thread="T99")

    assert refused.finals == []
    assert len(refused.notices) == 1
    assert refused.notices[0].startswith(
        "You are sending messages faster than I can take them (10 a minute); please wait "
    )
    assert "one too many" not in user_texts(fake_model)
    # Someone else is not held back by it.
    assert (await chat.say("hello", user="U2", thread="TU2")).final == "You said: hello"
    # The refused message was not stored: it never turns up in a later prompt.
    assert not await sqlite_store.has_conversation(chat.message("x", thread="T99").conversation)


async def test_a_second_delivery_of_one_message_does_not_count_twice(
    make_chat: ChatFactory, fake_model: FakeModelServer
) -> None:
    chat = make_chat(limits__messages_per_minute="2")
    first = chat.message("first", key="k1")
    await chat.core.handle(first, RecordingSink())
    # Slack delivers a mention twice (app_mention and message); same key, one answer.
    again = RecordingSink()
    assert not await chat.core.handle(first, again)
    assert again.notices == [] and again.finals == []

    second = await chat.say("second")
    assert second.final == "You said: second"
    third = await chat.say("third")
    assert third.notices and "2 a minute" in third.notices[0]


def test_the_bucket_refills_evenly_over_a_minute() -> None:
    now = [0.0]
    rate = MessageRate(10, clock=lambda: now[0])
    assert all(rate.take("test", "U1") == 0 for _ in range(10))
    assert rate.take("test", "U1") == pytest.approx(6.0)
    now[0] = 6.0
    assert rate.take("test", "U1") == 0
    assert rate.take("test", "U1") > 0


# --- model calls at once -----------------------------------------------------------------


async def test_model_calls_wait_in_order_for_a_free_slot(
    make_chat: ChatFactory, fake_model: FakeModelServer
) -> None:
    chat = make_chat(limits__max_concurrent_model_calls="2")
    fake_model.script(*(Slow(0.5) for _ in range(5)))
    sinks = [RecordingSink() for _ in range(5)]

    async def submit(n: int) -> None:
        message = chat.message(f"turn {n}", thread=f"T{n}", user=f"U{n}")
        assert await chat.core.submit(message, sinks[n]) is not None

    await submit(0)
    await submit(1)
    await wait_for(lambda: len(fake_model.chat_requests) == 2)  # both slots taken
    for n in (2, 3, 4):
        await submit(n)
        await wait_for(showing_placeholder(sinks[n]))
        await asyncio.sleep(0.1)  # from its placeholder to the gate: a few reads
    await chat.core.drain()

    assert [sink.final for sink in sinks] == [f"You said: turn {n}" for n in range(5)]
    requests = fake_model.chat_requests
    asked = [r.last_user_text for r in requests]
    assert sorted(asked[:2]) == ["turn 0", "turn 1"]  # both went straight to a free slot
    assert asked[2:] == ["turn 2", "turn 3", "turn 4"]  # the waiting ones, in arrival order
    # Two at once: the third request went out only once the first answer was done.
    started = [r.received_at for r in requests]
    assert started[2] - started[0] >= 0.45
    assert started[4] - started[2] >= 0.45


async def test_turns_waiting_for_a_slot_go_in_the_order_they_were_taken() -> None:
    # A turn reads the database before it reaches the gate, so under load a later
    # turn can arrive first: the gate lets them go by their turn number, as the
    # model pacer behind it does, so the order they were taken in holds end to end.
    gate = ModelCallGate(max_concurrent=1, max_waiting=10)
    went: list[int] = []

    async def turn(number: int) -> None:
        async with gate.slot(place=number):
            went.append(number)
            await asyncio.sleep(0)

    async with gate.slot(place=1):
        waiting = [asyncio.create_task(turn(n)) for n in (9, 3, 7)]
        await asyncio.sleep(0.01)
        assert gate.waiting == 3
    await asyncio.gather(*waiting)

    assert went == [3, 7, 9]


async def test_a_turn_cancelled_while_waiting_gives_up_its_place() -> None:
    gate = ModelCallGate(max_concurrent=1, max_waiting=10)
    went: list[int] = []

    async def turn(number: int) -> None:
        async with gate.slot(place=number):
            went.append(number)

    async with gate.slot(place=1):
        first, second = asyncio.create_task(turn(2)), asyncio.create_task(turn(3))
        await asyncio.sleep(0.01)
        first.cancel()
        await asyncio.sleep(0.01)
        assert gate.waiting == 1
    await second

    assert went == [3]
    assert gate.running == 0


async def test_beyond_the_queue_bound_the_turn_is_declined_but_its_message_kept(
    make_chat: ChatFactory, fake_model: FakeModelServer
) -> None:
    chat = make_chat(limits__max_concurrent_model_calls="1", limits__max_queued_turns="1")
    fake_model.script(Slow(0.5), Slow(0.5))
    running, waiting, declined = RecordingSink(), RecordingSink(), RecordingSink()
    await chat.core.submit(chat.message("first", thread="TA", user="UA"), running)
    await wait_for(lambda: len(fake_model.chat_requests) == 1)
    await chat.core.submit(chat.message("second", thread="TB", user="UB"), waiting)
    await wait_for(showing_placeholder(waiting))
    await asyncio.sleep(0.1)  # from its placeholder to the gate: a few reads
    await chat.core.submit(chat.message("my name is Ada", thread="TC", user="UC"), declined)
    await chat.core.drain()

    assert running.final == "You said: first"
    assert waiting.final == "You said: second"
    assert declined.final == BUSY == "I'm busy, please try again in a minute."
    assert "my name is Ada" not in user_texts(fake_model)

    # The declined message was stored: the next turn there sees it.
    await chat.say("what is my name?", thread="TC", user="UC")
    prompt = fake_model.chat_requests[-1].body["messages"]
    assert [m["content"] for m in prompt[1:]] == ["my name is Ada", "what is my name?"]


# --- daily token budgets (SQLite and PostgreSQL) -----------------------------------------


async def test_a_person_over_their_daily_tokens_is_told_when_it_renews(
    make_chat: ChatFactory, fake_model: FakeModelServer, store: Store
) -> None:
    chat = make_chat(store, limits__user_daily_tokens="20")
    fake_model.script(Reply("word " * 30))
    first = await chat.say("tell me a long story")
    assert first.finals  # the first answer is what spends the budget

    refused = await chat.say("and another one", thread="T2")

    assert refused.finals == []
    assert refused.notices == [
        "You have used your 20 tokens for today; the allowance renews at 00:00 UTC."
    ]
    assert "and another one" not in user_texts(fake_model)
    # Another person in the same channel still gets answers.
    assert (await chat.say("hi", user="U2", thread="TU2")).final == "You said: hi"


async def test_a_channel_over_its_daily_tokens_stops_answering_everyone_there(
    make_chat: ChatFactory, fake_model: FakeModelServer, store: Store
) -> None:
    chat = make_chat(store, limits__channel_daily_tokens="20")
    fake_model.script(Reply("word " * 30))
    await chat.say("tell me a long story", user="U1")

    refused = await chat.say("me too", user="U2", thread="T2")
    other_channel = await chat.say("hello", user="U2", channel="C2")

    assert refused.notices == [
        "This channel has used its 20 tokens for today; the allowance renews at 00:00 UTC."
    ]
    assert other_channel.final == "You said: hello"


@pytest.mark.parametrize("exempt", [True, False])
async def test_the_bots_admins_are_held_to_no_daily_budget_while_exempt(
    make_chat: ChatFactory, fake_model: FakeModelServer, store: Store, exempt: bool
) -> None:
    chat = make_chat(
        store,
        limits__user_daily_tokens="20",
        access__admin_user_ids="UADMIN",
        limits__quota_exempt_admins=str(exempt).lower(),
    )
    fake_model.script(Reply("word " * 30))
    await chat.say("tell me a long story", user="UADMIN")

    again = await chat.say("and another one", user="UADMIN", thread="T2")

    if exempt:
        assert again.final == "You said: and another one"
    else:
        assert again.notices == [
            "You have used your 20 tokens for today; the allowance renews at 00:00 UTC."
        ]


async def test_budgets_are_off_by_default(
    make_chat: ChatFactory, fake_model: FakeModelServer
) -> None:
    chat = make_chat()
    fake_model.script(Reply("word " * 3000))
    await chat.say("tell me a very long story")
    assert (await chat.say("and again")).final == "You said: and again"


# --- which models `/model set` accepts ---------------------------------------------------


async def test_model_set_accepts_only_configured_models_and_names_them(
    make_chat: ChatFactory, fake_model: FakeModelServer
) -> None:
    chat = make_chat()

    refused = await chat.say("/model set gpt-4-32k-most-expensive", admin=True)
    accepted = await chat.say("/model set gpt-4o", admin=True)

    assert refused.notices == [
        "The model gpt-4-32k-most-expensive is not offered here; choose one of: "
        "gpt-4.1, gpt-4.1-mini, gpt-4o, gpt-4o-mini, gpt-5-mini, o3-mini."
    ]
    assert accepted.notices == ["This channel now uses the model gpt-4o."]
    await chat.say("hi")
    assert fake_model.chat_requests[-1].body["model"] == "gpt-4o"


async def test_model_set_takes_the_endpoints_models_when_discovery_is_on(
    make_chat: ChatFactory, fake_model: FakeModelServer
) -> None:
    closed = make_chat()
    refused = await closed.say("/model set fake-model", admin=True)
    assert refused.notices[0].startswith("The model fake-model is not offered here")

    chat = make_chat(model__allow_discovered="true")
    accepted = await chat.say("/model set fake-model", admin=True, channel="C2")
    assert accepted.notices == ["This channel now uses the model fake-model."]
    listing = [r for r in fake_model.requests if r.path == "/v1/models"]
    assert listing and listing[-1].headers["Authorization"] == "Bearer sk-test-secret-key"
    still_refused = await chat.say("/model set not-listed", admin=True, channel="C2")
    assert still_refused.notices == [
        "The model not-listed is not offered here; choose one of: fake-model, gpt-4.1, "
        "gpt-4.1-mini, gpt-4o, gpt-4o-mini, gpt-5-mini, o3-mini."
    ]


async def test_in_direct_messages_only_bot_admins_set_the_model(
    make_chat: ChatFactory, fake_model: FakeModelServer
) -> None:
    chat = make_chat(access__admin_user_ids="OPS1")
    # In a direct message the adapter makes the person the channel's manager.
    refused = await chat.say("/model set gpt-4o", user="U1", admin=True, direct=True)
    accepted = await chat.say("/model set gpt-4o", user="OPS1", admin=True, direct=True)

    assert refused.notices == [
        "In direct messages only the bot's admins can change the model "
        "(the operator lists them in access.admin_user_ids)."
    ]
    assert accepted.notices == ["This channel now uses the model gpt-4o."]


async def test_a_model_chosen_before_the_list_was_narrowed_falls_back_to_the_default(
    fake_model: FakeModelServer, sqlite_store: Store, make_chat: ChatFactory
) -> None:
    await sqlite_store.change_setting(
        "test", "W1", "C1", field="model", value="gpt-4-32k", changed_by="U9"
    )
    chat = make_chat()
    shown = await chat.say("/model show")
    await chat.say("hi")

    assert shown.notices == ["This channel uses the model gpt-4o-mini (the default)."]
    assert fake_model.chat_requests[-1].body["model"] == "gpt-4o-mini"

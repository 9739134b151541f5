"""Turns answered aloud by a realtime voice session are kept like any other turn: the
member's words and the spoken answer reach the next prompt, and the model is not asked
for them. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import select

from botservice.core.conversation import ConversationCore
from botservice.core.settings import Settings
from botservice.model.client import OpenAIChatClient
from botservice.storage.repository import SqlStore
from botservice.storage.tables import MESSAGES
from tests.chat_kit import Chat, settings_for
from tests.fakes.model_server import FakeModelServer


@pytest.fixture
def settings(fake_model: FakeModelServer) -> Settings:
    return settings_for(fake_model.base_url)


@pytest_asyncio.fixture
async def model(settings: Settings) -> AsyncIterator[OpenAIChatClient]:
    client = OpenAIChatClient(settings.model)
    yield client
    await client.aclose()


async def test_a_spoken_turn_is_remembered_without_asking_the_model(
    settings: Settings, store: SqlStore, model: OpenAIChatClient, fake_model: FakeModelServer
) -> None:
    core = ConversationCore(settings=settings, store=store, model=model)
    chat = Chat(core)
    heard = chat.message("What time is it?", name="Bob", key="voice:1")

    turn = await core.record_spoken_turn(heard, "It is noon.", model="gpt-realtime")
    again = await core.record_spoken_turn(heard, "It is noon.", model="gpt-realtime")

    assert turn is not None
    assert again is None, "a redelivered transcript is kept once"
    assert fake_model.chat_requests == []
    await chat.say("And tomorrow?", name="Bob")
    prompt = fake_model.chat_requests[-1].body["messages"]
    said = [(m["role"], str(m["content"])) for m in prompt if m["role"] != "system"]
    assert [role for role, _ in said] == ["user", "assistant", "user"]
    assert "What time is it?" in said[0][1]
    assert said[1][1] == "It is noon."
    await core.drain()


async def test_an_interrupted_spoken_answer_is_kept_as_interrupted_and_nothing_waits(
    settings: Settings, store: SqlStore, model: OpenAIChatClient
) -> None:
    core = ConversationCore(settings=settings, store=store, model=model)
    heard = Chat(core).message("Tell me a long story.", key="voice:2")
    turn = await core.record_spoken_turn(
        heard, "Once upon a time _(Interrupted)_", model="gpt-realtime", interrupted=True
    )
    assert turn is not None
    assert await store.pending_turns() == [], "no worker answers a spoken turn again"
    async with store.engine.connect() as connection:
        rows = await connection.execute(
            select(MESSAGES.c.role, MESSAGES.c.status).order_by(MESSAGES.c.id)
        )
        assert [tuple(row) for row in rows] == [("user", "complete"), ("assistant", "interrupted")]


async def test_words_heard_before_their_answer_wait_for_it_without_a_worker_taking_them(
    settings: Settings, store: SqlStore, model: OpenAIChatClient, fake_model: FakeModelServer
) -> None:
    core = ConversationCore(settings=settings, store=store, model=model)
    chat = Chat(core)
    heard = chat.message("Close the ticket.", name="Bob", key="voice:3")

    turn = await core.hear_spoken_turn(heard)
    assert turn is not None
    assert await store.pending_turns() == [], "the session answers it, not a worker"
    await core.resume_pending(lambda pending: None)
    await core.drain()
    assert fake_model.chat_requests == []

    await core.answer_spoken_turn(turn, "Done, it is closed.", model="gpt-realtime")
    await chat.say("Thanks.", name="Bob")
    prompt = fake_model.chat_requests[-1].body["messages"]
    said = [(m["role"], str(m["content"])) for m in prompt if m["role"] != "system"]
    assert [role for role, _ in said] == ["user", "assistant", "user"]
    assert said[1][1] == "Done, it is closed."
    await core.drain()


async def test_words_forgotten_before_their_spoken_answer_leave_no_answer_behind(
    settings: Settings, store: SqlStore, model: OpenAIChatClient
) -> None:
    core = ConversationCore(settings=settings, store=store, model=model)
    heard = Chat(core).message("My phone number is 555-0100.", user="U7", key="voice:4")
    turn = await core.hear_spoken_turn(heard)
    assert turn is not None

    await store.forget_user(heard.platform, "U7")
    await core.answer_spoken_turn(turn, "I will remember 555-0100.", model="gpt-realtime")

    async with store.engine.connect() as connection:
        rows = await connection.execute(select(MESSAGES.c.text))
        assert [row.text for row in rows] == []

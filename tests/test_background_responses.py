"""Background mode on the Responses backend (`[models."<name>"] background = true`, for
reasoning models that think for minutes): the endpoint keeps generating when the
connection drops, so the bot resumes the stream where it stopped instead of asking
again, keeps the response's id with the turn, and after a restart follows the same
response: the model is asked once and the person gets one answer.

Against the fake server's `/v1/responses`, which keeps each background response's
events and replays them at `GET /v1/responses/{id}?stream=true&starting_after=<n>`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from botservice.core.conversation import ConversationCore
from botservice.core.ports import ChatRequest
from botservice.core.settings import Settings
from botservice.model.responses import OpenAIResponsesClient
from botservice.storage.repository import SqlStore
from tests.chat_kit import Chat, RecordingSink, settings_for
from tests.fakes.model_server import Dropped, FakeModelServer, Reply

ANSWER = "After thinking it over for a long while, the answer is forty-two."


def thinker_settings(base_url: str) -> Settings:
    """A reasoning model the operator marked for background mode."""
    return settings_for(
        base_url,
        model__api="responses",
        model__name="thinker",
        model_defaults__background="true",
    )


async def until(condition: Callable[[], object], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "gave up waiting"
        await asyncio.sleep(0.02)


async def test_a_dropped_background_stream_is_resumed_where_it_stopped(
    fake_model: FakeModelServer,
) -> None:
    settings = thinker_settings(fake_model.base_url)
    client = OpenAIResponsesClient(settings.model)
    named: list[str] = []

    async def keep(response_id: str) -> None:
        named.append(response_id)

    # created, in_progress, the message item, its text part, two deltas: then the drop.
    fake_model.script(Dropped(after=6, then=Reply(ANSWER, chunk_size=10)))
    request = ChatRequest(
        model="thinker",
        messages=[{"role": "user", "content": "What is the answer?"}],
        background=True,
        on_started=keep,
    )
    try:
        stream = client.stream(request)
        text = "".join([delta async for delta in stream])
    finally:
        await client.aclose()

    assert text == ANSWER
    [asked] = fake_model.responses_requests
    assert asked.body["background"] is True
    assert asked.body["store"] is True  # background responses are kept to be resumed
    assert named == [next(iter(fake_model.background))]
    [follow] = fake_model.follow_requests
    assert follow.path == f"/v1/responses/{named[0]}"
    assert follow.body["query"] == {"stream": "true", "starting_after": "5"}
    assert stream.finished


async def test_the_person_sees_one_whole_answer_when_the_stream_drops_midway(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = thinker_settings(fake_model.base_url)
    client = OpenAIResponsesClient(settings.model)
    core = ConversationCore(settings=settings, store=sqlite_store, model=client)
    fake_model.script(Dropped(after=7, then=Reply(ANSWER, chunk_size=8)))
    try:
        sink = await Chat(core).say("What is the answer?")
    finally:
        await client.aclose()

    assert sink.final == ANSWER
    assert len(fake_model.responses_requests) == 1
    assert len(fake_model.follow_requests) == 1


async def test_a_restart_mid_answer_follows_the_same_response_and_answers_once(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = thinker_settings(fake_model.base_url)
    # The model has written a little when the bot's process dies; it keeps going.
    fake_model.script(Dropped(after=7, then=Reply(ANSWER, chunk_size=8), hold=True))
    first_client = OpenAIResponsesClient(settings.model)
    first = ConversationCore(settings=settings, store=sqlite_store, model=first_client)
    first_sink = RecordingSink()
    handling = asyncio.create_task(first.handle(Chat().message("What is the answer?"), first_sink))
    await until(lambda: any(not text.startswith("_") for text in first_sink.updates))

    # The process dies mid-answer: its turn stops where it is, nothing more is stored.
    for task in asyncio.all_tasks():
        if task.get_coro().__qualname__ == "ConversationCore._drive":  # type: ignore[union-attr]
            task.cancel()
    await handling
    await first_client.aclose()
    await first.stop()
    assert first_sink.finals == []

    # The bot starts again and picks the turn up.
    second_client = OpenAIResponsesClient(settings.model)
    second = ConversationCore(settings=settings, store=sqlite_store, model=second_client)
    second_sink = RecordingSink()
    try:
        assert await second.resume_pending(lambda turn: second_sink) == 1
        await asyncio.wait_for(second.drain(), 10)
    finally:
        await second_client.aclose()
        await second.stop()

    assert second_sink.final == ANSWER
    assert second_sink.existing_refs == ["placeholder-1"]  # the same message, edited
    assert len(fake_model.responses_requests) == 1  # the model was asked once
    [follow] = fake_model.follow_requests
    assert follow.body["query"] == {"stream": "true"}  # read again from its first event
    # Another restart finds nothing left to answer.
    third = ConversationCore(settings=settings, store=sqlite_store, model=second_client)
    assert await third.resume_pending(lambda turn: RecordingSink()) == 0


async def test_a_response_the_endpoint_no_longer_has_is_asked_for_again(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = thinker_settings(fake_model.base_url)
    fake_model.script(Dropped(after=7, then=Reply(ANSWER, chunk_size=8), hold=True))
    first_client = OpenAIResponsesClient(settings.model)
    first = ConversationCore(settings=settings, store=sqlite_store, model=first_client)
    first_sink = RecordingSink()
    handling = asyncio.create_task(first.handle(Chat().message("What is the answer?"), first_sink))
    await until(lambda: any(not text.startswith("_") for text in first_sink.updates))
    for task in asyncio.all_tasks():
        if task.get_coro().__qualname__ == "ConversationCore._drive":  # type: ignore[union-attr]
            task.cancel()
    await handling
    await first_client.aclose()
    await first.stop()
    fake_model.background.clear()  # expired at the provider while the bot was down

    fake_model.script(Reply("Asked again."))
    second_client = OpenAIResponsesClient(settings.model)
    second = ConversationCore(settings=settings, store=sqlite_store, model=second_client)
    second_sink = RecordingSink()
    try:
        await second.resume_pending(lambda turn: second_sink)
        await asyncio.wait_for(second.drain(), 10)
    finally:
        await second_client.aclose()
        await second.stop()

    assert second_sink.final == "Asked again."
    assert len(fake_model.responses_requests) == 2

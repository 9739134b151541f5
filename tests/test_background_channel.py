"""Background mode as a channel setting (`background on|off|default`, managers only),
and a background response whose dropped stream cannot be streamed again: the bot
reads it (`GET /v1/responses/{id}`) until it ends and shows the whole answer once.

Against the fake server's `/v1/responses`; the setting through the core's commands,
stored in SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from botservice.core.conversation import ConversationCore
from botservice.core.errors import ModelError
from botservice.model.client import OpenAIChatClient
from botservice.model.responses import MAX_RESUMES, OpenAIResponsesClient
from botservice.storage.repository import SqlStore
from tests.chat_kit import Chat, settings_for
from tests.fakes.model_server import Dropped, FakeModelServer, Reply

ANSWER = "After thinking it over for a long while, the answer is forty-two."


@pytest_asyncio.fixture
async def responses_chat(fake_model: FakeModelServer, store: SqlStore) -> AsyncIterator[Chat]:
    """A bot on the Responses backend whose model is not marked for background mode."""
    settings = settings_for(fake_model.base_url, model__api="responses", model__name="thinker")
    client = OpenAIResponsesClient(settings.model)
    core = ConversationCore(settings=settings, store=store, model=client)
    try:
        yield Chat(core)
    finally:
        await client.aclose()
        await core.stop()


async def test_a_manager_turns_background_mode_on_off_and_back_to_the_models_default(
    responses_chat: Chat, fake_model: FakeModelServer, store: SqlStore
) -> None:
    chat = responses_chat
    shown = (await chat.say("/background")).notices[0]
    assert shown == "Background mode here: off (the default of the model thinker)."
    await chat.say("What is the answer?")
    assert "background" not in fake_model.responses_requests[-1].body

    refused = (await chat.say("/background on", user="U2")).notices[0]
    assert refused.startswith("Only ")
    assert refused.endswith("can change this channel's background mode.")

    turned_on = (await chat.say("/background on", admin=True)).notices[0]
    assert turned_on == "Background mode here: on (this channel's setting)."
    await chat.say("What is the answer now?")
    asked = fake_model.responses_requests[-1].body
    assert asked["background"] is True
    assert asked["store"] is True

    turned_off = (await chat.say("/background off", admin=True)).notices[0]
    assert turned_off == "Background mode here: off (this channel's setting)."
    await chat.say("And now?")
    assert "background" not in fake_model.responses_requests[-1].body

    back = (await chat.say("/background default", admin=True)).notices[0]
    assert back == "Background mode here: off (the default of the model thinker)."

    audit = await store.setting_changes("test", "W1", "C1")
    assert [(a.field, a.old, a.new, a.changed_by) for a in audit] == [
        ("background", None, "on", "U1"),
        ("background", "on", "off", "U1"),
        ("background", "off", None, "U1"),
    ]


async def test_off_in_a_channel_wins_over_a_model_marked_for_background_mode(
    fake_model: FakeModelServer, store: SqlStore
) -> None:
    settings = settings_for(
        fake_model.base_url,
        model__api="responses",
        model__name="thinker",
        model_defaults__background="true",
    )
    client = OpenAIResponsesClient(settings.model)
    core = ConversationCore(settings=settings, store=store, model=client)
    chat = Chat(core)
    try:
        shown = (await chat.say("/background show")).notices[0]
        assert shown == "Background mode here: on (the default of the model thinker)."
        await chat.say("/background off", admin=True)
        answered = await chat.say("What is the answer?")
        # Another channel keeps the model's default.
        await chat.say("What is the answer elsewhere?", channel="C2", thread="T2")
    finally:
        await client.aclose()
        await core.stop()

    assert answered.final
    first, elsewhere = fake_model.responses_requests
    assert "background" not in first.body
    assert elsewhere.body["background"] is True


async def test_on_the_chat_backend_the_setting_is_kept_and_says_where_it_applies(
    fake_model: FakeModelServer, store: SqlStore
) -> None:
    settings = settings_for(fake_model.base_url)
    client = OpenAIChatClient(settings.model)
    core = ConversationCore(settings=settings, store=store, model=client)
    chat = Chat(core)
    try:
        said = (await chat.say("/background on", admin=True)).notices[0]
        answered = await chat.say("Hello?")
    finally:
        await client.aclose()
        await core.stop()

    assert said.startswith("Background mode here: on (this channel's setting).")
    assert 'It only applies with `api = "responses"`' in said
    assert answered.final
    assert "background" not in fake_model.chat_requests[-1].body
    assert (await store.channel_settings("test", "W1", "C1")).background is True


async def test_a_workspace_wide_setting_shows_through_until_the_channel_has_its_own(
    store: SqlStore,
) -> None:
    await store.change_setting("test", "W1", "", field="background", value=True, changed_by="ADMIN")
    assert (await store.channel_settings("test", "W1", "C1")).background is True
    await store.change_setting(
        "test", "W1", "C1", field="background", value=False, changed_by="ADMIN"
    )
    assert (await store.channel_settings("test", "W1", "C1")).background is False
    assert (await store.channel_settings("test", "W1", "C2")).background is True
    with pytest.raises(ValueError):
        await store.change_setting(
            "test", "W1", "C1", field="background", value="yes", changed_by="ADMIN"
        )


# --- a stream that cannot be resumed ------------------------------------------------


@pytest.mark.parametrize(
    ("resume", "reads"),
    [
        # The endpoint answers HTTP 400 to `stream=true` for a stored response: read
        # twice while it runs, once more when it has ended.
        ("refused", 3),
        # It ignores `stream=true` and answers the response as it stands (running):
        # that was one read already.
        ("whole", 2),
    ],
)
async def test_a_stream_that_cannot_be_resumed_is_polled_and_answered_once(
    resume: str, reads: int, fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = settings_for(
        fake_model.base_url,
        model__api="responses",
        model__name="thinker",
        model_defaults__background="true",
    )
    client = OpenAIResponsesClient(settings.model)
    core = ConversationCore(settings=settings, store=sqlite_store, model=client)
    # Part of the text arrives, the connection drops, and the response is still
    # running the first two times the bot reads it.
    fake_model.script(
        Dropped(
            after=7,
            then=Reply(ANSWER, chunk_size=8),
            resume=resume,  # type: ignore[arg-type]
            running_polls=2,
        )
    )
    try:
        sink = await Chat(core).say("What is the answer?")
    finally:
        await client.aclose()
        await core.stop()

    assert sink.final == ANSWER
    assert sink.finals == [ANSWER]
    assert len(fake_model.responses_requests) == 1  # asked once
    streamed_again, *polled = fake_model.follow_requests
    assert streamed_again.body["query"] == {"stream": "true", "starting_after": "6"}
    assert [read.body["query"] for read in polled] == [{}] * reads


async def test_a_response_still_running_when_the_read_timeout_is_spent_is_a_clear_failure(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = settings_for(
        fake_model.base_url,
        model__api="responses",
        model__name="thinker",
        model_defaults__background="true",
        model__read_timeout_seconds="1",
    )
    client = OpenAIResponsesClient(settings.model)
    core = ConversationCore(settings=settings, store=sqlite_store, model=client)
    fake_model.script(
        Dropped(after=7, then=Reply(ANSWER, chunk_size=8), resume="refused", running_polls=1000)
    )
    try:
        sink = await Chat(core).say("What is the answer?")
    finally:
        await client.aclose()
        await core.stop()

    assert len(fake_model.responses_requests) == 1
    assert "took too long" in sink.final


async def test_when_every_resumed_stream_is_cut_the_response_is_read_whole_instead(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = settings_for(
        fake_model.base_url,
        model__api="responses",
        model__name="thinker",
        model_defaults__background="true",
    )
    client = OpenAIResponsesClient(settings.model)
    core = ConversationCore(settings=settings, store=sqlite_store, model=client)
    fake_model.script(Dropped(after=7, then=Reply(ANSWER, chunk_size=8), resume="cut"))
    try:
        sink = await Chat(core).say("What is the answer?")
    finally:
        await client.aclose()
        await core.stop()

    assert sink.finals == [ANSWER]
    assert len(fake_model.responses_requests) == 1
    streamed_again = [r for r in fake_model.follow_requests if r.body["query"]]
    polled = [r for r in fake_model.follow_requests if not r.body["query"]]
    assert len(streamed_again) == MAX_RESUMES  # each resume was cut too
    assert len(polled) == 1


async def test_a_response_gone_from_the_endpoint_is_not_called_an_unknown_model(
    fake_model: FakeModelServer,
) -> None:
    client = OpenAIResponsesClient(settings_for(fake_model.base_url, model__api="responses").model)
    try:
        with pytest.raises(ModelError) as raised:
            await client.poll("resp_expired")
    finally:
        await client.aclose()

    assert "does not know this model" not in raised.value.user_message
    assert raised.value.user_message == "The model endpoint failed to answer; please try again."

"""The model's context window: asked of the endpoint, trimmed to, and learned when a
server turns out smaller than assumed. Against the fake model server in the shapes of
llama.cpp's server, llama-cpp-python, Ollama and vLLM (real HTTP), a real SQLite store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from botservice.core.conversation import SHRUNK_FOOTNOTE, TRIM_FOOTNOTE, ConversationCore
from botservice.core.errors import ModelContextExceeded, ModelEmptyAnswer
from botservice.core.ports import ChatRequest
from botservice.model.client import OpenAIChatClient
from botservice.model.tokens import TokenCounter
from botservice.storage.repository import SqlStore
from tests.chat_kit import Chat, RecordingSink, settings_for
from tests.fakes.model_server import FakeModelServer, prompt_tokens

# Not under [models] in the shipped config, so its window is the endpoint's to tell.
LOCAL_MODEL = "fake-model"
SENTENCE = "Here is a longer question about the ongoing project and its many parts, number"


def local_settings(fake_model: FakeModelServer, **overrides: str):  # type: ignore[no-untyped-def]
    return settings_for(
        fake_model.base_url,
        model__name=LOCAL_MODEL,
        limits__messages_per_minute="0",
        **overrides,
    )


@pytest_asyncio.fixture
async def local_chat(fake_model: FakeModelServer, sqlite_store: SqlStore) -> AsyncIterator[Chat]:
    settings = local_settings(fake_model)
    client = OpenAIChatClient(settings.model)
    core = ConversationCore(
        settings=settings, store=sqlite_store, model=client, tokens=TokenCounter()
    )
    yield Chat(core)
    await client.aclose()


def long_message(n: int) -> str:
    return f"{SENTENCE} {n}. " + "Please keep all of the earlier details in mind. " * 4


async def thirty_turns(chat: Chat) -> list[RecordingSink]:
    return [await chat.say(long_message(n)) for n in range(30)]


def assert_every_turn_answered(replies: list[RecordingSink]) -> None:
    for n, reply in enumerate(replies):
        assert reply.final.startswith(f"You said: {SENTENCE} {n}."), (n, reply.final)


# --- discovery ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "window", "trained", "expected"),
    [
        # llama.cpp: /props n_ctx is what the running server has, not n_ctx_train.
        ("llamacpp", 2048, 32768, 2048),
        ("vllm", 4096, None, 4096),
        # Ollama: num_ctx when set, within the model's context_length.
        ("ollama", 8192, 131072, 8192),
        ("llama-cpp-python", 2048, None, None),
        ("none", 2048, None, None),
    ],
)
async def test_the_endpoint_is_asked_for_the_window_in_its_own_shape(
    fake_model: FakeModelServer, shape: str, window: int, trained: int | None, expected: int | None
) -> None:
    fake_model.discovery = shape
    fake_model.context_window = window
    fake_model.trained_window = trained
    client = OpenAIChatClient(local_settings(fake_model).model)
    try:
        assert await client.context_window(LOCAL_MODEL) == expected
        asked = len(fake_model.requests)
        # Remembered: a second turn asks nothing.
        assert await client.context_window(LOCAL_MODEL) == expected
        assert len(fake_model.requests) == asked
        # Unless asked to look again (a channel switched to the model).
        fake_model.context_window = window // 2
        again = await client.context_window(LOCAL_MODEL, fresh=True)
        assert again == (None if expected is None else window // 2 if shape != "ollama" else 4096)
    finally:
        await client.aclose()


async def test_ollama_without_num_ctx_reports_the_models_context_length(
    fake_model: FakeModelServer,
) -> None:
    fake_model.discovery = "ollama"
    fake_model.context_window = None
    fake_model.trained_window = 131072
    client = OpenAIChatClient(local_settings(fake_model).model)
    try:
        assert await client.context_window(LOCAL_MODEL) == 131072
    finally:
        await client.aclose()


async def test_a_window_set_in_config_wins_over_the_endpoint(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    fake_model.discovery = "llamacpp"
    fake_model.context_window = 100_000  # the fake would take anything
    shipped = local_settings(fake_model)
    settings = type(shipped).model_validate(
        {**shipped.model_dump(), "models": {LOCAL_MODEL: {"context_window": 400}}}
    )
    client = OpenAIChatClient(settings.model)
    try:
        chat = Chat(ConversationCore(settings=settings, store=sqlite_store, model=client))
        for n in range(6):
            await chat.say(long_message(n))
    finally:
        await client.aclose()
    assert not [r for r in fake_model.requests if r.path in ("/props", "/api/show", "/v1/models")]
    last = fake_model.chat_requests[-1].body
    assert prompt_tokens(last) < 400
    assert last["max_tokens"] == 200  # half a window smaller than two answers


# --- a 2,048-token server ------------------------------------------------------------


async def test_thirty_turns_with_a_discovered_2048_token_window_never_overflow(
    fake_model: FakeModelServer, local_chat: Chat
) -> None:
    fake_model.discovery = "llamacpp"
    fake_model.context_window = 2048
    fake_model.trained_window = 32768

    replies = await thirty_turns(local_chat)

    assert_every_turn_answered(replies)
    assert fake_model.overflows == 0
    # Trimmed: the last prompt holds the newest turns only, and the user was told once.
    last = fake_model.chat_requests[-1].body["messages"]
    assert f"{SENTENCE} 0." not in str(last)
    assert f"{SENTENCE} 28." in str(last)
    assert sum(TRIM_FOOTNOTE in r.final for r in replies) == 1
    assert len([r for r in fake_model.requests if r.path == "/props"]) == 1


async def test_thirty_turns_against_a_server_that_answers_nothing_when_over_its_window(
    fake_model: FakeModelServer, local_chat: Chat
) -> None:
    # llama-cpp-python: reports no window, assumed 16,384; over its 2,048 tokens it
    # answers HTTP 200 with an empty stream.
    fake_model.discovery = "llama-cpp-python"
    fake_model.context_window = 2048
    fake_model.overflow = "empty"

    replies = await thirty_turns(local_chat)

    assert_every_turn_answered(replies)
    # One empty answer taught the bot the window; each was tried again once, shorter.
    assert fake_model.overflows == 1
    assert len(fake_model.chat_requests) == 31
    told = [n for n, r in enumerate(replies) if r.final.endswith(SHRUNK_FOOTNOTE)]
    assert len(told) == 1
    # Later prompts stay within what worked.
    for request in fake_model.chat_requests[told[0] + 2 :]:
        assert prompt_tokens(request.body) <= 2048
    assert not any("cut off" in r.final or "no text" in r.final for r in replies)


async def test_a_server_counting_far_more_tokens_than_the_bot_still_never_breaks(
    fake_model: FakeModelServer, local_chat: Chat
) -> None:
    # Seen against a real llama-cpp-python server (bench/bench_llama_server.py) whose
    # tokenizer counted about four times the bot's tokens: its empty answers came to
    # prompts the bot thought short, and the conversation failed from the fourth turn.
    fake_model.discovery = "llama-cpp-python"
    fake_model.context_window = 2048
    fake_model.overflow = "empty"
    fake_model.chars_per_token = 1

    replies = await thirty_turns(local_chat)

    assert_every_turn_answered(replies)
    # Each overflow was tried again at once, shorter, and said so under its answer.
    told = [n for n, r in enumerate(replies) if r.final.endswith(SHRUNK_FOOTNOTE)]
    assert len(told) == fake_model.overflows
    # The window is learned in the bot's own tokens; at four times the count, the
    # first lesson (the prompt that worked, plus the answer reserve) still lets a
    # prompt grow into the reserve a smaller window keeps, so a second one may come.
    assert 1 <= fake_model.overflows <= 2
    assert len(fake_model.chat_requests) == 30 + fake_model.overflows


@pytest.mark.parametrize("style", ["openai", "vllm", "llamacpp", "llama-cpp-python"])
async def test_a_context_length_400_is_recovered_once_and_the_window_remembered(
    fake_model: FakeModelServer, local_chat: Chat, style: str
) -> None:
    fake_model.context_window = 1500
    fake_model.overflow = style

    replies = await thirty_turns(local_chat)

    assert_every_turn_answered(replies)
    assert fake_model.overflows == 1
    told = [r for r in replies if r.final.endswith(SHRUNK_FOOTNOTE)]
    assert len(told) == 1


async def test_an_empty_answer_to_a_short_prompt_is_said_as_such_and_not_retried(
    fake_model: FakeModelServer, local_chat: Chat
) -> None:
    fake_model.context_window = 5  # every prompt is over it: the server answers nothing

    reply = await local_chat.say("hi")

    assert reply.final == "The model returned no text; please rephrase or try again."
    assert len(fake_model.chat_requests) == 1


async def test_a_current_message_alone_over_the_window_is_not_retried(
    fake_model: FakeModelServer, local_chat: Chat
) -> None:
    fake_model.context_window = 50
    fake_model.overflow = "openai"

    reply = await local_chat.say(long_message(1) * 3)

    assert "too long for the model" in reply.final
    assert len(fake_model.chat_requests) == 1


# --- the client -------------------------------------------------------------------------


async def test_an_empty_200_stream_is_an_empty_answer_asked_once(
    fake_model: FakeModelServer,
) -> None:
    fake_model.context_window = 1
    client = OpenAIChatClient(local_settings(fake_model).model)
    request = ChatRequest(model=LOCAL_MODEL, messages=[{"role": "user", "content": "hello"}])
    try:
        with pytest.raises(ModelEmptyAnswer):
            [delta async for delta in client.stream(request)]
    finally:
        await client.aclose()
    assert len(fake_model.chat_requests) == 1


@pytest.mark.parametrize(
    ("style", "window"),
    [("openai", 100), ("vllm", 100), ("llamacpp", 100), ("llama-cpp-python", 100)],
)
async def test_each_servers_context_length_error_names_the_window(
    fake_model: FakeModelServer, style: str, window: int
) -> None:
    fake_model.context_window = window
    fake_model.overflow = style
    client = OpenAIChatClient(local_settings(fake_model).model)
    request = ChatRequest(model=LOCAL_MODEL, messages=[{"role": "user", "content": "word " * 200}])
    try:
        with pytest.raises(ModelContextExceeded) as raised:
            [delta async for delta in client.stream(request)]
    finally:
        await client.aclose()
    assert raised.value.window == window
    assert raised.value.status == 400


async def test_a_channel_switching_model_has_its_window_asked_at_once(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    fake_model.discovery = "llamacpp"
    fake_model.context_window = 2048
    settings = settings_for(
        fake_model.base_url, model__allow_discovered="true", limits__messages_per_minute="0"
    )
    client = OpenAIChatClient(settings.model)
    try:
        chat = Chat(ConversationCore(settings=settings, store=sqlite_store, model=client))
        await chat.say("hello")  # the default model's window is configured: nothing asked
        assert not [r for r in fake_model.requests if r.path == "/props"]

        changed = await chat.say(f"/model set {LOCAL_MODEL}", admin=True)
        assert changed.notices == [f"This channel now uses the model {LOCAL_MODEL}."]
        assert len([r for r in fake_model.requests if r.path == "/props"]) == 1

        for n in range(20):
            await chat.say(long_message(n))
    finally:
        await client.aclose()
    assert len([r for r in fake_model.requests if r.path == "/props"]) == 1
    assert fake_model.chat_requests[-1].body["model"] == LOCAL_MODEL
    assert all(prompt_tokens(r.body) <= 2048 for r in fake_model.chat_requests)

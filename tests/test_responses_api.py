"""The Responses API as a second backend: the same conversation, streaming and
failures as Chat Completions, against the fake server's `/v1/responses` (the real
event sequence over real HTTP), a real SQLite store and the real console adapter."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from botservice.adapters.console.adapter import ConsoleAdapter
from botservice.core.conversation import ConversationCore
from botservice.core.errors import ModelAnswerIncomplete
from botservice.core.ports import ChatRequest, Usage
from botservice.model.client import OpenAIChatClient
from botservice.model.responses import OpenAIResponsesClient, open_model_client
from botservice.storage.engine import create_engine
from botservice.storage.repository import SqlStore
from tests.chat_kit import Chat, settings_for
from tests.db import sqlite_url
from tests.fakes.model_server import (
    Behaviour,
    CutMidway,
    EmptyAnswer,
    ErrorEvent,
    Failed,
    FakeModelServer,
    Incomplete,
    RateLimited,
    Reply,
    ServerError,
)

ASK = ChatRequest(
    model="gpt-4o-mini",
    messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    max_tokens=50,
)

# A conversation with every kind of ending, said the same way on both APIs.
SCRIPT: list[Behaviour] = [
    Reply("Paris is the capital of France.", chunk_size=4),
    Reply(),  # the echo of the question
    CutMidway("The first half of", clean_end=False),
    Incomplete("A very long answer that", reason="max_output_tokens"),
    ErrorEvent("server_error", "Something went wrong."),
    RateLimited(retry_after=0.05),
    Reply("After the wait."),
    ServerError(500),
    Reply("After the error."),
    EmptyAnswer(),
]
LINES = [
    "What is the capital of France?",
    "Repeat after me: hello",
    "Tell me a story",
    "Write an essay",
    "Are you there?",
    "Again?",
    "Once more?",
    "And now?",
]


async def console_transcript(
    api: str, fake_model: FakeModelServer, sqlite_template: Path, tmp_path: Path
) -> str:
    fake_model.script(*SCRIPT)
    path = tmp_path / f"{api}.db"
    shutil.copyfile(sqlite_template, path)
    store = SqlStore(create_engine(sqlite_url(path)))
    settings = settings_for(fake_model.base_url, model__api=api, limits__messages_per_minute="0")
    client = open_model_client(settings.model)
    output = io.StringIO()
    try:
        core = ConversationCore(settings=settings, store=store, model=client)
        adapter = ConsoleAdapter(
            core, input=io.StringIO("\n".join(LINES) + "\n"), output=output, user_name="ada"
        )
        await adapter.serve()
        await core.stop()
    finally:
        await client.aclose()
        await store.aclose()
    return output.getvalue()


async def test_the_responses_backend_prints_the_same_console_transcript_as_chat(
    fake_model: FakeModelServer, sqlite_template: Path, tmp_path: Path
) -> None:
    chat = await console_transcript("chat", fake_model, sqlite_template, tmp_path)
    chat_requests = len(fake_model.chat_requests)
    responses = await console_transcript("responses", fake_model, sqlite_template, tmp_path)

    assert responses == chat
    assert len(fake_model.responses_requests) == chat_requests
    # What the person read, once for both:
    assert "Paris is the capital of France." in chat
    assert "You said: Repeat after me: hello" in chat
    assert "The first half of\n\n_(The answer was cut off midway.)_" in chat
    assert (
        "A very long answer that\n\n_(The answer was cut off: it reached the answer length limit.)_"
        in chat
    )
    assert "The model endpoint had an internal error (HTTP 500); please try again." in chat
    assert "After the wait." in chat and "After the error." in chat
    assert "The model returned no text; please rephrase or try again." in chat


async def test_each_turn_sends_the_whole_history_and_nothing_is_stored_at_the_provider(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = settings_for(fake_model.base_url, model__api="responses")
    client = open_model_client(settings.model)
    assert isinstance(client, OpenAIResponsesClient)
    try:
        chat = Chat(ConversationCore(settings=settings, store=sqlite_store, model=client))
        await chat.say("first question")
        await chat.say("second question")
    finally:
        await client.aclose()

    first, second = (r.body for r in fake_model.responses_requests)
    assert first["store"] is False and second["store"] is False
    assert "previous_response_id" not in second
    assert second["stream"] is True
    assert second["max_output_tokens"] == settings.model.max_answer_tokens
    assert [(m["role"], m["content"]) for m in second["input"][1:]] == [
        ("user", "first question"),
        ("assistant", "You said: first question"),
        ("user", "second question"),
    ]
    assert second["input"][0]["role"] == "system"
    assert fake_model.chat_requests == []


@pytest.mark.parametrize(
    ("behaviour", "sentence"),
    [
        (ErrorEvent("server_error", "boom"), "had an internal error (HTTP 500)"),
        (ErrorEvent("ERR_SOMETHING", "Something went wrong"), "reported an error (ERR_SOMETHING)"),
        (ErrorEvent("rate_limit_exceeded", "slow down"), "rate-limiting me"),
        (Failed("invalid_prompt", "Your prompt was flagged."), "refused the request (HTTP 400)"),
        (Incomplete("", reason="max_output_tokens"), "stopped before writing any text"),
        (
            Incomplete("Some of it", reason="content_filter"),
            "Some of it\n\n_(The answer was cut off: stopped by the endpoint's content filter.)_",
        ),
    ],
)
async def test_error_events_and_incomplete_responses_become_one_sentence(
    fake_model: FakeModelServer, sqlite_store: SqlStore, behaviour: Behaviour, sentence: str
) -> None:
    settings = settings_for(fake_model.base_url, model__api="responses")
    client = open_model_client(settings.model)
    fake_model.script(behaviour)
    try:
        chat = Chat(ConversationCore(settings=settings, store=sqlite_store, model=client))
        reply = await chat.say("question")
    finally:
        await client.aclose()
    assert sentence in reply.final
    assert "boom" not in reply.final and "flagged" not in reply.final
    assert len(fake_model.responses_requests) == 1  # not retried


@pytest.mark.parametrize("client_class", [OpenAIChatClient, OpenAIResponsesClient])
async def test_usage_with_cached_and_reasoning_tokens_from_both_apis(
    fake_model: FakeModelServer, client_class: type[OpenAIChatClient]
) -> None:
    fake_model.cached_tokens = 7
    fake_model.reasoning_tokens = 3
    client = client_class(settings_for(fake_model.base_url).model)
    try:
        stream = client.stream(ASK)
        text = "".join([delta async for delta in stream])
        whole = await client.complete(ASK)
    finally:
        await client.aclose()
    assert text == whole.text == "You said: What is the capital of France?"
    assert stream.usage is not None and whole.usage is not None
    assert stream.usage.cached_tokens == 7 and stream.usage.reasoning_tokens == 3
    # The fake counts a word a token: "You said: What is the capital of France?"
    assert stream.usage.prompt_tokens > 0 and stream.usage.completion_tokens == 8
    assert whole.usage.cached_tokens == 7
    assert Usage().cached_tokens == Usage().reasoning_tokens == 0


async def test_a_length_limited_answer_raises_after_its_text_on_both_apis(
    fake_model: FakeModelServer,
) -> None:
    for client_class in (OpenAIChatClient, OpenAIResponsesClient):
        fake_model.script(Incomplete("Half", reason="max_output_tokens"))
        client = client_class(settings_for(fake_model.base_url).model)
        received: list[str] = []
        try:
            with pytest.raises(ModelAnswerIncomplete):
                async for delta in client.stream(ASK):
                    received.append(delta)
        finally:
            await client.aclose()
        assert "".join(received) == "Half"


def test_events_are_read_whatever_the_order_of_their_keys() -> None:
    from botservice.model.responses import ResponsesStream

    client = OpenAIResponsesClient(settings_for("http://127.0.0.1:9/v1").model)
    stream = ResponsesStream(client, ASK)
    # OpenAI's layout: `type` first; the text's repeats are passed over unparsed.
    assert (
        stream._read_chunk(b'{"type":"response.output_text.delta","delta":"Hi"}', shown=False)
        == "Hi"
    )
    assert (
        stream._read_chunk(b'{"type":"response.output_text.done","text":"Hi"}', shown=False) == ""
    )
    # Another server's layout.
    assert (
        stream._read_chunk(b'{"delta":" there","type":"response.output_text.delta"}', shown=True)
        == " there"
    )
    completed = (
        b'{"response":{"usage":{"input_tokens":3,"output_tokens":2}},"type":"response.completed"}'
    )
    assert stream._read_chunk(completed, shown=True) == ""
    assert stream.finished and stream.usage == Usage(prompt_tokens=3, completion_tokens=2)

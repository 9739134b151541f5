"""The model client reading tool calls from a stream: every style the fake model
server sends (real HTTP, real SSE), and the accumulator on payloads as servers
were seen to write them."""

from __future__ import annotations

import pytest

from botservice.core.errors import ModelEmptyAnswer
from botservice.core.ports import ChatRequest
from botservice.core.tools import BUILTIN, ToolCall, ToolSpec
from botservice.model.client import OpenAIChatClient
from botservice.model.tool_calls import ToolCallAccumulator
from tests.chat_kit import settings_for
from tests.fakes.model_server import CallTool, FakeModelServer, ToolCalls

LOOKUP = ToolSpec(
    name="lookup",
    description="Look something up.",
    parameters={"type": "object", "properties": {"query": {"type": "string"}}},
    source=BUILTIN,
    read_only=True,
    trusted=True,
)


async def read(fake_model: FakeModelServer, round_: ToolCalls) -> tuple[str, list[ToolCall]]:
    client = OpenAIChatClient(settings_for(fake_model.base_url).model)
    fake_model.script(round_)
    request = ChatRequest(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "go"}], tools=[LOOKUP]
    )
    try:
        stream = client.stream(request)
        text = "".join([delta async for delta in stream])
    finally:
        await client.aclose()
    assert stream.finished
    return text, list(stream.tool_calls)


@pytest.mark.parametrize("style", ["openai", "whole", "ollama"])
async def test_parallel_calls_are_read_whole_in_every_style(
    fake_model: FakeModelServer, style: str
) -> None:
    text, calls = await read(
        fake_model,
        ToolCalls(
            CallTool("lookup", {"query": "first one"}, id="a"),
            CallTool("lookup", {"query": "second"}, id="b"),
            style=style,
        ),
    )
    assert text == ""
    assert calls == [
        ToolCall("a", "lookup", '{"query": "first one"}'),
        ToolCall("b", "lookup", '{"query": "second"}'),
    ]
    body = fake_model.chat_requests[0].body
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look something up.",
                "parameters": dict(LOOKUP.parameters),
            },
        }
    ]


async def test_words_before_the_calls_stream_as_text(fake_model: FakeModelServer) -> None:
    text, calls = await read(
        fake_model, ToolCalls(CallTool("lookup", {"query": "x"}, id="a"), text="Checking now.")
    )
    assert text == "Checking now."
    assert [call.id for call in calls] == ["a"]


async def test_stop_without_done_marker_still_carries_the_calls(
    fake_model: FakeModelServer,
) -> None:
    _, calls = await read(
        fake_model,
        ToolCalls(
            CallTool("lookup", '{"query": "x"}', id="a"), finish_reason="stop", done_marker=False
        ),
    )
    assert calls == [ToolCall("a", "lookup", '{"query": "x"}')]


async def test_malformed_arguments_are_passed_on_as_they_came(
    fake_model: FakeModelServer,
) -> None:
    _, calls = await read(fake_model, ToolCalls(CallTool("lookup", '{"query": ', id="a")))
    assert calls == [ToolCall("a", "lookup", '{"query": ')]


async def test_a_stream_with_neither_text_nor_calls_is_still_empty(
    fake_model: FakeModelServer,
) -> None:
    with pytest.raises(ModelEmptyAnswer):
        await read(fake_model, ToolCalls())


def test_whole_calls_without_ids_at_index_zero_are_told_apart_by_name_and_arguments() -> None:
    calls = ToolCallAccumulator()
    # Ollama 0.4-style: no ids, every call whole at index 0, arguments as an object.
    calls.feed([{"index": 0, "function": {"name": "lookup", "arguments": {"query": "a"}}}])
    calls.feed([{"index": 0, "function": {"name": "current_time", "arguments": {}}}])
    assert calls.calls() == [
        ToolCall("call_0", "lookup", '{"query":"a"}'),
        ToolCall("call_1", "current_time", "{}"),
    ]


def test_repeated_ids_are_made_unique_so_each_result_names_one_call() -> None:
    calls = ToolCallAccumulator()
    calls.feed([{"index": 0, "id": "call_1", "function": {"name": "a", "arguments": "{}"}}])
    calls.feed([{"index": 1, "id": "call_1", "function": {"name": "b", "arguments": "{}"}}])
    assert [call.id for call in calls.calls()] == ["call_1", "call_1_1"]


def test_fragments_without_an_index_continue_the_last_call() -> None:
    calls = ToolCallAccumulator()
    calls.feed([{"id": "x", "function": {"name": "lookup", "arguments": '{"qu'}}])
    calls.feed([{"function": {"arguments": 'ery": 1}'}}])
    assert calls.calls() == [ToolCall("x", "lookup", '{"query": 1}')]

"""A reasoning model's thinking within a turn, on the Responses backend: stateless
(`store: false`), the bot asks for the encrypted reasoning items, keeps the ones a
tool round comes with, and sends them back before that round's calls on the next
request of the same turn, never in a later turn. Against the fake server's
`/v1/responses`, which streams a reasoning item ahead of its calls as OpenAI's
reasoning models do."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botservice.core.conversation import ConversationCore
from botservice.core.tools import BUILTIN, ToolContext, ToolOutput, ToolSpec
from botservice.model.responses import OpenAIResponsesClient
from botservice.storage.repository import SqlStore
from tests.chat_kit import Chat, settings_for
from tests.fakes.model_server import CallTool, FakeModelServer, Reply, ToolCalls


class Lookups:
    """A read-only tool from a trusted source (runs without asking), recording its calls."""

    name = BUILTIN
    trusted = True

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def tools(self) -> list[ToolSpec]:
        return [
            ToolSpec(
                name="lookup",
                description="Look something up.",
                parameters={"type": "object", "properties": {"query": {"type": "string"}}},
                source=BUILTIN,
                read_only=True,
                destructive=False,
                trusted=True,
            )
        ]

    async def call(
        self, name: str, arguments: Mapping[str, Any], context: ToolContext
    ) -> ToolOutput:
        self.calls.append(dict(arguments))
        return ToolOutput(f"found: {arguments.get('query')}")

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def typed_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The input items that are not plain messages, as the endpoint received them."""
    return [item for item in body["input"] if item.get("type")]


async def test_reasoning_items_go_back_with_their_calls_within_the_turn_only(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = settings_for(fake_model.base_url, model__api="responses")
    client = OpenAIResponsesClient(settings.model)
    lookups = Lookups()
    core = ConversationCore(
        settings=settings, store=sqlite_store, model=client, tool_sources=[lookups]
    )
    chat = Chat(core)
    fake_model.script(
        ToolCalls(CallTool("lookup", {"query": "a"}, id="call_a"), reasoning="ENC-ONE"),
        ToolCalls(CallTool("lookup", {"query": "b"}, id="call_b"), reasoning="ENC-TWO"),
        Reply("A and B found."),
        Reply("Nothing to look up."),
    )
    try:
        first_answer = await chat.say("Look up a, then b.")
        second_answer = await chat.say("Thanks.")
    finally:
        await client.aclose()

    assert first_answer.final.startswith("A and B found.")
    assert second_answer.final.startswith("Nothing to look up.")
    assert lookups.calls == [{"query": "a"}, {"query": "b"}]
    asked_a, asked_b, answered, next_turn = (r.body for r in fake_model.responses_requests)
    for body in (asked_a, asked_b, answered, next_turn):
        assert body["store"] is False
        assert body["include"] == ["reasoning.encrypted_content"]

    # The second request: round one's reasoning, then its call and result.
    assert [item["type"] for item in typed_items(asked_b)] == [
        "reasoning",
        "function_call",
        "function_call_output",
    ]
    reasoning_a = typed_items(asked_b)[0]
    assert reasoning_a["encrypted_content"] == "ENC-ONE"
    assert reasoning_a["summary"] == [{"type": "summary_text", "text": "Thinking it over."}]
    assert reasoning_a["id"].startswith("rs_")

    # The last request of the turn: each round's reasoning before its own calls, in order.
    assert [
        (i["type"], i.get("encrypted_content") or i.get("call_id")) for i in typed_items(answered)
    ] == [
        ("reasoning", "ENC-ONE"),
        ("function_call", "call_a"),
        ("function_call_output", "call_a"),
        ("reasoning", "ENC-TWO"),
        ("function_call", "call_b"),
        ("function_call_output", "call_b"),
    ]

    # The next turn sends the stored rounds again, but no reasoning: it is not stored.
    assert [i["type"] for i in typed_items(next_turn)] == [
        "function_call",
        "function_call_output",
        "function_call",
        "function_call_output",
    ]


async def test_a_reasoning_item_without_encrypted_content_is_not_sent_back(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    """With nothing stored at the provider, a reasoning item's id alone points nowhere:
    an item that came without its encrypted content is left out of the next request."""
    settings = settings_for(fake_model.base_url, model__api="responses")
    client = OpenAIResponsesClient(settings.model)
    core = ConversationCore(
        settings=settings, store=sqlite_store, model=client, tool_sources=[Lookups()]
    )
    fake_model.script(
        ToolCalls(CallTool("lookup", {"query": "a"}, id="call_a"), reasoning="ENC-ONE"),
        Reply("Found a."),
    )
    # A server that ignores `include` (some local servers): the item comes without it.
    fake_model.sends_encrypted_reasoning = False
    try:
        answer = await Chat(core).say("Look up a.")
    finally:
        await client.aclose()

    assert answer.final.startswith("Found a.")
    _, answered = (r.body for r in fake_model.responses_requests)
    assert [i["type"] for i in typed_items(answered)] == ["function_call", "function_call_output"]

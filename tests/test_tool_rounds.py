"""Tool rounds in the conversation core: the fake model server asks for tool calls in
each style real servers stream them, a tool source defined here (a stand-in for a
remote tool server, at the edge) answers, and a real store keeps the rounds.

Each test reads as a conversation: what the person asked, what the model asked for,
what the model was sent next (assistant `tool_calls`, `role: tool` results with
matching ids), and what the person saw."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio

from botservice.core.conversation import ConversationCore
from botservice.core.ports import Claim, SinkAbilities, StoredToolCall
from botservice.core.settings import Settings
from botservice.core.tools import (
    BUILTIN,
    ConfirmationRequest,
    ToolCall,
    ToolContext,
    ToolOutput,
    ToolPolicy,
    ToolProgress,
    ToolSpec,
)
from botservice.model.client import OpenAIChatClient
from botservice.model.responses import OpenAIResponsesClient
from botservice.storage.repository import SqlStore
from tests.chat_kit import Chat, RecordingSink, settings_for
from tests.db import StoreFactory
from tests.fakes.model_server import CallTool, FakeModelServer, Refuse, Reply, ToolCalls

Handler = Callable[[Mapping[str, Any]], Awaitable[ToolOutput]]


async def _now(arguments: Mapping[str, Any]) -> ToolOutput:
    return ToolOutput(f"12:00 in {arguments.get('timezone', 'UTC')}")


async def _lookup(arguments: Mapping[str, Any]) -> ToolOutput:
    return ToolOutput(f"found: {arguments.get('query', '')}")


async def _deploy(arguments: Mapping[str, Any]) -> ToolOutput:
    return ToolOutput(f"deployed to {arguments.get('env', '?')}")


@dataclass
class RemoteTools:
    """A tool source as a remote server would be: tools it lists, and every call it
    receives, recorded. Not the project's code: it stands where an MCP server would."""

    name: str
    trusted: bool
    specs: list[ToolSpec]
    handlers: dict[str, Handler]
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def tools(self) -> list[ToolSpec]:
        return self.specs

    async def call(
        self, name: str, arguments: Mapping[str, Any], context: ToolContext
    ) -> ToolOutput:
        self.calls.append((name, dict(arguments)))
        return await self.handlers[name](arguments)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def builtin_tools() -> RemoteTools:
    read_only = {"read_only": True, "destructive": False, "trusted": True, "source": BUILTIN}
    return RemoteTools(
        name=BUILTIN,
        trusted=True,
        specs=[
            ToolSpec(
                name="current_time",
                description="The time now.",
                parameters={"type": "object", "properties": {"timezone": {"type": "string"}}},
                status="Looking at the clock…",
                **read_only,  # type: ignore[arg-type]
            ),
            ToolSpec(
                name="lookup",
                description="Look something up.",
                parameters={"type": "object", "properties": {"query": {"type": "string"}}},
                **read_only,  # type: ignore[arg-type]
            ),
        ],
        handlers={"current_time": _now, "lookup": _lookup},
    )


def ops_tools(handlers: dict[str, Handler] | None = None) -> RemoteTools:
    """An untrusted server with an action (asks first) and a read-only tool."""
    return RemoteTools(
        name="ops",
        trusted=False,
        specs=[
            ToolSpec(
                name="ops__deploy",
                description="Deploy the service.",
                parameters={"type": "object", "properties": {"env": {"type": "string"}}},
                source="ops",
            ),
            ToolSpec(
                name="ops__status",
                description="Service status.",
                parameters={"type": "object"},
                source="ops",
                read_only=True,
                destructive=False,
            ),
        ],
        handlers=handlers or {"ops__deploy": _deploy, "ops__status": _lookup},
    )


@dataclass
class ConfirmingSink(RecordingSink):
    """A sink that can ask (as the Slack and Discord buttons, the console's y/N do):
    it records each request, then `answer` decides as the person would click."""

    requests: list[ConfirmationRequest] = field(default_factory=list)
    answer: Callable[[ConfirmationRequest], Awaitable[None]] | None = None

    @property
    def abilities(self) -> SinkAbilities:
        return SinkAbilities(status=self.status, confirm=self.confirm)

    async def confirm(self, request: ConfirmationRequest) -> None:
        self.requests.append(request)
        if self.answer is not None:
            # The click arrives later, from the platform: not inside this call.
            asyncio.get_running_loop().create_task(self.answer(request))


@pytest.fixture
def settings(fake_model: FakeModelServer) -> Settings:
    return settings_for(fake_model.base_url)


@pytest_asyncio.fixture
async def model(settings: Settings) -> AsyncIterator[OpenAIChatClient]:
    client = OpenAIChatClient(settings.model)
    yield client
    await client.aclose()


@pytest.fixture
def builtins() -> RemoteTools:
    return builtin_tools()


@pytest.fixture
def ops() -> RemoteTools:
    return ops_tools()


@pytest.fixture
def core(
    settings: Settings,
    sqlite_store: SqlStore,
    model: OpenAIChatClient,
    builtins: RemoteTools,
    ops: RemoteTools,
) -> ConversationCore:
    return ConversationCore(
        settings=settings, store=sqlite_store, model=model, tool_sources=[builtins, ops]
    )


@pytest.fixture
def chat(core: ConversationCore) -> Chat:
    return Chat(core)


async def enable(store: SqlStore, pattern: str, channel: str = "C1") -> None:
    policy = ToolPolicy.parse(
        (await store.channel_settings("test", "W1", channel)).tools
    ).with_rule(pattern, enabled=True)
    await store.change_setting(
        "test", "W1", channel, field="tools", value=policy.serialize(), changed_by="ADMIN"
    )


def tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body["messages"] if m["role"] == "tool"]


def assistant_calls(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [call for m in body["messages"] if m.get("tool_calls") for call in m["tool_calls"]]


# --- the loop ----------------------------------------------------------------------


async def test_openai_style_fragments_run_and_their_results_go_back_by_call_id(
    chat: Chat, fake_model: FakeModelServer, builtins: RemoteTools
) -> None:
    fake_model.script(
        ToolCalls(
            CallTool("current_time", {"timezone": "Europe/Paris"}, id="call_time"),
            CallTool("lookup", {"query": "release date"}, id="call_lookup"),
            text="Let me check. ",
        ),
        Reply("It is noon, and the release is Friday."),
    )

    sink = await chat.say("What time is it, and when is the release?")

    first, second = (r.body for r in fake_model.chat_requests)
    assert [t["function"]["name"] for t in first["tools"]] == ["current_time", "lookup"]
    assert first["tool_choice"] == "auto" and first["parallel_tool_calls"] is True
    assert builtins.calls == [
        ("current_time", {"timezone": "Europe/Paris"}),
        ("lookup", {"query": "release date"}),
    ]
    calls = assistant_calls(second)
    assert [(c["id"], c["function"]["name"]) for c in calls] == [
        ("call_time", "current_time"),
        ("call_lookup", "lookup"),
    ]
    assert json.loads(calls[0]["function"]["arguments"]) == {"timezone": "Europe/Paris"}
    results = tool_messages(second)
    assert [(m["tool_call_id"], m["content"]) for m in results] == [
        ("call_time", "12:00 in Europe/Paris"),
        ("call_lookup", "found: release date"),
    ]
    # The round's own words go back with its calls, not to the person.
    round_message = next(m for m in second["messages"] if m.get("tool_calls"))
    assert round_message["content"] == "Let me check. "
    assert sink.final == (
        "It is noon, and the release is Friday.\n\n_Tools used: current_time, lookup_"
    )
    assert "Looking at the clock…\nCalling lookup…" in sink.statuses
    assert "12:00 in Europe/Paris" not in sink.final  # tool output never shown raw


async def test_ollama_style_whole_calls_all_at_index_zero_are_separate_calls(
    chat: Chat, fake_model: FakeModelServer, builtins: RemoteTools
) -> None:
    fake_model.script(
        ToolCalls(
            CallTool("lookup", {"query": "a"}, id="call_a"),
            CallTool("lookup", {"query": "b"}, id="call_b"),
            CallTool("current_time", {}, id="call_c"),
            style="ollama",
            finish_reason="stop",  # Ollama says "stop" with calls
        ),
        Reply("Done."),
    )

    sink = await chat.say("Look up a and b, and the time.")

    assert builtins.calls == [
        ("lookup", {"query": "a"}),
        ("lookup", {"query": "b"}),
        ("current_time", {}),
    ]
    results = tool_messages(fake_model.chat_requests[1].body)
    assert [m["tool_call_id"] for m in results] == ["call_a", "call_b", "call_c"]
    assert sink.final.startswith("Done.")


async def test_whole_calls_with_stop_and_no_done_marker_are_still_a_tool_round(
    chat: Chat, fake_model: FakeModelServer, builtins: RemoteTools
) -> None:
    fake_model.script(
        ToolCalls(
            CallTool("lookup", {"query": "x"}, id="only"),
            style="whole",
            finish_reason="stop",
            done_marker=False,
        ),
        Reply("Found x."),
    )

    sink = await chat.say("Find x.")

    assert builtins.calls == [("lookup", {"query": "x"})]
    assert [m["tool_call_id"] for m in tool_messages(fake_model.chat_requests[1].body)] == ["only"]
    assert sink.final.startswith("Found x.")


async def test_malformed_arguments_go_back_to_the_model_as_an_error(
    chat: Chat, fake_model: FakeModelServer, builtins: RemoteTools
) -> None:
    fake_model.script(
        ToolCalls(CallTool("lookup", '{"query": "unfinished', id="bad")),
        Reply("Sorry, let me answer without it."),
    )

    sink = await chat.say("Look something up.")

    assert builtins.calls == []
    second = fake_model.chat_requests[1].body
    [result] = tool_messages(second)
    assert result["tool_call_id"] == "bad"
    assert "not a JSON object" in result["content"]
    # Sent back as an empty object, so no server refuses the history.
    assert assistant_calls(second)[0]["function"]["arguments"] == "{}"
    assert sink.final == "Sorry, let me answer without it."


async def test_a_tool_not_offered_here_never_reaches_its_source(
    chat: Chat, fake_model: FakeModelServer, ops: RemoteTools
) -> None:
    fake_model.script(
        ToolCalls(
            CallTool("ops__deploy", {"env": "prod"}, id="sneaky"),  # listed, not enabled here
            CallTool("rm_rf", {}, id="invented"),  # listed nowhere
        ),
        Reply("I cannot do that here."),
    )

    sink = await chat.say("Deploy to prod.")

    first, second = (r.body for r in fake_model.chat_requests)
    assert "ops__deploy" not in [t["function"]["name"] for t in first["tools"]]
    assert ops.calls == []
    results = {m["tool_call_id"]: m["content"] for m in tool_messages(second)}
    assert results["sneaky"].startswith("Refused: there is no tool named 'ops__deploy'")
    assert results["invented"].startswith("Refused: there is no tool named 'rm_rf'")
    assert sink.final == "I cannot do that here."


async def test_a_tool_disabled_while_the_turn_runs_is_refused_at_call_time(
    sqlite_store: SqlStore, fake_model: FakeModelServer, settings: Settings
) -> None:
    """The allow-list is checked when the request is built and again at call time."""
    client = OpenAIChatClient(settings.model)
    store = sqlite_store

    async def disable_then_answer(arguments: Mapping[str, Any]) -> ToolOutput:
        policy = ToolPolicy().with_rule("lookup", enabled=False)
        await store.change_setting(
            "test", "W1", "C1", field="tools", value=policy.serialize(), changed_by="ADMIN"
        )
        return ToolOutput("12:00")

    tools = builtin_tools()
    tools.handlers["current_time"] = disable_then_answer
    core = ConversationCore(settings=settings, store=store, model=client, tool_sources=[tools])
    fake_model.script(
        ToolCalls(CallTool("current_time", id="t1")),
        ToolCalls(CallTool("lookup", {"query": "q"}, id="l1")),
        Reply("Done."),
    )
    try:
        await Chat(core).say("Time, then look up q.")
    finally:
        await client.aclose()

    assert [name for name, _ in tools.calls] == ["current_time"]
    [result] = tool_messages(fake_model.chat_requests[2].body)[1:]
    assert result["content"].startswith("Refused")


async def test_an_endless_caller_is_stopped_at_the_round_limit_and_asked_for_text(
    chat: Chat, fake_model: FakeModelServer, builtins: RemoteTools
) -> None:
    fake_model.endless = ToolCalls(CallTool("lookup", {"query": "more"}))

    sink = await chat.say("Keep looking.")

    requests = [r.body for r in fake_model.chat_requests]
    assert len(builtins.calls) == 5  # max_rounds
    assert len(requests) == 6
    last = requests[-1]
    assert last["tool_choice"] == "none" and "parallel_tool_calls" not in last
    assert last["messages"][-1]["role"] == "system"
    assert "limit on tool use" in last["messages"][-1]["content"]
    assert sink.final.startswith("You said: Keep looking.")
    assert sink.final.endswith("_Tools used: lookup_")


async def test_a_slow_tool_is_stopped_at_the_call_timeout(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = settings_for(fake_model.base_url, tools__call_timeout_seconds="0.2")
    client = OpenAIChatClient(settings.model)

    async def slow(arguments: Mapping[str, Any]) -> ToolOutput:
        await asyncio.sleep(30)
        return ToolOutput("too late")

    tools = builtin_tools()
    tools.handlers["lookup"] = slow
    core = ConversationCore(
        settings=settings, store=sqlite_store, model=client, tool_sources=[tools]
    )
    fake_model.script(ToolCalls(CallTool("lookup", {"query": "q"}, id="s")), Reply("It timed out."))
    try:
        sink = await asyncio.wait_for(Chat(core).say("Look up q."), 10)
    finally:
        await client.aclose()

    [result] = tool_messages(fake_model.chat_requests[1].body)
    assert result["content"] == "The tool did not answer within 0.2 s; it was stopped."
    assert sink.final.startswith("It timed out.")


async def test_a_huge_result_keeps_head_and_tail_with_a_marker(
    fake_model: FakeModelServer, sqlite_store: SqlStore, settings: Settings
) -> None:
    client = OpenAIChatClient(settings.model)

    async def megabyte(arguments: Mapping[str, Any]) -> ToolOutput:
        return ToolOutput("HEAD" + "x" * 1_000_000 + "TAIL")

    tools = builtin_tools()
    tools.handlers["lookup"] = megabyte
    core = ConversationCore(
        settings=settings, store=sqlite_store, model=client, tool_sources=[tools]
    )
    fake_model.script(ToolCalls(CallTool("lookup", {"query": "all"}, id="big")), Reply("Long."))
    try:
        await Chat(core).say("Everything, please.")
    finally:
        await client.aclose()

    [result] = tool_messages(fake_model.chat_requests[1].body)
    content = result["content"]
    assert len(content.encode()) <= 16 * 1024
    assert content.startswith("HEAD") and content.endswith("TAIL")
    assert "bytes cut here" in content and "of 1,000,008 bytes" in content


async def test_a_follow_up_sees_the_earlier_tool_round_in_order(
    chat: Chat, fake_model: FakeModelServer
) -> None:
    fake_model.script(
        ToolCalls(CallTool("lookup", {"query": "q"}, id="first")),
        Reply("Found it."),
        Reply("As I said."),
    )
    await chat.say("Look up q.")

    await chat.say("What did you find?")

    messages = fake_model.chat_requests[-1].body["messages"]
    shape = [(m["role"], m.get("tool_call_id") or bool(m.get("tool_calls"))) for m in messages]
    assert shape == [
        ("system", False),
        ("user", False),
        ("assistant", True),
        ("tool", "first"),
        ("assistant", False),
        ("user", False),
    ]
    assert messages[3]["content"] == "found: q"


async def test_without_tools_the_request_is_as_before(
    fake_model: FakeModelServer, sqlite_store: SqlStore, settings: Settings
) -> None:
    client = OpenAIChatClient(settings.model)
    core = ConversationCore(settings=settings, store=sqlite_store, model=client)
    try:
        await Chat(core).say("Hello.")
    finally:
        await client.aclose()
    body = fake_model.chat_requests[0].body
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(body)


async def test_the_responses_api_carries_the_same_round(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = settings_for(fake_model.base_url, model__api="responses")
    client = OpenAIResponsesClient(settings.model)
    tools = builtin_tools()
    core = ConversationCore(
        settings=settings, store=sqlite_store, model=client, tool_sources=[tools]
    )
    fake_model.script(ToolCalls(CallTool("lookup", {"query": "r"}, id="call_r")), Reply("Found r."))
    try:
        sink = await Chat(core).say("Look up r.")
    finally:
        await client.aclose()

    first, second = (r.body for r in fake_model.responses_requests)
    assert first["tools"][0] == {
        "type": "function",
        "name": "current_time",
        "description": "The time now.",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}},
    }
    assert tools.calls == [("lookup", {"query": "r"})]
    items = [i for i in second["input"] if i.get("type")]
    assert items == [
        {
            "type": "function_call",
            "call_id": "call_r",
            "name": "lookup",
            "arguments": '{"query": "r"}',
        },
        {"type": "function_call_output", "call_id": "call_r", "output": "found: r"},
    ]
    assert sink.final.startswith("Found r.")


# --- confirmation --------------------------------------------------------------------


async def test_an_action_runs_only_after_the_asker_approves(
    core: ConversationCore,
    sqlite_store: SqlStore,
    fake_model: FakeModelServer,
    ops: RemoteTools,
) -> None:
    await enable(sqlite_store, "ops__*")
    seen_before_click: list[int] = []

    async def approve(request: ConfirmationRequest) -> None:
        seen_before_click.append(len(ops.calls))
        assert (
            await core.decide_tool_call(
                request.confirmation_id, platform="test", user_id="U2", approve=True
            )
            == "not_asker"
        )
        assert (
            await core.decide_tool_call(
                request.confirmation_id, platform="test", user_id="U1", approve=True
            )
            == "approved"
        )
        assert (
            await core.decide_tool_call(
                request.confirmation_id, platform="test", user_id="U1", approve=False
            )
            == "already_decided"
        )

    fake_model.script(
        ToolCalls(CallTool("ops__deploy", {"env": "prod"}, id="d1")), Reply("Deployed.")
    )
    sink = ConfirmingSink(answer=approve)
    await core.handle(Chat(core).message("Deploy to prod.", name="Ada"), sink)

    [request] = sink.requests
    assert (request.tool, request.arguments, request.asker_id, request.asker_name) == (
        "ops__deploy",
        '{"env": "prod"}',
        "U1",
        "Ada",
    )
    assert request.timeout_seconds == 120
    assert seen_before_click == [0]
    assert ops.calls == [("ops__deploy", {"env": "prod"})]
    assert sink.final == "Deployed.\n\n_Tools used: ops__deploy_"
    audit = await sqlite_store.setting_changes("test", "W1", "C1")
    assert [(a.field, a.changed_by) for a in audit][-1] == ("tool_call", "U1")
    assert audit[-1].new is not None and audit[-1].new.startswith("approved ops__deploy sha256:")


async def test_a_denied_action_is_not_run_and_the_model_is_told(
    core: ConversationCore,
    sqlite_store: SqlStore,
    fake_model: FakeModelServer,
    ops: RemoteTools,
) -> None:
    await enable(sqlite_store, "ops__deploy")

    async def deny(request: ConfirmationRequest) -> None:
        await core.decide_tool_call(
            request.confirmation_id, platform="test", user_id="U1", approve=False
        )

    fake_model.script(ToolCalls(CallTool("ops__deploy", {"env": "prod"}, id="d1")), Reply("OK."))
    sink = ConfirmingSink(answer=deny)
    await core.handle(Chat(core).message("Deploy."), sink)

    assert ops.calls == []
    [result] = tool_messages(fake_model.chat_requests[1].body)
    assert result["content"] == "The user declined this call; it was not run."
    assert sink.final == "OK."


async def test_no_answer_within_the_timeout_is_a_denial(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = settings_for(fake_model.base_url, tools__confirm_timeout_seconds="0.3")
    client = OpenAIChatClient(settings.model)
    ops = ops_tools()
    core = ConversationCore(settings=settings, store=sqlite_store, model=client, tool_sources=[ops])
    await enable(sqlite_store, "ops__*")
    fake_model.script(ToolCalls(CallTool("ops__deploy", {"env": "prod"}, id="d1")), Reply("OK."))
    sink = ConfirmingSink()  # nobody clicks
    try:
        await asyncio.wait_for(core.handle(Chat(core).message("Deploy."), sink), 10)
    finally:
        await client.aclose()

    assert ops.calls == []
    [result] = tool_messages(fake_model.chat_requests[1].body)
    assert result["content"] == (
        "The user declined this call (no answer within 0.3 s); it was not run."
    )
    [request] = sink.requests
    late = await core.decide_tool_call(
        request.confirmation_id, platform="test", user_id="U1", approve=True
    )
    assert late == "already_decided"


async def test_a_sink_that_cannot_ask_declines_with_a_clear_sentence(
    chat: Chat, sqlite_store: SqlStore, fake_model: FakeModelServer, ops: RemoteTools
) -> None:
    await enable(sqlite_store, "ops__*")
    fake_model.script(
        ToolCalls(
            CallTool("ops__deploy", {"env": "prod"}, id="d1"),
            CallTool("ops__status", {}, id="s1"),  # read-only, but its server is untrusted
        ),
        Reply("I could not."),
    )

    sink = await chat.say("Deploy and check.")  # a RecordingSink: it cannot ask

    assert ops.calls == []
    results = tool_messages(fake_model.chat_requests[1].body)
    assert all("approval cannot be asked for here" in m["content"] for m in results)
    assert sink.final == "I could not."


# --- crashes and restarts ----------------------------------------------------------


async def crashed_turn(store: SqlStore, call: ToolCall) -> tuple[int, int]:
    """A turn whose process died in round 0 with `call` requested: the turn id and
    its question's message id."""
    chat = Chat()
    message = chat.message("Deploy to prod.", name="Ada")
    accepted = await store.accept(message, text=message.text, tokens=4)
    assert accepted is not None
    stopped = datetime.now(UTC) - timedelta(seconds=1)
    await store.claim_next_turn(accepted.conversation_id, holder="dead", alive_until=stopped)
    requested = StoredToolCall(
        user_message_id=accepted.user_message_id,
        round=0,
        position=0,
        call_id=call.id,
        name=call.name,
        arguments=call.arguments,
        status="requested",
    )
    await store.store_tool_round(accepted.turn_id, [requested])
    return accepted.turn_id, accepted.user_message_id


async def test_a_restart_between_the_click_and_the_call_runs_it_once(
    store: SqlStore, fake_model: FakeModelServer
) -> None:
    settings = settings_for(fake_model.base_url)
    client = OpenAIChatClient(settings.model)
    ops = ops_tools()
    core = ConversationCore(settings=settings, store=store, model=client, tool_sources=[ops])
    await enable(store, "ops__*")
    turn_id, _ = await crashed_turn(store, ToolCall("d1", "ops__deploy", '{"env": "prod"}'))
    # The buttons were shown before the crash; the click reaches the new process.
    confirmation, created = await store.open_confirmation(
        turn_id,
        round=0,
        position=0,
        tool="ops__deploy",
        arguments_hash="h",
        platform="test",
        asker_id="U1",
        expires_at=datetime.now(UTC) + timedelta(minutes=2),
    )
    assert created
    assert (
        await core.decide_tool_call(confirmation.id, platform="test", user_id="U1", approve=True)
        == "approved"
    )
    fake_model.script(Reply("Deployed."))
    sink = ConfirmingSink()
    try:
        assert await core.resume_pending(lambda turn: sink, at_start_up=False) == 1
        await core.drain()
        # Another restart finds nothing left to do.
        assert await core.resume_pending(lambda turn: sink, at_start_up=False) == 0
        await core.drain()
    finally:
        await client.aclose()

    assert ops.calls == [("ops__deploy", {"env": "prod"})]
    assert sink.requests == []  # no second prompt
    assert sink.final == "Deployed.\n\n_Tools used: ops__deploy_"
    [result] = tool_messages(fake_model.chat_requests[0].body)
    assert (result["tool_call_id"], result["content"]) == ("d1", "deployed to prod")


async def test_a_pending_confirmation_survives_a_restart_and_a_later_click_works(
    store: SqlStore, fake_model: FakeModelServer
) -> None:
    settings = settings_for(fake_model.base_url)
    client = OpenAIChatClient(settings.model)
    ops = ops_tools()
    core = ConversationCore(settings=settings, store=store, model=client, tool_sources=[ops])
    await enable(store, "ops__*")
    turn_id, _ = await crashed_turn(store, ToolCall("d1", "ops__deploy", '{"env": "prod"}'))
    confirmation, _ = await store.open_confirmation(
        turn_id,
        round=0,
        position=0,
        tool="ops__deploy",
        arguments_hash="h",
        platform="test",
        asker_id="U1",
        expires_at=datetime.now(UTC) + timedelta(minutes=2),
    )
    fake_model.script(Reply("Deployed after all."))
    sink = ConfirmingSink()
    try:
        await core.resume_pending(lambda turn: sink, at_start_up=False)
        await asyncio.sleep(0.3)  # the resumed turn waits on the same row
        assert ops.calls == [] and sink.requests == []
        decision = await core.decide_tool_call(
            confirmation.id, platform="test", user_id="U1", approve=True
        )
        await asyncio.wait_for(core.drain(), 10)
    finally:
        await client.aclose()

    assert decision == "approved"
    assert ops.calls == [("ops__deploy", {"env": "prod"})]
    assert sink.final.startswith("Deployed after all.")


async def test_a_call_started_before_a_crash_is_never_run_again(
    store: SqlStore, fake_model: FakeModelServer
) -> None:
    settings = settings_for(fake_model.base_url)
    client = OpenAIChatClient(settings.model)
    ops = ops_tools()
    core = ConversationCore(settings=settings, store=store, model=client, tool_sources=[ops])
    await enable(store, "ops__*")
    turn_id, _ = await crashed_turn(store, ToolCall("d1", "ops__deploy", '{"env": "prod"}'))
    await store.start_tool_call(turn_id, round=0, position=0)  # then the process died
    fake_model.script(Reply("I am not sure it worked; please check."))
    sink = ConfirmingSink()
    try:
        await core.resume_pending(lambda turn: sink, at_start_up=False)
        await core.drain()
    finally:
        await client.aclose()

    assert ops.calls == []
    [result] = tool_messages(fake_model.chat_requests[0].body)
    assert result["content"].startswith("The outcome of this call is unknown")
    assert sink.final.startswith("I am not sure it worked")


async def test_forget_me_removes_tool_rounds_and_the_asker_from_confirmations(
    store: SqlStore,
) -> None:
    turn_id, message_id = await crashed_turn(store, ToolCall("d1", "ops__deploy", "{}"))
    confirmation, _ = await store.open_confirmation(
        turn_id,
        round=0,
        position=0,
        tool="ops__deploy",
        arguments_hash="h",
        platform="test",
        asker_id="U1",
        expires_at=datetime.now(UTC) + timedelta(minutes=2),
    )
    assert len(await store.tool_calls_for([message_id])) == 1

    await store.forget_user("test", "U1")

    assert await store.tool_calls_for([message_id]) == []
    assert await store.tool_calls(turn_id) == []
    kept = await store.confirmation(confirmation.id)
    assert kept is not None and kept.asker_id == "(forgotten)"


# --- commands ------------------------------------------------------------------------


async def test_managers_enable_and_disable_tools_and_everyone_sees_them(
    chat: Chat, sqlite_store: SqlStore, fake_model: FakeModelServer
) -> None:
    shown = (await chat.say("/tools show")).notices[0]
    assert shown.splitlines()[1:5] == [
        "  current_time: on. The time now.",
        "  lookup: on. Look something up.",
        "  ops__deploy: off, asks. Deploy the service.",
        "  ops__status: off, asks. Service status.",
    ]

    refused = (await chat.say("/tools enable ops__*", user="U2")).notices[0]
    assert refused.startswith("Only ")
    enabled = (await chat.say("/tools enable ops__*", admin=True)).notices[0]
    assert enabled == "Now enabled here: ops__deploy, ops__status."
    disabled = (await chat.say("/tools disable lookup", admin=True)).notices[0]
    assert disabled == "Now disabled here: lookup."
    bad = (await chat.say("/tools enable a,b", admin=True)).notices[0]
    assert bad.startswith("Give a tool name or a pattern")

    await chat.say("What can you do?")
    offered = [t["function"]["name"] for t in fake_model.chat_requests[-1].body["tools"]]
    assert offered == ["current_time", "ops__deploy", "ops__status"]
    audit = await sqlite_store.setting_changes("test", "W1", "C1")
    assert [(a.field, a.new) for a in audit] == [
        ("tools", "+ops__*"),
        ("tools", "+ops__*,-lookup"),
    ]


# --- more limits, and a click in another process ---------------------------------


async def test_calls_beyond_the_per_round_limit_are_refused(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = settings_for(fake_model.base_url, tools__max_calls_per_round="2")
    client = OpenAIChatClient(settings.model)
    tools = builtin_tools()
    core = ConversationCore(
        settings=settings, store=sqlite_store, model=client, tool_sources=[tools]
    )
    fake_model.script(
        ToolCalls(*(CallTool("lookup", {"query": str(n)}, id=f"c{n}") for n in range(3))),
        Reply("Two of three."),
    )
    try:
        await Chat(core).say("Look up three things.")
    finally:
        await client.aclose()

    assert tools.calls == [("lookup", {"query": "0"}), ("lookup", {"query": "1"})]
    results = {
        m["tool_call_id"]: m["content"] for m in tool_messages(fake_model.chat_requests[1].body)
    }
    assert (
        results["c2"] == "Refused: at most 2 calls may be made in one round; this one was not run."
    )


async def test_the_time_for_tools_in_one_answer_is_bounded(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = settings_for(fake_model.base_url, tools__turn_timeout_seconds="0.25")
    client = OpenAIChatClient(settings.model)

    async def slowish(arguments: Mapping[str, Any]) -> ToolOutput:
        await asyncio.sleep(0.15)
        return ToolOutput("a little")

    tools = builtin_tools()
    tools.handlers["lookup"] = slowish
    core = ConversationCore(
        settings=settings, store=sqlite_store, model=client, tool_sources=[tools]
    )
    fake_model.endless = ToolCalls(CallTool("lookup", {"query": "more"}))
    try:
        sink = await asyncio.wait_for(Chat(core).say("Keep looking, slowly."), 10)
    finally:
        await client.aclose()

    # 0.15 s, then 0.1 s left (stopped there), then the time is up: text only.
    assert len(tools.calls) == 2
    last = fake_model.chat_requests[-1].body
    assert last["tool_choice"] == "none"
    assert "0.25 s of tool time" in last["messages"][-1]["content"]
    assert sink.final.startswith("You said: Keep looking, slowly.")


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_click_handled_by_another_process_reaches_the_waiting_turn(
    make_store: StoreFactory, fake_model: FakeModelServer
) -> None:
    """Two processes share PostgreSQL: the turn waits in one, the button click lands
    in the other; the waiting turn sees the decision by polling its row."""
    settings = settings_for(fake_model.base_url)
    client = OpenAIChatClient(settings.model)
    ops = ops_tools()
    answering = ConversationCore(
        settings=settings, store=await make_store(), model=client, tool_sources=[ops]
    )
    clicked = ConversationCore(
        settings=settings, store=await make_store(), model=client, tool_sources=[ops_tools()]
    )
    await enable(await make_store(), "ops__*")
    fake_model.script(ToolCalls(CallTool("ops__deploy", {"env": "prod"}, id="d1")), Reply("Done."))

    async def click_elsewhere(request: ConfirmationRequest) -> None:
        await clicked.decide_tool_call(
            request.confirmation_id, platform="test", user_id="U1", approve=True
        )

    sink = ConfirmingSink(answer=click_elsewhere)
    try:
        await asyncio.wait_for(answering.handle(Chat(answering).message("Deploy."), sink), 15)
    finally:
        await client.aclose()

    assert ops.calls == [("ops__deploy", {"env": "prod"})]
    assert sink.final.startswith("Done.")


async def test_a_model_without_function_calling_is_asked_again_without_tools(
    chat: Chat, fake_model: FakeModelServer
) -> None:
    # What Ollama answers for a model that has no tool template.
    fake_model.script(
        Refuse(400, "registry.ollama.ai/library/gemma:2b does not support tools"),
    )

    first = await chat.say("Hello?")
    await chat.say("Hello again?")

    assert first.final == "You said: Hello?"
    bodies = [r.body for r in fake_model.chat_requests]
    assert ["tools" in body for body in bodies] == [True, False, False]


async def test_tool_rounds_expire_with_their_question(store: SqlStore) -> None:
    turn_id, message_id = await crashed_turn(store, ToolCall("d1", "lookup", "{}"))
    await store.fail_turn(turn_id)
    assert len(await store.tool_calls_for([message_id])) == 1

    counts = await store.purge(
        now=datetime.now(UTC) + timedelta(days=31),
        default_retention_days=30,
        dedupe_days=2,
        batch_size=100,
    )

    assert counts.messages == 1
    assert await store.tool_calls_for([message_id]) == []


# --- progress, call by call ----------------------------------------------------------


@dataclass
class ProgressSink(ConfirmingSink):
    """A sink that shows each call on its own (as Slack's task cards do) while `shows`
    is True; it records every report, and every question closed without a click."""

    shows: bool = True
    progress: list[tuple[str, str, str, str]] = field(default_factory=list)
    closed: list[tuple[int, str]] = field(default_factory=list)

    @property
    def abilities(self) -> SinkAbilities:
        return SinkAbilities(
            status=self.status,
            confirm=self.confirm,
            tool_progress=self.tool_progress,
            confirmation_closed=self.confirmation_closed,
        )

    async def tool_progress(self, progress: Sequence[ToolProgress]) -> bool:
        self.progress += [(p.call_id, p.title, p.state, p.detail) for p in progress]
        return self.shows

    async def confirmation_closed(self, confirmation_id: int, outcome: str) -> None:
        self.closed.append((confirmation_id, outcome))


async def test_each_call_is_reported_as_it_starts_and_ends_and_no_status_line_is_shown(
    core: ConversationCore, fake_model: FakeModelServer
) -> None:
    fake_model.script(
        ToolCalls(
            CallTool("current_time", {}, id="t1"),
            CallTool("no_such_tool", {}, id="t2"),  # refused: not offered
        ),
        Reply("Noon."),
    )
    sink = ProgressSink()
    await core.handle(Chat(core).message("What time is it?"), sink)

    started, ends = sink.progress[:2], sink.progress[2:]
    assert started == [
        ("tool-0-0", "Looking at the clock…", "in_progress", ""),
        ("tool-0-1", "Calling no_such_tool…", "in_progress", ""),
    ]
    assert sorted(ends) == [
        ("tool-0-0", "Looking at the clock…", "complete", ""),
        (
            "tool-0-1",
            "Calling no_such_tool…",
            "error",
            "Refused: there is no tool named 'no_such_tool' here. Use only the tools offered.",
        ),
    ]
    assert sink.statuses == [], "the calls are shown one by one instead"
    assert sink.final == "Noon.\n\n_Tools used: current_time_"


async def test_a_sink_that_cannot_show_progress_now_gets_the_status_line_as_before(
    core: ConversationCore, fake_model: FakeModelServer
) -> None:
    fake_model.script(
        ToolCalls(CallTool("current_time", {}, id="t1"), CallTool("lookup", {}, id="t2")),
        Reply("Noon."),
    )
    sink = ProgressSink(shows=False)
    await core.handle(Chat(core).message("What time is it?"), sink)

    assert sink.statuses == ["Looking at the clock…\nCalling lookup…"]


async def test_an_action_waits_as_pending_then_runs_once_approved(
    core: ConversationCore,
    sqlite_store: SqlStore,
    fake_model: FakeModelServer,
    ops: RemoteTools,
) -> None:
    await enable(sqlite_store, "ops__*")

    async def approve(request: ConfirmationRequest) -> None:
        await core.decide_tool_call(
            request.confirmation_id, platform="test", user_id="U1", approve=True
        )

    fake_model.script(
        ToolCalls(CallTool("ops__deploy", {"env": "prod"}, id="d1")), Reply("Deployed.")
    )
    sink = ProgressSink(answer=approve)
    await core.handle(Chat(core).message("Deploy to prod.", name="Ada"), sink)

    assert [(state, detail) for _, _, state, detail in sink.progress] == [
        ("pending", ""),
        ("pending", "Waiting for Ada to approve"),
        ("in_progress", ""),
        ("complete", ""),
    ]
    assert sink.statuses == []
    assert sink.closed == [], "a question answered is closed by its click, not the core"


async def test_a_question_nobody_answers_is_closed_and_the_call_ends_in_error(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = settings_for(fake_model.base_url, tools__confirm_timeout_seconds="0.3")
    client = OpenAIChatClient(settings.model)
    ops = ops_tools()
    core = ConversationCore(settings=settings, store=sqlite_store, model=client, tool_sources=[ops])
    await enable(sqlite_store, "ops__*")
    fake_model.script(ToolCalls(CallTool("ops__deploy", {"env": "prod"}, id="d1")), Reply("OK."))
    sink = ProgressSink()  # nobody clicks
    try:
        await asyncio.wait_for(core.handle(Chat(core).message("Deploy."), sink), 10)
    finally:
        await client.aclose()

    [request] = sink.requests
    assert sink.closed == [(request.confirmation_id, "timed_out")]
    assert sink.progress[-1][2:] == (
        "error",
        "The user declined this call (no answer within 0.3 s); it was not run.",
    )


async def test_a_tools_own_error_text_is_for_the_model_not_the_progress_shown(
    fake_model: FakeModelServer, sqlite_store: SqlStore, settings: Settings
) -> None:
    async def broken(arguments: Mapping[str, Any]) -> ToolOutput:
        return ToolOutput("Traceback: db password=hunter2 rejected", is_error=True)

    tools = builtin_tools()
    tools.handlers["lookup"] = broken
    client = OpenAIChatClient(settings.model)
    core = ConversationCore(
        settings=settings, store=sqlite_store, model=client, tool_sources=[tools]
    )
    fake_model.script(ToolCalls(CallTool("lookup", {}, id="l1")), Reply("It failed."))
    sink = ProgressSink()
    try:
        await core.handle(Chat(core).message("Look it up."), sink)
    finally:
        await client.aclose()

    assert sink.progress[-1][2:] == ("error", "The tool reported an error.")
    [result] = tool_messages(fake_model.chat_requests[1].body)
    assert result["content"] == "Traceback: db password=hunter2 rejected", "the model reads it"


async def test_the_tool_calls_of_a_history_come_back_whole_in_order_for_the_ids_asked(
    store: SqlStore,
) -> None:
    # Read on every turn through the drivers (storage/sqlite_hot.py, postgres_hot.py).
    chat = Chat()
    asked = await store.accept(chat.message("Look up q and r.", name="Ada"), text="q r", tokens=4)
    other = await store.accept(chat.message("And s.", name="Ada"), text="s", tokens=2)
    assert asked is not None and other is not None
    first_round = [
        StoredToolCall(
            user_message_id=asked.user_message_id,
            round=0,
            position=position,
            call_id=f"c{position}",
            name="lookup",
            arguments=json.dumps({"query": query}),
            status="done",
            result=f"found: {query}",
            is_error=position == 1,
            tokens=3,
            round_text="Looking." if position == 0 else "",
        )
        for position, query in ((1, "r"), (0, "q"))
    ]
    await store.store_tool_round(asked.turn_id, first_round)
    await store.store_tool_round(
        other.turn_id,
        [
            StoredToolCall(
                user_message_id=other.user_message_id,
                round=0,
                position=0,
                call_id="s0",
                name="lookup",
                arguments="{}",
                status="requested",
            )
        ],
    )

    found = await store.tool_calls_for([asked.user_message_id])

    assert found == sorted(first_round, key=lambda call: call.position)
    both = await store.tool_calls_for([other.user_message_id, asked.user_message_id])
    assert [call.call_id for call in both] == ["c0", "c1", "s0"]
    assert await store.tool_calls_for([]) == []


async def test_a_turn_claimed_in_another_process_gets_the_rounds_of_its_history(
    make_store: StoreFactory,
) -> None:
    """A turn's reads say whether its conversation ever had a tool round (PostgreSQL
    answers `tool_calls_for` without asking when it had none): the rounds one process
    stored reach a turn another process claims next, accepting or saving."""
    first, second = await make_store(), await make_store()
    chat = Chat()

    def claim() -> Claim:
        return Claim(
            holder="me", alive_until=datetime.now(UTC) + timedelta(minutes=1), history_limit=200
        )

    plain = await first.accept(chat.message("Hello."), text="Hello.", tokens=1, claim=claim())
    assert plain is not None and plain.claimed is not None
    assert await first.tool_calls_for([plain.user_message_id]) == []
    await first.store_answer(
        plain.turn_id, holder="me", text="Hi.", tokens=1, usage=None, status="complete", model="m"
    )

    asked = await first.accept(
        chat.message("Look up q."), text="Look up q.", tokens=2, claim=claim()
    )
    assert asked is not None and asked.claimed is not None
    assert await first.tool_calls_for([plain.user_message_id, asked.user_message_id]) == []
    call = StoredToolCall(
        user_message_id=asked.user_message_id,
        round=0,
        position=0,
        call_id="c0",
        name="lookup",
        arguments='{"query": "q"}',
        status="done",
        result="found: q",
        tokens=3,
    )
    await first.store_tool_round(asked.turn_id, [call])
    # A question comes in while that turn runs, to the other process: claimed there as
    # the answer is saved there, so it reads its history's rounds from that claim.
    waiting = await second.accept(chat.message("And r?"), text="And r?", tokens=2, claim=claim())
    assert waiting is not None and waiting.claimed is None
    _, following = await second.store_answer_and_claim_next(
        asked.turn_id,
        claim=claim(),
        conversation_id=asked.conversation_id,
        key=chat.message("x").conversation,
        text="q is here.",
        tokens=2,
        usage=None,
        status="complete",
        model="m",
    )
    assert following is not None and following.turn_id == waiting.turn_id
    ids = [asked.user_message_id, waiting.user_message_id]
    assert [c.call_id for c in await second.tool_calls_for(ids)] == ["c0"]
    await second.store_answer(
        waiting.turn_id,
        holder="me",
        text="r too.",
        tokens=2,
        usage=None,
        status="complete",
        model="m",
    )

    # And a turn claimed as its message is accepted, in the first process.
    later = await first.accept(chat.message("Thanks."), text="Thanks.", tokens=1, claim=claim())
    assert later is not None and later.claimed is not None
    ids = [asked.user_message_id, waiting.user_message_id, later.user_message_id]
    assert [c.call_id for c in await first.tool_calls_for(ids)] == ["c0"]

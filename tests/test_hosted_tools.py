"""Hosted tools (the Responses API runs them itself): the operator says which the
endpoint offers, a channel's managers enable them with the tool rules, and the
request carries them. Off until enabled; never on the Chat Completions backend."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from botservice.core.conversation import ConversationCore
from botservice.core.ports import GeneratedFile, SinkAbilities
from botservice.core.settings import HostedToolSettings, RemoteMcpServer, Settings
from botservice.core.tools import ConfirmationRequest
from botservice.model.responses import open_model_client
from botservice.storage.repository import SqlStore
from tests.chat_kit import Chat, RecordingSink, settings_for
from tests.fakes.model_server import Drawn, FakeModelServer, McpApproval, Reply

MCP_SERVER = {
    "label": "wiki",
    "url": "https://mcp.example.invalid/sse",
    "description": "The team wiki.",
    "require_approval": "always",
    "allowed_tools": ["search"],
    "authorization_env": "WIKI_MCP_TOKEN",
}


def hosted_settings(base_url: str, api: str = "responses") -> Settings:
    """What an operator writes under `[hosted_tools]` for an endpoint offering them all."""
    settings = settings_for(base_url, model__api=api)
    hosted = HostedToolSettings(
        web_search=True,
        file_search_vector_store_ids=("vs_team", "vs_docs"),
        code_interpreter=True,
        image_generation=True,
        mcp=(RemoteMcpServer.model_validate(MCP_SERVER),),
    )
    return settings.model_copy(update={"hosted_tools": hosted})


async def test_hosted_tools_are_off_until_a_manager_enables_them(
    fake_model: FakeModelServer, sqlite_store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WIKI_MCP_TOKEN", "wiki-token-secret")
    settings = hosted_settings(fake_model.base_url)
    client = open_model_client(settings.model)
    chat = Chat(ConversationCore(settings=settings, store=sqlite_store, model=client))
    fake_model.script(Reply("Plain."), Reply("Searched."), Reply("Everything."))
    try:
        await chat.say("Hello.")
        refused = await chat.say("/tools enable hosted__web_search")
        enabled = await chat.say("/tools enable hosted__web_search", admin=True)
        await chat.say("What is new today?")
        everything = await chat.say("/tools enable hosted__*", admin=True)
        shown = await chat.say("/tools show")
        await chat.say("And now?")
    finally:
        await client.aclose()

    plain, searched, all_on = (r.body for r in fake_model.responses_requests)
    assert "tools" not in plain
    assert refused.notices[0].endswith("can change this channel's tools.")
    assert enabled.notices == ["Now enabled here: hosted__web_search."]
    assert searched["tools"] == [{"type": "web_search"}]
    assert searched["tool_choice"] == "auto"
    assert "parallel_tool_calls" not in searched  # only for function tools
    assert "hosted__mcp_wiki" in everything.notices[0]
    assert all_on["tools"] == [
        {"type": "web_search"},
        {"type": "file_search", "vector_store_ids": ["vs_team", "vs_docs"]},
        {"type": "code_interpreter", "container": {"type": "auto"}},
        {"type": "image_generation"},
        {
            "type": "mcp",
            "server_label": "wiki",
            "server_url": "https://mcp.example.invalid/sse",
            "require_approval": "always",
            "server_description": "The team wiki.",
            "allowed_tools": ["search"],
            "authorization": "wiki-token-secret",
        },
    ]
    listing = shown.notices[0]
    # Run by the endpoint unasked, except the MCP server whose calls need approval.
    assert "  hosted__file_search: on. Search the configured vector stores" in listing
    assert "  hosted__mcp_wiki: on, asks. The team wiki." in listing


async def test_the_chat_backend_never_sends_hosted_tools(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = hosted_settings(fake_model.base_url, api="chat")
    client = open_model_client(settings.model)
    chat = Chat(ConversationCore(settings=settings, store=sqlite_store, model=client))
    try:
        await chat.say("/tools enable hosted__*", admin=True)
        await chat.say("Search the web, please.")
    finally:
        await client.aclose()

    [asked] = fake_model.chat_requests
    assert "tools" not in asked.body


@dataclass
class ClickingSink(RecordingSink):
    """A sink that asks with buttons; the asker clicks Approve (or Deny) a moment later."""

    core: ConversationCore | None = None
    approve: bool = True
    requests: list[ConfirmationRequest] = field(default_factory=list)

    @property
    def abilities(self) -> SinkAbilities:
        return SinkAbilities(status=self.status, confirm=self.confirm)

    async def confirm(self, request: ConfirmationRequest) -> None:
        self.requests.append(request)
        core, approve = self.core, self.approve
        assert core is not None

        async def click() -> None:
            await core.decide_tool_call(
                request.confirmation_id, platform="test", user_id="U1", approve=approve
            )

        asyncio.get_running_loop().create_task(click())


async def mcp_round_trip(
    fake_model: FakeModelServer, store: SqlStore, *, approve: bool, then: str | None = None
) -> tuple[ClickingSink, dict[str, Any]]:
    """Ask something the wiki's MCP server answers; the asker clicks. `then`: a next
    message in the thread, answered after."""
    settings = hosted_settings(fake_model.base_url)
    client = open_model_client(settings.model)
    core = ConversationCore(settings=settings, store=store, model=client)
    chat = Chat(core)
    fake_model.script(
        McpApproval("wiki", "search", '{"query": "release notes"}', id="mcpr_42"),
        Reply("The release notes say it shipped." if approve else "I could not search the wiki."),
    )
    sink = ClickingSink(core=core, approve=approve)
    try:
        await chat.say("/tools enable hosted__mcp_wiki", admin=True)
        await core.handle(chat.message("What do the release notes say?"), sink)
        if then is not None:
            await chat.say(then)
    finally:
        await client.aclose()
    asked, answered = (r.body for r in fake_model.responses_requests[:2])
    assert asked["tools"][0]["type"] == "mcp"
    return sink, answered


async def test_a_remote_mcp_call_waits_for_the_askers_approval(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    sink, answered = await mcp_round_trip(fake_model, sqlite_store, approve=True)

    [question] = sink.requests
    assert question.tool == "hosted__mcp_wiki"
    assert json.loads(question.arguments) == {
        "tool": "search",
        "arguments": {"query": "release notes"},
    }
    assert [item for item in answered["input"] if item.get("type")] == [
        {
            "type": "mcp_approval_request",
            "id": "mcpr_42",
            "server_label": "wiki",
            "name": "search",
            "arguments": '{"query": "release notes"}',
        },
        {"type": "mcp_approval_response", "approval_request_id": "mcpr_42", "approve": True},
    ]
    assert "function" not in json.dumps(answered.get("tools"))  # never offered as a function
    assert sink.final.startswith("The release notes say it shipped.")


async def test_a_denied_remote_mcp_call_is_told_to_the_endpoint_as_denied(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    sink, answered = await mcp_round_trip(fake_model, sqlite_store, approve=False)

    responses = [i for i in answered["input"] if i.get("type") == "mcp_approval_response"]
    assert responses == [
        {"type": "mcp_approval_response", "approval_request_id": "mcpr_42", "approve": False}
    ]
    assert sink.final.startswith("I could not search the wiki.")


# A tiny PNG: the signature and enough bytes to stand for an image.
PICTURE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@dataclass
class FilePostingSink(RecordingSink):
    posted: list[GeneratedFile] = field(default_factory=list)

    @property
    def abilities(self) -> SinkAbilities:
        return SinkAbilities(status=self.status, post_file=self.post_file)

    async def post_file(self, file: GeneratedFile) -> None:
        self.posted.append(file)


async def test_a_generated_image_is_posted_in_the_thread_after_the_answer(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = hosted_settings(fake_model.base_url)
    client = open_model_client(settings.model)
    core = ConversationCore(settings=settings, store=sqlite_store, model=client)
    chat = Chat(core)
    fake_model.script(Drawn(PICTURE, "Here is a lighthouse."), Drawn(PICTURE, "Another one."))
    sink = FilePostingSink()
    try:
        await chat.say("/tools enable hosted__image_generation", admin=True)
        await core.handle(chat.message("Draw a lighthouse."), sink)
        plain = await chat.say("Draw another, here where files cannot be posted.")
    finally:
        await client.aclose()

    assert fake_model.responses_requests[0].body["tools"] == [{"type": "image_generation"}]
    assert sink.final == "Here is a lighthouse."
    assert sink.posted == [
        GeneratedFile(name="image-1.png", data=PICTURE, content_type="image/png")
    ]
    assert plain.final == (
        "Another one.\n\n_(The model made 1 image(s) that cannot be shown here.)_"
    )


async def test_an_answered_mcp_approval_is_not_sent_again_in_a_later_turn(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    """Sent again, an approval would have the endpoint run the call again."""
    await mcp_round_trip(fake_model, sqlite_store, approve=True, then="Thanks!")

    later = fake_model.responses_requests[2].body
    assert [item for item in later["input"] if item.get("type")] == []
    assert [m["content"] for m in later["input"] if m.get("role") == "user"] == [
        "What do the release notes say?",
        "Thanks!",
    ]

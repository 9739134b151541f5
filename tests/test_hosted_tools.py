"""Hosted tools (the Responses API runs them itself): the operator says which the
endpoint offers, a channel's managers enable them with the tool rules, and the
request carries them. Off until enabled; never on the Chat Completions backend."""

from __future__ import annotations

from botservice.core.conversation import ConversationCore
from botservice.core.settings import HostedToolSettings, RemoteMcpServer, Settings
from botservice.model.responses import open_model_client
from botservice.storage.repository import SqlStore
from tests.chat_kit import Chat, settings_for
from tests.fakes.model_server import FakeModelServer, Reply

MCP_SERVER = {
    "label": "wiki",
    "url": "https://mcp.example.invalid/sse",
    "description": "The team wiki.",
    "require_approval": "always",
    "allowed_tools": ["search"],
    "authorization": "wiki-token-secret",
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
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
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

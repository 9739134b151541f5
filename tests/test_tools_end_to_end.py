"""The tool sources in the real loop: the console, the core and its model client, the
built-in tools over SQLite, and an MCP server of the official SDK on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io

from botservice.adapters.console.adapter import ConsoleAdapter
from botservice.app.tool_sources import build_tool_sources, close_tool_sources, start_tool_sources
from botservice.core.conversation import ConversationCore
from botservice.model.client import OpenAIChatClient
from botservice.storage.repository import SqlStore
from botservice.tools.mcp_source import McpServer, McpToolSource
from tests.chat_kit import settings_for
from tests.fakes.mcp_server import FakeMcp, serve_http
from tests.fakes.model_server import CallTool, FakeModelServer, Reply, ToolCalls


async def test_search_history_and_a_trusted_mcp_lookup_run_without_asking(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = settings_for(fake_model.base_url)
    model = OpenAIChatClient(settings.model)
    fake = FakeMcp()
    async with serve_http(fake) as url:
        sources = [
            *build_tool_sources(settings, sqlite_store, {}),
            McpToolSource(McpServer(name="fake", url=url, trusted=True)),
        ]
        await start_tool_sources(sources)
        core = ConversationCore(
            settings=settings, store=sqlite_store, model=model, tool_sources=sources
        )
        fake_model.script(
            Reply("Noted: the deploy is on Friday."),
            ToolCalls(CallTool("search_history", {"query": "deploy"}, id="s1")),
            Reply("On Friday."),
            ToolCalls(CallTool("fake__lookup", {"record_id": "PROJ-7"}, id="l1")),
            Reply("It is open."),
        )
        output = io.StringIO()
        adapter = ConsoleAdapter(
            core,
            input=io.StringIO(
                "The billing deploy is on Friday.\n"
                "When is the deploy?\n"
                "/tools enable fake__lookup\n"
                "Is PROJ-7 open?\n"
            ),
            output=output,
        )
        try:
            await asyncio.wait_for(adapter.serve(), 30)
        finally:
            await core.stop()
            await model.aclose()
            await close_tool_sources(sources)

    offered = [tool["function"]["name"] for tool in fake_model.chat_requests[1].body["tools"]]
    assert offered == ["search_history", "earlier_messages", "current_time"]
    found = next(m for m in fake_model.chat_requests[2].body["messages"] if m["role"] == "tool")
    assert "The billing deploy is on Friday." in found["content"]
    assert "When is the deploy?" not in found["content"]
    # The console stores answers without a name: the hit still says whose it is.
    assert "· the bot · this conversation: Noted: the deploy is on Friday." in found["content"]
    looked_up = [m for m in fake_model.chat_requests[4].body["messages"] if m["role"] == "tool"]
    assert looked_up[-1]["content"] == "record PROJ-7: status open"
    assert fake.calls == [("lookup", {"record_id": "PROJ-7"})]
    assert "On Friday." in output.getvalue() and "It is open." in output.getvalue()

"""Tool calls that need approval on the console: a y/N question on a terminal (typed
through prompt_toolkit's own test input), a clear denial when input is piped."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable

from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from botservice.adapters.console.adapter import ConsoleAdapter
from botservice.adapters.console.terminal import TerminalPrompt
from botservice.core.conversation import ConversationCore
from botservice.model.client import OpenAIChatClient
from botservice.storage.repository import SqlStore
from tests.chat_kit import settings_for
from tests.fakes.model_server import CallTool, FakeModelServer, Reply, ToolCalls
from tests.test_tool_rounds import ops_tools

ENTER = "\r"
CTRL_D = "\x04"


async def until(condition: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.02)


async def test_piped_input_declines_an_action_and_says_why(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = settings_for(fake_model.base_url)
    model = OpenAIChatClient(settings.model)
    ops = ops_tools()
    core = ConversationCore(settings=settings, store=sqlite_store, model=model, tool_sources=[ops])
    fake_model.script(
        ToolCalls(CallTool("ops__deploy", {"env": "prod"}, id="d1")), Reply("Not deployed.")
    )
    output = io.StringIO()
    adapter = ConsoleAdapter(
        core, input=io.StringIO("/tools enable ops__*\nDeploy to prod.\n"), output=output
    )
    try:
        await asyncio.wait_for(adapter.serve(), 20)
    finally:
        await core.stop()
        await model.aclose()

    assert ops.calls == []
    assert (
        'The assistant wanted to run ops__deploy ({"env": "prod"}); that needs your '
        "approval, which piped input cannot give, so it was declined.\n"
    ) in output.getvalue()
    assert output.getvalue().endswith("Not deployed.\n")
    result = next(m for m in fake_model.chat_requests[1].body["messages"] if m["role"] == "tool")
    assert result["content"] == "The user declined this call; it was not run."


async def test_on_a_terminal_y_approves_and_the_action_runs(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = settings_for(fake_model.base_url)
    model = OpenAIChatClient(settings.model)
    ops = ops_tools()
    core = ConversationCore(settings=settings, store=sqlite_store, model=model, tool_sources=[ops])
    fake_model.script(
        ToolCalls(CallTool("ops__deploy", {"env": "prod"}, id="d1")), Reply("Deployed.")
    )
    screen = io.StringIO()
    with create_pipe_input() as keys:
        prompt = TerminalPrompt(input=keys, output=DummyOutput())
        adapter = ConsoleAdapter(core, output=screen, user_name="ada", terminal=prompt)
        serving = asyncio.create_task(adapter.serve())
        try:
            await until(lambda: prompt.showing, "the prompt")
            keys.send_text("/tools enable ops__deploy" + ENTER)
            await until(lambda: "Now enabled here: ops__deploy." in screen.getvalue(), "enabled")
            await until(lambda: prompt.showing, "the prompt again")
            keys.send_text("Deploy to prod." + ENTER)
            await until(lambda: len(fake_model.chat_requests) == 1 and prompt.showing, "y/N")
            assert ops.calls == []  # asked first
            keys.send_text("y" + ENTER)
            await until(lambda: "Deployed." in screen.getvalue(), "the answer")
            await until(lambda: prompt.showing, "the prompt after the answer")
            keys.send_text(CTRL_D)
            await asyncio.wait_for(serving, 20)
        finally:
            serving.cancel()
            await core.stop()
            await model.aclose()

    assert ops.calls == [("ops__deploy", {"env": "prod"})]
    assert "bot> Deployed.\n\n_Tools used: ops__deploy_\n" in screen.getvalue()

"""MCP servers' tools, through the official SDK against a real server of the same SDK
(tests/fakes/mcp_server.py) on 127.0.0.1: over streamable HTTP and over stdio."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from botservice.app.tool_sources import build_tool_sources, close_tool_sources, start_tool_sources
from botservice.core.errors import ConfigError
from botservice.core.settings import McpServerSettings, McpSettings, Settings
from botservice.core.tools import TOOL_NAME, ToolContext, ToolOutput, ToolPolicy
from botservice.tools.mcp_names import map_tool_names
from botservice.tools.mcp_source import McpServer, McpToolSource
from tests.db import incoming
from tests.fakes.mcp_server import ONE_MB, FakeMcp, bound_socket, serve_http

FAKE_SERVER_SCRIPT = Path(__file__).resolve().parent / "fakes" / "mcp_server.py"
CONTEXT = ToolContext(
    conversation=incoming("x").conversation, conversation_id=1, user_id="U1", turn_id=1
)


async def eventually(condition: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    """Poll until `condition` holds (generous bound: the machine is shared). What it waits
    for happens in a server or a background task, with no event to await."""
    for _ in range(round(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    assert condition(), what


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeMcp, str]]:
    server = FakeMcp()
    async with serve_http(server) as url:
        yield server, url


async def opened(url: str, **options: object) -> McpToolSource:
    source = McpToolSource(
        McpServer(name="fake", url=url, **options),  # type: ignore[arg-type]
        connect_timeout_seconds=10,
        retry_initial_seconds=0.05,
        retry_max_seconds=0.2,
    )
    await source.start()
    return source


# --- listing, names and hints ----------------------------------------------------------


async def test_an_http_servers_tools_are_listed_as_server__tool_with_their_hints(
    fake: tuple[FakeMcp, str],
) -> None:
    _, url = fake
    source = await opened(url)
    try:
        specs = {spec.name: spec for spec in source.tools()}
        assert set(specs) >= {
            "fake__lookup",
            "fake__delete_record",
            "fake__archive",
            "fake__add_note",
            "fake__slow",
            "fake__big",
        }
        lookup = specs["fake__lookup"]
        assert lookup.description == "Look a record up by its id."
        assert lookup.parameters["properties"]["record_id"]["type"] == "string"
        assert (lookup.read_only, lookup.destructive, lookup.source) == (True, False, "fake")
        assert (
            specs["fake__delete_record"].read_only,
            specs["fake__delete_record"].destructive,
        ) == (
            False,
            True,
        )
        # No annotations: MCP's defaults, not read-only and destructive.
        assert (specs["fake__archive"].read_only, specs["fake__archive"].destructive) == (
            False,
            True,
        )
        assert (specs["fake__add_note"].read_only, specs["fake__add_note"].destructive) == (
            False,
            False,
        )
        chatty = specs["fake__chatty"].description
        assert len(chatty) == 1024 and chatty.endswith("…")
        # An untrusted server: every tool asks first, even a read-only one; and MCP tools
        # are off in a channel until its managers enable them.
        assert not any(spec.runs_without_asking for spec in specs.values())
        assert not any(ToolPolicy().allows(spec) for spec in specs.values())
        assert ToolPolicy().with_rule("fake__*", enabled=True).allows(lookup)
    finally:
        await source.aclose()


async def test_a_trusted_servers_read_only_tools_run_without_asking_and_only_those(
    fake: tuple[FakeMcp, str],
) -> None:
    _, url = fake
    source = await opened(url, trusted=True)
    try:
        asking = {spec.name for spec in source.tools() if not spec.runs_without_asking}
        assert "fake__lookup" not in asking
        assert {"fake__delete_record", "fake__archive", "fake__add_note", "fake__grow"} <= asking
    finally:
        await source.aclose()


async def test_allowed_tools_globs_offer_only_the_matching_tools(fake: tuple[FakeMcp, str]) -> None:
    fake_server, url = fake
    source = await opened(url, allowed_tools=("look*", "big"))
    try:
        assert [spec.name for spec in source.tools()] == ["fake__big", "fake__lookup"]
        refused = await source.call("fake__delete_record", {"record_id": "7"}, CONTEXT)
        assert refused.is_error
        assert fake_server.calls == []
    finally:
        await source.aclose()


def test_tool_names_are_mapped_deterministically_within_the_model_apis_limits() -> None:
    long = "a_very_long_tool_name_" + "x" * 80
    names = ["search", "search.issues", "search_issues", "créer", long, long + "y", ""]
    mapped = map_tool_names("jira", names)

    assert map_tool_names("jira", list(reversed(names))) == mapped
    assert set(mapped.values()) == set(names)
    assert all(TOOL_NAME.match(name) for name in mapped)
    by_original = {original: name for name, original in mapped.items()}
    assert by_original["search"] == "jira__search"
    # A name that fits keeps its spelling; the one that had to change yields to it.
    assert by_original["search_issues"] == "jira__search_issues"
    assert by_original["search.issues"].startswith("jira__search_issues-")
    assert by_original["créer"] == "jira__cr_er"
    assert len(by_original[long]) == 64 and len(by_original[long + "y"]) == 64
    assert by_original[long] != by_original[long + "y"]


# --- calls ---------------------------------------------------------------------------------


async def test_calls_reach_the_server_with_its_own_tool_name_and_the_arguments(
    fake: tuple[FakeMcp, str],
) -> None:
    fake_server, url = fake
    source = await opened(url)
    try:
        result = await source.call("fake__lookup", {"record_id": "PROJ-7"}, CONTEXT)
        assert result == ToolOutput("record PROJ-7: status open")
        deleted = await source.call("fake__delete_record", {"record_id": "PROJ-8"}, CONTEXT)
        assert deleted == ToolOutput("deleted PROJ-8")
        assert fake_server.calls == [
            ("lookup", {"record_id": "PROJ-7"}),
            ("delete_record", {"record_id": "PROJ-8"}),
        ]
        # A name this source never offered never reaches the server.
        unknown = await source.call("fake__drop_database", {}, CONTEXT)
        assert unknown.is_error and "offers no tool named 'fake__drop_database'" in unknown.text
        assert len(fake_server.calls) == 2
    finally:
        await source.aclose()


async def test_errors_pictures_and_a_megabyte_come_back_as_text_for_the_model(
    fake: tuple[FakeMcp, str],
) -> None:
    _, url = fake
    source = await opened(url)
    try:
        failed = await source.call("fake__failing", {}, CONTEXT)
        assert failed.is_error
        assert "the record store is read-only today" in failed.text

        picture = await source.call("fake__picture", {}, CONTEXT)
        assert picture == ToolOutput("Here it is:\n[an image, image/png, 100 bytes]")

        # Whole: cutting to the core's limit (head, tail and a marker) is the core's job.
        big = await source.call("fake__big", {}, CONTEXT)
        assert big == ToolOutput("x" * ONE_MB)

        wrong = await source.call("fake__lookup", {"record": 1}, CONTEXT)
        assert wrong.is_error
    finally:
        await source.aclose()


async def test_a_slow_call_cut_off_by_the_caller_leaves_the_server_usable(
    fake: tuple[FakeMcp, str],
) -> None:
    fake_server, url = fake
    source = await opened(url)
    try:
        slow = asyncio.create_task(source.call("fake__slow", {"seconds": 30}, CONTEXT))
        quick = asyncio.create_task(source.call("fake__lookup", {"record_id": "1"}, CONTEXT))
        done, _ = await asyncio.wait({slow, quick}, return_when=asyncio.FIRST_COMPLETED)
        # Calls run side by side: the quick one does not wait behind the slow one.
        assert done == {quick}
        assert quick.result() == ToolOutput("record 1: status open")
        # The core bounds a call's time by cancelling it.
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        again = await source.call("fake__lookup", {"record_id": "2"}, CONTEXT)
        assert again == ToolOutput("record 2: status open")
        assert ("slow", {"seconds": 30}) in fake_server.calls
    finally:
        await source.aclose()


async def test_a_changed_tool_list_is_listed_again(fake: tuple[FakeMcp, str]) -> None:
    _, url = fake
    source = await opened(url)
    try:
        assert "fake__fresh" not in {spec.name for spec in source.tools()}
        assert await source.call("fake__grow", {"name": "fresh"}, CONTEXT) == ToolOutput(
            "added fresh"
        )
        await eventually(
            lambda: "fake__fresh" in {spec.name for spec in source.tools()}, "relisted"
        )
        assert await source.call("fake__fresh", {}, CONTEXT) == ToolOutput("fresh ran")
    finally:
        await source.aclose()


# --- a server that is down --------------------------------------------------------------


async def test_a_server_down_at_start_offers_nothing_then_its_tools_appear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="botservice.tools.mcp_source")
    sock = bound_socket()  # the port refuses connections until the server starts
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    source = await opened(url)
    try:
        assert source.tools() == ()
        down = await source.call("fake__lookup", {"record_id": "1"}, CONTEXT)
        assert down.is_error and "not reachable right now" in down.text

        def retries() -> int:
            return sum("still unreachable" in record.getMessage() for record in caplog.records)

        await eventually(lambda: retries() >= 2, "retried in the background")
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, "the log says once that the server is unreachable"
        assert "MCP server fake" in warnings[0].getMessage()
        assert "retrying in the background" in warnings[0].getMessage()

        fake_server = FakeMcp()
        async with serve_http(fake_server, sock):
            await eventually(lambda: len(source.tools()) > 0, "the tools appear")
            assert await source.call("fake__lookup", {"record_id": "9"}, CONTEXT) == ToolOutput(
                "record 9: status open"
            )
        assert any("reachable again" in record.getMessage() for record in caplog.records)
    finally:
        await source.aclose()


async def test_a_server_that_goes_away_is_retried_and_its_tools_come_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sock = bound_socket()
    port = sock.getsockname()[1]
    source = McpToolSource(
        McpServer(name="fake", url=f"http://127.0.0.1:{port}/mcp"),
        connect_timeout_seconds=10,
        retry_initial_seconds=0.05,
        retry_max_seconds=0.2,
    )
    try:
        async with serve_http(FakeMcp(), sock):
            await source.start()
            assert source.tools() != ()
        # The server stopped: the next call fails, and the source notices.
        gone = await source.call("fake__lookup", {"record_id": "1"}, CONTEXT)
        assert gone.is_error
        await eventually(lambda: source.tools() == (), "the tools are withdrawn")

        async with serve_http(FakeMcp(), bound_socket(port)):
            await eventually(lambda: source.tools() != (), "the tools come back")
            assert await source.call("fake__lookup", {"record_id": "3"}, CONTEXT) == ToolOutput(
                "record 3: status open"
            )
    finally:
        await source.aclose()
    unreachable = [r for r in caplog.records if "is unreachable" in r.getMessage()]
    assert len(unreachable) == 1


# --- built from the settings ---------------------------------------------------------------


def settings_with(*servers: McpServerSettings) -> Settings:
    return Settings(mcp=McpSettings(servers=servers, connect_timeout_seconds=10))


async def test_headers_are_read_from_the_environment_variables_they_name(
    fake: tuple[FakeMcp, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fake_server, url = fake
    settings = settings_with(
        McpServerSettings(name="fake", url=url, headers={"Authorization": "FAKE_MCP_AUTH"})
    )
    sources = build_tool_sources(
        settings,
        None,  # type: ignore[arg-type]  # the built-in tools are not called here
        {"FAKE_MCP_AUTH": "Bearer s3cret-token"},
    )
    assert [source.name for source in sources] == ["builtin", "fake"]
    await start_tool_sources(sources)
    try:
        mcp = sources[1]
        assert await mcp.call("fake__whoami", {}, CONTEXT) == ToolOutput("Bearer s3cret-token")
        assert fake_server.headers[-1]["authorization"] == "Bearer s3cret-token"
    finally:
        await close_tool_sources(sources)
    assert "s3cret" not in caplog.text


def test_a_header_naming_an_unset_variable_or_holding_a_value_is_refused() -> None:
    settings = settings_with(
        McpServerSettings(
            name="jira", url="http://127.0.0.1:9/mcp", headers={"Authorization": "JIRA_AUTH"}
        )
    )
    with pytest.raises(ConfigError) as unset:
        build_tool_sources(settings, None, {})  # type: ignore[arg-type]
    assert unset.value.setting == "mcp.servers.jira.headers.Authorization"
    assert "JIRA_AUTH, which is not set" in str(unset.value)

    with pytest.raises(ValueError, match="must NAME an environment variable"):
        McpServerSettings(
            name="jira", url="http://127.0.0.1:9/mcp", headers={"Authorization": "Bearer abc"}
        )
    with pytest.raises(ValueError, match="either url"):
        McpServerSettings(name="both", url="http://127.0.0.1:9/mcp", command="x")
    with pytest.raises(ValueError, match="either url"):
        McpServerSettings(name="neither")
    with pytest.raises(ValueError, match="names must differ"):
        McpSettings(
            servers=(
                McpServerSettings(name="a", command="x"),
                McpServerSettings(name="a", command="y"),
            )
        )


async def test_a_stdio_server_is_started_listed_called_and_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A secret of the bot's, in the environment the bot runs in.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-mcp-servers")
    call_log = tmp_path / "calls.jsonl"
    settings = settings_with(
        McpServerSettings(
            name="local",
            command=sys.executable,
            args=(str(FAKE_SERVER_SCRIPT), "local"),
            env={"FAKE_MCP_CALL_LOG": "TEST_MCP_CALL_LOG"},
            trusted=True,
        )
    )
    sources = build_tool_sources(
        settings,
        None,  # type: ignore[arg-type]
        {"TEST_MCP_CALL_LOG": str(call_log)},
    )
    await start_tool_sources(sources)
    try:
        local = sources[1]
        specs = {spec.name: spec for spec in local.tools()}
        assert specs["local__lookup"].runs_without_asking
        assert specs["local__delete_record"].destructive
        assert not specs["local__delete_record"].runs_without_asking
        assert await local.call("local__lookup", {"record_id": "A1"}, CONTEXT) == ToolOutput(
            "record A1: status open"
        )
        assert await local.call("local__delete_record", {"record_id": "A2"}, CONTEXT) == (
            ToolOutput("deleted A2")
        )
        # The server's environment: a minimal one, plus what `env` passes on.
        environment = (await local.call("local__environment", {}, CONTEXT)).text.split()
        assert "FAKE_MCP_CALL_LOG" in environment and "PATH" in environment
        assert "OPENAI_API_KEY" not in environment
    finally:
        await close_tool_sources(sources)
    calls = [json.loads(line)[0] for line in call_log.read_text().splitlines()]
    assert calls == ["lookup", "delete_record", "environment"]
    first = json.loads(call_log.read_text().splitlines()[0])
    assert first == ["lookup", {"record_id": "A1"}]


async def test_a_stdio_server_that_dies_is_started_again(tmp_path: Path) -> None:
    call_log = tmp_path / "calls.jsonl"
    source = McpToolSource(
        McpServer(
            name="local",
            command=sys.executable,
            args=(str(FAKE_SERVER_SCRIPT), "local"),
            env={"FAKE_MCP_CALL_LOG": str(call_log)},
        ),
        connect_timeout_seconds=10,
        retry_initial_seconds=0.05,
        retry_max_seconds=0.2,
    )
    await source.start()
    try:
        crashed = await source.call("local__crash", {}, CONTEXT)
        assert crashed.is_error
        await eventually(
            lambda: source.connected and "local__lookup" in {s.name for s in source.tools()},
            "started and listed again",
        )
        assert await source.call("local__lookup", {"record_id": "B"}, CONTEXT) == ToolOutput(
            "record B: status open"
        )
    finally:
        await source.aclose()
    assert [json.loads(line)[0] for line in call_log.read_text().splitlines()] == [
        "crash",
        "lookup",
    ]


async def test_a_stdio_server_that_cannot_start_never_stops_the_bot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_with(McpServerSettings(name="ghost", command="/nonexistent/mcp-server"))
    sources = build_tool_sources(settings, None, {})  # type: ignore[arg-type]
    await start_tool_sources(sources)
    try:
        assert sources[1].tools() == ()
        assert "MCP server ghost (stdio:/nonexistent/mcp-server) is unreachable" in caplog.text
    finally:
        await close_tool_sources(sources)

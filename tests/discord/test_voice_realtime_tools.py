"""Realtime mode's function calls that need approval, and what a realtime session spends,
end to end: a member speaks in the voice channel (Opus, DAVE, RTP on loopback), the fake
`/v1/realtime` server calls a tool that changes the world, the Approve / Deny question
is posted in the voice channel's text chat under the member's words, a click (through
the fake gateway and discord.py) decides, and the function's output goes back into the
session; each response's usage lands in the usage ledger the daily quotas read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import select

from botservice.core.settings import Settings
from botservice.core.tool_rounds import DECLINED, DECLINED_SILENCE
from botservice.storage.repository import SqlStore
from botservice.storage.tables import SETTING_CHANGES, TURNS, USAGE
from botservice.storage.usage_ledger import SqlUsage
from tests.discord.conftest import Guild, discord_settings
from tests.discord.test_voice import joined, running_voice_guild, with_voice
from tests.discord.test_voice_listen import QUESTION, Room, listening, stored_texts
from tests.discord.test_voice_realtime_mode import fake_realtime  # noqa: F401
from tests.fakes.discord_server import FakeDiscordServer
from tests.fakes.model_server import FakeModelServer
from tests.fakes.realtime_server import CallTool, FakeRealtimeServer, Speak
from tests.remote_tool import RemoteTools, jira_tools
from tests.voice.spoken_audio import spoken

TICKET = '{"title": "Printer on fire"}'


@pytest.fixture
def confirm_timeout() -> float:
    return 30.0


@pytest.fixture
def jira() -> RemoteTools:
    return jira_tools()


@pytest_asyncio.fixture
async def voice_guild(
    discord_server: FakeDiscordServer,
    fake_model: FakeModelServer,
    settings: Settings,
    sqlite_store: SqlStore,
    fake_realtime: FakeRealtimeServer,  # noqa: F811
    jira: RemoteTools,
    confirm_timeout: float,
) -> AsyncIterator[Guild]:
    """The bot with a JIRA server's tools, enabled in the voice channel, realtime mode,
    and the usage ledger."""
    configured = with_voice(
        discord_settings(discord_server, settings),
        mode="realtime",
        realtime_base_url=fake_realtime.base_url,
        realtime_silence_ms=300,
    )
    configured = configured.model_copy(
        update={
            "tools": configured.tools.model_copy(
                update={"confirm_timeout_seconds": confirm_timeout}
            )
        }
    )
    await sqlite_store.change_setting(
        "discord",
        discord_server.guild_id,
        discord_server.voice_channel_id,
        field="tools",
        value="+jira__*",
        changed_by=discord_server.alice.id,
    )
    async with running_voice_guild(
        discord_server,
        fake_model,
        configured,
        sqlite_store,
        usage=SqlUsage(sqlite_store),
        tool_sources=[jira],
    ) as guild:
        yield guild


@pytest_asyncio.fixture
async def room(voice_guild: Guild) -> AsyncIterator[Room]:
    server = voice_guild.server
    await server.join_voice(server.alice)
    connection = await joined(voice_guild)
    room = Room(voice_guild, connection)
    yield room
    room.server.close()


async def eventually(read: Callable[[], Awaitable[list[Any]]]) -> list[Any]:
    """What `read` returns once it returns something (the database is written apart
    from the chat)."""
    async with asyncio.timeout(10):
        while True:
            found = await read()
            if found:
                return found
            await asyncio.sleep(0.02)


def _custom_ids(message: dict[str, Any]) -> list[str]:
    return [button["custom_id"] for button in FakeDiscordServer.buttons(message)]


async def _bob_asks_for_a_ticket(room: Room, fake_realtime: FakeRealtimeServer) -> dict[str, Any]:  # noqa: F811
    """Bob asks aloud; the model calls the JIRA tool. Returns the question posted."""
    server = room.guild.server
    fake_realtime.script.extend(
        [CallTool("jira__create_issue", TICKET), Speak("Filed it as JIRA-101.", audio_ms=400)]
    )
    await listening(room)
    bob = await room.enters(server.bob)
    room.says(bob, spoken(QUESTION))

    def question() -> dict[str, Any] | None:
        return next(
            (
                m
                for m in server.bot_messages(server.voice_channel_id)
                if _custom_ids(m) and _custom_ids(m)[0].startswith("botservice_tool:")
            ),
            None,
        )

    found: dict[str, Any] = await server.wait_until(question, what="the Approve/Deny question")
    return found


def _outputs(fake_realtime: FakeRealtimeServer) -> list[dict[str, Any]]:  # noqa: F811
    return [
        event["item"]
        for event in fake_realtime.of_type("conversation.item.create")
        if event["item"]["type"] == "function_call_output"
    ]


async def _output_sent(room: Room, fake_realtime: FakeRealtimeServer) -> dict[str, Any]:  # noqa: F811
    await room.guild.server.wait_until(
        lambda: _outputs(fake_realtime), what="the function call's output"
    )
    (output,) = _outputs(fake_realtime)
    types = fake_realtime.received_types()
    created = types.index("conversation.item.create")
    assert "response.create" in types[created + 1 :], "the model is asked to go on"
    return output


async def test_a_spoken_call_that_needs_approval_runs_once_the_member_who_spoke_approves(
    room: Room,
    fake_realtime: FakeRealtimeServer,  # noqa: F811
    jira: RemoteTools,
    sqlite_store: SqlStore,
) -> None:
    server = room.guild.server
    bob, alice = server.bob, server.alice

    question = await _bob_asks_for_a_ticket(room, fake_realtime)

    heard = next(
        m
        for m in server.bot_messages(server.voice_channel_id)
        if m["content"].startswith("\N{MICROPHONE} Bob:")
    )
    assert (question.get("message_reference") or {}).get("message_id") == heard["id"], (
        "asked under the member's words"
    )
    assert "`jira__create_issue`" in question["content"]
    assert f"Only <@{bob.id}> can approve this" in question["content"]
    approve, deny = _custom_ids(question)
    assert approve.endswith(f":{bob.id}") and deny.endswith(f":{bob.id}")
    # Meanwhile the model says aloud that the call waits, and nothing runs.
    await server.wait_until(
        lambda: any(
            (e.get("response") or {}).get("conversation") == "none"
            for e in fake_realtime.of_type("response.create")
        ),
        what="the waiting notice asked for",
    )
    (aside,) = [
        e["response"]
        for e in fake_realtime.of_type("response.create")
        if (e.get("response") or {}).get("conversation") == "none"
    ]
    assert "Bob" in aside["instructions"] and "approval" in aside["instructions"]
    assert jira.calls == [] and _outputs(fake_realtime) == []

    # Someone else's click decides nothing.
    alices = await server.click_button(question, approve, user=alice)
    told = await server.wait_until(lambda: server.followups(alices), what="a private reply")
    assert told[0]["content"] == f"Only <@{bob.id}> can approve this."
    assert told[0]["_ephemeral"]
    assert jira.calls == [] and _outputs(fake_realtime) == []

    await server.click_button(question, approve, user=bob)

    output = await _output_sent(room, fake_realtime)
    call = next(
        e for e in fake_realtime.sent if e["type"] == "response.function_call_arguments.done"
    )
    assert output["call_id"] == call["call_id"]
    assert output["output"] == "Created JIRA-101."
    [ran] = jira.calls
    assert (ran.name, ran.arguments, ran.user_id) == (
        "jira__create_issue",
        {"title": "Printer on fire"},
        bob.id,
    )
    await server.wait_until(
        lambda: "\N{SPEAKER WITH THREE SOUND WAVES} Filed it as JIRA-101." in room.posted(),
        what="the answer after the tool",
    )
    await server.wait_until(
        lambda: question["content"].split("\n")[-1] == f"✅ Approved by <@{bob.id}>",
        what="the question showing the decision",
    )
    # The call belongs to the member's stored turn, and the decision is audited.
    async with sqlite_store.engine.connect() as connection:
        turn = (await connection.execute(select(TURNS.c.id, TURNS.c.user_id, TURNS.c.status))).one()
        audit = (
            await connection.execute(
                select(SETTING_CHANGES.c.channel, SETTING_CHANGES.c.new_value).where(
                    SETTING_CHANGES.c.field == "tool_call",
                    SETTING_CHANGES.c.changed_by == bob.id,
                )
            )
        ).all()
    assert ran.turn_id == turn.id and turn.user_id == bob.id
    assert [(row.channel, row.new_value.split()[:2]) for row in audit] == [
        (server.voice_channel_id, ["approved", "jira__create_issue"])
    ]
    assert await stored_texts(sqlite_store, "user") == [fake_realtime.heard]
    # The waiting notice was said aside: neither written as an answer nor kept.
    assert not any(fake_realtime.aside_reply in text for text in room.posted())
    assert await eventually(lambda: stored_texts(sqlite_store, "assistant")) == [
        "Filed it as JIRA-101."
    ]


async def test_deny_keeps_the_tool_from_running_and_the_model_is_told(
    room: Room,
    fake_realtime: FakeRealtimeServer,  # noqa: F811
    jira: RemoteTools,
) -> None:
    server = room.guild.server
    question = await _bob_asks_for_a_ticket(room, fake_realtime)
    _, deny = _custom_ids(question)

    await server.click_button(question, deny, user=server.bob)

    output = await _output_sent(room, fake_realtime)
    assert output["output"] == DECLINED
    assert jira.calls == []
    await server.wait_until(
        lambda: question["content"].split("\n")[-1] == f"🚫 Denied by <@{server.bob.id}>",
        what="the question showing the decision",
    )


@pytest.mark.parametrize("confirm_timeout", [0.5])
async def test_no_answer_in_time_is_a_denial(
    room: Room,
    fake_realtime: FakeRealtimeServer,  # noqa: F811
    jira: RemoteTools,
) -> None:
    server = room.guild.server
    question = await _bob_asks_for_a_ticket(room, fake_realtime)

    output = await _output_sent(room, fake_realtime)

    assert output["output"] == DECLINED_SILENCE.format(seconds=0.5)
    assert jira.calls == []
    await server.wait_until(
        lambda: question.get("_edits", 0) >= 1 and question["components"] == [],
        what="the unanswered question losing its buttons",
    )


async def test_each_realtime_response_is_recorded_in_the_usage_ledger_for_the_member(
    room: Room,
    fake_realtime: FakeRealtimeServer,  # noqa: F811
    sqlite_store: SqlStore,
) -> None:
    server = room.guild.server
    fake_realtime.script.append(Speak("Sunny, twenty degrees.", audio_ms=400))
    await listening(room)
    bob = await room.enters(server.bob)
    room.says(bob, spoken(QUESTION))
    await server.wait_until(
        lambda: "\N{SPEAKER WITH THREE SOUND WAVES} Sunny, twenty degrees." in room.posted(),
        what="the answer",
    )

    async def rows() -> list[Any]:
        async with sqlite_store.engine.connect() as connection:
            return list((await connection.execute(select(USAGE))).all())

    async def turn_id() -> int:
        async with sqlite_store.engine.connect() as connection:
            return int((await connection.execute(select(TURNS.c.id))).scalar_one())

    [row] = await eventually(rows)
    assert (row.platform, row.workspace, row.channel, row.user_id, row.model) == (
        "discord",
        server.guild_id,
        server.voice_channel_id,
        server.bob.id,
        "gpt-realtime",
    )
    assert (row.prompt_tokens, row.completion_tokens, row.cached_tokens) == (1200, 300, 640)
    assert not row.estimated
    assert row.turn_id == await turn_id()

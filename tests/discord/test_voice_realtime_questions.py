"""Approve / Deny questions of realtime voice calls that nobody waits for any more: the
realtime session that asked ended, or the process that asked is gone (a restart). The
question loses its buttons, a click is told it expired (only the clicker sees that), and
nothing runs. End to end through the fake gateway and discord.py, on SQLite and
PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from sqlalchemy import select

from botservice.adapters.discord.confirmation import EXPIRED, EXPIRED_OUTCOME
from botservice.adapters.discord.confirmation_buttons import confirmation_view, prompt_text
from botservice.core.conversation import ConversationCore
from botservice.core.settings import Settings
from botservice.core.tools import SESSION_ENDED, ConfirmationRequest
from botservice.storage.repository import SqlStore
from botservice.storage.tables import SETTING_CHANGES
from botservice.storage.tool_rounds import TOOL_CONFIRMATIONS
from tests.db import incoming
from tests.discord.conftest import Guild, discord_settings
from tests.discord.test_voice import joined, running_voice_guild, voice_command, with_voice
from tests.discord.test_voice_listen import Room
from tests.discord.test_voice_realtime_mode import fake_realtime  # noqa: F401
from tests.discord.test_voice_realtime_tools import (
    _bob_asks_for_a_ticket,
    _custom_ids,
    _outputs,
)
from tests.fakes.discord_server import FakeDiscordServer
from tests.fakes.model_server import FakeModelServer
from tests.fakes.realtime_server import FakeRealtimeServer
from tests.remote_tool import RemoteTools, jira_tools


@pytest.fixture
def jira() -> RemoteTools:
    return jira_tools()


@pytest_asyncio.fixture
async def voice_guild(
    discord_server: FakeDiscordServer,
    fake_model: FakeModelServer,
    settings: Settings,
    store: SqlStore,
    fake_realtime: FakeRealtimeServer,  # noqa: F811
    jira: RemoteTools,
) -> AsyncIterator[Guild]:
    """The bot with a JIRA server's tools enabled in the voice channel, realtime mode."""
    configured = with_voice(
        discord_settings(discord_server, settings),
        mode="realtime",
        realtime_base_url=fake_realtime.base_url,
        realtime_silence_ms=300,
    )
    await store.change_setting(
        "discord",
        discord_server.guild_id,
        discord_server.voice_channel_id,
        field="tools",
        value="+jira__*",
        changed_by=discord_server.alice.id,
    )
    async with running_voice_guild(
        discord_server, fake_model, configured, store, tool_sources=[jira]
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


async def _statuses(store: SqlStore) -> list[str]:
    async with store.engine.connect() as connection:
        return list((await connection.execute(select(TOOL_CONFIRMATIONS.c.status))).scalars())


async def _audited(store: SqlStore) -> list[str]:
    async with store.engine.connect() as connection:
        rows = await connection.execute(
            select(SETTING_CHANGES.c.new_value).where(SETTING_CHANGES.c.field == "tool_call")
        )
        return list(rows.scalars())


async def test_a_question_whose_session_ended_loses_its_buttons_and_runs_nothing(
    room: Room,
    fake_realtime: FakeRealtimeServer,  # noqa: F811
    jira: RemoteTools,
    store: SqlStore,
) -> None:
    server = room.guild.server
    question = await _bob_asks_for_a_ticket(room, fake_realtime)
    approve, _ = _custom_ids(question)

    reply = await voice_command(room.guild, "stop", user=server.alice)
    assert reply.startswith("Stopped listening")

    await server.wait_until(
        lambda: question["components"] == [], what="the question losing its buttons"
    )
    assert question["content"].split("\n")[-1] == SESSION_ENDED
    assert await _statuses(store) == ["timed_out"]
    # Discord shows no buttons to click any more; a click that was already on its way
    # is decided by nothing.
    confirmation_id = int(approve.split(":")[2])
    decision = await room.guild.core.decide_tool_call(
        confirmation_id, platform="discord", user_id=server.bob.id, approve=True
    )
    assert decision == "already_decided"
    assert jira.calls == [] and _outputs(fake_realtime) == []
    assert await _audited(store) == []


async def test_a_question_asked_before_a_restart_is_expired_when_clicked(
    voice_guild: Guild,
    settings: Settings,
    store: SqlStore,
    jira: RemoteTools,
) -> None:
    server = voice_guild.server
    bob = server.bob
    # The process before the restart heard Bob in a realtime session and asked him; it
    # is gone, and so is its session (this process never had one).
    before = ConversationCore(settings=settings, store=store, model=voice_guild.core._model)
    heard = incoming(
        "voice:7",
        text="File a ticket: the printer is on fire.",
        platform="discord",
        workspace=server.guild_id,
        channel=server.voice_channel_id,
        thread="",
        user_id=bob.id,
        user_name="Bob",
    )
    turn = await before.hear_spoken_turn(heard)
    assert turn is not None
    asked, _ = await store.open_confirmation(
        turn.turn_id,
        round=1,
        position=0,
        tool="jira__create_issue",
        arguments_hash="0" * 64,
        platform="discord",
        asker_id=bob.id,
        expires_at=datetime.now(UTC) + timedelta(minutes=2),
    )
    request = ConfirmationRequest(
        confirmation_id=asked.id,
        tool="jira__create_issue",
        arguments='{"title": "Printer on fire"}',
        asker_id=bob.id,
        asker_name="Bob",
        timeout_seconds=120,
    )
    client = voice_guild.adapter.client
    posted = await client.get_partial_messageable(int(server.voice_channel_id)).send(
        prompt_text(request), view=confirmation_view(request)
    )
    question = server.messages[str(posted.id)]
    approve, _ = _custom_ids(question)

    clicked = await server.click_button(question, approve, user=bob)

    told = await server.wait_until(lambda: server.followups(clicked), what="a private reply")
    assert told[0]["content"] == EXPIRED
    assert told[0]["_ephemeral"]
    await server.wait_until(
        lambda: question["components"] == [], what="the question losing its buttons"
    )
    assert question["content"].split("\n")[-1] == EXPIRED_OUTCOME
    assert await _statuses(store) == ["timed_out"]
    assert await _audited(store) == [], "nothing was approved"
    assert jira.calls == []

"""`/voice mode`: the server's own voice mode, chosen by those who manage its channels,
stored and audited like every setting, read when listening starts; without a choice
the configured `[voice] mode` applies. Real discord.py against the fake gateway, the
fake voice server (DAVE with real davey sessions) and the fake `/v1/realtime` server."""

from __future__ import annotations

from typing import Any

import pytest

from botservice.adapters.discord.events import PLATFORM
from botservice.adapters.discord.voice.connection import NOT_A_SERVER_MANAGER
from botservice.core.channel_policy import ChannelPolicy
from botservice.storage.repository import SqlStore
from tests.discord.conftest import Guild, option
from tests.discord.test_voice import joined, voice_command, voice_guild  # noqa: F401
from tests.discord.test_voice_listen import QUESTION, Room, listening, room  # noqa: F401
from tests.discord.test_voice_realtime_mode import fake_realtime  # noqa: F401
from tests.fakes.realtime_server import FakeRealtimeServer, Speak
from tests.voice.spoken_audio import silence, spoken


@pytest.fixture
def voice_options(fake_realtime: FakeRealtimeServer) -> dict[str, Any]:  # noqa: F811
    """Configured for pipeline mode, with a realtime server a server may choose."""
    return {
        "mode": "pipeline",
        "realtime_base_url": fake_realtime.base_url,
        "realtime_silence_ms": 300,
        "listen_pause_seconds": 0.4,
    }


async def voice_mode(guild: Guild, value: str | None = None, *, user: Any = None) -> str:
    options = [option("value", value)] if value is not None else []
    return await voice_command(guild, "mode", *options, user=user or guild.server.alice)


async def mode_changes(store: SqlStore, guild: Guild) -> list[tuple[str | None, str | None, str]]:
    changes = await store.setting_changes(PLATFORM, guild.server.guild_id, "")
    return [(c.old, c.new, c.changed_by) for c in changes if c.field == "voice_mode"]


async def test_a_manager_chooses_realtime_for_the_server_and_listening_uses_it(
    room: Room,  # noqa: F811
    fake_realtime: FakeRealtimeServer,  # noqa: F811
    sqlite_store: SqlStore,
) -> None:
    server = room.guild.server
    fake_realtime.script.append(Speak("Sunny, twenty degrees.", audio_ms=400))

    reply = await voice_mode(room.guild, "realtime")

    assert reply == "Voice mode in this server is now realtime."
    assert await mode_changes(sqlite_store, room.guild) == [(None, "realtime", server.alice.id)]
    await listening(room)
    bob = await room.enters(server.bob)
    room.says(bob, spoken(QUESTION))
    await server.wait_until(
        lambda: fake_realtime.of_type("input_audio_buffer.append"), what="audio in the session"
    )
    assert fake_realtime.received[0]["type"] == "session.update"
    await server.wait_until(
        lambda: "\N{SPEAKER WITH THREE SOUND WAVES} Sunny, twenty degrees." in room.posted(),
        what="the realtime answer",
    )
    assert room.transcriptions() == [], "no pipeline: the realtime server heard it"


async def test_without_a_choice_the_configured_mode_applies_and_says_why(
    room: Room,  # noqa: F811
    fake_realtime: FakeRealtimeServer,  # noqa: F811
) -> None:
    server = room.guild.server

    shown = await voice_mode(room.guild, user=server.bob)  # showing is for anyone

    assert shown.startswith("Voice mode in this server: pipeline (")
    assert "No one chose one for this server, so it is the bot's default" in shown
    await listening(room)
    bob = await room.enters(server.bob)
    room.says(bob, silence(0.2) + spoken(QUESTION))
    await room.transcribed()
    assert fake_realtime.received == []


async def test_showing_a_chosen_mode_names_who_chose_it(room: Room) -> None:  # noqa: F811
    server = room.guild.server
    await voice_mode(room.guild, "realtime")

    shown = await voice_mode(room.guild, user=server.bob)

    assert shown.startswith("Voice mode in this server: realtime (")
    assert f"<@{server.alice.id}> chose it on <t:" in shown
    assert "`/voice mode default` goes back to the bot's default, pipeline." in shown


async def test_only_those_who_manage_the_server_s_channels_change_it(
    room: Room,  # noqa: F811
    sqlite_store: SqlStore,
) -> None:
    server = room.guild.server

    reply = await voice_mode(room.guild, "realtime", user=server.bob)

    assert reply == NOT_A_SERVER_MANAGER.format(managers=ChannelPolicy.managers("discord"))
    assert await mode_changes(sqlite_store, room.guild) == []
    assert (await voice_mode(room.guild)).startswith("Voice mode in this server: pipeline (")


@pytest.mark.parametrize("voice_options", [{"realtime_model": " "}])
async def test_realtime_is_refused_when_no_model_is_configured_for_it(
    room: Room,  # noqa: F811
    sqlite_store: SqlStore,
) -> None:
    reply = await voice_mode(room.guild, "realtime")

    assert reply == (
        "Realtime mode needs a speech-to-speech model, and none is configured "
        "(`[voice] realtime_model`); ask whoever runs the bot to set one."
    )
    assert await mode_changes(sqlite_store, room.guild) == []


async def test_a_change_while_listening_applies_at_the_next_listen(
    room: Room,  # noqa: F811
    fake_realtime: FakeRealtimeServer,  # noqa: F811
) -> None:
    server = room.guild.server
    channel = f"<#{server.voice_channel_id}>"
    await listening(room)
    bob = await room.enters(server.bob)

    reply = await voice_mode(room.guild, "realtime")

    assert reply == (
        "Voice mode in this server is now realtime. I am listening in "
        f"{channel} in pipeline mode now; realtime mode applies at the next /voice listen "
        "(/voice stop, then /voice listen)."
    )
    room.says(bob, silence(0.2) + spoken(QUESTION))
    await room.transcribed()  # still the pipeline
    assert fake_realtime.received == []

    assert (await voice_command(room.guild, "stop", user=server.alice)).startswith("Stopped")
    await listening(room)
    await server.wait_until(lambda: fake_realtime.received, what="the realtime session opened")
    assert fake_realtime.received[0]["type"] == "session.update"
    shown = await voice_mode(room.guild)
    assert "applies at the next" not in shown


@pytest.mark.parametrize("voice_options", [{"mode": "realtime", "listen_pause_seconds": 0.4}])
async def test_default_goes_back_to_the_configured_mode(
    room: Room,  # noqa: F811
    fake_realtime: FakeRealtimeServer,  # noqa: F811
    sqlite_store: SqlStore,
) -> None:
    server = room.guild.server
    # Configured realtime, but its server is unreachable here: a server chooses the pipeline.
    assert await voice_mode(room.guild, "pipeline") == "Voice mode in this server is now pipeline."
    await listening(room)
    bob = await room.enters(server.bob)
    room.says(bob, silence(0.2) + spoken(QUESTION))
    await room.transcribed()

    reply = await voice_mode(room.guild, "default")

    assert reply.startswith("Voice mode in this server is now realtime (the bot's default).")
    assert await mode_changes(sqlite_store, room.guild) == [
        (None, "pipeline", server.alice.id),
        ("pipeline", None, server.alice.id),
    ]
    assert "No one chose one" in await voice_mode(room.guild)


@pytest.mark.parametrize("voice_options", [{"realtime_model": ""}])
async def test_listening_refuses_a_chosen_realtime_mode_the_bot_can_no_longer_serve(
    room: Room,  # noqa: F811
    sqlite_store: SqlStore,
) -> None:
    """Chosen while it worked; the operator has since removed the realtime model."""
    server = room.guild.server
    await sqlite_store.change_setting(
        PLATFORM, server.guild_id, "", field="voice_mode", value="realtime", changed_by="1"
    )

    reply = await voice_command(room.guild, "listen", user=server.alice)

    assert reply.startswith("Realtime mode needs a speech-to-speech model")
    assert room.connection._connection._listeners == []
    assert "ask whoever runs the bot" in await voice_mode(room.guild)

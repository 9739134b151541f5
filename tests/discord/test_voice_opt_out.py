"""`/voice ignore-me` is stored: a restart of the adapter (a new process, a new store on
the same database) still drops the member's audio before it is decoded, and forget-me
removes the opt-out. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from botservice.adapters.discord import create_adapter
from botservice.adapters.discord.voice.connection import OPTED_IN, OPTED_OUT
from botservice.core.conversation import ConversationCore
from botservice.core.settings import Settings
from botservice.model.client import OpenAIChatClient
from tests.db import StoreFactory
from tests.discord.conftest import Guild, discord_settings
from tests.discord.test_voice import joined, voice_command, with_voice
from tests.discord.test_voice_listen import QUESTION, Room, listening
from tests.fakes.discord_server import FakeDiscordServer
from tests.fakes.discord_voice import FakeVoiceConnection
from tests.fakes.model_server import FakeModelServer
from tests.voice.spoken_audio import silence, spoken


@asynccontextmanager
async def bot_process(
    server: FakeDiscordServer, model_server: FakeModelServer, settings: Settings, store: Any
) -> AsyncIterator[Guild]:
    """One run of the bot: its own store (on the shared database), core and adapter."""
    configured = with_voice(discord_settings(server, settings), listen_pause_seconds=0.4)
    model = OpenAIChatClient(configured.model)
    core = ConversationCore(settings=configured, store=store, model=model)
    adapter = create_adapter(
        configured, core, store, guild_ready_timeout=0.05, voice_connect_cls=FakeVoiceConnection
    )
    FakeVoiceConnection.made.clear()
    await adapter.start()
    try:
        yield Guild(server, model_server, core, adapter)
    finally:
        await core.drain()
        await adapter.stop()
        await model.aclose()


async def bob_speaks_while_listened_to(guild: Guild) -> tuple[Room, int]:
    """Alice has the bot listen; Bob says something. Returns the room and his packets."""
    server = guild.server
    server.voice_requests.clear()  # what an earlier run asked of the gateway
    await server.join_voice(server.alice)
    room = Room(guild, await joined(guild))
    await listening(room)
    bob = await room.enters(server.bob)
    packets = room.says(bob, silence(0.2) + spoken(QUESTION))
    return room, len(packets)


def _receiver(room: Room) -> Any:
    voice = room.guild.adapter.voice
    assert voice is not None
    listener = voice._sessions[int(room.guild.server.guild_id)].listener
    assert listener is not None and listener.receiver is not None
    return listener.receiver


async def test_an_opt_out_survives_a_restart(
    discord_server: FakeDiscordServer,
    fake_model: FakeModelServer,
    settings: Settings,
    make_store: StoreFactory,
) -> None:
    server = discord_server
    async with bot_process(server, fake_model, settings, await make_store()) as before:
        assert await voice_command(before, "ignore-me", user=server.bob) == OPTED_OUT

    async with bot_process(server, fake_model, settings, await make_store()) as after:
        room, sent = await bob_speaks_while_listened_to(after)
        try:
            await server.wait_until(
                lambda: _receiver(room).counts.ignored >= sent, what="bob's packets dropped"
            )
            assert _receiver(room).counts.frames == 0
            assert room.transcriptions() == []
            # And undoing it is stored too.
            assert await voice_command(after, "ignore-me", user=server.bob) == OPTED_IN
        finally:
            room.server.close()

    async with bot_process(server, fake_model, settings, await make_store()) as again:
        room, _ = await bob_speaks_while_listened_to(again)
        try:
            await room.transcribed()
        finally:
            room.server.close()


async def test_forget_me_removes_the_opt_out(
    discord_server: FakeDiscordServer,
    fake_model: FakeModelServer,
    settings: Settings,
    make_store: StoreFactory,
) -> None:
    server = discord_server
    async with bot_process(server, fake_model, settings, await make_store()) as before:
        assert await voice_command(before, "ignore-me", user=server.bob) == OPTED_OUT
        interaction = await server.send_command("forget-me", user=server.bob)
        await before.original_response(interaction)

    async with bot_process(server, fake_model, settings, await make_store()) as after:
        room, _ = await bob_speaks_while_listened_to(after)
        try:
            [request] = await room.transcribed()
            assert request.files["file"]
        finally:
            room.server.close()

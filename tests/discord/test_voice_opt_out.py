"""`/voice ignore-me` is stored: a restart of the adapter (a new process, a new store on
the same database) still drops the member's audio before it is decoded, another
process's opt-out reaches a listening session within seconds, and forget-me removes the
opt-out. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from botservice.adapters.discord.voice.connection import (
    OPT_OUT_REFRESH_SECONDS,
    OPTED_IN,
    OPTED_OUT,
    OPTED_OUT_UNSTORED,
)
from botservice.core.settings import Settings
from botservice.storage.engine import create_engine
from botservice.storage.repository import SqlStore
from tests.db import StoreFactory
from tests.discord.conftest import Guild, discord_settings
from tests.discord.test_voice import joined, running_voice_guild, voice_command, with_voice
from tests.discord.test_voice_listen import QUESTION, Room, listening
from tests.fakes.discord_server import FakeDiscordServer
from tests.fakes.model_server import FakeModelServer
from tests.fakes.tcp_proxy import TcpProxy
from tests.voice.spoken_audio import silence, spoken


@asynccontextmanager
async def bot_process(
    server: FakeDiscordServer, model_server: FakeModelServer, settings: Settings, store: Any
) -> AsyncIterator[Guild]:
    """One run of the bot: its own store (on the shared database), core and adapter."""
    configured = with_voice(discord_settings(server, settings), listen_pause_seconds=0.4)
    async with running_voice_guild(server, model_server, configured, store) as guild:
        yield guild


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


async def test_an_opt_out_stored_by_another_process_is_honoured_while_listening(
    discord_server: FakeDiscordServer,
    fake_model: FakeModelServer,
    settings: Settings,
    make_store: StoreFactory,
) -> None:
    server = discord_server
    other_process = await make_store()
    async with bot_process(server, fake_model, settings, await make_store()) as listening_one:
        room, _ = await bob_speaks_while_listened_to(listening_one)
        try:
            await room.transcribed()
            heard = _receiver(room).counts.frames

            # Bob says /voice ignore-me to the other process (its store, same database).
            await other_process.set_voice_opt_out(
                "discord", server.guild_id, server.bob.id, opted_out=True
            )
            # The bound: one refresh period, and a second for the read itself.
            await asyncio.sleep(OPT_OUT_REFRESH_SECONDS + 1.0)
            bob = room.server.members[int(server.bob.id)]
            packets = room.says(bob, spoken(QUESTION))

            await server.wait_until(
                lambda: _receiver(room).counts.ignored >= len(packets),
                what="bob's packets dropped",
            )
            assert _receiver(room).counts.frames == heard, "not one more frame decoded"
            await asyncio.sleep(1.0)  # time to transcribe it, were it heard
            assert len(room.transcriptions()) == 1
        finally:
            room.server.close()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_an_opt_out_that_could_not_be_stored_holds_while_the_process_runs(
    discord_server: FakeDiscordServer,
    fake_model: FakeModelServer,
    settings: Settings,
    database_url: str,
) -> None:
    """Reading the opt-outs again (every few seconds while listening) does not bring back
    a member whose opt-out was only kept in memory because the database was away."""
    server = discord_server
    address = make_url(database_url)
    proxy = TcpProxy((address.host or "127.0.0.1", address.port or 5432))
    await proxy.start()
    store = SqlStore(
        create_engine(address.set(host="127.0.0.1", port=proxy.port).render_as_string(False))
    )
    try:
        async with bot_process(server, fake_model, settings, store) as bot:
            room, _ = await bob_speaks_while_listened_to(bot)
            try:
                await room.transcribed()
                heard = _receiver(room).counts.frames

                await proxy.cut()
                assert await voice_command(bot, "ignore-me", user=server.bob) == (
                    OPTED_OUT_UNSTORED
                )
                await proxy.restore()
                await asyncio.sleep(OPT_OUT_REFRESH_SECONDS + 1.0)  # read again meanwhile
                bob = room.server.members[int(server.bob.id)]
                packets = room.says(bob, spoken(QUESTION))

                await server.wait_until(
                    lambda: _receiver(room).counts.ignored >= len(packets),
                    what="bob's packets dropped",
                )
                assert _receiver(room).counts.frames == heard
                assert len(room.transcriptions()) == 1
            finally:
                room.server.close()
    finally:
        await store.aclose()
        await proxy.close()

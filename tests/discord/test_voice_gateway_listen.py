"""Listening through discord.py's own `VoiceClient`: it connects to the fake voice gateway
(TLS websocket, UDP on loopback), keys its real DAVE session in the group the gateway
runs (external sender, proposals, its own commit, transitions), hears a member speak
and speaks the answer back, DAVE-encrypted, over UDP."""

from __future__ import annotations

import io
import wave
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import davey  # type: ignore[import-not-found,unused-ignore]
import discord.opus
import numpy as np
import pytest_asyncio
from discord.ext.voice_recv import rtp
from discord.ext.voice_recv.reader import PacketDecryptor

from botservice.adapters.discord import create_adapter
from botservice.core.conversation import ConversationCore
from botservice.core.settings import Settings
from botservice.model.client import OpenAIChatClient
from botservice.storage.repository import SqlStore
from tests.discord.conftest import Guild, discord_settings, subcommand
from tests.discord.test_voice import with_voice
from tests.fakes.discord_server import FakeDiscordServer
from tests.fakes.discord_voice_gateway import MODE, FakeVoiceGateway
from tests.fakes.model_server import FakeModelServer
from tests.voice.spoken_audio import at_16k_mono, correlation, silence, spoken

TRANSCRIPT = "hello from the fake transcriber"
QUESTION = "What is the weather like in Paris today?"


@pytest_asyncio.fixture
async def gateway(discord_server: FakeDiscordServer) -> AsyncIterator[FakeVoiceGateway]:
    gateway = FakeVoiceGateway(int(discord_server.voice_channel_id))
    await gateway.start()
    discord_server.voice_endpoint = gateway.endpoint
    try:
        yield gateway
    finally:
        await gateway.close()


@pytest_asyncio.fixture
async def bot(
    discord_server: FakeDiscordServer,
    fake_model: FakeModelServer,
    settings: Settings,
    sqlite_store: SqlStore,
    gateway: FakeVoiceGateway,
) -> AsyncIterator[Guild]:
    configured = with_voice(
        discord_settings(discord_server, settings), listen_pause_seconds=0.4, speech_model="tts-1"
    )
    model = OpenAIChatClient(configured.model)
    core = ConversationCore(settings=configured, store=sqlite_store, model=model)
    adapter = create_adapter(
        configured,
        core,
        sqlite_store,
        guild_ready_timeout=0.05,
        http_connector=lambda: aiohttp.TCPConnector(ssl=gateway.client_ssl),
    )
    await adapter.start()
    try:
        yield Guild(discord_server, fake_model, core, adapter)
    finally:
        await core.drain()
        await adapter.stop()
        await model.aclose()


async def command(guild: Guild, name: str) -> str:
    server = guild.server
    interaction = await server.send_command("voice", [subcommand(name)], user=server.alice)
    return str((await guild.original_response(interaction))["content"])


def transcriptions(guild: Guild) -> list[Any]:
    return [r for r in guild.model.requests if r.path.endswith("/audio/transcriptions")]


def heard_audio(request: Any) -> np.ndarray:
    with wave.open(io.BytesIO(request.files["file"])) as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float64)


async def test_a_member_is_heard_and_answered_through_discord_pys_voice_client(
    bot: Guild, gateway: FakeVoiceGateway
) -> None:
    server = bot.server
    await server.join_voice(server.alice)
    await server.join_voice(server.bob)
    assert (await command(bot, "join")).startswith("Joined")
    await gateway.bot_connected()
    assert await command(bot, "listen") == f"Listening in <#{server.voice_channel_id}>."

    bob = await gateway.member_joins(int(server.bob.id), ssrc=7001)
    question = spoken(QUESTION)
    gateway.speak(bob, silence(0.2) + question)
    await server.wait_until(lambda: transcriptions(bot), what="the transcription request")

    assert correlation(at_16k_mono(question), heard_audio(transcriptions(bot)[0])) > 0.8
    await bot.answered_in(server.voice_channel_id, count=3)
    assert f"You said: {TRANSCRIPT}" in [
        m["content"] for m in server.bot_messages(server.voice_channel_id)
    ]
    # The answer comes back over UDP, DAVE-encrypted by discord.py: Bob can hear it.
    await server.wait_until(lambda: len(gateway.bot_packets) > 10, what="the answer spoken")
    packet = rtp.decode_rtp(gateway.bot_packets[5])
    frame = PacketDecryptor(MODE, gateway.secret_key).decrypt_rtp(packet)
    opus = bob.session.decrypt(int(server.bot.id), davey.MediaType.audio, frame)
    assert len(discord.opus.Decoder().decode(opus, fec=False)) == 3840


async def test_members_joining_and_leaving_mid_utterance_and_a_bad_network(
    bot: Guild, gateway: FakeVoiceGateway
) -> None:
    server = bot.server
    await server.join_voice(server.alice)
    await server.join_voice(server.bob)
    await command(bot, "join")
    await gateway.bot_connected()
    await command(bot, "listen")
    bob = await gateway.member_joins(int(server.bob.id), ssrc=7001)
    question = spoken(QUESTION)
    third = len(question) // 3 // 3840 * 3840

    first = gateway.speech(bob, question[:third], silence_frames=0)
    del first[20]  # lost
    first[30], first[31] = first[31], first[30]  # reordered
    first.insert(10, first[10])  # duplicated
    gateway.send(first)
    alice = await gateway.member_joins(int(server.alice.id), ssrc=7002)
    gateway.speak(bob, question[third : 2 * third], silence_frames=0)
    await gateway.member_leaves(alice.user_id)
    gateway.speak(bob, question[2 * third :])
    await server.wait_until(lambda: transcriptions(bot), what="the transcription request")

    assert gateway.epoch == 3
    assert correlation(at_16k_mono(question), heard_audio(transcriptions(bot)[0])) > 0.7
    await bot.answered_in(server.voice_channel_id, count=3)

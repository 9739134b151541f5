"""Realtime mode in a Discord voice channel: `/voice listen` opens one speech-to-speech
session with the fake `/v1/realtime` server; a member's speech (Opus, DAVE, RTP, UDP on
loopback) goes into it at 24 kHz, the answer comes back as Discord frames, and both
sides are written in the channel's text chat and stored as the conversation's turn."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from botservice.storage.repository import SqlStore
from tests.discord.test_voice import joined, voice_command, voice_guild  # noqa: F401
from tests.discord.test_voice_listen import (  # noqa: F401
    QUESTION,
    Room,
    listening,
    room,
    stored_texts,
)
from tests.fakes.realtime_server import FakeRealtimeServer, Speak
from tests.voice.spoken_audio import spoken


@pytest_asyncio.fixture
async def fake_realtime() -> AsyncIterator[FakeRealtimeServer]:
    server = FakeRealtimeServer(heard="What is the weather like in Paris today?")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def voice_options(fake_realtime: FakeRealtimeServer) -> dict[str, Any]:
    return {
        "mode": "realtime",
        "realtime_base_url": fake_realtime.base_url,
        "realtime_silence_ms": 300,
    }


async def test_a_member_talks_with_the_realtime_model_through_the_voice_channel(
    room: Room,  # noqa: F811
    fake_realtime: FakeRealtimeServer,
    sqlite_store: SqlStore,
) -> None:
    server = room.guild.server
    fake_realtime.script.append(Speak("Sunny, twenty degrees.", audio_ms=600))
    await listening(room)
    bob = await room.enters(server.bob)

    room.says(bob, spoken(QUESTION))

    await server.wait_until(
        lambda: "\N{SPEAKER WITH THREE SOUND WAVES} Sunny, twenty degrees." in room.posted(),
        what="the answer written once spoken",
    )
    assert '\N{MICROPHONE} Bob: "What is the weather like in Paris today?"' in room.posted()
    assert room.connection.speech_packets, "the answer was played into the channel"
    update = fake_realtime.received[0]
    assert update["type"] == "session.update"
    assert update["session"]["model"] == "gpt-realtime"
    appended = fake_realtime.of_type("input_audio_buffer.append")
    assert appended, "the member's audio went into the session"
    # No transcription request: the realtime server hears the audio itself.
    assert not room.transcriptions()
    # Both sides are the conversation's messages, the model not asked again.
    async with asyncio.timeout(10):
        while True:
            if await stored_texts(sqlite_store, "assistant"):
                break
            await asyncio.sleep(0.02)
    assert await stored_texts(sqlite_store, "user") == ["What is the weather like in Paris today?"]
    assert await stored_texts(sqlite_store, "assistant") == ["Sunny, twenty degrees."]
    assert not [r for r in room.guild.model.requests if r.path.endswith("/chat/completions")]


async def test_voice_stop_closes_the_realtime_session(
    room: Room,  # noqa: F811
    fake_realtime: FakeRealtimeServer,
) -> None:
    await listening(room)
    reply = await voice_command(room.guild, "stop", user=room.guild.server.alice)
    assert reply.startswith("Stopped listening")
    await room.guild.server.wait_until(
        lambda: room.posted()[-1].startswith("Stopped listening"), what="the notice"
    )
    assert not room.connection.is_playing()


async def test_a_session_the_server_ends_stops_listening_and_says_so(
    room: Room,  # noqa: F811
    fake_realtime: FakeRealtimeServer,
) -> None:
    await listening(room)
    await fake_realtime.end_sessions()
    await room.guild.server.wait_until(
        lambda: any("session for" in text and "ended" in text for text in room.posted()),
        what="the notice that the session ended",
    )
    await room.guild.server.wait_until(
        lambda: room.posted()[-1].startswith("Stopped listening"), what="listening stopped"
    )
    reply = await voice_command(room.guild, "listen", user=room.guild.server.alice)
    assert reply.startswith("Listening in"), "listening can start again"

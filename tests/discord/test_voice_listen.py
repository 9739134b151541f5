"""The bot listens in a voice channel: /voice listen by a manager, members' speech sent as
a Discord client sends it (Opus, DAVE with real davey sessions in a group keyed by the
fake voice server, RTP, transport encryption, UDP on loopback), heard, transcribed by
the fake model server, written as `🎤 Name: "…"`, answered and spoken; barge-in, opt-out,
and refusals."""

from __future__ import annotations

import asyncio
import io
import logging
import wave
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from sqlalchemy import select

from botservice.adapters.discord.voice.connection import (
    LISTENING_STATUS,
    NOT_A_MANAGER,
    NOT_CONNECTED,
)
from botservice.storage.repository import SqlStore
from botservice.storage.tables import MESSAGES
from botservice.voice.barge_in import UNSPOKEN_MARK
from tests.discord.conftest import Guild
from tests.discord.test_voice import joined, voice_command, voice_guild  # noqa: F401
from tests.fakes.discord_server import FakeUser
from tests.fakes.discord_voice import FakeVoiceConnection
from tests.fakes.discord_voice_server import FakeDiscordVoiceServer, SimulatedMember
from tests.voice.spoken_audio import at_16k_mono, correlation, seconds_of, silence, spoken

TRANSCRIPT = "hello from the fake transcriber"
QUESTION = "What is the weather like in Paris today?"


@pytest.fixture
def voice_options() -> dict[str, Any]:
    return {"listen_pause_seconds": 0.4}


class Room:
    """The voice channel as its members and the voice server see it."""

    def __init__(self, guild: Guild, connection: FakeVoiceConnection) -> None:
        self.guild = guild
        self.connection = connection
        self.server = FakeDiscordVoiceServer(
            int(guild.server.voice_channel_id),
            int(guild.server.bot.id),
            connection._connection.dave_session,
        )
        connection.secret_key = self.server.secret_key
        self.server.connect_bot(connection._connection.address)
        self._ssrc = 7000

    async def enters(self, user: FakeUser) -> SimulatedMember:
        """A member is added to the DAVE group and SPEAKING ties their SSRC to them."""
        self._ssrc += 1
        member = self.server.join(int(user.id), ssrc=self._ssrc)
        await self.connection._connection.deliver(self.server.speaking_event(member))
        return member

    async def leaves(self, member: SimulatedMember) -> None:
        self.server.leave(member.user_id)
        await self.connection._connection.deliver(self.server.disconnect_event(member.user_id))

    def says(self, member: SimulatedMember, pcm: bytes, **options: Any) -> list[bytes]:
        packets = self.server.speech(member, pcm, **options)
        self.server.send(packets)
        return packets

    def transcriptions(self) -> list[Any]:
        return [r for r in self.guild.model.requests if r.path.endswith("/audio/transcriptions")]

    async def transcribed(self, count: int = 1) -> list[Any]:
        await self.guild.server.wait_until(
            lambda: len(self.transcriptions()) >= count, what=f"{count} transcriptions"
        )
        return self.transcriptions()

    def posted(self) -> list[str]:
        return [
            str(m["content"])
            for m in self.guild.server.bot_messages(self.guild.server.voice_channel_id)
        ]


@pytest_asyncio.fixture
async def room(voice_guild: Guild) -> AsyncIterator[Room]:  # noqa: F811
    server = voice_guild.server
    await server.join_voice(server.alice)
    connection = await joined(voice_guild)
    room = Room(voice_guild, connection)
    yield room
    room.server.close()


async def listening(room: Room) -> None:
    reply = await voice_command(room.guild, "listen", user=room.guild.server.alice)
    assert reply == f"Listening in <#{room.guild.server.voice_channel_id}>."


def heard_audio(request: Any) -> np.ndarray:
    with wave.open(io.BytesIO(request.files["file"])) as wav:
        assert (wav.getframerate(), wav.getnchannels()) == (16_000, 1)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float64)


async def stored_texts(store: SqlStore, role: str) -> list[str]:
    async with store.engine.connect() as connection:
        rows = await connection.execute(
            select(MESSAGES.c.text).where(MESSAGES.c.role == role).order_by(MESSAGES.c.id)
        )
        return [str(row.text) for row in rows]


async def test_a_member_is_heard_transcribed_answered_and_spoken(
    room: Room, sqlite_store: SqlStore
) -> None:
    server = room.guild.server
    await listening(room)
    assert room.posted()[-1].startswith("\N{STUDIO MICROPHONE} Listening in")
    bob = await room.enters(server.bob)
    question = spoken(QUESTION)

    room.says(bob, silence(0.2) + question)
    [request] = await room.transcribed()

    audio = heard_audio(request)
    # The utterance holds the question, a little from before it and the pause after it.
    assert seconds_of(question) < len(audio) / 16_000 < seconds_of(question) + 1.0
    assert correlation(at_16k_mono(question), audio) > 0.8
    await room.guild.answered_in(server.voice_channel_id, count=3)
    assert f'\N{MICROPHONE} Bob: "{TRANSCRIPT}"' in room.posted()
    assert f"You said: {TRANSCRIPT}" in room.posted()
    await server.wait_until(lambda: room.connection.speech_packets, what="the answer spoken")
    assert await stored_texts(sqlite_store, "user") == [TRANSCRIPT]
    assert room.connection._connection.dave_session.epoch == 1


async def test_members_joining_and_leaving_mid_utterance_and_a_bad_network(room: Room) -> None:
    server = room.guild.server
    await listening(room)
    bob = await room.enters(server.bob)
    question = spoken(QUESTION)
    half = len(question) // 2 // 3840 * 3840
    first = room.server.speech(bob, question[:half], silence_frames=0)

    del first[20]  # lost
    first[30], first[31] = first[31], first[30]  # reordered
    first.insert(40, first[40])  # duplicated
    room.server.send(first)
    alice = await room.enters(server.alice)  # re-keyed mid-utterance
    room.says(bob, question[half : half + 3840 * 10], silence_frames=0)
    await room.leaves(alice)  # and again
    room.says(bob, question[half + 3840 * 10 :])
    [request] = await room.transcribed()

    assert correlation(at_16k_mono(question), heard_audio(request)) > 0.7
    assert room.connection._connection.dave_session.epoch == 3
    await room.guild.answered_in(server.voice_channel_id, count=3)


async def test_speaking_over_the_bot_stops_it_and_the_answer_marks_what_was_not_said(
    room: Room, sqlite_store: SqlStore
) -> None:
    server = room.guild.server
    room.guild.model.answer = lambda body: " ".join(f"This is sentence {n}." for n in range(30))
    await listening(room)
    bob = await room.enters(server.bob)
    room.says(bob, spoken(QUESTION))
    interruption = spoken("Stop, stop.")
    # A few sentences in (the fake speech endpoint's are about a second each).
    await server.wait_until(
        lambda: len(room.connection.speech_packets) > 150, what="some sentences spoken"
    )

    room.says(bob, interruption, silence_frames=0)
    await server.wait_until(lambda: room.connection.stops, what="playback stopped")
    await room.guild.core.drain()

    def marked() -> list[str]:
        return [t for t in answers if UNSPOKEN_MARK in t]

    answers: list[str] = []
    for _ in range(100):
        answers = await stored_texts(sqlite_store, "assistant")
        if marked():
            break
        await room.guild.core.drain()
        await asyncio.sleep(0.02)
    [answer] = marked()
    said, _, unsaid = answer.partition(UNSPOKEN_MARK)
    assert said.startswith("This is sentence 0.")
    assert "This is sentence 29." in unsaid


async def test_a_member_who_opted_out_is_not_heard(room: Room) -> None:
    server = room.guild.server
    await listening(room)
    reply = await voice_command(room.guild, "ignore-me", user=server.bob)
    assert reply.startswith("I will not listen to you")
    bob = await room.enters(server.bob)

    packets = room.says(bob, spoken(QUESTION))
    await server.wait_until(
        lambda: _receiver(room).counts.ignored >= len(packets), what="bob's packets dropped"
    )

    assert _receiver(room).counts.frames == 0
    assert room.transcriptions() == []


async def test_listening_is_refused_to_a_member_who_does_not_manage_the_channel(
    room: Room,
) -> None:
    server = room.guild.server

    reply = await voice_command(room.guild, "listen", user=server.bob)

    assert reply == NOT_A_MANAGER
    assert room.connection._connection._listeners == []
    assert not any("Listening in" in text for text in room.posted())


async def test_listening_needs_the_bot_in_a_voice_channel(voice_guild: Guild) -> None:  # noqa: F811
    await voice_guild.server.join_voice(voice_guild.server.alice)

    reply = await voice_command(voice_guild, "listen", user=voice_guild.server.alice)

    assert reply == NOT_CONNECTED


async def test_voice_stop_ends_listening(room: Room) -> None:
    server = room.guild.server
    await listening(room)
    bob = await room.enters(server.bob)

    reply = await voice_command(room.guild, "stop", user=server.alice)
    room.says(bob, spoken(QUESTION))
    await asyncio.sleep(1.0)  # time enough to hear and transcribe it, were it listening

    assert reply == "Stopped listening."
    assert room.connection._connection._listeners == []
    assert room.posted()[-1] == f"Stopped listening in <#{server.voice_channel_id}>."
    assert room.transcriptions() == []


def _receiver(room: Room) -> Any:
    voice = room.guild.adapter.voice
    assert voice is not None
    session = voice._sessions[int(room.guild.server.guild_id)]
    assert session.listener is not None and session.listener.receiver is not None
    return session.listener.receiver


async def test_the_listener_attaches_to_discord_py_s_own_voice_client() -> None:
    """The seam read of discord.py 2.7.1 (no receive API of its own): its voice connection
    state takes a socket listener and a websocket hook, and holds the DAVE session."""
    import discord

    from botservice.adapters.discord.voice.listening import VoiceListener
    from botservice.voice.endpointing import EndpointingSettings, silero_activity

    client = discord.Client(intents=discord.Intents.none())
    channel: Any = type("Channel", (), {"id": 1, "guild": type("Guild", (), {"id": 2})()})()
    voice_client = discord.VoiceClient(client, channel)
    state = voice_client._connection
    state.mode = "aead_xchacha20_poly1305_rtpsize"
    state.secret_key = list(range(32))  # as op 4 (SESSION_DESCRIPTION) leaves it

    async def nothing(*args: Any) -> None:
        return None

    listener = VoiceListener(
        voice_client,
        settings=EndpointingSettings(),
        activity=silero_activity,
        ignored=lambda user_id: False,
        on_speech=nothing,
        on_utterance=nothing,
    )
    listener.start()
    assert listener.receiver is not None
    assert len(state._socket_reader._callbacks) == 1
    await state.hook(None, {"op": 5, "d": {"user_id": "77", "ssrc": 9, "speaking": 1}})
    await state.hook(None, {"op": 4, "d": {"mode": state.mode, "secret_key": [1] * 32}})

    await listener.stop()

    assert state._socket_reader._callbacks == []
    assert state.hook is None


async def test_leaving_ends_listening(room: Room) -> None:
    server = room.guild.server
    await listening(room)

    reply = await voice_command(room.guild, "leave", user=server.alice)

    assert reply == f"Left <#{server.voice_channel_id}>."
    assert room.connection._connection._listeners == []
    assert room.connection.disconnected


async def test_while_listening_the_voice_channel_s_status_says_so(room: Room) -> None:
    server = room.guild.server
    assert server.voice_status(server.voice_channel_id) is None

    await listening(room)
    assert server.voice_status(server.voice_channel_id) == LISTENING_STATUS

    await voice_command(room.guild, "stop", user=server.alice)
    assert server.voice_status(server.voice_channel_id) is None
    assert server.voice_statuses == [
        (server.voice_channel_id, LISTENING_STATUS),
        (server.voice_channel_id, None),
    ]


async def test_leaving_clears_the_listening_status(room: Room) -> None:
    server = room.guild.server
    await listening(room)

    await voice_command(room.guild, "leave", user=server.alice)

    assert server.voice_status(server.voice_channel_id) is None
    assert server.voice_statuses[-1] == (server.voice_channel_id, None)


async def test_without_permission_for_the_status_it_still_listens_and_logs_it_once(
    room: Room, caplog: pytest.LogCaptureFixture
) -> None:
    server = room.guild.server
    server.voice_status_denied = True
    caplog.set_level(logging.WARNING, logger="botservice.adapters.discord.voice.connection")

    await listening(room)
    bob = await room.enters(server.bob)
    room.says(bob, silence(0.2) + spoken(QUESTION))
    await room.transcribed()
    await voice_command(room.guild, "stop", user=server.alice)
    await listening(room)  # a second time: not logged again

    refused = [r for r in caplog.records if "could not set the status" in r.getMessage()]
    assert len(refused) == 1
    assert server.voice_statuses == []
    assert room.posted()[-1].startswith("\N{STUDIO MICROPHONE} Listening in")
    # Never set, so never cleared: no request for it when listening ends.
    await voice_command(room.guild, "stop", user=server.alice)
    assert len(server.calls_to("PUT", "voice-status")) == 2

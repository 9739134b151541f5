"""Voice on Discord through the real discord.py client: /voice join|leave|stop|ask against the
fake gateway (VOICE_STATE_UPDATE), a fake voice connection at discord.py's VoiceProtocol
seam, spoken answers, and voice messages transcribed by the fake model server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_asyncio

from botservice.adapters.discord import create_adapter
from botservice.adapters.discord.voice.connection import NOT_CONNECTED, NOT_IN_VOICE
from botservice.core.conversation import ConversationCore
from botservice.core.events import Attachment, IncomingMessage
from botservice.core.settings import Settings
from botservice.model.client import OpenAIChatClient
from botservice.storage.repository import SqlStore
from tests.discord.conftest import Guild, discord_settings, option, subcommand
from tests.fakes.discord_server import FakeDiscordServer
from tests.fakes.discord_voice import FakeVoiceConnection
from tests.fakes.model_server import FakeModelServer


def with_voice(settings: Settings, **voice: Any) -> Settings:
    return settings.model_copy(update={"voice": settings.voice.model_copy(update=voice)})


@pytest.fixture
def voice_options() -> dict[str, Any]:
    """Overridden by a test (through indirect parametrization) to change `[voice]` settings."""
    return {}


@pytest_asyncio.fixture
async def voice_guild(
    discord_server: FakeDiscordServer,
    fake_model: FakeModelServer,
    settings: Settings,
    sqlite_store: SqlStore,
    voice_options: dict[str, Any],
) -> AsyncIterator[Guild]:
    configured = with_voice(discord_settings(discord_server, settings), **voice_options)
    async with running_voice_guild(discord_server, fake_model, configured, sqlite_store) as guild:
        yield guild


@asynccontextmanager
async def running_voice_guild(
    server: FakeDiscordServer,
    model_server: FakeModelServer,
    configured: Settings,
    store: Any,
    **core_options: Any,
) -> AsyncIterator[Guild]:
    """The bot on `store`: its core (`core_options`: usage, tool sources) and Discord
    adapter, joining voice through fake connections; stopped and drained on exit."""
    model = OpenAIChatClient(configured.model)
    core = ConversationCore(settings=configured, store=store, model=model, **core_options)
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


async def voice_command(guild: Guild, name: str, *options: dict[str, Any], user: Any = None) -> str:
    """Run `/voice <name>` and return the text of its (ephemeral) response."""
    interaction = await guild.server.send_command(
        "voice", [subcommand(name, *options)], user=user or guild.server.bob
    )
    original = await guild.original_response(interaction)
    assert original["_ephemeral"]
    return str(original["content"])


async def joined(guild: Guild) -> FakeVoiceConnection:
    server = guild.server
    await server.join_voice(server.bob)
    reply = await voice_command(guild, "join")
    assert reply.startswith("Joined <#" + server.voice_channel_id + ">")
    assert server.voice_requests == [(server.guild_id, server.voice_channel_id)]
    [connection] = FakeVoiceConnection.made
    assert connection.is_connected() and connection.self_deaf
    return connection


async def test_join_is_refused_when_the_caller_is_in_no_voice_channel(voice_guild: Guild) -> None:
    reply = await voice_command(voice_guild, "join")

    assert reply == NOT_IN_VOICE
    assert voice_guild.server.voice_requests == []
    assert FakeVoiceConnection.made == []


async def test_join_is_refused_without_connect_and_speak(
    discord_server: FakeDiscordServer, voice_guild: Guild
) -> None:
    server = voice_guild.server
    server.bot_voice_denied = True
    # Discord tells the bot about changed permission overwrites with CHANNEL_UPDATE.
    await server.dispatch("CHANNEL_UPDATE", server.voice_channel_payload())
    await server.join_voice(server.bob)

    reply = await voice_command(voice_guild, "join")

    assert "I need the Connect and Speak permissions" in reply
    assert server.voice_requests == []


@pytest.mark.parametrize("voice_options", [{"ffmpeg_executable": "/nowhere/ffmpeg"}])
async def test_missing_ffmpeg_is_reported_at_join(voice_guild: Guild) -> None:
    await voice_guild.server.join_voice(voice_guild.server.bob)

    reply = await voice_command(voice_guild, "join")

    assert reply.startswith("Voice is off because ffmpeg is missing.")
    assert "`apt-get install ffmpeg`" in reply
    assert voice_guild.server.voice_requests == []


async def test_an_answer_is_spoken_in_the_voice_channel_and_still_written(
    voice_guild: Guild,
) -> None:
    server = voice_guild.server
    connection = await joined(voice_guild)

    asked = await server.send_message("Tell me a short story.", mention_bot=True)
    reply = await voice_guild.reply_to(asked)

    assert reply["content"] == "You said: Tell me a short story."
    await server.wait_until(lambda: len(connection.speech_packets) > 20, what="speech packets")


@pytest.mark.parametrize("voice_options", [{"speech_model": "tts-1"}])
async def test_a_channels_speech_settings_are_used_when_speaking(voice_guild: Guild) -> None:
    server, model = voice_guild.server, voice_guild.model
    connection = await joined(voice_guild)
    interaction = await server.send_command(
        "speech",
        [subcommand("set", option("voice", "nova"), option("model", "gpt-4o-mini-tts"))],
        user=server.owner,
    )
    original = await voice_guild.original_response(interaction)
    assert original["content"] == (
        "Speech settings updated. This channel speaks in the voice nova "
        "with the speech model gpt-4o-mini-tts."
    )

    asked = await server.send_message("Speak up.", mention_bot=True)
    await voice_guild.reply_to(asked)
    await server.wait_until(lambda: connection.speech_packets, what="speech packets")
    await voice_command(voice_guild, "ask", option("prompt", "And aloud only."))

    def spoken() -> list[tuple[str, str, str]]:
        return [
            (r.body["input"], r.body["voice"], r.body["model"])
            for r in model.requests
            if r.path.endswith("/audio/speech")
        ]

    await server.wait_until(lambda: len(spoken()) == 2, what="two speech requests")
    assert spoken() == [
        ("You said: Speak up.", "nova", "gpt-4o-mini-tts"),
        ("You said: And aloud only.", "nova", "gpt-4o-mini-tts"),
    ]


async def test_a_person_outside_the_voice_channel_only_gets_text(voice_guild: Guild) -> None:
    server = voice_guild.server
    connection = await joined(voice_guild)

    asked = await server.send_message("Quietly, please.", author=server.alice, mention_bot=True)
    reply = await voice_guild.reply_to(asked)

    assert reply["content"] == "You said: Quietly, please."
    assert connection.packets == []


async def test_ask_in_the_voice_channel_text_chat_is_spoken(voice_guild: Guild) -> None:
    server = voice_guild.server
    connection = await joined(voice_guild)

    interaction = await server.send_command(
        "ask",
        [option("prompt", "Hello there.")],
        user=server.alice,
        channel_id=server.voice_channel_id,
    )
    original = await voice_guild.original_response(interaction)

    assert original["content"] == "You said: Hello there."
    await server.wait_until(lambda: connection.speech_packets, what="speech packets")


async def test_voice_ask_answers_aloud_with_only_a_note_in_text(voice_guild: Guild) -> None:
    server = voice_guild.server
    connection = await joined(voice_guild)

    reply = await voice_command(voice_guild, "ask", option("prompt", "Say something nice."))

    assert (
        reply
        == f"\N{SPEAKER WITH THREE SOUND WAVES} Answered aloud in <#{server.voice_channel_id}>."
    )
    assert voice_guild.model.chat_requests[-1].last_user_text == "Say something nice."
    await server.wait_until(lambda: connection.speech_packets, what="speech packets")
    assert "You said" not in str([m["content"] for m in server.messages.values()])


async def test_voice_ask_and_leave_need_a_voice_connection(voice_guild: Guild) -> None:
    assert await voice_command(voice_guild, "leave") == NOT_CONNECTED
    interaction = await voice_guild.server.send_command(
        "voice", [subcommand("ask", option("prompt", "Hi"))]
    )
    original = await voice_guild.server.wait_until(
        lambda: voice_guild.server.original_response(interaction), what="a refusal"
    )
    assert original["content"] == NOT_CONNECTED
    assert voice_guild.model.chat_requests == []


async def test_voice_stop_cuts_the_answer_being_spoken(voice_guild: Guild) -> None:
    server = voice_guild.server
    connection = await joined(voice_guild)
    voice_guild.model.answer = lambda body: "This is a long answer. " * 20

    await voice_command(voice_guild, "ask", option("prompt", "Talk for a while."))
    await server.wait_until(lambda: connection.speech_packets, what="speech packets")
    reply = await voice_command(voice_guild, "stop")

    assert reply == "Stopped."
    assert not connection.is_playing()
    speaker = voice_guild.adapter.voice.speakers.get(server.guild_id)  # type: ignore[union-attr]
    assert speaker is not None and not speaker.speaking


async def test_voice_leave_disconnects(voice_guild: Guild) -> None:
    server = voice_guild.server
    connection = await joined(voice_guild)

    reply = await voice_command(voice_guild, "leave")

    assert reply == f"Left <#{server.voice_channel_id}>."
    assert server.voice_requests[-1] == (server.guild_id, None)
    assert connection.disconnected
    assert server.voice_states == {server.bob.id: server.voice_channel_id}


async def test_the_bot_leaves_when_the_channel_empties(voice_guild: Guild) -> None:
    server = voice_guild.server
    connection = await joined(voice_guild)

    await server.leave_voice(server.bob)

    await server.wait_until(lambda: connection.disconnected, what="the bot to leave")
    assert server.voice_requests[-1] == (server.guild_id, None)
    assert voice_guild.adapter.voice.connection(int(server.guild_id)) is None  # type: ignore[union-attr]


@pytest.mark.parametrize("voice_options", [{"idle_leave_seconds": 0.3}])
async def test_the_bot_leaves_after_an_idle_time(voice_guild: Guild) -> None:
    server = voice_guild.server
    connection = await joined(voice_guild)

    await server.wait_until(lambda: connection.disconnected, seconds=5, what="an idle leave")
    assert server.voice_requests[-1] == (server.guild_id, None)


async def test_a_voice_message_is_transcribed_and_answered(voice_guild: Guild) -> None:
    server, model = voice_guild.server, voice_guild.model
    model.transcript = "What is the capital of France?"

    sent = await server.send_voice_message(b"OggS fake opus audio", dm=True)
    [reply] = await voice_guild.answered_in(sent["channel_id"])

    [transcription] = [r for r in model.requests if r.path.endswith("/audio/transcriptions")]
    assert transcription.body["model"] == "whisper-1"
    assert model.chat_requests[-1].last_user_text == "What is the capital of France?"
    assert reply["content"] == (
        "> \N{MICROPHONE} \N{LEFT DOUBLE QUOTATION MARK}What is the capital of France?"
        "\N{RIGHT DOUBLE QUOTATION MARK}\nYou said: What is the capital of France?"
    )


async def test_a_voice_message_delivered_twice_is_transcribed_once(voice_guild: Guild) -> None:
    server, model = voice_guild.server, voice_guild.model
    sent = await server.send_voice_message(b"OggS fake opus audio", dm=True)
    await server.redispatch(sent)
    await voice_guild.answered_in(sent["channel_id"])

    assert len([r for r in model.requests if r.path.endswith("/audio/transcriptions")]) == 1
    assert len(model.chat_requests) == 1


@pytest.mark.parametrize("voice_options", [{"transcription_max_bytes": 8}])
async def test_audio_that_cannot_be_transcribed_gets_one_sentence_and_no_model_call(
    voice_guild: Guild,
) -> None:
    server, model = voice_guild.server, voice_guild.model
    sent = await server.send_voice_message(b"OggS far too much audio", dm=True)

    [reply] = await voice_guild.answered_in(sent["channel_id"])

    assert reply["content"].startswith("That audio is too long for me to transcribe")
    assert model.requests == []


async def test_a_voice_message_left_unheard_by_a_crash_is_heard_when_its_turn_resumes(
    voice_guild: Guild, sqlite_store: SqlStore
) -> None:
    # What a crash mid-transcription leaves: the message stored with its audio's link,
    # its turn pending, nothing heard yet.
    server, model = voice_guild.server, voice_guild.model
    model.transcript = "Did my voice message arrive?"
    file = server.add_attachment("voice-message.ogg", "audio/ogg", b"OggS fake opus", voice=True)
    sent = server._message(
        channel_id=server.channel_id, author=server.bob, content="", attachments=[file]
    )
    server.messages[sent["id"]] = sent
    incoming = IncomingMessage(
        platform="discord",
        workspace=server.guild_id,
        channel=server.channel_id,
        thread=sent["id"],
        user_id=server.bob.id,
        user_name="Bob",
        text="",
        message_key=sent["id"],
        attachments=(
            Attachment(
                name="voice-message.ogg",
                content_type="audio/ogg",
                url=file["url"],
                size=file["size"],
            ),
        ),
        reply_target={"kind": "message", "channel_id": server.channel_id, "reply_to": sent["id"]},
    )
    assert await sqlite_store.accept(
        incoming, text="[Attached: voice-message.ogg (audio/ogg)]", tokens=5
    )

    assert await voice_guild.core.resume_pending(voice_guild.adapter.sink_for) == 1
    reply = await voice_guild.reply_to(sent)

    assert reply["content"] == (
        "> \N{MICROPHONE} \N{LEFT DOUBLE QUOTATION MARK}Did my voice message arrive?"
        "\N{RIGHT DOUBLE QUOTATION MARK}\nYou said: Did my voice message arrive?"
    )
    assert model.chat_requests[-1].last_user_text == "Did my voice message arrive?"
    assert await sqlite_store.pending_turns() == []

"""Speech through discord.py's own audio player, with a voice client faked at its network seam."""

from __future__ import annotations

import asyncio

import discord.opus

from botservice.adapters.discord.voice.dependencies import check_discord_voice, load_opus
from botservice.adapters.discord.voice.playback import DiscordPlayback
from botservice.voice.pipeline import VoiceSpeaker
from botservice.voice.speech import EspeakSpeechEngine
from tests.voice.helpers import FakeVoiceClient


async def test_sentences_reach_discord_as_opus_packets_at_20ms(espeak: EspeakSpeechEngine) -> None:
    assert load_opus()
    voice_client = FakeVoiceClient(asyncio.get_running_loop())
    speaker = VoiceSpeaker(espeak, DiscordPlayback(voice_client))

    speaker.say("Hello voice channel. This is the second sentence.")
    await asyncio.wait_for(speaker.wait_done(), 20)

    # Speech packets plus the five silence packets discord.py sends after each source.
    speech = [p for p in voice_client.packets if p != b"\xf8\xff\xfe"]
    assert len(speech) > 100
    decoder = discord.opus.Decoder()
    assert len(decoder.decode(speech[len(speech) // 2], fec=False)) == 3840
    # Paced in real time: about 20 ms a packet.
    elapsed = voice_client.packet_times[-1] - voice_client.packet_times[0]
    assert elapsed > 0.8 * 0.020 * len(voice_client.packets)


async def test_interrupt_stops_discord_playback(espeak: EspeakSpeechEngine) -> None:
    voice_client = FakeVoiceClient(asyncio.get_running_loop())
    speaker = VoiceSpeaker(espeak, DiscordPlayback(voice_client))
    speaker.say("This sentence would take a good few seconds to play in full. And another one.")
    assert await asyncio.to_thread(voice_client.first_packet.wait, 5)
    await asyncio.sleep(0.2)

    await speaker.interrupt()
    sent = len(voice_client.packets)
    await asyncio.sleep(0.3)

    assert voice_client.stops == 1
    assert not voice_client.is_playing()
    assert len(voice_client.packets) - sent <= 6  # at most the trailing silence
    assert sent < 100, "the whole sentence was played despite the interruption"


def test_discord_sees_every_voice_dependency() -> None:
    check = check_discord_voice()
    assert check.ok, check.summary()

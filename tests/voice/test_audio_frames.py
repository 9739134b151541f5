"""Text -> espeak-ng -> ffmpeg -> 20 ms frames that discord.py's Opus encoder takes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import os
import shutil
import time
import wave
from pathlib import Path

import discord.opus
import pytest

from botservice.core.voice_settings import VoiceSettings
from botservice.voice.audio import (
    FRAME_BYTES,
    AudioError,
    DependencyMissing,
    decode_frames,
    pcm_frames,
)
from botservice.voice.dependencies import check_voice_dependencies
from botservice.voice.speech import EspeakSpeechEngine
from tests.voice.helpers import wav_info

SENTENCE = "The quick brown fox jumps over the lazy dog, and then it takes a short nap."


async def test_espeak_speech_becomes_whole_20ms_frames(espeak: EspeakSpeechEngine) -> None:
    wav = await espeak.synthesize(SENTENCE)
    info = wav_info(wav)
    assert info.seconds > 1.5

    frames = await decode_frames(wav)

    assert FRAME_BYTES == 3840
    assert {len(frame) for frame in frames} == {FRAME_BYTES}
    expected = math.ceil(info.seconds / 0.020)
    assert abs(len(frames) - expected) <= 1, (len(frames), expected, info)


async def test_frames_opus_encode_with_discord_encoder(espeak: EspeakSpeechEngine) -> None:
    frames = await decode_frames(await espeak.synthesize("Hello from the voice channel."))
    encoder = discord.opus.Encoder()
    decoder = discord.opus.Decoder()

    packets = [encoder.encode(frame, encoder.SAMPLES_PER_FRAME) for frame in frames]

    assert all(0 < len(packet) <= 1275 for packet in packets)
    # Speech, not silence: Opus spends far more than a DTX byte or two on most frames.
    assert sum(len(packet) > 20 for packet in packets) > len(packets) // 2
    assert len(decoder.decode(packets[len(packets) // 2], fec=False)) == FRAME_BYTES


async def test_the_last_partial_frame_is_padded_not_dropped() -> None:
    # 25 ms of 48 kHz stereo: one whole frame and a quarter.
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(48_000)
        out.writeframes(b"\x01\x00" * 2 * int(48_000 * 0.025))
    frames = await decode_frames(buffer.getvalue())
    assert len(frames) == 2
    assert {len(frame) for frame in frames} == {FRAME_BYTES}
    assert frames[1][-4:] == bytes(4), "padding is silence"


async def test_frames_stream_before_the_input_has_all_arrived(espeak: EspeakSpeechEngine) -> None:
    wav = await espeak.synthesize(SENTENCE)
    rest_sent = asyncio.Event()

    async def slow_input():
        yield wav[: len(wav) // 2]
        await asyncio.sleep(1.0)
        rest_sent.set()
        yield wav[len(wav) // 2 :]

    async with contextlib.aclosing(pcm_frames(slow_input())) as frames:
        first = await anext(frames)
        assert len(first) == FRAME_BYTES
        assert not rest_sent.is_set(), "the first frame waited for the whole input"
        remaining = [frame async for frame in frames]
    assert rest_sent.is_set()
    assert len(remaining) > 50


async def test_closing_early_stops_ffmpeg(espeak: EspeakSpeechEngine) -> None:
    wav = await espeak.synthesize(SENTENCE * 4)
    started = time.monotonic()
    async with contextlib.aclosing(pcm_frames(wav)) as frames:
        await anext(frames)
    assert time.monotonic() - started < 2


async def test_audio_ffmpeg_cannot_read_is_an_audio_error() -> None:
    with pytest.raises(AudioError, match="ffmpeg decoding failed"):
        await decode_frames(b"this is not audio at all" * 10)


async def test_missing_ffmpeg_executable_names_the_package(espeak: EspeakSpeechEngine) -> None:
    wav = await espeak.synthesize("Hi.")
    with pytest.raises(DependencyMissing) as caught:
        await decode_frames(wav, ffmpeg="/nonexistent/bin/ffmpeg")
    assert caught.value.name == "ffmpeg"
    assert "apt-get install ffmpeg" in caught.value.user_message


async def test_ffmpeg_missing_from_path_is_reported_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, espeak: EspeakSpeechEngine
) -> None:
    wav = await espeak.synthesize("Hi.")
    # A PATH with espeak-ng but without ffmpeg.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    espeak_path = shutil.which("espeak-ng")
    assert espeak_path is not None
    os.symlink(espeak_path, bin_dir / "espeak-ng")
    monkeypatch.setenv("PATH", str(bin_dir))

    check = check_voice_dependencies(VoiceSettings())
    assert [piece.name for piece in check.missing] == ["ffmpeg"]
    assert "ffmpeg is missing" in check.summary()
    assert "`apt-get install ffmpeg`" in check.summary()
    assert "Text replies work as usual" in check.summary()

    with pytest.raises(DependencyMissing, match="ffmpeg"):
        await decode_frames(wav)
    # The local engine itself still works without ffmpeg.
    assert (await EspeakSpeechEngine().synthesize("Still here."))[:4] == b"RIFF"


def test_every_voice_dependency_is_present_on_this_machine() -> None:
    check = check_voice_dependencies(VoiceSettings())
    assert check.ok, check.summary()
    assert {piece.name for piece in check.pieces} == {
        "ffmpeg",
        "libopus",
        "PyNaCl",
        "davey",
        "espeak-ng",
    }


def test_missing_python_packages_point_at_the_voice_extra() -> None:
    check = check_voice_dependencies(VoiceSettings(), opus_loaded=False, nacl=False, davey=True)
    summary = check.summary()
    assert [piece.name for piece in check.missing] == ["libopus", "PyNaCl"]
    assert "libopus: `apt-get install libopus0`" in summary
    assert "PyNaCl: `pip install 'discord.py[voice]'`" in summary


def test_espeak_is_not_required_when_a_speech_endpoint_speaks() -> None:
    voice = VoiceSettings(speech_model="tts-1", espeak_executable="/nonexistent/espeak-ng")
    assert "espeak-ng" not in {piece.name for piece in check_voice_dependencies(voice).pieces}
    local = VoiceSettings(espeak_executable="/nonexistent/espeak-ng")
    assert [p.name for p in check_voice_dependencies(local).missing] == ["espeak-ng"]

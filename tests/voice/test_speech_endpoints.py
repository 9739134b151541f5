"""The speech engines, and the speech and transcription endpoints of the fake model server
over real HTTP."""

from __future__ import annotations

import socket

import pytest
from pydantic import SecretStr

from botservice.core.voice_settings import VoiceSettings
from botservice.voice.audio import FRAME_BYTES, decode_frames
from botservice.voice.speech import (
    EspeakSpeechEngine,
    OpenAISpeechEngine,
    SpeechEndpointError,
    SpeechEngineMissing,
    SpeechError,
    create_speech_engine,
)
from botservice.voice.transcription import (
    AudioTooLarge,
    NothingHeard,
    Transcriber,
    TranscriptionEndpointError,
)
from tests.fakes.model_server import FakeModelServer
from tests.voice.helpers import wav_info


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# --- speech ---------------------------------------------------------------------------


async def test_espeak_speaks_wav_offline(espeak: EspeakSpeechEngine) -> None:
    info = wav_info(await espeak.synthesize("One small step."))
    assert info.channels == 1 and info.bits == 16
    assert 0.5 < info.seconds < 5


async def test_espeak_voice_can_be_chosen_per_call(espeak: EspeakSpeechEngine) -> None:
    german = await espeak.synthesize("Guten Tag.", voice="de")
    assert german[:4] == b"RIFF"
    with pytest.raises(SpeechError, match="espeak-ng failed"):
        await espeak.synthesize("Hello.", voice="zzqx")


async def test_missing_espeak_names_the_package() -> None:
    engine = EspeakSpeechEngine(executable="/nonexistent/espeak-ng")
    with pytest.raises(SpeechEngineMissing) as caught:
        await engine.synthesize("Hello.")
    assert "apt-get install espeak-ng" in caught.value.user_message


async def test_speech_endpoint_over_http(fake_model: FakeModelServer) -> None:
    engine = OpenAISpeechEngine(
        base_url=fake_model.base_url, model="tts-1", voice="nova", api_key=SecretStr("sk-test")
    )
    try:
        first = await engine.synthesize("Hello from the speech endpoint.")
        await engine.synthesize("A second sentence.", voice="echo")
    finally:
        await engine.aclose()

    speech = [r for r in fake_model.requests if r.path == "/v1/audio/speech"]
    assert [r.body for r in speech] == [
        {
            "model": "tts-1",
            "voice": "nova",
            "input": "Hello from the speech endpoint.",
            "response_format": "wav",
        },
        {
            "model": "tts-1",
            "voice": "echo",
            "input": "A second sentence.",
            "response_format": "wav",
        },
    ]
    assert speech[0].headers["Authorization"] == "Bearer sk-test"
    assert speech[0].peer == speech[1].peer, "one pooled connection, not a client per request"

    frames = await decode_frames(first)
    assert {len(frame) for frame in frames} == {FRAME_BYTES}
    assert abs(len(frames) - wav_info(first).seconds / 0.02) <= 1


async def test_speech_endpoint_errors_are_speech_errors(fake_model: FakeModelServer) -> None:
    unreachable = OpenAISpeechEngine(base_url=closed_port_url(), model="tts-1")
    wrong_path = OpenAISpeechEngine(base_url=fake_model.base_url + "/nowhere", model="tts-1")
    try:
        with pytest.raises(SpeechEndpointError) as caught:
            await unreachable.synthesize("Hi.")
        assert caught.value.status is None
        assert "could not reach the speech endpoint" in caught.value.user_message
        with pytest.raises(SpeechEndpointError) as caught:
            await wrong_path.synthesize("Hi.")
        assert caught.value.status == 404
    finally:
        await unreachable.aclose()
        await wrong_path.aclose()


def test_engine_choice_follows_the_settings() -> None:
    local = create_speech_engine(VoiceSettings(), model_base_url="http://127.0.0.1:9/v1")
    assert isinstance(local, EspeakSpeechEngine)

    endpoint = create_speech_engine(
        VoiceSettings(speech_model="gpt-4o-mini-tts", speech_voice="coral"),
        model_base_url="http://127.0.0.1:9/v1",
    )
    assert isinstance(endpoint, OpenAISpeechEngine)
    assert (endpoint.base_url, endpoint.model, endpoint.voice) == (
        "http://127.0.0.1:9/v1",
        "gpt-4o-mini-tts",
        "coral",
    )

    own_url = create_speech_engine(
        VoiceSettings(speech_model="tts-1", speech_base_url="http://127.0.0.1:8/v1/"),
        model_base_url="http://127.0.0.1:9/v1",
    )
    assert isinstance(own_url, OpenAISpeechEngine) and own_url.base_url == "http://127.0.0.1:8/v1"

    forced_local = create_speech_engine(
        VoiceSettings(speech_model="tts-1", speech_engine="espeak"), model_base_url="http://x/v1"
    )
    assert isinstance(forced_local, EspeakSpeechEngine)


# --- transcription ----------------------------------------------------------------------


async def test_transcription_over_http(
    fake_model: FakeModelServer, espeak: EspeakSpeechEngine
) -> None:
    fake_model.transcript = "  what is the weather like  "
    audio = await espeak.synthesize("What is the weather like?")
    transcriber = Transcriber.from_settings(
        VoiceSettings(transcription_model="whisper-large"),
        model_base_url=fake_model.base_url,
        api_key=SecretStr("sk-test"),
    )
    try:
        text = await transcriber.transcribe(
            audio, filename="voice-message.wav", content_type="audio/wav"
        )
        await transcriber.transcribe(audio, filename="again.wav", language="en")
    finally:
        await transcriber.aclose()

    assert text == "what is the weather like"
    uploads = [r for r in fake_model.requests if r.path == "/v1/audio/transcriptions"]
    assert uploads[0].body == {"model": "whisper-large", "response_format": "json"}
    assert uploads[0].files == {"file": audio}
    assert uploads[0].headers["Authorization"] == "Bearer sk-test"
    assert uploads[1].body["language"] == "en"
    assert uploads[0].peer == uploads[1].peer


async def test_transcription_errors(fake_model: FakeModelServer) -> None:
    small = Transcriber(base_url=fake_model.base_url, max_bytes=1000)
    unreachable = Transcriber(base_url=closed_port_url())
    wrong_path = Transcriber(base_url=fake_model.base_url + "/nowhere")
    try:
        with pytest.raises(AudioTooLarge) as too_large:
            await small.transcribe(bytes(5 * 1024 * 1024))
        assert "too long for me to transcribe (5.0 MB" in too_large.value.user_message
        assert not [r for r in fake_model.requests if "transcriptions" in r.path], "never uploaded"

        with pytest.raises(TranscriptionEndpointError) as unreached:
            await unreachable.transcribe(b"audio")
        assert unreached.value.status is None

        with pytest.raises(TranscriptionEndpointError) as missing:
            await wrong_path.transcribe(b"audio")
        assert missing.value.status == 404

        fake_model.transcript = "   "
        with pytest.raises(NothingHeard):
            await small.transcribe(b"audio")
    finally:
        for transcriber in (small, unreachable, wrong_path):
            await transcriber.aclose()

"""`botservice voice render`: what the bot would say, written to a file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from botservice.core.settings import ModelSettings, Settings
from botservice.core.voice_settings import VoiceSettings
from botservice.voice.audio import DependencyMissing
from botservice.voice.render import (
    NothingToSay,
    OutputFolderMissing,
    UnsupportedOutput,
    render_to_file,
)
from tests.fakes.model_server import FakeModelServer


def settings_with(voice: VoiceSettings, base_url: str = "http://127.0.0.1:9/v1") -> Settings:
    return Settings(model=ModelSettings(base_url=base_url), voice=voice)


def probe(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


@pytest.mark.parametrize(
    ("suffix", "codec"), [(".wav", "pcm_s16le"), (".ogg", "opus"), (".mp3", "mp3")]
)
async def test_render_writes_what_the_bot_would_say(
    tmp_path: Path, suffix: str, codec: str
) -> None:
    path = tmp_path / f"hello{suffix}"
    result = await render_to_file(
        settings_with(VoiceSettings()), "Hello there. This is how I sound.\n```\ncode\n```", path
    )

    info = probe(path)
    stream = info["streams"][0]
    assert (stream["codec_name"], stream["sample_rate"], stream["channels"]) == (codec, "48000", 2)
    assert abs(float(info["format"]["duration"]) - result.duration_seconds) < 0.1
    assert result.sentences == 3  # two sentences and "(code omitted)"
    assert result.engine.startswith("espeak-ng")
    assert (
        f"Wrote {path}: {result.duration_seconds:.2f} s of speech (3 sentences) with espeak-ng"
        in result.describe()
    )


async def test_render_through_the_speech_endpoint(
    tmp_path: Path, fake_model: FakeModelServer
) -> None:
    voice = VoiceSettings(speech_model="tts-1", speech_voice="alloy")
    result = await render_to_file(
        settings_with(voice, fake_model.base_url), "One. Two.", tmp_path / "x.wav"
    )

    assert [r.body["input"] for r in fake_model.requests if r.path == "/v1/audio/speech"] == [
        "One.",
        "Two.",
    ]
    assert result.engine == f"speech endpoint {fake_model.base_url} (model tts-1, voice alloy)"
    assert result.duration_seconds >= 0.4


async def test_render_refuses_unknown_formats_and_empty_text(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedOutput, match=r"use one of \.flac, \.mp3, \.ogg, \.opus, \.wav"):
        await render_to_file(settings_with(VoiceSettings()), "Hi.", tmp_path / "x.aiff")
    with pytest.raises(NothingToSay):
        await render_to_file(settings_with(VoiceSettings()), "  \n---\n** **", tmp_path / "x.wav")
    assert not (tmp_path / "x.wav").exists()


async def test_render_refuses_a_folder_that_is_not_there_before_speaking(tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "x.wav"
    with pytest.raises(OutputFolderMissing) as caught:
        await render_to_file(settings_with(VoiceSettings()), "Hi.", missing)
    assert caught.value.user_message == (
        f"cannot write {str(missing)!r}: the folder {str(missing.parent)!r} does not exist; "
        "create it first"
    )
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OutputFolderMissing, match=r"'.*a-file' is not a folder"):
        await render_to_file(settings_with(VoiceSettings()), "Hi.", tmp_path / "a-file" / "x.wav")
    assert not (tmp_path / "missing").exists()


async def test_render_without_ffmpeg_says_what_to_install(tmp_path: Path) -> None:
    voice = VoiceSettings(ffmpeg_executable=str(tmp_path / "no-ffmpeg-here"))
    with pytest.raises(DependencyMissing) as caught:
        await render_to_file(settings_with(voice), "Hello.", tmp_path / "x.wav")
    assert str(caught.value) == "ffmpeg is not installed (apt-get install ffmpeg)"

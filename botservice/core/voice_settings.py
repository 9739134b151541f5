"""Settings of the voice features, mounted in `Settings` as the `[voice]` section.

Kept apart from `settings.py` so that the voice modules can name their settings
without importing the whole settings loader (and the loader never imports the
voice code).
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

# The speech endpoint's model when the speech engine is forced to "endpoint" without one.
DEFAULT_SPEECH_MODEL = "tts-1"

# How the bot answers members talking in a voice channel it listens in: `[voice] mode`
# for the whole bot, `/voice mode` for one server (stored as its `voice_mode` setting).
VoiceMode = Literal["pipeline", "realtime"]
VOICE_MODES: tuple[VoiceMode, ...] = get_args(VoiceMode)


class VoiceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # "auto": the speech endpoint when `speech_model` is set, else espeak-ng.
    speech_engine: Literal["auto", "endpoint", "espeak"] = "auto"
    # An OpenAI-compatible `/audio/speech` model (e.g. "gpt-4o-mini-tts", "tts-1").
    speech_model: str | None = None
    speech_voice: str = "alloy"
    # None: the chat model's base URL (OPENAI_BASE_URL); the same API key is sent.
    speech_base_url: str | None = None
    speech_timeout_seconds: float = Field(default=30.0, gt=0)

    espeak_executable: str = "espeak-ng"
    espeak_voice: str = "en-us"
    espeak_words_per_minute: int = Field(default=175, ge=80, le=450)

    ffmpeg_executable: str = "ffmpeg"

    transcription_model: str = "whisper-1"
    # None: the chat model's base URL.
    transcription_base_url: str | None = None
    transcription_timeout_seconds: float = Field(default=60.0, gt=0)
    # OpenAI refuses uploads over 25 MB; refuse them before uploading.
    transcription_max_bytes: int = Field(default=25 * 1024 * 1024, gt=0)

    # Leave a voice channel after this long without speech (0: never for idleness).
    idle_leave_seconds: float = Field(default=300.0, ge=0)
    # A new question cuts the answer being spoken and drops its queued sentences.
    interrupt_on_new_question: bool = True
    # A sentence with no end in sight is cut at a comma or space after this many
    # characters, so speech does not wait on a run-on paragraph.
    max_sentence_chars: int = Field(default=300, ge=40)
    # How the bot answers members talking in a voice channel it listens in (`/voice
    # listen`): "pipeline" detects each member's utterances, transcribes them and
    # speaks the core's answer; "realtime" opens one speech-to-speech session per voice
    # channel on an OpenAI-compatible `/v1/realtime` websocket (botservice/voice/realtime.py).
    # A server's managers may choose another for it (`/voice mode`); this is the default.
    mode: VoiceMode = "pipeline"
    realtime_model: str = "gpt-realtime"
    realtime_voice: str = "alloy"
    # None: the chat model's base URL (its API key is sent too).
    realtime_base_url: str | None = None
    # The pause that ends a member's turn (server VAD); after a member's last audio the
    # session appends silence a little longer than this (Discord sends none).
    realtime_silence_ms: int = Field(default=500, ge=100, le=5000)
    # A member's utterance ends after this long without speech.
    listen_pause_seconds: float = Field(default=0.7, ge=0.1, le=5.0)
    # Voice activity probability (silero) above which a 32 ms window is speech.
    listen_speech_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    # Speech this long in a row starts an utterance (and interrupts the bot's speech).
    listen_min_speech_seconds: float = Field(default=0.03, ge=0.03, le=1.0)
    # An utterance is cut and sent off after this long even if the member talks on.
    listen_max_utterance_seconds: float = Field(default=30.0, ge=1.0, le=300.0)

    @property
    def uses_endpoint(self) -> bool:
        """Whether speech comes from the `/audio/speech` endpoint rather than espeak-ng."""
        return self.speech_engine == "endpoint" or (
            self.speech_engine == "auto" and self.speech_model is not None
        )

    @property
    def default_voice(self) -> str:
        """The voice a channel without its own speaks in, for the engine in use."""
        return self.speech_voice if self.uses_endpoint else self.espeak_voice


def voice_mode_of(value: str | None) -> VoiceMode | None:
    """A stored or typed voice mode, if it is one."""
    if value == "pipeline":
        return "pipeline"
    if value == "realtime":
        return "realtime"
    return None


def realtime_unavailable(voice: VoiceSettings, model_base_url: str) -> str | None:
    """Why realtime mode cannot work with these settings, in a sentence for a server's
    managers (the fix is the operator's); None when it can."""
    if not voice.realtime_model.strip():
        return (
            "Realtime mode needs a speech-to-speech model, and none is configured "
            "(`[voice] realtime_model`); ask whoever runs the bot to set one."
        )
    base_url = (voice.realtime_base_url or model_base_url).strip()
    if not base_url.startswith(("http://", "https://", "ws://", "wss://")):
        return (
            "Realtime mode needs the address of an OpenAI-compatible /v1/realtime server "
            "(`[voice] realtime_base_url`, or the model's `base_url`), and none usable is "
            "configured; ask whoever runs the bot to set one."
        )
    return None

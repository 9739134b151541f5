"""A member's utterances found by voice activity (silero): speech, a pause, speech."""

from __future__ import annotations

import pytest

from botservice.voice.endpointing import (
    EndpointingSettings,
    SpeechStarted,
    UtteranceDetector,
    UtteranceEnded,
    silero_activity,
)
from tests.voice.spoken_audio import frames, seconds_of, silence, spoken


class AudioClock:
    """Time as the frames arrive, 20 ms each, with no waiting."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def listen(detector: UtteranceDetector, clock: AudioClock, pcm: bytes) -> list[object]:
    heard: list[object] = []
    for frame in frames(pcm):
        clock.now += 0.02
        heard += detector.feed(frame)
    return heard


@pytest.fixture
def clock() -> AudioClock:
    return AudioClock()


def detector(clock: AudioClock, pause: float = 0.5) -> UtteranceDetector:
    return UtteranceDetector(
        EndpointingSettings(pause_seconds=pause), silero_activity(), clock=clock
    )


def test_speech_a_long_pause_and_speech_are_two_utterances(clock: AudioClock) -> None:
    first, second = spoken("What time is it in Tokyo?"), spoken("And in Lisbon?")

    events = listen(
        detector(clock), clock, silence(0.3) + first + silence(1.0) + second + silence(1.0)
    )

    kinds = [type(event).__name__ for event in events]
    assert kinds == ["SpeechStarted", "UtteranceEnded", "SpeechStarted", "UtteranceEnded"]
    utterances = [event for event in events if isinstance(event, UtteranceEnded)]
    # Each holds its speech, a little from before it and the pause that ended it.
    assert seconds_of(first) < utterances[0].seconds < seconds_of(first) + 1.0
    assert seconds_of(second) < utterances[1].seconds < seconds_of(second) + 1.0


def test_a_pause_shorter_than_the_setting_does_not_end_the_utterance(clock: AudioClock) -> None:
    first, second = spoken("What time is it in Tokyo?"), spoken("And in Lisbon?")

    events = listen(detector(clock, pause=0.8), clock, first + silence(0.4) + second + silence(1.0))

    assert [type(event).__name__ for event in events] == ["SpeechStarted", "UtteranceEnded"]


def test_speech_starts_within_a_tenth_of_a_second(clock: AudioClock) -> None:
    listening = detector(clock)
    listen(listening, clock, silence(0.5))
    started_at = clock.now

    events = listen(listening, clock, spoken("Stop, please."))

    [start] = [event for event in events if isinstance(event, SpeechStarted)]
    assert start.at - started_at <= 0.2


def test_a_member_who_stops_sending_ends_the_utterance_on_the_clock(clock: AudioClock) -> None:
    listening = detector(clock, pause=0.5)
    listen(listening, clock, spoken("Is anyone there?"))  # then the client sends nothing
    assert listening.speaking

    clock.now += 0.3
    assert listening.tick() is None
    clock.now += 0.3
    ended = listening.tick()

    assert ended is not None and ended.seconds > 0.5
    assert not listening.speaking


def test_silence_and_noise_are_no_utterance(clock: AudioClock) -> None:
    import numpy as np

    noise = (np.random.default_rng(7).normal(0, 300, 48_000 * 2 * 2)).astype("<i2").tobytes()

    assert listen(detector(clock), clock, silence(1.0) + noise) == []


def test_a_click_or_a_knock_is_no_utterance(clock: AudioClock) -> None:
    import numpy as np

    t = np.arange(480) / 48_000
    knock = (np.sign(np.sin(2 * np.pi * 1000 * t)) * 20000).astype("<i2")
    click = np.repeat(knock, 2).tobytes()  # 10 ms, full of high harmonics

    events = listen(
        detector(clock), clock, silence(0.5) + click + silence(0.5) + click + silence(1.0)
    )

    assert events == []

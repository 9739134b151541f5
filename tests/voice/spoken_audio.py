"""Speech for the listening tests: espeak-ng says a sentence, ffmpeg makes it the 48 kHz
stereo 16-bit PCM a Discord client encodes (the voice activity model needs real speech)."""

from __future__ import annotations

import functools
import subprocess

import numpy as np

RATE = 48_000
FRAME_BYTES = 3840


@functools.cache
def spoken(text: str) -> bytes:
    wav = subprocess.run(["espeak-ng", "--stdout", text], check=True, capture_output=True).stdout
    pcm = subprocess.run(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-i",
            "pipe:0",
            "-f",
            "s16le",
            "-ac",
            "2",
            "-ar",
            "48000",
            "pipe:1",
        ],
        input=wav,
        check=True,
        capture_output=True,
    ).stdout
    return whole_frames(pcm)


def silence(seconds: float) -> bytes:
    return bytes(int(RATE * seconds) * 4)


def whole_frames(pcm: bytes) -> bytes:
    return pcm[: len(pcm) - len(pcm) % FRAME_BYTES]


def frames(pcm: bytes) -> list[bytes]:
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]


def seconds_of(pcm: bytes) -> float:
    return len(pcm) / 4 / RATE


def at_16k_mono(pcm: bytes) -> np.ndarray:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64).reshape(-1, 2).mean(axis=1)
    usable = len(samples) - len(samples) % 3
    result: np.ndarray = samples[:usable].reshape(-1, 3).mean(axis=1)
    return result


def correlation(reference: np.ndarray, heard: np.ndarray) -> float:
    """Pearson correlation of `reference` with the part of `heard` that lines up with it
    best (heard may start earlier: it keeps a little audio from before the speech)."""
    size = 1 << (len(reference) + len(heard)).bit_length()
    lags = np.fft.irfft(np.fft.rfft(heard, size) * np.conj(np.fft.rfft(reference, size)), size)
    lag = int(np.argmax(lags[: max(1, len(heard) - len(reference) // 2)]))
    n = min(len(reference), len(heard) - lag)
    return float(np.corrcoef(reference[:n], heard[lag : lag + n])[0, 1])

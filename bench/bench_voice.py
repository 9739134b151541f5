"""Voice latency: from the first complete sentence in the model's stream to the first audio
frame handed to playback, with the local engine (espeak-ng) and with a speech endpoint (the
fake model server's `/audio/speech`), plus the local engine's real-time factor.

    python -m bench.bench_voice [--runs 60] [--chunk-delay 0.01]

The fake model server runs as its own process and streams the answer word by word
through the project's model client, as a real endpoint would. Target: the first frame
within 300 ms of the first sentence with the local engine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import statistics
import sys
import time
from dataclasses import dataclass, field

from botservice.core.ports import ChatRequest
from botservice.core.settings import ModelSettings
from botservice.model.client import OpenAIChatClient
from botservice.voice.audio import FRAME_SECONDS, decode_frames
from botservice.voice.pipeline import Utterance, VoiceSpeaker
from botservice.voice.speech import EspeakSpeechEngine, OpenAISpeechEngine, SpeechEngine

ANSWER = (
    "Sure, here is the forecast for tomorrow. It will be sunny and warm in the afternoon, "
    "with a light breeze from the west. Bring water if you go hiking."
)
TARGET_MS = 300.0
RTF_SENTENCES = [
    "Sure, here is the forecast for tomorrow.",
    "It will be sunny and warm in the afternoon, with a light breeze from the west.",
    "Bring water if you go hiking.",
    "The quick brown fox jumps over the lazy dog, and then it takes a short nap in the shade.",
]


@dataclass
class FirstFrame:
    at: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def playback(self, utterance: Utterance) -> None:
        async for _ in utterance.frames:
            if self.at is None:
                self.at = time.perf_counter()
                self.done.set()


async def first_frame_latency(model: OpenAIChatClient, engine: SpeechEngine) -> float:
    """Seconds from the first sentence being complete in the stream to its first frame."""
    recorder = FirstFrame()
    speaker = VoiceSpeaker(engine, recorder.playback)
    answer = speaker.begin_answer()
    sentence_at: float | None = None
    text = ""
    request = ChatRequest(model="fake-model", messages=[{"role": "user", "content": "forecast?"}])
    async for delta in model.stream(request):
        text += delta
        answer.update(text)
        if sentence_at is None and answer.sentences:
            sentence_at = time.perf_counter()
    answer.finish(text)
    await speaker.wait_done()
    await speaker.aclose()
    assert sentence_at is not None and recorder.at is not None
    return recorder.at - sentence_at


async def real_time_factor(engine: EspeakSpeechEngine, repeats: int) -> tuple[float, float, float]:
    """(synthesis RTF, synthesis + decoding RTF, seconds of audio per sentence)."""
    synth = total = audio = 0.0
    count = 0
    for _ in range(repeats):
        for sentence in RTF_SENTENCES:
            started = time.perf_counter()
            wav = await engine.synthesize(sentence)
            synthesized = time.perf_counter()
            frames = await decode_frames(wav)
            decoded = time.perf_counter()
            synth += synthesized - started
            total += decoded - started
            audio += len(frames) * FRAME_SECONDS
            count += 1
    return synth / audio, total / audio, audio / count


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def start_fake_server(chunk_delay: float) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.model_server",
        "--port",
        "0",
        "--chunk-delay",
        str(chunk_delay),
        "--answer",
        ANSWER,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
    if not line.startswith("READY "):
        raise SystemExit(f"the fake model server did not start: {line!r}")
    return process, line.removeprefix("READY ")


async def main(runs: int, chunk_delay: float) -> int:
    server, base_url = await start_fake_server(chunk_delay)
    model = OpenAIChatClient(ModelSettings(base_url=base_url))
    engines: list[tuple[str, SpeechEngine]] = [
        ("local (espeak-ng)", EspeakSpeechEngine()),
        ("speech endpoint (fake, HTTP)", OpenAISpeechEngine(base_url=base_url, model="tts-1")),
    ]
    rows: list[tuple[str, list[float]]] = []
    try:
        for name, engine in engines:
            await first_frame_latency(model, engine)  # warm-up: connections, caches
            samples = [await first_frame_latency(model, engine) for _ in range(runs)]
            rows.append((name, samples))
        synth_rtf, total_rtf, seconds = await real_time_factor(
            EspeakSpeechEngine(), max(1, runs // 10)
        )
    finally:
        for _, engine in engines:
            await engine.aclose()
        await model.aclose()
        server.terminate()
        with contextlib.suppress(ProcessLookupError):
            await server.wait()

    print(
        f"Voice: first complete sentence in the model's stream -> first 20 ms frame handed to playback ({runs} runs each)"
    )
    print()
    print(f"| {'engine':<30} | {'median':>8} | {'p99':>8} | {'max':>8} |")
    print(f"|{'-' * 32}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for name, samples in rows:
        ms = [sample * 1000 for sample in samples]
        print(
            f"| {name:<30} | {statistics.median(ms):>5.1f} ms | {percentile(ms, 0.99):>5.1f} ms | {max(ms):>5.1f} ms |"
        )
    print()
    print(
        f"Local engine real-time factor (lower is faster; {seconds:.1f} s of audio a sentence): "
        f"synthesis {synth_rtf:.3f}, synthesis + ffmpeg decoding {total_rtf:.3f}"
    )
    local_p99 = percentile([s * 1000 for s in rows[0][1]], 0.99)
    local_median = statistics.median(s * 1000 for s in rows[0][1])
    verdict = "met" if local_p99 <= TARGET_MS else "MISSED"
    print(
        f"Target (local engine, first frame within {TARGET_MS:.0f} ms of the first sentence): "
        f"{verdict} (median {local_median:.1f} ms, p99 {local_p99:.1f} ms)"
    )
    return 0 if verdict == "met" else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument(
        "--chunk-delay", type=float, default=0.01, help="seconds between streamed words"
    )
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.runs, args.chunk_delay)))

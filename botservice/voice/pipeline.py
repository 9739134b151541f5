"""Speak answers: sentences in, 20 ms frames handed to a playback callback, in order.

One `VoiceSpeaker` per voice connection (per guild). Answers queue whole, one
after another; inside an answer, each sentence is synthesized the moment it is
complete, while the model is still writing, and the next sentence's synthesis
and decoding overlap the playback of the one before. `interrupt()` stops the
sentence being played and drops everything queued.

The platform supplies the playback: an async callable that plays one
`Utterance` and returns when it has been played. It is cancelled when speech is
interrupted and must then stop the audio (Discord: `adapters/discord/voice/playback.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
)
from dataclasses import dataclass, field

from botservice.core.errors import BotServiceError
from botservice.core.ports import ReplySink, SinkAbilities, abilities_of
from botservice.voice.audio import AudioError, pcm_frames
from botservice.voice.sentences import SentenceSplitter
from botservice.voice.speech import SpeechEngine, SpeechError

log = logging.getLogger(__name__)

_END = object()


@dataclass(slots=True)
class Utterance:
    """One sentence ready to play: `frames` yields 3,840-byte 20 ms frames (48 kHz stereo s16le)."""

    text: str
    frames: AsyncIterator[bytes] = field(repr=False)


Playback = Callable[[Utterance], Awaitable[None]]
ErrorHandler = Callable[[BotServiceError], Awaitable[None]]


class _Prefetch:
    """Decodes one sentence's audio in the background while earlier sentences play."""

    def __init__(self, audio: bytes, ffmpeg: str) -> None:
        self._queue: asyncio.Queue[bytes | BaseException | object] = asyncio.Queue()
        self._task = asyncio.create_task(self._pump(audio, ffmpeg))

    async def _pump(self, audio: bytes, ffmpeg: str) -> None:
        try:
            async with contextlib.aclosing(pcm_frames(audio, ffmpeg=ffmpeg)) as frames:
                async for frame in frames:
                    self._queue.put_nowait(frame)
        except Exception as error:
            self._queue.put_nowait(error)
        else:
            self._queue.put_nowait(_END)

    async def frames(self) -> AsyncGenerator[bytes, None]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item

    async def aclose(self) -> None:
        if not self._task.done():
            self._task.cancel()
            await asyncio.wait([self._task])


class SpokenAnswer:
    """The sentences of one answer, handed to its speaker as they complete.

    Feed it deltas (`feed`) or the whole text so far (`update`), then `finish`.
    After an interruption it silently ignores whatever else it is given.
    """

    def __init__(
        self,
        speaker: VoiceSpeaker,
        *,
        voice: str | None,
        model: str | None = None,
        max_chars: int,
    ) -> None:
        self._speaker = speaker
        self.voice = voice
        self.model = model
        self._splitter = SentenceSplitter(max_chars=max_chars)
        self._queue: asyncio.Queue[str | object] = asyncio.Queue()
        self._finished = False
        self.cancelled = False
        self.sentences: list[str] = []
        # The sentences played to the end, in order: what a listener actually heard.
        self.spoken: list[str] = []

    def feed(self, delta: str) -> None:
        self._say(self._splitter.feed(delta))

    def update(self, text_so_far: str) -> None:
        self._say(self._splitter.update(text_so_far))

    def finish(self, final_text: str | None = None) -> None:
        if self._finished:
            return
        if final_text is not None:
            self._say(self._splitter.update(final_text))
        self._say(self._splitter.flush())
        self._finished = True
        self._queue.put_nowait(_END)

    def _say(self, sentences: list[str]) -> None:
        if self.cancelled or self._finished:
            return
        for sentence in sentences:
            self.sentences.append(sentence)
            self._speaker._sentence_queued()
            self._queue.put_nowait(sentence)

    async def _next(self) -> str | None:
        item = await self._queue.get()
        return None if item is _END else str(item)


class VoiceSpeaker:
    """The speech queue of one voice connection."""

    def __init__(
        self,
        engine: SpeechEngine,
        playback: Playback,
        *,
        ffmpeg: str = "ffmpeg",
        voice: str | None = None,
        max_sentence_chars: int = 300,
        on_error: ErrorHandler | None = None,
    ) -> None:
        self.engine = engine
        self.playback = playback
        self.ffmpeg = ffmpeg
        self.voice = voice
        self.max_sentence_chars = max_sentence_chars
        self.on_error = on_error
        self._answers: asyncio.Queue[SpokenAnswer] = asyncio.Queue()
        # At most one sentence waits decoded while another plays: enough to play
        # without gaps, little to throw away on an interruption.
        self._ready: asyncio.Queue[tuple[SpokenAnswer, str, _Prefetch]] = asyncio.Queue(maxsize=1)
        self._live: set[_Prefetch] = set()
        self._open_answers: list[SpokenAnswer] = []
        self._synth_task: asyncio.Task[None] | None = None
        self._play_task: asyncio.Task[None] | None = None
        self._pending = 0  # sentences queued and not yet played, plus answers not yet ended
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_active = time.monotonic()
        self._closed = False
        self._last_error: type[BotServiceError] | None = None

    # --- what adapters call ------------------------------------------------------

    def begin_answer(self, *, voice: str | None = None, model: str | None = None) -> SpokenAnswer:
        """Open an answer; it is spoken after the answers opened before it. `voice` and
        `model` (a channel's speech settings) override the speaker's and the engine's."""
        if self._closed:
            raise RuntimeError("this speaker is closed")
        answer = SpokenAnswer(
            self, voice=voice or self.voice, model=model, max_chars=self.max_sentence_chars
        )
        self._open_answers.append(answer)
        self._pending += 1
        self._idle.clear()
        self._answers.put_nowait(answer)
        self._ensure_workers()
        return answer

    def say(self, text: str, *, voice: str | None = None, model: str | None = None) -> SpokenAnswer:
        """Speak a complete text (a notice, a greeting) after what is already queued."""
        answer = self.begin_answer(voice=voice, model=model)
        answer.finish(text)
        return answer

    async def speak_stream(
        self,
        deltas: AsyncIterable[str],
        *,
        voice: str | None = None,
        model: str | None = None,
    ) -> SpokenAnswer:
        """Speak a stream of text deltas; returns when the stream ends (speech goes on)."""
        answer = self.begin_answer(voice=voice, model=model)
        try:
            async for delta in deltas:
                answer.feed(delta)
        finally:
            answer.finish()
        return answer

    async def interrupt(self) -> None:
        """Stop the sentence being played and drop every queued sentence and answer."""
        # Reset synchronously first: an answer begun while the old workers wind
        # down belongs to the new workers and must not be dropped.
        for answer in self._open_answers:
            answer.cancelled = True
        self._open_answers.clear()
        tasks = [task for task in (self._synth_task, self._play_task) if task is not None]
        self._synth_task = self._play_task = None
        while not self._answers.empty():
            self._answers.get_nowait()
        while not self._ready.empty():
            self._ready.get_nowait()
        prefetches = list(self._live)
        self._live.clear()
        self._pending = 0
        self._mark_active()
        self._idle.set()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for prefetch in prefetches:
            await prefetch.aclose()

    async def wait_done(self) -> None:
        """Until every answer begun so far has been finished and played (or interrupted)."""
        await self._idle.wait()

    @property
    def speaking(self) -> bool:
        return not self._idle.is_set()

    @property
    def idle_seconds(self) -> float:
        """How long nothing has been spoken or queued (0 while speaking)."""
        return 0.0 if self.speaking else time.monotonic() - self._last_active

    async def aclose(self) -> None:
        await self.interrupt()
        self._closed = True

    # --- workers -----------------------------------------------------------------

    def _ensure_workers(self) -> None:
        if self._synth_task is None or self._synth_task.done():
            self._synth_task = asyncio.create_task(self._synthesize_loop())
        if self._play_task is None or self._play_task.done():
            self._play_task = asyncio.create_task(self._play_loop())

    def _sentence_queued(self) -> None:
        self._pending += 1
        self._idle.clear()

    def _sentence_done(self) -> None:
        self._pending = max(0, self._pending - 1)
        self._mark_active()
        if self._pending == 0:
            self._idle.set()

    def _mark_active(self) -> None:
        self._last_active = time.monotonic()

    async def _synthesize_loop(self) -> None:
        while True:
            answer = await self._answers.get()
            while (sentence := await answer._next()) is not None:
                try:
                    audio = await self.engine.synthesize(
                        sentence, voice=answer.voice, model=answer.model
                    )
                except BotServiceError as error:
                    log.warning("speech synthesis failed: %s", error)
                    self._sentence_done()
                    await self._report(error)
                    continue
                except Exception:
                    # Not ours to handle, but one bad sentence must not silence the guild.
                    log.exception("speech synthesis failed unexpectedly")
                    self._sentence_done()
                    await self._report(SpeechError("unexpected synthesis failure"))
                    continue
                prefetch = _Prefetch(audio, self.ffmpeg)
                self._live.add(prefetch)
                await self._ready.put((answer, sentence, prefetch))
            if answer in self._open_answers:
                self._open_answers.remove(answer)
            self._sentence_done()  # the answer itself

    async def _play_loop(self) -> None:
        while True:
            answer, sentence, prefetch = await self._ready.get()
            try:
                async with contextlib.aclosing(prefetch.frames()) as frames:
                    await self.playback(Utterance(sentence, frames))
            except BotServiceError as error:
                log.warning("speech playback failed: %s", error)
                await self._report(error)
            except Exception:
                log.exception("speech playback failed unexpectedly")
                await self._report(AudioError("unexpected playback failure"))
            else:
                self._last_error = None
                answer.spoken.append(sentence)
            finally:
                await prefetch.aclose()
                self._live.discard(prefetch)
            self._sentence_done()

    async def _report(self, error: BotServiceError) -> None:
        # A missing ffmpeg or a down endpoint fails every sentence: tell once, not per sentence.
        if self.on_error is None or type(error) is self._last_error:
            return
        self._last_error = type(error)
        try:
            await self.on_error(error)
        except Exception:
            log.exception("the voice error handler failed")


class VoiceSpeakers:
    """One speaker per key (a guild id), sharing one speech engine."""

    def __init__(
        self,
        engine: SpeechEngine,
        *,
        ffmpeg: str = "ffmpeg",
        max_sentence_chars: int = 300,
    ) -> None:
        self.engine = engine
        self.ffmpeg = ffmpeg
        self.max_sentence_chars = max_sentence_chars
        self._speakers: dict[str, VoiceSpeaker] = {}

    def open(
        self,
        key: str,
        playback: Playback,
        *,
        voice: str | None = None,
        on_error: ErrorHandler | None = None,
    ) -> VoiceSpeaker:
        """The speaker for `key`; an existing one is kept and plays through `playback` from now on
        (a reconnect brings a new voice client)."""
        speaker = self._speakers.get(key)
        if speaker is not None:
            speaker.playback = playback
            speaker.on_error = on_error
            speaker.voice = voice or speaker.voice
        else:
            speaker = VoiceSpeaker(
                self.engine,
                playback,
                ffmpeg=self.ffmpeg,
                voice=voice,
                max_sentence_chars=self.max_sentence_chars,
                on_error=on_error,
            )
            self._speakers[key] = speaker
        return speaker

    def get(self, key: str) -> VoiceSpeaker | None:
        return self._speakers.get(key)

    async def close(self, key: str) -> None:
        speaker = self._speakers.pop(key, None)
        if speaker is not None:
            await speaker.aclose()

    async def aclose(self) -> None:
        for key in list(self._speakers):
            await self.close(key)
        await self.engine.aclose()


class SpeakingSink:
    """A `ReplySink` that also speaks: text goes to `inner`, sentences to `speaker`.

    The core calls `update` with the whole text so far (throttled for the
    platform's edit rate); the sink speaks each sentence as soon as it is
    complete, before the text edit goes out. A core that also calls `observe`
    with the text so far on every delta lets speech start without waiting for
    the edit throttle. With `interrupt` (the `interrupt_on_new_question`
    setting) a new answer cuts off whatever the speaker was saying.
    """

    def __init__(
        self,
        inner: ReplySink,
        speaker: VoiceSpeaker,
        *,
        voice: str | None = None,
        model: str | None = None,
        interrupt: bool = True,
    ) -> None:
        self.inner = inner
        self.speaker = speaker
        self.voice = voice
        self.model = model
        self.interrupt = interrupt
        self.answer: SpokenAnswer | None = None

    async def begin(self, existing_ref: str | None, *, turn_tag: str, resumed: bool) -> str | None:
        if self.interrupt:
            await self.speaker.interrupt()
        self.answer = self.speaker.begin_answer(voice=self.voice, model=self.model)
        return await self.inner.begin(existing_ref, turn_tag=turn_tag, resumed=resumed)

    @property
    def abilities(self) -> SinkAbilities:
        # A voice message answered aloud is heard by the written sink inside, which
        # shows the transcript (written above the answer, not spoken).
        return SinkAbilities(observe=self.observe, speaks=True).joined(abilities_of(self.inner))

    def observe(self, text_so_far: str) -> None:
        """Every delta's text so far, unthrottled (cheap, synchronous)."""
        self._answer().update(text_so_far)

    async def update(self, text: str) -> None:
        self._answer().update(text)
        await self.inner.update(text)

    async def finish(self, text: str) -> None:
        self._answer().finish(text)
        await self.inner.finish(text)

    async def notice(self, text: str, *, private: bool = True) -> None:
        await self.inner.notice(text, private=private)

    def _answer(self) -> SpokenAnswer:
        if self.answer is None:  # a resumed turn may skip `begin`: speak anyway
            self.answer = self.speaker.begin_answer(voice=self.voice, model=self.model)
        return self.answer

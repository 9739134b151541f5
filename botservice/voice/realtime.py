"""Realtime mode: one speech-to-speech session per voice channel.

Members' audio (48 kHz stereo 20 ms frames, per member) is mixed per 20 ms tick,
reduced to 24 kHz mono and appended to an OpenAI-compatible `/v1/realtime` websocket
session (GA event shapes only). The server detects turns (server VAD); Discord sends
nothing while nobody talks, so after the last member audio the session appends silence
for a while ("silence padding"): without it the server would never hear the pause that
ends a turn. The answer's audio (24 kHz mono) is raised to Discord's 48 kHz stereo 20
ms frames and queued in `RealtimePlayback`, which the platform's audio source reads.

A member who starts talking while the bot speaks (`input_audio_buffer.speech_started`)
stops playback at once; the session cancels the response and truncates the answer's
item at the milliseconds actually played, so the model knows what was heard. Both
sides' transcripts go to a `RealtimeTranscripts` port (the conversation's messages),
with each response's `usage`; function calls go to a `RealtimeTools` port (the tool
sources, with the channel's rules). The server detects turns but creates no response by
itself: once a member's turn is committed, the `RealtimeBudget` port says whether their
(and the channel's) budget allows an answer; only then is a response asked for, else
the turn is deleted from the session's conversation (a refused text message is not
kept either) and its words are not stored. A call that waits (for its asker's approval) has
the model say so in a response outside the conversation (an "aside", never kept as an
answer); its output is sent, and a response asked for, once there is one and no other
response is being produced. Audio is never stored or logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import aiohttp
import numpy as np

from botservice.core.errors import BotServiceError
from botservice.core.ports import Usage
from botservice.core.tools import ToolSpec
from botservice.voice.barge_in import mark_unspoken

log = logging.getLogger(__name__)

DISCORD_RATE = 48_000
SESSION_RATE = 24_000
FRAME_MS = 20
# One Discord frame: 20 ms of 48 kHz stereo s16le.
DISCORD_FRAME_BYTES = DISCORD_RATE * FRAME_MS // 1000 * 2 * 2  # 3,840
SILENCE_FRAME = bytes(DISCORD_FRAME_BYTES)
# 20 ms of 24 kHz mono s16le.
SESSION_TICK_BYTES = SESSION_RATE * FRAME_MS // 1000 * 2  # 960
# The metadata that marks a response said aside (out of the conversation).
ASIDE = "aside"
# The metadata of the response asked for after function outputs.
AFTER_TOOLS = "after_tools"
# The metadata of the response that answers a member's turn.
TURN = "turn"
# How long a response.create of ours waits for the one being produced to end, and how
# often one refused because another was active is asked for.
IDLE_WAIT_SECONDS = 30.0
CREATE_ATTEMPTS = 3
ACTIVE_RESPONSE = "conversation_already_has_active_response"


class RealtimeError(BotServiceError):
    """The realtime session could not be opened or broke."""

    user_message = "The realtime voice session could not be opened; please try again later."


@dataclass(frozen=True, slots=True, kw_only=True)
class RealtimeSettings:
    """Where and how to open a session. `base_url` is the model's HTTP base
    (`https://api.openai.com/v1`, or a local server's); the websocket is
    `<base_url>/realtime?model=<model>` over ws(s)."""

    base_url: str
    api_key: str | None
    model: str
    voice: str = "alloy"
    instructions: str = ""
    transcription_model: str = "whisper-1"
    vad_threshold: float = 0.5
    prefix_padding_ms: int = 300
    # The pause that ends a member's turn (server VAD).
    silence_duration_ms: int = 500
    # Silence appended after the last member audio: the pause above plus a margin.
    padding_ms: int = 800

    @property
    def url(self) -> str:
        base = self.base_url.rstrip("/")
        if base.startswith("https://"):
            base = "wss://" + base[len("https://") :]
        elif base.startswith("http://"):
            base = "ws://" + base[len("http://") :]
        return f"{base}/realtime?model={self.model}"


class RealtimeTranscripts(Protocol):
    """Where both sides of the talk are kept (the conversation's messages), with what
    the session spent."""

    async def member_said(self, user_id: int, text: str, *, item_id: str) -> None:
        """A member's words, heard in the input item `item_id` (the turn's key)."""
        ...

    async def bot_said(self, text: str, *, interrupted: bool) -> None:
        """The answer as heard: whole once played, or marked where a member cut it."""
        ...

    async def spent(self, usage: Usage, *, item_id: str, author: int | None) -> None:
        """One response's tokens, for the member's turn `item_id` (said by `author`)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RealtimeCall:
    """A function call of the model, in answer to the member's turn `item_id`."""

    call_id: str
    name: str
    arguments: str
    item_id: str
    # Said aloud while the call waits (for the asker's approval): the function's output
    # follows once there is one.
    say_waiting: Callable[[str], Awaitable[None]]


class RealtimeBudget(Protocol):
    """Whether a member's turn may be answered: their budget and the channel's, by the
    rules text messages are refused by."""

    async def allows(self, user_id: int | None) -> bool:
        """False: the turn is not answered (and the member is told why, once per budget
        and period). `user_id` None: nobody was heard in the turn (the channel's only)."""
        ...


class RealtimeTools(Protocol):
    """The tools the session may call: the channel's allowed ones, run by its rules."""

    def specs(self) -> Sequence[ToolSpec]: ...

    async def call(self, call: RealtimeCall) -> str:
        """The result text the model is told (a refusal is a result too)."""
        ...


# --- audio conversions -----------------------------------------------------------------


def to_session_audio(pcm48_stereo: bytes) -> bytes:
    """48 kHz stereo s16le → 24 kHz mono s16le: channels averaged, sample pairs averaged
    (a two-tap low-pass before halving the rate)."""
    samples = np.frombuffer(pcm48_stereo[: len(pcm48_stereo) // 8 * 8], dtype="<i2")
    mono = samples.reshape(-1, 2).astype(np.int32).sum(axis=1)
    halved = mono.reshape(-1, 2).sum(axis=1) // 4
    return halved.astype("<i2").tobytes()


def to_discord_audio(pcm24_mono: bytes, previous: int = 0) -> tuple[bytes, int]:
    """24 kHz mono s16le → 48 kHz stereo s16le: each new sample preceded by the midpoint
    from the previous one (linear interpolation), both channels the same. Returns the
    audio and the last sample, to carry into the next chunk."""
    samples = np.frombuffer(pcm24_mono[: len(pcm24_mono) // 2 * 2], dtype="<i2").astype(np.int32)
    if len(samples) == 0:
        return b"", previous
    before = np.concatenate(([previous], samples[:-1]))
    doubled = np.empty(len(samples) * 2, dtype=np.int32)
    doubled[0::2] = (before + samples) // 2
    doubled[1::2] = samples
    stereo = np.repeat(doubled, 2)
    return stereo.astype("<i2").tobytes(), int(samples[-1])


def mix(frames: Sequence[bytes]) -> bytes:
    """Members' simultaneous frames summed (clipped), as one frame."""
    if len(frames) == 1:
        return frames[0]
    length = min(len(frame) for frame in frames) // 2 * 2
    total = sum(np.frombuffer(frame[:length], dtype="<i2").astype(np.int32) for frame in frames)
    return np.clip(total, -32768, 32767).astype("<i2").tobytes()


# --- playback ----------------------------------------------------------------------------


class RealtimePlayback:
    """The answer's 48 kHz stereo 20 ms frames, queued for the platform's audio source.

    `read()` is called from the audio player's thread, once per 20 ms; it counts what it
    hands on, so a barge-in knows how much of the answer was actually played."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._frames: deque[tuple[str, bytes]] = deque()
        self._partial = b""
        self._partial_item = ""
        self._played_ms: dict[str, int] = {}
        self._clock = clock
        # When each of the latest items' first frame was read (bench_voice starts there).
        self.first_frame_read: dict[str, float] = {}

    def enqueue(self, item_id: str, pcm48_stereo: bytes) -> None:
        with self._lock:
            if self._partial_item != item_id:
                self._partial = b""
                self._partial_item = item_id
                self._played_ms.setdefault(item_id, 0)
            data = self._partial + pcm48_stereo
            whole = len(data) // DISCORD_FRAME_BYTES * DISCORD_FRAME_BYTES
            for start in range(0, whole, DISCORD_FRAME_BYTES):
                self._frames.append((item_id, data[start : start + DISCORD_FRAME_BYTES]))
            self._partial = data[whole:]

    def finish(self, item_id: str) -> None:
        """The item's audio is complete: a last short frame is padded and queued."""
        with self._lock:
            if self._partial_item == item_id and self._partial:
                self._frames.append((item_id, self._partial.ljust(DISCORD_FRAME_BYTES, b"\x00")))
                self._partial = b""

    def read(self) -> bytes | None:
        """The next frame, or None when nothing is queued (the source plays silence)."""
        with self._lock:
            if not self._frames:
                return None
            item_id, frame = self._frames.popleft()
            played = self._played_ms.get(item_id)
            if played is None:
                # The item was forgotten (its answer is kept): only its tail is left.
                return frame
            if played == 0:
                self.first_frame_read[item_id] = self._clock()
                while len(self.first_frame_read) > 32:
                    self.first_frame_read.pop(next(iter(self.first_frame_read)))
            self._played_ms[item_id] = played + FRAME_MS
            return frame

    @property
    def playing(self) -> bool:
        with self._lock:
            return bool(self._frames)

    @property
    def queued_frames(self) -> int:
        with self._lock:
            return len(self._frames)

    def played_ms(self, item_id: str) -> int:
        with self._lock:
            return self._played_ms.get(item_id, 0)

    def forget(self, item_id: str) -> None:
        """The item is over: its count is no longer needed."""
        with self._lock:
            self._played_ms.pop(item_id, None)

    def stop(self) -> None:
        """Barge-in: drop everything queued."""
        with self._lock:
            self._frames.clear()
            self._partial = b""


# --- the session -------------------------------------------------------------------------


@dataclass
class _Answer:
    """One audio item of the bot's answer, while it is produced and played."""

    item_id: str
    response_id: str
    transcript: str = ""
    audio_ms: float = 0.0
    last_sample: int = 0
    done: bool = False
    stored: bool = False
    # Said aside (a call waits for approval): played, never kept as the turn's answer.
    aside: bool = False


class RealtimeSession:
    """One speech-to-speech session for one voice channel."""

    def __init__(
        self,
        settings: RealtimeSettings,
        *,
        playback: RealtimePlayback,
        transcripts: RealtimeTranscripts,
        tools: RealtimeTools | None = None,
        budget: RealtimeBudget | None = None,
        http: aiohttp.ClientSession | None = None,
    ) -> None:
        self._settings = settings
        self.playback = playback
        self._transcripts = transcripts
        self._tools = tools
        self._budget = budget
        # Whether each committed member turn is answered (the budgets allow it), by item:
        # its words are stored only then.
        self._verdicts: dict[str, asyncio.Future[bool]] = {}
        self._http = http
        self._own_http = http is None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        # Member audio waiting for the next tick, per member.
        self._incoming: dict[int, deque[bytes]] = {}
        self._padding_left_ms = 0
        # Who talked in the current turn (by frames), for the transcript's author.
        self._talkers: dict[int, int] = {}
        self._turn_talkers: dict[str, dict[int, int]] = {}
        self._answers: dict[str, _Answer] = {}
        self._response_id: str | None = None
        # No response is being produced: a response.create of ours may go now.
        self._idle = asyncio.Event()
        self._idle.set()
        # A response.create of ours not seen to start yet, and how often it was refused
        # (the server refuses one while another response is being produced).
        self._unstarted: tuple[Mapping[str, Any], int] | None = None
        # Responses said aside (out of the conversation), by id.
        self._asides: deque[str] = deque(maxlen=16)
        # The member's turn the next function calls answer, and who said each turn.
        self._last_item = ""
        self._authors: dict[str, int] = {}
        self._calls: dict[str, asyncio.Task[str]] = {}
        # Answers cut by a barge-in: their late audio is dropped.
        self._cut: deque[str] = deque(maxlen=64)
        self._deliveries: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self.closed = asyncio.Event()

    async def start(self) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        headers = {}
        if self._settings.api_key:
            headers["Authorization"] = f"Bearer {self._settings.api_key}"
        try:
            self._ws = await self._http.ws_connect(
                self._settings.url, headers=headers, heartbeat=20
            )
        except (aiohttp.ClientError, OSError) as error:
            await self._close_http()
            raise RealtimeError(
                f"cannot open the realtime session: {type(error).__name__}"
            ) from None
        await self._send(self._session_update())
        self._reader = asyncio.create_task(self._read(), name="realtime-read")
        self._ticker = asyncio.create_task(self._tick(), name="realtime-tick")
        self._spawn(self._deliver_in_order())

    async def aclose(self) -> None:
        # What was heard and said so far is kept before the session goes.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._deliveries.join(), timeout=5)
        tasks = [t for t in (self._reader, self._ticker, *self._tasks, *self._calls.values()) if t]
        for task in tasks:
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        await self._close_http()
        self.playback.stop()
        self.closed.set()

    async def _close_http(self) -> None:
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None

    def _session_update(self) -> dict[str, Any]:
        s = self._settings
        session: dict[str, Any] = {
            "type": "realtime",
            "model": s.model,
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": SESSION_RATE},
                    "transcription": {"model": s.transcription_model},
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": s.vad_threshold,
                        "prefix_padding_ms": s.prefix_padding_ms,
                        "silence_duration_ms": s.silence_duration_ms,
                        # Responses are ours to ask for: a member whose budget is
                        # spent gets none (one created by the server would be paid for).
                        "create_response": False,
                        # Barge-in is ours: we know what was played.
                        "interrupt_response": False,
                    },
                },
                "output": {
                    "format": {"type": "audio/pcm", "rate": SESSION_RATE},
                    "voice": s.voice,
                },
            },
        }
        if s.instructions:
            session["instructions"] = s.instructions
        specs = self._tools.specs() if self._tools is not None else ()
        if specs:
            session["tools"] = [
                {
                    "type": "function",
                    "name": spec.name,
                    "description": spec.description,
                    "parameters": dict(spec.parameters),
                }
                for spec in specs
            ]
            session["tool_choice"] = "auto"
        return {"type": "session.update", "session": session}

    # --- members' audio in -----------------------------------------------------------------

    def feed(self, user_id: int, pcm48_stereo: bytes) -> None:
        """One member's frame (called on the event loop)."""
        queue = self._incoming.setdefault(user_id, deque(maxlen=50))
        queue.append(pcm48_stereo)

    def forget_member(self, user_id: int) -> None:
        self._incoming.pop(user_id, None)

    async def _tick(self) -> None:
        next_at = time.monotonic()
        while True:
            next_at += FRAME_MS / 1000
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            frames = []
            for user_id, queue in list(self._incoming.items()):
                if queue:
                    frames.append(queue.popleft())
                    self._talkers[user_id] = self._talkers.get(user_id, 0) + 1
            if frames:
                chunk = to_session_audio(mix(frames))
                self._padding_left_ms = self._settings.padding_ms
            elif self._padding_left_ms > 0:
                # Nobody talks and Discord sends nothing: silence so the server VAD
                # hears the pause that ends the turn.
                chunk = bytes(SESSION_TICK_BYTES)
                self._padding_left_ms -= FRAME_MS
            else:
                chunk = b""
            await self._store_played()
            if not chunk:
                continue
            await self._send(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()}
            )

    # --- events from the server --------------------------------------------------------------

    async def _send(self, event: Mapping[str, Any]) -> None:
        if self._ws is not None and not self._ws.closed:
            await self._ws.send_str(json.dumps(event))

    async def _read(self) -> None:
        ws = self._ws
        assert ws is not None
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    event = json.loads(message.data)
                except ValueError:
                    log.warning("the realtime server sent something that is not JSON")
                    continue
                if isinstance(event, dict):
                    await self._handle(event)
        except Exception:
            log.exception("the realtime session failed")
        finally:
            self.playback.stop()
            self.closed.set()

    async def _handle(self, event: dict[str, Any]) -> None:
        kind = str(event.get("type") or "")
        if kind == "response.created":
            response = event.get("response") or {}
            self._response_id = response.get("id")
            self._idle.clear()
            ours = (response.get("metadata") or {}).get("botservice")
            if ours is not None:
                self._unstarted = None
            if ours == ASIDE:
                self._asides.append(str(response.get("id")))
        elif str(event.get("item_id")) in self._cut and kind.startswith("response.output_audio"):
            # Sent before the server saw our cancel: an answer cut short stays cut.
            return
        elif kind == "response.output_audio.delta":
            answer = self._answer(event)
            pcm24 = base64.b64decode(event.get("delta") or "")
            answer.audio_ms += len(pcm24) / 2 / SESSION_RATE * 1000
            pcm48, answer.last_sample = to_discord_audio(pcm24, answer.last_sample)
            self.playback.enqueue(answer.item_id, pcm48)
        elif kind == "response.output_audio.done":
            self.playback.finish(str(event.get("item_id")))
        elif kind == "response.output_audio_transcript.delta":
            self._answer(event).transcript += str(event.get("delta") or "")
        elif kind == "response.output_audio_transcript.done":
            answer = self._answer(event)
            answer.transcript = str(event.get("transcript") or answer.transcript)
            answer.done = True
        elif kind == "input_audio_buffer.speech_started":
            await self._barge_in()
        elif kind == "input_audio_buffer.speech_stopped":
            # Who was heard since the last turn ended: the author of its transcript.
            item_id = str(event.get("item_id"))
            self._turn_talkers[item_id] = self._talkers
            self._last_item = item_id
            if self._talkers:
                self._authors[item_id] = max(self._talkers.items(), key=lambda e: e[1])[0]
                while len(self._authors) > 16:
                    self._authors.pop(next(iter(self._authors)))
            self._talkers = {}
            while len(self._turn_talkers) > 16:  # transcription off: never claimed
                self._turn_talkers.pop(next(iter(self._turn_talkers)))
        elif kind == "input_audio_buffer.committed":
            self._answer_turn(str(event.get("item_id")))
        elif kind == "conversation.item.input_audio_transcription.completed":
            await self._store_member(event)
        elif kind == "response.function_call_arguments.done":
            self._start_call(event)
        elif kind == "response.done":
            await self._response_done(event)
        elif kind == "error":
            error = event.get("error") or {}
            # The message may quote what was said: only its code at the default level.
            log.warning("the realtime server reported an error: %s", error.get("code"))
            if self._response_id is None:
                # A response.create of ours refused (one was active): none is now.
                self._idle.set()
            refused, self._unstarted = self._unstarted, None
            if error.get("code") == ACTIVE_RESPONSE and refused is not None:
                event_sent, attempts = refused
                if attempts < CREATE_ATTEMPTS:
                    # Asked again once the response being produced is over.
                    self._spawn(self._create_response(event_sent, attempts + 1))

    def _answer_turn(self, item_id: str) -> None:
        """A member's turn is committed: answered once the budgets are known to allow it
        (apart from the reader, which must go on hearing barge-ins)."""
        verdict: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._verdicts[item_id] = verdict
        while len(self._verdicts) > 16:  # transcription off: never claimed
            self._verdicts.pop(next(iter(self._verdicts)))

        async def decide() -> None:
            allowed = True
            try:
                if self._budget is not None:
                    allowed = await self._budget.allows(self._authors.get(item_id))
            except Exception:
                # The budgets cannot be read (the database is away): answered, as a
                # spoken turn cannot be refused for what cannot be known.
                log.warning("the budgets of a realtime voice turn could not be read")
            finally:
                if not verdict.done():
                    verdict.set_result(allowed)
            if not allowed:
                log.info("a realtime voice turn was not answered: a budget is spent")
                await self._send({"type": "conversation.item.delete", "item_id": item_id})
                return
            await self._create_response(
                {"type": "response.create", "response": {"metadata": {"botservice": TURN}}}
            )

        self._spawn(decide())

    def _answer(self, event: Mapping[str, Any]) -> _Answer:
        item_id = str(event.get("item_id"))
        answer = self._answers.get(item_id)
        if answer is None:
            response_id = str(event.get("response_id"))
            answer = self._answers[item_id] = _Answer(
                item_id=item_id, response_id=response_id, aside=response_id in self._asides
            )
        return answer

    async def _barge_in(self) -> None:
        unplayed = [
            answer
            for answer in self._answers.values()
            if not answer.stored and self.playback.played_ms(answer.item_id) < answer.audio_ms
        ]
        if self._response_id is not None:
            # Also an answer not heard yet: the member has more to say first.
            await self._send({"type": "response.cancel"})
        if not unplayed:
            return
        self.playback.stop()
        for answer in unplayed:
            played = self.playback.played_ms(answer.item_id)
            if answer.aside:
                # Not in the conversation: nothing to truncate, nothing to keep.
                answer.stored = True
                del self._answers[answer.item_id]
                self._cut.append(answer.item_id)
                self.playback.forget(answer.item_id)
                continue
            await self._send(
                {
                    "type": "conversation.item.truncate",
                    "item_id": answer.item_id,
                    "content_index": 0,
                    "audio_end_ms": int(min(played, answer.audio_ms)),
                }
            )
            answer.stored = True
            del self._answers[answer.item_id]
            self._cut.append(answer.item_id)
            self.playback.forget(answer.item_id)
            text = answer.transcript
            if text.strip():
                words = text.split()
                # The transcript runs ahead of the audio: the spoken share of it, by time.
                spoken = " ".join(words[: int(len(words) * played / answer.audio_ms)])
                marked = mark_unspoken(text, [spoken] if spoken else [])
                self._deliver(partial(self._transcripts.bot_said, marked, interrupted=True))
        log.info("a member interrupted the realtime answer")

    async def _store_played(self) -> None:
        """Answers whose transcript is complete and whose audio was all played are kept
        as they are (one cut short is kept, marked, by the barge-in)."""
        for answer in list(self._answers.values()):
            if answer.stored or not answer.done:
                continue
            if self.playback.played_ms(answer.item_id) + FRAME_MS < answer.audio_ms:
                continue
            answer.stored = True
            del self._answers[answer.item_id]
            self.playback.forget(answer.item_id)
            if answer.transcript.strip() and not answer.aside:
                # Apart from the tick, whose audio must not wait on the platform.
                self._deliver(
                    partial(self._transcripts.bot_said, answer.transcript, interrupted=False)
                )

    def _deliver(self, transcript: Callable[[], Awaitable[None]]) -> None:
        """Transcripts go out in order, apart from the reader and the audio tick, which
        must not wait on the platform or the database."""
        self._deliveries.put_nowait(transcript)

    async def _deliver_in_order(self) -> None:
        while True:
            transcript = await self._deliveries.get()
            try:
                await transcript()
            except Exception:
                log.exception("keeping a realtime voice transcript failed")
            finally:
                self._deliveries.task_done()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        async def guarded() -> None:
            try:
                await work
            except Exception:
                log.exception("answering a realtime function call failed")

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _store_member(self, event: Mapping[str, Any]) -> None:
        text = str(event.get("transcript") or "").strip()
        if not text:
            return
        talkers = self._turn_talkers.pop(str(event.get("item_id")), None) or self._talkers
        if not talkers:
            return
        # Mixed audio has no single author: the member heard most in the turn.
        author = max(talkers.items(), key=lambda entry: entry[1])[0]
        item_id = str(event.get("item_id"))
        verdict = self._verdicts.pop(item_id, None)

        async def heard() -> None:
            # A turn not answered for a spent budget is not kept, as a refused message.
            if verdict is not None and not await verdict:
                return
            await self._transcripts.member_said(author, text, item_id=item_id)

        self._deliver(heard)

    # --- function calls ------------------------------------------------------------------------

    def _start_call(self, event: Mapping[str, Any]) -> None:
        call_id = str(event.get("call_id") or "")
        name = str(event.get("name") or "")
        arguments = str(event.get("arguments") or "")
        if not call_id or call_id in self._calls:
            return

        call = RealtimeCall(
            call_id=call_id,
            name=name,
            arguments=arguments,
            item_id=self._last_item,
            say_waiting=self._say_aside,
        )

        async def run() -> str:
            if self._tools is None:
                return f"Refused: there is no tool named {name[:80]!r} here."
            return await self._tools.call(call)

        self._calls[call_id] = asyncio.create_task(run(), name="realtime-tool")

    async def _response_done(self, event: Mapping[str, Any]) -> None:
        response = event.get("response") or {}
        self._response_id = None
        self._unstarted = None
        self._idle.set()
        usage = response_usage(response.get("usage"))
        if usage is not None:
            # A cancelled response was paid for too.
            item_id = self._last_item
            self._deliver(
                partial(
                    self._transcripts.spent,
                    usage,
                    item_id=item_id,
                    author=self._authors.get(item_id),
                )
            )
        if response.get("status") == "cancelled":
            return
        call_ids = [
            str(item.get("call_id"))
            for item in response.get("output") or []
            if isinstance(item, dict) and item.get("type") == "function_call"
        ]
        if call_ids:
            # Run apart from the reader, which must go on hearing barge-ins meanwhile.
            self._spawn(self._answer_calls(call_ids))

    async def _answer_calls(self, call_ids: Sequence[str]) -> None:
        for call_id in call_ids:
            task = self._calls.pop(call_id, None)
            if task is None:
                continue
            try:
                output = await task
            except Exception as error:
                log.warning("a realtime tool call failed: %s", type(error).__name__)
                output = f"The tool failed ({type(error).__name__}); it returned no result."
            await self._send(
                {
                    "type": "conversation.item.create",
                    "item": {"type": "function_call_output", "call_id": call_id, "output": output},
                }
            )
        await self._create_response(
            {"type": "response.create", "response": {"metadata": {"botservice": AFTER_TOOLS}}}
        )

    async def _create_response(self, event: Mapping[str, Any], attempt: int = 1) -> None:
        """Ask for a response once none is being produced (a server refuses a second
        one): after a member's turn, or an aside still being said. Refused all the same
        (a member's turn started a response meanwhile), it is asked for again."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=IDLE_WAIT_SECONDS)
        self._idle.clear()
        self._unstarted = (event, attempt)
        await self._send(event)

    async def _say_aside(self, text: str) -> None:
        """Have the model say `text` in its own voice, out of the conversation (a call
        waits for approval meanwhile: its output is sent once decided)."""
        self._spawn(
            self._create_response(
                {
                    "type": "response.create",
                    "response": {
                        "conversation": "none",
                        "input": [],
                        "output_modalities": ["audio"],
                        "instructions": f"Say exactly this, briefly, and nothing else: {text}",
                        "metadata": {"botservice": ASIDE},
                    },
                }
            )
        )


def response_usage(usage: Any) -> Usage | None:
    """A GA `response.done` usage (`input_tokens`, `output_tokens`, their details) as
    the ledger's counts: audio and text tokens both count in the totals; cached ones
    are the input's `cached_tokens`."""
    if not isinstance(usage, Mapping):
        return None
    details = usage.get("input_token_details")
    cached = details.get("cached_tokens", 0) if isinstance(details, Mapping) else 0
    try:
        return Usage(
            prompt_tokens=int(usage.get("input_tokens") or 0),
            completion_tokens=int(usage.get("output_tokens") or 0),
            cached_tokens=int(cached or 0),
        )
    except (TypeError, ValueError):
        return None

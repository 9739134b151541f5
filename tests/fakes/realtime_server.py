"""A fake OpenAI-compatible `/v1/realtime` websocket server on 127.0.0.1 (GA event shapes).

It behaves like a speech-to-speech server with server VAD, counting audio rather than
time: a 20 ms window of input louder than `SPEECH_RMS` is speech; after speech,
`silence_duration_ms` (from the client's `session.update`) of quiet input ends the turn
(`speech_stopped`, `committed`, the transcription, then a response unless the client's
`turn_detection` says `"create_response": false`: then a response waits for the client's
`response.create`). Input that simply stops never ends a turn, as on a real server.
`conversation.item.delete` is acknowledged with `conversation.item.deleted`.

Each turn's answer comes from the script, in order (`Speak`, `CallTool`); once it is
empty the answer is `Speak("You said something.")`. Audio deltas are a 24 kHz tone,
sent at once (real servers produce audio faster than it plays). With
`hold_response_done`, `response.done` waits for the client's `response.cancel` (an
answer still being produced when a member talks over it); with `late_audio_on_cancel`
one more audio delta of the answer follows the cancel (it was on the wire already).

A `response.create` with `"conversation": "none"` (a response out of the conversation,
said aside) is answered with `aside_reply` without taking a step of the script; every
`response.create`'s `metadata` is echoed in `response.created`. With `refuse_creates`,
that many `response.create` are refused as a server refuses one while another response
is active. Every `response.done` carries `usage` (GA shape: input and output tokens
with their text, audio and cached details).

Every event received is recorded in `.received`, every event sent in `.sent`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

RATE = 24_000
SPEECH_RMS = 500.0
WINDOW_SAMPLES = RATE // 50  # 20 ms


@dataclass(frozen=True)
class Speak:
    transcript: str
    audio_ms: int = 1000
    # Audio deltas of this many ms each.
    chunk_ms: int = 100


@dataclass(frozen=True)
class CallTool:
    name: str
    arguments: str = "{}"


@dataclass
class FakeRealtimeServer:
    heard: str = "What time is it?"
    hold_response_done: bool = False
    late_audio_on_cancel: bool = False
    script: deque[Speak | CallTool] = field(default_factory=deque)
    received: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    # When each response's first audio delta was sent (time.monotonic()).
    first_delta_sent: dict[str, float] = field(default_factory=dict)
    requests_headers: list[dict[str, str]] = field(default_factory=list)
    aside_reply: str = "One moment, please."
    # This many `response.create` are refused as a real server refuses one while another
    # response is being produced (`conversation_already_has_active_response`).
    refuse_creates: int = 0
    # Only those whose `metadata.botservice` is this are refused (None: any).
    refuse_creates_of: str | None = None
    usage: dict[str, Any] = field(
        default_factory=lambda: {
            "total_tokens": 1500,
            "input_tokens": 1200,
            "output_tokens": 300,
            "input_token_details": {
                "text_tokens": 200,
                "audio_tokens": 1000,
                "image_tokens": 0,
                "cached_tokens": 640,
                "cached_tokens_details": {"text_tokens": 128, "audio_tokens": 512},
            },
            "output_token_details": {"text_tokens": 60, "audio_tokens": 240},
        }
    )
    base_url: str = ""
    _runner: web.AppRunner | None = None
    _counter: int = 0
    _speaking: dict[str, Any] = field(default_factory=dict)
    _sockets: list[web.WebSocketResponse] = field(default_factory=list)

    def received_types(self) -> list[str]:
        return [event["type"] for event in self.received]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.received if event["type"] == kind]

    def of_type_sent(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.sent if event["type"] == kind]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/realtime", self._session)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def end_sessions(self) -> None:
        """The server closes every open session (a restart, a session time limit)."""
        for ws in self._sockets:
            await ws.close()

    def _id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._counter}"

    async def _session(self, request: web.Request) -> web.WebSocketResponse:
        self.requests_headers.append(dict(request.headers))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.append(ws)
        state = _Vad()
        cancelled = asyncio.Event()

        async def send(event: dict[str, Any]) -> None:
            self.sent.append(event)
            await ws.send_str(json.dumps(event))

        await send({"type": "session.created", "session": {"type": "realtime"}})
        responding: asyncio.Task[None] | None = None
        asides: set[asyncio.Task[None]] = set()
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            event = json.loads(message.data)
            self.received.append(event)
            kind = event["type"]
            if kind == "session.update":
                detection = event["session"]["audio"]["input"]["turn_detection"]
                state.silence_ms = detection["silence_duration_ms"]
                state.create_response = detection.get("create_response", True)
                await send({"type": "session.updated", "session": event["session"]})
            elif kind == "input_audio_buffer.append":
                for happened in state.feed(base64.b64decode(event["audio"])):
                    if happened == "started":
                        state.item_id = self._id("item")
                        await send(
                            {
                                "type": "input_audio_buffer.speech_started",
                                "item_id": state.item_id,
                                "audio_start_ms": state.heard_ms,
                            }
                        )
                    else:
                        await send(
                            {
                                "type": "input_audio_buffer.speech_stopped",
                                "item_id": state.item_id,
                                "audio_end_ms": state.heard_ms,
                            }
                        )
                        await send(
                            {"type": "input_audio_buffer.committed", "item_id": state.item_id}
                        )
                        await send(
                            {
                                "type": "conversation.item.input_audio_transcription.completed",
                                "item_id": state.item_id,
                                "content_index": 0,
                                "transcript": self.heard,
                            }
                        )
                        if state.create_response:
                            cancelled.clear()
                            responding = asyncio.create_task(self._respond(send, cancelled))
            elif kind == "conversation.item.delete":
                await send({"type": "conversation.item.deleted", "item_id": event["item_id"]})
            elif kind == "response.cancel":
                if self.late_audio_on_cancel and self._speaking:
                    late = base64.b64encode(tone(100)).decode()
                    await send(
                        {"type": "response.output_audio.delta", **self._speaking, "delta": late}
                    )
                cancelled.set()
            elif (
                kind == "response.create"
                and self.refuse_creates > 0
                and self.refuse_creates_of
                in (None, ((event.get("response") or {}).get("metadata") or {}).get("botservice"))
            ):
                self.refuse_creates -= 1
                await send(
                    {
                        "type": "error",
                        "error": {
                            "type": "invalid_request_error",
                            "code": "conversation_already_has_active_response",
                            "message": "Conversation already has an active response",
                        },
                    }
                )
            elif kind == "response.create":
                cancelled.clear()
                asked = event.get("response") or {}
                if asked.get("conversation") == "none":
                    aside = Speak(self.aside_reply, audio_ms=200)
                    task = asyncio.create_task(
                        self._respond(send, cancelled, aside, asked.get("metadata"))
                    )
                    asides.add(task)
                    task.add_done_callback(asides.discard)
                else:
                    responding = asyncio.create_task(
                        self._respond(send, cancelled, None, asked.get("metadata"))
                    )
        for task in [*asides, *([responding] if responding is not None else [])]:
            task.cancel()
        return ws

    async def _respond(
        self,
        send: Any,
        cancelled: asyncio.Event,
        aside: Speak | None = None,
        metadata: Any = None,
    ) -> None:
        response_id = self._id("resp")
        if aside is not None:
            step: Speak | CallTool = aside
        else:
            step = self.script.popleft() if self.script else Speak("You said something.")
        created: dict[str, Any] = {"id": response_id}
        if metadata is not None:
            created["metadata"] = metadata
        await send({"type": "response.created", "response": created})
        item_id = self._id("item")
        if isinstance(step, CallTool):
            call_id = self._id("call")
            item = {
                "type": "function_call",
                "id": item_id,
                "call_id": call_id,
                "name": step.name,
                "arguments": step.arguments,
            }
            await send({"type": "response.output_item.added", "item": item})
            await send(
                {
                    "type": "response.function_call_arguments.done",
                    "response_id": response_id,
                    "item_id": item_id,
                    "call_id": call_id,
                    "name": step.name,
                    "arguments": step.arguments,
                }
            )
            await send(
                {
                    "type": "response.done",
                    "response": {
                        "id": response_id,
                        "status": "completed",
                        "output": [item],
                        "usage": self.usage,
                    },
                }
            )
            return
        where = {"response_id": response_id, "item_id": item_id, "content_index": 0}
        self._speaking = where
        for word in step.transcript.split():
            await send(
                {"type": "response.output_audio_transcript.delta", **where, "delta": word + " "}
            )
        for start in range(0, step.audio_ms, step.chunk_ms):
            pcm = tone(min(step.chunk_ms, step.audio_ms - start), offset_ms=start)
            if response_id not in self.first_delta_sent:
                self.first_delta_sent[response_id] = time.monotonic()
            await send(
                {
                    "type": "response.output_audio.delta",
                    **where,
                    "delta": base64.b64encode(pcm).decode(),
                }
            )
        await send({"type": "response.output_audio.done", **where})
        await send(
            {
                "type": "response.output_audio_transcript.done",
                **where,
                "transcript": step.transcript,
            }
        )
        status = "completed"
        if self.hold_response_done:
            await cancelled.wait()
            status = "cancelled"
        await send(
            {
                "type": "response.done",
                "response": {
                    "id": response_id,
                    "status": status,
                    "output": [{"type": "message", "id": item_id, "role": "assistant"}],
                    "usage": self.usage,
                },
            }
        )


@dataclass
class _Vad:
    silence_ms: int = 500
    create_response: bool = True
    speaking: bool = False
    quiet_ms: int = 0
    heard_ms: int = 0
    item_id: str = ""
    _pending: bytes = b""

    def feed(self, pcm: bytes) -> list[str]:
        data = self._pending + pcm
        window_bytes = WINDOW_SAMPLES * 2
        happened = []
        while len(data) >= window_bytes:
            window = np.frombuffer(data[:window_bytes], dtype="<i2").astype(np.float64)
            data = data[window_bytes:]
            self.heard_ms += 20
            loud = math.sqrt(float(np.mean(window**2))) > SPEECH_RMS
            if loud:
                self.quiet_ms = 0
                if not self.speaking:
                    self.speaking = True
                    happened.append("started")
            elif self.speaking:
                self.quiet_ms += 20
                if self.quiet_ms >= self.silence_ms:
                    self.speaking = False
                    happened.append("stopped")
        self._pending = data
        return happened


def tone(ms: int, *, offset_ms: int = 0, rate: int = RATE, hz: float = 220.0) -> bytes:
    """A sine tone, 16-bit mono, `ms` long."""
    count = rate * ms // 1000
    start = rate * offset_ms // 1000
    t = (np.arange(count) + start) / rate
    return (np.sin(2 * math.pi * hz * t) * 8000).astype("<i2").tobytes()


def speech_frame(hz: float = 180.0, *, offset_ms: int = 0) -> bytes:
    """20 ms of 48 kHz stereo 'speech' (a loud tone), as a Discord member's frame."""
    mono = np.frombuffer(tone(20, offset_ms=offset_ms, rate=48_000, hz=hz), dtype="<i2")
    return np.repeat(mono, 2).astype("<i2").tobytes()

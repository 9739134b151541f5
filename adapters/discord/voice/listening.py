"""Listening in a voice channel: members' audio to utterances, per member.

`VoiceListener` attaches a `MemberAudioReceiver` to a connected `discord.VoiceClient`
(its UDP socket listener and its voice websocket hook, which tells which SSRC is which
member), hands each datagram from discord.py's reader thread to the event loop, runs an
`UtteranceDetector` per member there, and calls back when a member starts speaking
(barge-in) and when their utterance ends.

discord.py 2.7.1 has no receive API, so this reads its voice connection state
(`VoiceClient._connection`: `add_socket_listener`, `hook`, `ws`, `dave_session`); the
pin in pyproject.toml says so. Audio stays in memory, never logged or stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from botservice.adapters.discord.voice.receive import DaveDecryptor, MemberAudioReceiver
from botservice.voice.endpointing import (
    EndpointingSettings,
    SpeechStarted,
    UtteranceDetector,
    UtteranceEnded,
    VoiceActivity,
)

log = logging.getLogger(__name__)

TICK_SECONDS = 0.02
SESSION_DESCRIPTION = 4
SPEAKING = 5
CLIENT_CONNECT = 12
CLIENT_DISCONNECT = 13

SpeechHandler = Callable[[int], Awaitable[None]]
UtteranceHandler = Callable[[int, UtteranceEnded], Awaitable[None]]


def current_dave_session(state: Any) -> DaveDecryptor | None:
    """The connection's DAVE session as it is now; None while DAVE is off (protocol 0)."""
    if not getattr(state, "dave_protocol_version", 0):
        return None
    session: DaveDecryptor | None = getattr(state, "dave_session", None)
    return session


class VoiceListener:
    """One voice connection being listened to."""

    def __init__(
        self,
        connection: Any,
        *,
        settings: EndpointingSettings,
        activity: Callable[[], VoiceActivity],
        ignored: Callable[[int], bool],
        on_speech: SpeechHandler,
        on_utterance: UtteranceHandler,
        on_pcm: Callable[[int, bytes], None] | None = None,
    ) -> None:
        self._connection = connection
        self._settings = settings
        self._activity = activity
        self._ignored = ignored
        self._on_speech = on_speech
        self._on_utterance = on_utterance
        # Realtime mode: members' decoded frames go straight on (the server detects turns).
        self._on_pcm = on_pcm
        self._detectors: dict[int, UtteranceDetector] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous_hook: Any = None
        self.receiver: MemberAudioReceiver | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        connection = self._connection
        state = connection._connection
        self.receiver = MemberAudioReceiver(
            mode=connection.mode,
            secret_key=bytes(connection.secret_key),
            dave_session=lambda: current_dave_session(state),
            on_pcm=self._feed,
            ignored=self._ignored,
            own_ssrc=connection.ssrc,
        )
        self._previous_hook = state.hook
        # discord.py hands `state.hook` to every voice websocket it opens (a reconnect
        # too); the one open now got it already, so it is set there as well.
        state.hook = self._voice_gateway_event
        if hasattr(state.ws, "_hook"):
            state.ws._hook = self._voice_gateway_event
        state.add_socket_listener(self._from_reader_thread)
        self._ticker = asyncio.create_task(self._tick(), name="voice-listen-tick")

    async def stop(self) -> None:
        state = self._connection._connection
        if self.receiver is not None:
            with contextlib.suppress(ValueError, AttributeError):
                state.remove_socket_listener(self._from_reader_thread)
        if state.hook == self._voice_gateway_event:
            state.hook = self._previous_hook
        ws = getattr(state, "ws", None)
        if ws is not None and getattr(ws, "_hook", None) == self._voice_gateway_event:
            ws._hook = self._previous_hook or _no_hook
        tasks = [t for t in (self._ticker, *self._tasks) if t is not None]
        for task in tasks:
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._detectors.clear()
        if self.receiver is not None:
            # Counts only: what was heard is never logged.
            log.info("stopped receiving voice: %s", self.receiver.counts)

    def forget_member(self, user_id: int) -> None:
        """An opted-out member: whatever was heard of them so far is dropped."""
        self._detectors.pop(user_id, None)

    # --- the voice gateway: who is who -------------------------------------------------

    async def _voice_gateway_event(self, ws: Any, message: dict[str, Any]) -> None:
        op = message.get("op")
        data = message.get("d") or {}
        receiver = self.receiver
        if receiver is not None:
            if op == SESSION_DESCRIPTION and "secret_key" in data:
                # A reconnect brings a new transport key.
                receiver.update_secret_key(bytes(data["secret_key"]))
            elif op in (SPEAKING, CLIENT_CONNECT) and "user_id" in data:
                ssrc = data.get("ssrc", data.get("audio_ssrc"))
                if ssrc:
                    receiver.member_speaking(int(data["user_id"]), int(ssrc))
            elif op == CLIENT_DISCONNECT and "user_id" in data:
                user_id = int(data["user_id"])
                receiver.member_left(user_id)
                self._detectors.pop(user_id, None)
        if self._previous_hook is not None:
            await self._previous_hook(ws, message)

    # --- audio --------------------------------------------------------------------------

    def _from_reader_thread(self, datagram: bytes) -> None:
        # Everything after the socket happens on the event loop, where discord.py also
        # processes DAVE commits: the session is never used from two threads at once.
        loop = self._loop
        receiver = self.receiver
        if loop is not None and receiver is not None and not loop.is_closed():
            loop.call_soon_threadsafe(receiver.on_datagram, datagram)

    def _feed(self, user_id: int, pcm: bytes) -> None:
        if self._ignored(user_id):
            self._detectors.pop(user_id, None)
            return
        if self._on_pcm is not None:
            self._on_pcm(user_id, pcm)
            return
        detector = self._detectors.get(user_id)
        if detector is None:
            detector = self._detectors[user_id] = UtteranceDetector(
                self._settings, self._activity()
            )
        for event in detector.feed(pcm):
            if isinstance(event, SpeechStarted):
                self._spawn(self._on_speech(user_id))
            else:
                self._spawn(self._on_utterance(user_id, event))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            receiver = self.receiver
            if receiver is not None:
                # Packets held behind a lost one are decoded once it is clearly lost.
                receiver.flush_stale()
            for user_id, detector in list(self._detectors.items()):
                ended = detector.tick()
                if ended is not None:
                    self._spawn(self._on_utterance(user_id, ended))

    def _spawn(self, work: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await work
            except Exception:
                log.exception("handling what a member said in a voice channel failed")

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _no_hook(*args: Any) -> None:
    return None

"""Hearing members in a Discord voice channel: UDP datagram → 48 kHz PCM per member.

The layers, as Discord sends them (voice gateway v8, DAVE required since March 2026):

1. RTP, transport-encrypted with the connection's mode (`aead_xchacha20_poly1305_rtpsize`):
   parsed and decrypted by `discord-ext-voice-recv`'s `rtp` and `PacketDecryptor`.
2. DAVE end-to-end encryption of the Opus frame: decrypted by the voice connection's
   *current* `davey.DaveSession`, read anew for every packet, because the session is
   re-keyed on every join and leave and a copy kept from before leaves the bot deaf.
   (`discord-ext-voice-recv` 0.5.2a179 stops at layer 1 and hands DAVE ciphertext to
   Opus; this module is the missing layer, kept here instead of in a fork.)
3. Opus, decoded per member by discord.py's decoder; a lost packet is concealed.

Packets from an SSRC not yet tied to a member (SPEAKING op 5 or a client connect can
arrive after their first audio) are held briefly and replayed once the member is known.
A packet that fails either decryption (a re-key in flight, a stale key) is dropped and
counted; nothing in here raises into discord.py's socket reader. Raw audio is never
logged. Members who opted out are dropped before any decryption or decoding.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import discord.opus
from discord.ext.voice_recv import rtp
from discord.ext.voice_recv.reader import PacketDecryptor

log = logging.getLogger(__name__)

OPUS_SILENCE = b"\xf8\xff\xfe"
FRAME_BYTES = 3840  # 20 ms of 48 kHz, 16-bit stereo: what discord.py's Opus decoder gives
# Packets held for an SSRC no member is known for, and for how long. The count leaves
# room for audio that arrives faster than it is spoken (a burst after a network stall).
UNKNOWN_SSRC_MAX_PACKETS = 250
UNKNOWN_SSRC_HOLD_SECONDS = 2.0
# How many packets wait for a late one before the gap is concealed (20 ms each).
REORDER_DEPTH = 3
# A gap longer than this is a pause in sending, not loss: nothing is invented for it.
MAX_CONCEALED_FRAMES = 5


class DaveDecryptor(Protocol):
    """What is used of a `davey.DaveSession`."""

    def decrypt(self, user_id: int, media_type: Any, packet: bytes) -> bytes: ...


PcmCallback = Callable[[int, bytes], None]
"""Called with (member id, 20 ms of 48 kHz 16-bit stereo PCM), on the receiving thread."""


@dataclass
class ReceiveCounts:
    """What happened to the packets received; read by tests, logs and telemetry."""

    packets: int = 0
    frames: int = 0
    silence: int = 0
    transport_failures: int = 0
    dave_failures: int = 0
    decode_failures: int = 0
    duplicates: int = 0
    concealed: int = 0
    unknown_dropped: int = 0
    ignored: int = 0


@dataclass
class _Pending:
    received_at: float
    packet: rtp.RTPPacket


@dataclass
class _MemberStream:
    """One SSRC's packets in sequence order, decoded with its own Opus state."""

    user_id: int
    decoder: discord.opus.Decoder = field(default_factory=discord.opus.Decoder)
    next_sequence: int | None = None
    waiting: dict[int, rtp.RTPPacket] = field(default_factory=dict)
    last_arrival: float = 0.0


class MemberAudioReceiver:
    """Turns the voice connection's UDP datagrams into each member's PCM frames.

    `on_datagram` is discord.py's socket-listener callback (its reader thread);
    `member_speaking` takes SPEAKING/CLIENT_CONNECT (op 5/12) ssrc → user, `member_left`
    op 13. `flush_stale` hands on packets that waited for a late one long enough.
    """

    def __init__(
        self,
        *,
        mode: str,
        secret_key: bytes,
        dave_session: Callable[[], DaveDecryptor | None],
        on_pcm: PcmCallback,
        ignored: Callable[[int], bool] = lambda user_id: False,
        own_ssrc: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transport = PacketDecryptor(mode, secret_key)  # type: ignore[arg-type]
        self._dave_session = dave_session
        self._on_pcm = on_pcm
        self._ignored = ignored
        self._own_ssrc = own_ssrc
        self._clock = clock
        self._lock = threading.RLock()
        self._ssrc_to_user: dict[int, int] = {}
        self._streams: dict[int, _MemberStream] = {}
        self._unknown: dict[int, list[_Pending]] = {}
        self.counts = ReceiveCounts()

    # --- who is who (voice gateway events) -----------------------------------------------

    def member_speaking(self, user_id: int, ssrc: int) -> None:
        with self._lock:
            self._ssrc_to_user[ssrc] = user_id
            held = self._unknown.pop(ssrc, [])
            now = self._clock()
            for pending in held:
                if now - pending.received_at <= UNKNOWN_SSRC_HOLD_SECONDS:
                    self._accept(pending.packet, user_id)
                else:
                    self.counts.unknown_dropped += 1

    def member_left(self, user_id: int) -> None:
        with self._lock:
            for ssrc in [s for s, u in self._ssrc_to_user.items() if u == user_id]:
                del self._ssrc_to_user[ssrc]
                self._streams.pop(ssrc, None)

    def update_secret_key(self, secret_key: bytes) -> None:
        with self._lock:
            self._transport.update_secret_key(secret_key)

    # --- packets ------------------------------------------------------------------------

    def on_datagram(self, data: bytes) -> None:
        try:
            with self._lock:
                self._receive(data)
        except Exception:  # discord.py's reader thread must never die of audio
            log.exception("a voice packet could not be handled")

    def flush_stale(self, max_wait_seconds: float = 0.06) -> None:
        """Decode what waits behind a gap once nothing new came for `max_wait_seconds`."""
        with self._lock:
            now = self._clock()
            for stream in self._streams.values():
                if stream.waiting and now - stream.last_arrival >= max_wait_seconds:
                    self._drain(stream, force=True)
            for ssrc, held in list(self._unknown.items()):
                fresh = [p for p in held if now - p.received_at <= UNKNOWN_SSRC_HOLD_SECONDS]
                self.counts.unknown_dropped += len(held) - len(fresh)
                if fresh:
                    self._unknown[ssrc] = fresh
                else:
                    del self._unknown[ssrc]

    def _receive(self, data: bytes) -> None:
        if len(data) < 12 or rtp.is_rtcp(data) or (len(data) == 74 and data[1] == 0x02):
            return  # RTCP reports and IP discovery replies carry no audio
        self.counts.packets += 1
        packet = rtp.decode_rtp(data)
        if packet.ssrc == self._own_ssrc:
            return
        user_id = self._ssrc_to_user.get(packet.ssrc)
        if user_id is not None and self._ignored(user_id):
            self.counts.ignored += 1
            return
        try:
            packet.decrypted_data = self._transport.decrypt_rtp(packet)
        except Exception:  # nacl's CryptoError, or a malformed packet
            self.counts.transport_failures += 1
            return
        if user_id is None:
            held = self._unknown.setdefault(packet.ssrc, [])
            if len(held) >= UNKNOWN_SSRC_MAX_PACKETS:
                held.pop(0)
                self.counts.unknown_dropped += 1
            held.append(_Pending(self._clock(), packet))
            return
        self._accept(packet, user_id)

    def _accept(self, packet: rtp.RTPPacket, user_id: int) -> None:
        if self._ignored(user_id):
            self.counts.ignored += 1
            return
        stream = self._streams.get(packet.ssrc)
        if stream is None or stream.user_id != user_id:
            stream = self._streams[packet.ssrc] = _MemberStream(user_id)
        stream.last_arrival = self._clock()
        sequence = packet.sequence
        if stream.next_sequence is not None:
            behind = (stream.next_sequence - sequence) & 0xFFFF
            if 0 < behind < 0x8000:  # already decoded or concealed: a duplicate or too late
                self.counts.duplicates += 1
                return
        if sequence in stream.waiting:
            self.counts.duplicates += 1
            return
        stream.waiting[sequence] = packet
        if stream.next_sequence is None:
            stream.next_sequence = sequence
        self._drain(stream, force=False)

    def _drain(self, stream: _MemberStream, *, force: bool) -> None:
        while stream.waiting:
            expected = stream.next_sequence
            assert expected is not None
            packet = stream.waiting.pop(expected, None)
            if packet is not None:
                self._decode(stream, packet.decrypted_data or b"")
                stream.next_sequence = (expected + 1) & 0xFFFF
                continue
            if not force and len(stream.waiting) < REORDER_DEPTH:
                return  # the missing one may still come
            following = min(stream.waiting, key=lambda s: (s - expected) & 0xFFFF)
            gap = (following - expected) & 0xFFFF
            if gap <= MAX_CONCEALED_FRAMES:
                for _ in range(gap):
                    self._conceal(stream)
            stream.next_sequence = following

    def _decode(self, stream: _MemberStream, payload: bytes) -> None:
        if payload == OPUS_SILENCE:
            # Silence frames end a burst of speech; DAVE leaves them unencrypted.
            self.counts.silence += 1
            self._emit(stream.user_id, bytes(FRAME_BYTES))
            return
        session = self._dave_session()
        if session is not None:
            try:
                payload = session.decrypt(stream.user_id, _audio_media_type(), payload)
            except Exception:  # davey raises ValueError/RuntimeError on a key miss
                self.counts.dave_failures += 1
                return
        try:
            pcm = stream.decoder.decode(payload, fec=False)
        except discord.opus.OpusError:
            self.counts.decode_failures += 1
            return
        self.counts.frames += 1
        self._emit(stream.user_id, pcm)

    def _conceal(self, stream: _MemberStream) -> None:
        try:
            pcm = stream.decoder.decode(None, fec=False)
        except discord.opus.OpusError:
            return
        self.counts.concealed += 1
        self._emit(stream.user_id, pcm)

    def _emit(self, user_id: int, pcm: bytes) -> None:
        self._on_pcm(user_id, pcm)


def _audio_media_type() -> Any:
    import davey  # type: ignore[import-not-found,unused-ignore]

    return davey.MediaType.audio

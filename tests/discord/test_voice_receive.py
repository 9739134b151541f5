"""Hearing members under DAVE: real davey sessions in a real MLS group run by the fake
voice server's external sender, Opus frames encrypted as a Discord client does, sent as
UDP datagrams on loopback to a socket read the way discord.py's reader thread does."""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import davey  # type: ignore[import-not-found,unused-ignore]
import numpy as np
import pytest

from botservice.adapters.discord.voice.receive import MemberAudioReceiver
from tests.fakes.discord_voice_server import FakeDiscordVoiceServer

CHANNEL = 1_234_567_890
BOT = 42
ALICE = 1001
BOB = 1002


def tone(seconds: float, hz: float = 330.0) -> bytes:
    """A gliding tone as 48 kHz stereo 16-bit PCM, so a shifted copy correlates poorly."""
    t = np.arange(int(48_000 * seconds)) / 48_000
    mono = 0.4 * np.sin(2 * np.pi * (hz + 200 * t) * t)
    samples = (mono * 32767).astype("<i2")
    return np.repeat(samples, 2).tobytes()


def mono(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2")[::2].astype(np.float64)


def best_correlation(sent: bytes, heard: bytes) -> float:
    """Pearson correlation at the best lag under 20 ms (Opus delays its output a little)."""
    a, b = mono(sent), mono(heard)
    best = 0.0
    for lag in range(0, 960, 8):
        n = min(len(a), len(b) - lag)
        if n <= 0:
            break
        best = max(best, float(np.corrcoef(a[:n], b[lag : lag + n])[0, 1]))
    return best


@dataclass
class Heard:
    frames: dict[int, list[bytes]] = field(default_factory=dict)
    arrived: threading.Event = field(default_factory=threading.Event)

    def __call__(self, user_id: int, pcm: bytes) -> None:
        self.frames.setdefault(user_id, []).append(pcm)
        self.arrived.set()

    def pcm(self, user_id: int) -> bytes:
        return b"".join(self.frames.get(user_id, []))

    def voiced(self, user_id: int) -> bytes:
        return b"".join(f for f in self.frames.get(user_id, []) if any(f))


@dataclass
class BotSocket:
    """The bot's UDP socket with a reader thread, as discord.py's `SocketReader` runs it;
    the datagrams are handled on the test's own thread (the adapter's event loop), where
    the DAVE group is also re-keyed, as discord.py processes commits on its loop."""

    receiver: MemberAudioReceiver
    sock: socket.socket
    thread: threading.Thread
    inbox: queue.Queue[bytes] = field(default_factory=queue.Queue)
    received: int = 0

    def settle(self, expected: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.received < expected and time.monotonic() < deadline:
            try:
                datagram = self.inbox.get(timeout=0.05)
            except queue.Empty:
                continue
            self.receiver.on_datagram(datagram)
            self.received += 1
        self.receiver.flush_stale(0.0)


@pytest.fixture
def bot_session() -> object:
    return davey.DaveSession(davey.DAVE_PROTOCOL_VERSION, BOT, CHANNEL)


@pytest.fixture
def server(bot_session: object) -> Iterator[FakeDiscordVoiceServer]:
    server = FakeDiscordVoiceServer(CHANNEL, BOT, bot_session)
    yield server
    server.close()


@pytest.fixture
def ignored() -> set[int]:
    return set()


@pytest.fixture
def heard() -> Heard:
    return Heard()


@pytest.fixture
def bot(server: FakeDiscordVoiceServer, heard: Heard, ignored: set[int]) -> Iterator[BotSocket]:
    # The session is looked up for every packet, as the adapter reads the connection's.
    receiver = MemberAudioReceiver(
        mode="aead_xchacha20_poly1305_rtpsize",
        secret_key=server.secret_key,
        dave_session=lambda: server.bot_session,
        on_pcm=heard,
        ignored=ignored.__contains__,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    stop = threading.Event()
    inbox: queue.Queue[bytes] = queue.Queue()

    def read() -> None:
        while not stop.is_set():
            try:
                inbox.put(sock.recv(4096))
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=read, daemon=True)
    bot_socket = BotSocket(receiver, sock, thread, inbox)
    thread.start()
    server.connect_bot(sock.getsockname())
    yield bot_socket
    stop.set()
    thread.join()
    sock.close()


def test_a_member_is_heard_through_transport_and_dave_decryption(
    server: FakeDiscordVoiceServer, bot: BotSocket, heard: Heard
) -> None:
    alice = server.join(ALICE, ssrc=5001)
    bot.receiver.member_speaking(ALICE, alice.ssrc)
    sent = tone(1.0)

    packets = server.speech(alice, sent)
    server.send(packets)
    bot.settle(len(packets))

    assert bot.receiver.counts.dave_failures == 0
    assert bot.receiver.counts.frames == 50
    assert len(heard.voiced(ALICE)) == len(sent)
    assert best_correlation(sent, heard.voiced(ALICE)) > 0.9


def test_without_dave_decryption_the_frames_are_not_opus(
    server: FakeDiscordVoiceServer, heard: Heard
) -> None:
    """The failure discord-ext-voice-recv has alone: DAVE ciphertext handed to Opus."""
    alice = server.join(ALICE, ssrc=5001)
    receiver = MemberAudioReceiver(
        mode="aead_xchacha20_poly1305_rtpsize",
        secret_key=server.secret_key,
        dave_session=lambda: None,
        on_pcm=heard,
    )
    receiver.member_speaking(ALICE, alice.ssrc)
    sent = tone(0.4)

    for datagram in server.speech(alice, sent, silence_frames=0):
        receiver.on_datagram(datagram)

    assert best_correlation(sent, heard.pcm(ALICE)) < 0.3


def test_packets_before_the_member_is_known_are_held_then_heard(
    server: FakeDiscordVoiceServer, bot: BotSocket, heard: Heard
) -> None:
    alice = server.join(ALICE, ssrc=5001)
    sent = tone(3.0)  # arriving in one burst, faster than it was spoken
    packets = server.speech(alice, sent, silence_frames=0)

    server.send(packets)
    bot.settle(len(packets))
    assert heard.pcm(ALICE) == b""

    bot.receiver.member_speaking(ALICE, alice.ssrc)  # SPEAKING arrives late
    bot.receiver.flush_stale(0.0)

    assert best_correlation(sent, heard.voiced(ALICE)) > 0.9


def test_a_lost_a_reordered_and_a_duplicated_packet(
    server: FakeDiscordVoiceServer, bot: BotSocket, heard: Heard
) -> None:
    alice = server.join(ALICE, ssrc=5001)
    bot.receiver.member_speaking(ALICE, alice.ssrc)
    sent = tone(1.0)
    packets = server.speech(alice, sent, silence_frames=0)

    del packets[10]  # lost
    packets[20], packets[21] = packets[21], packets[20]  # reordered
    packets.insert(30, packets[30])  # duplicated
    server.send(packets)
    bot.settle(len(packets))

    counts = bot.receiver.counts
    assert (counts.concealed, counts.duplicates, counts.dave_failures) == (1, 1, 0)
    # The lost 20 ms is concealed, so the member's audio keeps its length and timing.
    assert len(heard.pcm(ALICE)) == len(sent)
    assert best_correlation(sent, heard.pcm(ALICE)) > 0.8


def test_members_joining_and_leaving_mid_utterance_re_key_the_group(
    server: FakeDiscordVoiceServer, bot: BotSocket, heard: Heard
) -> None:
    alice = server.join(ALICE, ssrc=5001)
    bot.receiver.member_speaking(ALICE, alice.ssrc)
    sent = tone(1.2)
    first, second, third = sent[: 3840 * 20], sent[3840 * 20 : 3840 * 40], sent[3840 * 40 :]

    server.send(server.speech(alice, first, silence_frames=0))
    bob = server.join(BOB, ssrc=5002)  # epoch 2: every key changes
    bot.receiver.member_speaking(BOB, bob.ssrc)
    server.send(server.speech(alice, second, silence_frames=0))
    server.send(server.speech(bob, tone(0.2, hz=500), silence_frames=0))
    bot.settle(20 + 20 + 10)  # Alice's first part is decrypted only now, after the re-key
    server.leave(BOB)  # epoch 3
    bot.receiver.member_left(BOB)
    server.send(server.speech(alice, third))
    bot.settle(60 + 10 + 5)

    assert server.bot_session.epoch == 3
    assert bot.receiver.counts.dave_failures == 0
    assert best_correlation(sent, heard.voiced(ALICE)) > 0.9
    assert len(heard.voiced(BOB)) == len(tone(0.2))


def test_packets_sent_under_a_key_the_bot_has_not_got_yet_are_dropped_and_counted(
    server: FakeDiscordVoiceServer, bot: BotSocket, heard: Heard
) -> None:
    alice = server.join(ALICE, ssrc=5001)
    bot.receiver.member_speaking(ALICE, alice.ssrc)
    server.join(BOB, ssrc=5002, bot_late=True)  # Alice is in the new epoch, the bot not yet
    early = server.speech(alice, tone(0.1), silence_frames=0)
    server.send(early)
    bot.settle(len(early))

    server.bot_catches_up()
    later = server.speech(alice, tone(0.2), silence_frames=0)
    server.send(later)
    bot.settle(len(early) + len(later))

    assert bot.receiver.counts.dave_failures == len(early)
    assert bot.receiver.counts.frames == len(later)


@pytest.mark.parametrize("ignored", [{ALICE}])
def test_an_opted_out_member_is_dropped_before_decoding(
    server: FakeDiscordVoiceServer, bot: BotSocket, heard: Heard
) -> None:
    alice = server.join(ALICE, ssrc=5001)
    bot.receiver.member_speaking(ALICE, alice.ssrc)
    packets = server.speech(alice, tone(0.2))

    server.send(packets)
    bot.settle(len(packets))

    assert heard.pcm(ALICE) == b""
    assert bot.receiver.counts.ignored == len(packets)
    assert bot.receiver.counts.frames == 0


def test_garbage_and_a_wrong_transport_key_never_crash_the_reader(
    server: FakeDiscordVoiceServer, bot: BotSocket, heard: Heard
) -> None:
    alice = server.join(ALICE, ssrc=5001)
    bot.receiver.member_speaking(ALICE, alice.ssrc)
    good = server.speech(alice, tone(0.1), silence_frames=0)
    tampered = bytearray(good[0])
    tampered[-6] ^= 0xFF

    server.send([b"\x80", bytes(tampered), b"\x80\x78" + bytes(40), *good[1:]])
    bot.settle(4 + len(good) - 1)

    assert bot.receiver.counts.transport_failures == 2
    assert bot.receiver.counts.frames == len(good) - 1

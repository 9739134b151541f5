"""A voice connection faked at discord.py's documented seam, `discord.VoiceProtocol`.

`channel.connect(cls=FakeVoiceConnection)` asks the gateway to join (op 4) exactly as
`discord.VoiceClient` does, and waits for the gateway's VOICE_STATE_UPDATE; there is no
voice server, so nothing goes over UDP. Audio is played by discord.py's real
`AudioPlayer` thread and Opus-encoded by its real encoder; the packets are kept.
Every connection made is listed in `FakeVoiceConnection.made`.

For receiving, the connection carries what the adapter reads of discord.py 2.7.1's
`VoiceConnectionState` (`_connection`): a real UDP socket on 127.0.0.1 read by a thread
that hands each datagram to the socket listeners, as discord.py's `SocketReader` does;
the websocket hook; and a real `davey.DaveSession` that the fake voice server
(tests/fakes/discord_voice_server.py) keys into its DAVE group.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import discord
import discord.opus
from discord.player import AudioPlayer

SILENCE_PACKET = b"\xf8\xff\xfe"


class _FakeVoiceWebSocket:
    def __init__(self) -> None:
        self.speaking: list[Any] = []

    async def speak(self, state: Any) -> None:
        self.speaking.append(state)


class RecordedAudio:
    """The half of `discord.VoiceClient` that plays audio: `play` runs discord.py's real
    `AudioPlayer` thread and `send_audio_packet` Opus-encodes with its real encoder, but
    the packets are kept instead of sent over UDP."""

    def __init__(self) -> None:
        self.ws = _FakeVoiceWebSocket()
        self.timeout = 1.0
        self.encoder: discord.opus.Encoder | None = None
        self.packets: list[bytes] = []
        self.packet_times: list[float] = []
        self.stops = 0
        self.first_packet = threading.Event()
        self._player: AudioPlayer | None = None
        self._lock = threading.Lock()

    def play(
        self, source: discord.AudioSource, *, after: Callable[[Exception | None], Any] | None = None
    ) -> None:
        if self.is_playing():
            raise discord.ClientException("Already playing audio.")
        if not source.is_opus():
            self.encoder = discord.opus.Encoder()
        self._player = AudioPlayer(source, self, after=after)  # type: ignore[arg-type]
        self._player.start()

    def is_playing(self) -> bool:
        return self._player is not None and self._player.is_playing()

    def stop(self) -> None:
        self.stops += 1
        if self._player is not None:
            self._player.stop()
            self._player = None

    def send_audio_packet(self, data: bytes, *, encode: bool = True) -> None:
        if encode:
            assert self.encoder is not None
            assert len(data) == 3840, f"discord.py would reject a {len(data)}-byte frame"
            data = self.encoder.encode(data, self.encoder.SAMPLES_PER_FRAME)
        with self._lock:
            self.packets.append(data)
            self.packet_times.append(time.monotonic())
        self.first_packet.set()

    @property
    def speech_packets(self) -> list[bytes]:
        with self._lock:
            return [packet for packet in self.packets if packet != SILENCE_PACKET]


async def _no_hook(*args: Any) -> None:
    return None


class _FakeVoiceGatewaySocket:
    """The voice websocket as the receive path sees it: the hook it calls per message."""

    def __init__(self) -> None:
        self._hook: Callable[..., Any] = _no_hook


class FakeVoiceConnectionState:
    """The parts of discord.py's `VoiceConnectionState` a receiving bot reads."""

    def __init__(self, user_id: int, channel_id: int) -> None:
        import davey  # type: ignore[import-not-found,unused-ignore]

        self.dave_protocol_version: int = davey.DAVE_PROTOCOL_VERSION
        self.dave_session: Any = davey.DaveSession(self.dave_protocol_version, user_id, channel_id)
        self.hook: Callable[..., Any] | None = None
        self.ws = _FakeVoiceGatewaySocket()
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.05)
        self.address: tuple[str, int] = self.socket.getsockname()
        self._listeners: list[Callable[[bytes], Any]] = []
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True, name="fake-socket-reader")
        self._reader.start()

    def add_socket_listener(self, callback: Callable[[bytes], Any]) -> None:
        self._listeners.append(callback)

    def remove_socket_listener(self, callback: Callable[[bytes], Any]) -> None:
        self._listeners.remove(callback)

    async def deliver(self, message: dict[str, Any]) -> None:
        """A JSON message from the voice gateway, passed to the hook as discord.py does."""
        await self.ws._hook(self.ws, message)

    def close(self) -> None:
        self._stop.set()
        self._reader.join()
        self.socket.close()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.socket.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            for listener in list(self._listeners):
                listener(data)


class FakeVoiceConnection(RecordedAudio, discord.VoiceProtocol):
    made: ClassVar[list[FakeVoiceConnection]] = []

    def __init__(self, client: discord.Client, channel: discord.abc.Connectable) -> None:
        discord.VoiceProtocol.__init__(self, client, channel)
        RecordedAudio.__init__(self)
        self.guild: discord.Guild = channel.guild  # type: ignore[attr-defined]
        self.disconnected = False
        self.self_deaf = False
        self._joined = asyncio.Event()
        self._connected = threading.Event()
        # What discord.VoiceClient exposes for receiving; the voice server sets the key.
        self.mode = "aead_xchacha20_poly1305_rtpsize"
        self.secret_key: bytes = bytes(32)
        self.ssrc = 4242
        user = client.user
        self._connection = FakeVoiceConnectionState(
            user.id if user is not None else 0,
            channel.id,  # type: ignore[attr-defined]
        )
        FakeVoiceConnection.made.append(self)

    # --- VoiceProtocol ---------------------------------------------------------------

    # discord.VoiceProtocol's signature.
    async def connect(
        self,
        *,
        timeout: float,  # noqa: ASYNC109
        reconnect: bool,
        self_deaf: bool = False,
        self_mute: bool = False,
    ) -> None:
        self.self_deaf = self_deaf
        await self.guild.change_voice_state(
            channel=self.channel, self_deaf=self_deaf, self_mute=self_mute
        )
        await asyncio.wait_for(self._joined.wait(), timeout)

    async def on_voice_state_update(self, data: Any, /) -> None:
        channel_id = data.get("channel_id")
        if channel_id is None:
            self._connected.clear()
            return
        channel = self.guild.get_channel(int(channel_id))
        if channel is not None:
            self.channel = channel  # type: ignore[assignment]
        self._connected.set()
        self._joined.set()

    async def on_voice_server_update(self, data: Any, /) -> None:
        return None

    async def disconnect(self, *, force: bool) -> None:
        self.stop()
        self.disconnected = True
        self._connected.clear()
        await self.guild.change_voice_state(channel=None)
        self._connection.close()
        self.cleanup()

    async def move_to(self, channel: discord.abc.Snowflake | None) -> None:
        await self.guild.change_voice_state(channel=channel)

    # --- connection state, as VoiceClient reports it ------------------------------------

    def is_connected(self) -> bool:
        return self._connected.is_set()

    def wait_until_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

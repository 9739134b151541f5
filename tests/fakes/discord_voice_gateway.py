"""A Discord voice server on loopback that discord.py's own `VoiceClient` connects to.

The voice gateway (v8) is a TLS websocket, since discord.py always dials
`wss://{endpoint}/?v=8`; the test gives the bot an HTTP connector that trusts this
server's self-signed certificate (`create_adapter(http_connector=...)`). It speaks:

- HELLO, IDENTIFY → READY (SSRC, UDP port, the `aead_xchacha20_poly1305_rtpsize` mode),
  UDP IP discovery, SELECT_PROTOCOL → SESSION_DESCRIPTION (the transport key, DAVE
  protocol 1), heartbeats;
- DAVE as Discord runs it: the bot's key package (op 26) is answered with the external
  sender (op 25); when a member joins or leaves, signed proposals (op 27) go to the bot,
  whose commit and welcome (op 28) are announced back to it (op 29) with a transition
  it acknowledges (op 23) before the server executes it (op 22); simulated members
  process the same commit, a joiner the welcome;
- SPEAKING (op 5) tying a member's SSRC to them, CLIENT_DISCONNECT (op 13).

Over UDP it answers IP discovery, records the bot's own RTP packets (its spoken answers)
and sends members' speech as a client would (see `discord_voice_server`).
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import davey  # type: ignore[import-not-found,unused-ignore]
import nacl.secret
import nacl.utils
from aiohttp import WSMsgType, web

from tests.fakes.certificates import self_signed_certificate
from tests.fakes.discord_voice_server import (
    OPUS_SILENCE,
    DaveExternalSender,
    SimulatedMember,
    transport_datagram,
)

MODE = "aead_xchacha20_poly1305_rtpsize"
_DAVE_CIPHER_SUITE = b"\x00\x02"  # MLS_128_DHKEMP256_AES128GCM_SHA256_P256


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    first = data[offset]
    size = 1 << (first >> 6)
    value = first & 0x3F
    for byte in data[offset + 1 : offset + size]:
        value = (value << 8) | byte
    return value, offset + size


def split_commit_welcome(data: bytes) -> tuple[bytes, bytes | None]:
    """Op 28 is the commit (an MLSMessage), then maybe a Welcome (cipher suite, secrets<V>,
    encrypted group info<V>): it is found where such a structure ends exactly at the end."""
    start = data.find(_DAVE_CIPHER_SUITE, 1)
    while start != -1:
        try:
            offset = start + 2
            for _ in range(2):
                length, offset = _read_varint(data, offset)
                offset += length
            if offset == len(data):
                return data[:start], data[start:]
        except IndexError:
            pass
        start = data.find(_DAVE_CIPHER_SUITE, start + 1)
    return data, None


@dataclass
class _Bot:
    ws: web.WebSocketResponse
    user_id: int
    ssrc: int = 4100
    address: tuple[str, int] | None = None
    seq: int = 0
    key_package: asyncio.Event = field(default_factory=asyncio.Event)
    commit_welcome: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    transition_ready: asyncio.Queue[int] = field(default_factory=asyncio.Queue)


class FakeVoiceGateway:
    """One voice channel's server; `start()` it, point the fake Discord's
    `voice_endpoint` at `endpoint`, and give the bot `client_ssl`."""

    def __init__(self, channel_id: int) -> None:
        self.channel_id = channel_id
        self.sender = DaveExternalSender(channel_id)
        self.secret_key = nacl.utils.random(nacl.secret.Aead.KEY_SIZE)
        self.members: dict[int, SimulatedMember] = {}
        self.epoch = 0
        self.bot_packets: list[bytes] = []  # the bot's own RTP: its spoken answers
        self.bot_packet_times: list[float] = []  # when each arrived (time.monotonic())
        self.client_ssl: ssl.SSLContext | None = None
        self.endpoint = ""
        self._bot: _Bot | None = None
        self._connected = asyncio.Event()
        self._transition = 0
        self._nonce = 0
        self._folder = tempfile.TemporaryDirectory()
        self._runner: web.AppRunner | None = None
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind(("127.0.0.1", 0))
        self._udp.settimeout(0.05)
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read_udp, daemon=True)

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        cert, key = self_signed_certificate(Path(self._folder.name))
        server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ssl.load_cert_chain(cert, key)
        self.client_ssl = ssl.create_default_context(cafile=str(cert))
        app = web.Application()
        app.router.add_get("/", self._gateway)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=server_ssl)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.endpoint = f"127.0.0.1:{port}"
        self._reader.start()

    async def close(self) -> None:
        self._stop.set()
        self._reader.join()
        self._udp.close()
        if self._runner is not None:
            await self._runner.cleanup()
        self._folder.cleanup()

    async def bot_connected(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        await asyncio.wait_for(self._connected.wait(), timeout)

    # --- members --------------------------------------------------------------------

    async def member_joins(self, user_id: int, ssrc: int) -> SimulatedMember:
        bot = self._require_bot()
        session = davey.DaveSession(davey.DAVE_PROTOCOL_VERSION, user_id, self.channel_id)
        session.set_external_sender(self.sender.package())
        proposals = self.sender.proposals(
            self.epoch, [self.sender.add(session.get_serialized_key_package())]
        )
        _, welcome = await self._commit(bot, proposals)
        assert welcome is not None, "the bot's commit came without a welcome"
        session.process_welcome(welcome)
        member = SimulatedMember(user_id, ssrc, session)
        self.members[user_id] = member
        await self._send_json(
            bot, {"op": 5, "d": {"user_id": str(user_id), "ssrc": ssrc, "speaking": 1}}
        )
        return member

    async def member_leaves(self, user_id: int) -> None:
        bot = self._require_bot()
        leaving = self.members.pop(user_id)
        proposals = self.sender.proposals(
            self.epoch, [self.sender.remove(leaving.session.own_leaf_index)]
        )
        await self._commit(bot, proposals)
        await self._send_json(bot, {"op": 13, "d": {"user_id": str(user_id)}})

    def speech(
        self, member: SimulatedMember, pcm: bytes, *, silence_frames: int = 5
    ) -> list[bytes]:
        """The datagrams of `member` saying `pcm`, then the silence frames ending a burst."""
        datagrams = []
        for frame in member.frames(pcm) + [OPUS_SILENCE] * silence_frames:
            datagrams.append(transport_datagram(member, frame, self.secret_key, self._nonce))
            self._nonce += 1
        return datagrams

    def send(self, datagrams: list[bytes]) -> None:
        bot = self._require_bot()
        assert bot.address is not None
        for datagram in datagrams:
            self._udp.sendto(datagram, bot.address)

    def speak(self, member: SimulatedMember, pcm: bytes, *, silence_frames: int = 5) -> None:
        self.send(self.speech(member, pcm, silence_frames=silence_frames))

    async def speak_in_real_time(self, member: SimulatedMember, pcm: bytes) -> float:
        """One packet every 20 ms, as a client talks; returns when the first was sent."""
        started = time.monotonic()
        for index, datagram in enumerate(self.speech(member, pcm)):
            self.send([datagram])
            await asyncio.sleep(max(0.0, started + (index + 1) * 0.02 - time.monotonic()))
        return started

    async def _commit(self, bot: _Bot, proposals: bytes) -> tuple[bytes, bytes | None]:
        """Proposals to the bot (op 27), its commit back (op 28), announced with a transition
        (op 29, op 23, op 22); the members process the same commit."""
        await self._send_binary(bot, 27, b"\x00" + proposals)
        commit, welcome = split_commit_welcome(await asyncio.wait_for(bot.commit_welcome.get(), 10))
        for member in self.members.values():
            member.session.process_proposals(davey.ProposalsOperationType.append, proposals)
            member.session.process_commit(commit)
        self._transition += 1
        transition = self._transition
        await self._send_binary(bot, 29, struct.pack(">H", transition) + commit)
        ready = await asyncio.wait_for(bot.transition_ready.get(), 10)
        assert ready == transition
        await self._send_json(bot, {"op": 22, "d": {"transition_id": transition}})
        self.epoch += 1
        return commit, welcome

    def _require_bot(self) -> _Bot:
        assert self._bot is not None, "the bot has not connected"
        return self._bot

    # --- the websocket -------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"op": 8, "d": {"heartbeat_interval": 5000}}))
        bot: _Bot | None = None
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                data = bytes(message.data)
                if bot is None:
                    continue
                if data[0] == 26:  # the bot's key package: the group starts with it
                    await self._send_binary(bot, 25, self.sender.package())
                    bot.key_package.set()
                elif data[0] == 28:
                    bot.commit_welcome.put_nowait(data[1:])
                continue
            if message.type != WSMsgType.TEXT:
                continue
            payload = json.loads(message.data)
            op, data = payload["op"], payload.get("d") or {}
            if op == 0:  # IDENTIFY
                bot = self._bot = _Bot(ws, int(data["user_id"]))
                await self._send_json(
                    bot,
                    {
                        "op": 2,
                        "d": {
                            "ssrc": bot.ssrc,
                            "ip": "127.0.0.1",
                            "port": self._udp.getsockname()[1],
                            "modes": [MODE],
                        },
                    },
                )
            elif op == 1 and bot is not None:  # SELECT_PROTOCOL
                description = {
                    "mode": MODE,
                    "secret_key": list(self.secret_key),
                    "dave_protocol_version": davey.DAVE_PROTOCOL_VERSION,
                }
                await self._send_json(bot, {"op": 4, "d": description})
                self._connected.set()
            elif op == 3:  # HEARTBEAT
                await ws.send_str(json.dumps({"op": 6, "d": data}))
            elif op == 23 and bot is not None:
                bot.transition_ready.put_nowait(int(data["transition_id"]))
        return ws

    async def _send_json(self, bot: _Bot, payload: dict[str, Any]) -> None:
        bot.seq += 1
        await bot.ws.send_str(json.dumps({**payload, "seq": bot.seq}))

    async def _send_binary(self, bot: _Bot, op: int, body: bytes) -> None:
        bot.seq += 1
        await bot.ws.send_bytes(struct.pack(">HB", bot.seq, op) + body)

    # --- UDP ----------------------------------------------------------------------------

    def _read_udp(self) -> None:
        while not self._stop.is_set():
            try:
                data, address = self._udp.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(data) == 74 and data[1] == 0x01:  # IP discovery
                if self._bot is not None:
                    self._bot.address = address
                reply = bytearray(74)
                struct.pack_into(">HHI", reply, 0, 2, 70, struct.unpack_from(">I", data, 4)[0])
                reply[8 : 8 + len(address[0])] = address[0].encode()
                struct.pack_into(">H", reply, 72, address[1])
                self._udp.sendto(bytes(reply), address)
            elif len(data) > 12:
                self.bot_packet_times.append(time.monotonic())
                self.bot_packets.append(data)

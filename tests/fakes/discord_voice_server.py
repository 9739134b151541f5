"""The receiving half of a Discord voice server, on loopback: a real DAVE group and UDP.

Discord's voice server is the DAVE group's MLS *external sender*: it proposes adding and
removing members (voice gateway op 27), one member commits (op 28), and the server
announces the commit (op 29) to those already in and welcomes the joiners (op 30). Here
the server signs its proposals with its own P-256 key, like Discord's, and every member,
the bot included, is a real `davey.DaveSession`: the bot's is the one its voice
connection holds, so the group is re-keyed under it exactly as in production.

Simulated members speak as a Discord client does: PCM → Opus (discord.py's encoder) →
DAVE (`encrypt_opus` with the member's session) → RTP with a one-byte header extension →
transport encryption (`aead_xchacha20_poly1305_rtpsize`, the bot's key) → a real UDP
datagram to the bot's socket. The server can lose, reorder and duplicate packets.

The voice gateway's JSON events that tie an SSRC to a member (SPEAKING, op 5) and tell a
member left (op 13) are delivered to the bot's voice websocket hook, the seam discord.py
calls for every voice gateway message (`DiscordVoiceWebSocket._hook`).

What is not faked here: the voice gateway's TLS websocket handshake. discord.py 2.7.1
dials `wss://{endpoint}/?v=8` with the scheme fixed, so a plain loopback websocket is
unreachable without a certificate the client trusts; the connection itself is the fake
at discord.py's `VoiceProtocol` seam (tests/fakes/discord_voice.py).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import davey  # type: ignore[import-not-found,unused-ignore]
import discord.opus
import nacl.secret
import nacl.utils
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

OPUS_SILENCE = b"\xf8\xff\xfe"
FRAME_BYTES = 3840


def _varint(n: int) -> bytes:
    """MLS (RFC 9420 §2.1.2) variable-length integer."""
    if n < 1 << 6:
        return bytes([n])
    if n < 1 << 14:
        return (0x4000 | n).to_bytes(2, "big")
    return (0x80000000 | n).to_bytes(4, "big")


def _opaque(data: bytes) -> bytes:
    return _varint(len(data)) + data


_MLS10 = (1).to_bytes(2, "big")
_PUBLIC_MESSAGE = (1).to_bytes(2, "big")
_SENDER_EXTERNAL = bytes([2])
_CONTENT_PROPOSAL = bytes([2])
_PROPOSAL_ADD = (1).to_bytes(2, "big")
_PROPOSAL_REMOVE = (3).to_bytes(2, "big")
_BASIC_CREDENTIAL = (1).to_bytes(2, "big")


class DaveExternalSender:
    """The voice server's MLS identity: the external sender package (op 25) and signed
    Add/Remove proposals (op 27) for the channel's group."""

    def __init__(self, channel_id: int) -> None:
        self.channel_id = channel_id
        self._key = ec.generate_private_key(ec.SECP256R1())

    def package(self) -> bytes:
        public = self._key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return _opaque(public) + _BASIC_CREDENTIAL + _opaque(b"discord-voice-server")

    def proposals(self, epoch: int, bodies: Iterable[bytes]) -> bytes:
        """op 27's append payload: a vector of MLSMessages, each one signed proposal."""
        return _opaque(b"".join(self._proposal(epoch, body) for body in bodies))

    def add(self, key_package: bytes) -> bytes:
        return _PROPOSAL_ADD + key_package

    def remove(self, leaf_index: int) -> bytes:
        return _PROPOSAL_REMOVE + leaf_index.to_bytes(4, "big")

    def _proposal(self, epoch: int, body: bytes) -> bytes:
        group_id = self.channel_id.to_bytes(8, "big")
        content = (
            _opaque(group_id)
            + epoch.to_bytes(8, "big")
            + _SENDER_EXTERNAL
            + (0).to_bytes(4, "big")  # index in the group's external senders
            + _opaque(b"")  # authenticated data
            + _CONTENT_PROPOSAL
            + body
        )
        # FramedContentTBS for an external sender has no group context (RFC 9420 §6.1).
        to_sign = _MLS10 + _PUBLIC_MESSAGE + content
        signature = self._key.sign(
            _opaque(b"MLS 1.0 FramedContentTBS") + _opaque(to_sign), ec.ECDSA(hashes.SHA256())
        )
        return _MLS10 + _PUBLIC_MESSAGE + content + _opaque(signature)


@dataclass
class SimulatedMember:
    """A Discord client in the channel: its own DAVE session and Opus encoder."""

    user_id: int
    ssrc: int
    session: Any
    encoder: discord.opus.Encoder = field(default_factory=discord.opus.Encoder)
    sequence: int = 1000
    timestamp: int = 0

    def frames(self, pcm: bytes) -> list[bytes]:
        """20 ms Opus frames of 48 kHz stereo PCM, DAVE-encrypted (silence stays plain)."""
        frames = []
        for start in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
            opus = self.encoder.encode(pcm[start : start + FRAME_BYTES], 960)
            frames.append(self.session.encrypt_opus(opus))
        return frames

    def rtp_header(self) -> bytes:
        # Version 2, extension bit set (a real client sends one), payload type 120 (Opus).
        header = struct.pack(">BBHII", 0x90, 120, self.sequence, self.timestamp, self.ssrc)
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + 960) & 0xFFFFFFFF
        return header


def transport_datagram(member: SimulatedMember, frame: bytes, key: bytes, nonce: int) -> bytes:
    """`frame` in the next RTP packet of `member`, sealed as the server forwards it to the
    bot: rtpsize AEAD with the bot's key; the header extension's 4-byte preamble is
    authenticated in the clear, its body encrypted with the frame."""
    header = member.rtp_header()
    extension_preamble = b"\xbe\xde\x00\x01"
    extension_body = b"\x10\x7f\x00\x00"  # audio level, padded to 32 bits
    authenticated = header + extension_preamble
    nonce_bytes = struct.pack(">I", nonce)
    box = nacl.secret.Aead(key)
    sealed = box.encrypt(extension_body + frame, authenticated, nonce_bytes + bytes(20)).ciphertext
    return authenticated + sealed + nonce_bytes


class FakeDiscordVoiceServer:
    """One voice channel's server: the DAVE group, and UDP to the bot."""

    def __init__(self, channel_id: int, bot_user_id: int, bot_session: Any) -> None:
        self.channel_id = channel_id
        self.bot_user_id = bot_user_id
        self.bot_session = bot_session
        self.sender = DaveExternalSender(channel_id)
        self.members: dict[int, SimulatedMember] = {}
        self.secret_key = nacl.utils.random(nacl.secret.Aead.KEY_SIZE)
        self._nonce = 0
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._bot_address: tuple[str, int] | None = None
        self._held_commit: bytes | None = None
        self.bot_session.set_external_sender(self.sender.package())

    def close(self) -> None:
        self._socket.close()

    def connect_bot(self, address: tuple[str, int]) -> None:
        self._bot_address = address

    # --- the DAVE group --------------------------------------------------------------

    def join(self, user_id: int, ssrc: int, *, bot_late: bool = False) -> SimulatedMember:
        """A member joins: the server proposes adding them, the bot commits (as discord.py
        does when it receives op 27), everyone processes the commit, they get a welcome.
        `bot_late`: the bot's own announcement (op 29) is still on its way, so the others
        are in the new epoch before it (`bot_catches_up` delivers it)."""
        session = davey.DaveSession(davey.DAVE_PROTOCOL_VERSION, user_id, self.channel_id)
        session.set_external_sender(self.sender.package())
        proposals = self.sender.proposals(
            self.bot_session.epoch, [self.sender.add(session.get_serialized_key_package())]
        )
        expected = [self.bot_user_id, user_id, *self.members]
        result = self.bot_session.process_proposals(
            davey.ProposalsOperationType.append, proposals, expected
        )
        self._everyone_commits(proposals, expected, result.commit, bot_late=bot_late)
        session.process_welcome(result.welcome)
        member = SimulatedMember(user_id, ssrc, session)
        self.members[user_id] = member
        return member

    def leave(self, user_id: int) -> None:
        leaving = self.members.pop(user_id)
        proposals = self.sender.proposals(
            self.bot_session.epoch, [self.sender.remove(leaving.session.own_leaf_index)]
        )
        expected = [self.bot_user_id, *self.members]
        result = self.bot_session.process_proposals(
            davey.ProposalsOperationType.append, proposals, expected
        )
        self._everyone_commits(proposals, expected, result.commit)

    def bot_catches_up(self) -> None:
        commit, self._held_commit = self._held_commit, None
        if commit is not None:
            self.bot_session.process_commit(commit)

    def _everyone_commits(
        self, proposals: bytes, expected: list[int], commit: bytes, *, bot_late: bool = False
    ) -> None:
        # Every member gets op 27 and may answer with a commit of its own; the server
        # announces one (the bot's here) and everyone, its author included, processes it.
        for member in self.members.values():
            member.session.process_proposals(
                davey.ProposalsOperationType.append, proposals, expected
            )
        if bot_late:
            self._held_commit = commit
        else:
            self.bot_session.process_commit(commit)
        for member in self.members.values():
            member.session.process_commit(commit)

    # --- voice gateway events --------------------------------------------------------------

    @staticmethod
    def speaking_event(member: SimulatedMember) -> dict[str, Any]:
        return {"op": 5, "d": {"user_id": str(member.user_id), "ssrc": member.ssrc, "speaking": 1}}

    @staticmethod
    def disconnect_event(user_id: int) -> dict[str, Any]:
        return {"op": 13, "d": {"user_id": str(user_id)}}

    # --- UDP ----------------------------------------------------------------------------

    def datagram(self, member: SimulatedMember, frame: bytes) -> bytes:
        """One RTP packet as the server forwards it to the bot (see `transport_datagram`)."""
        datagram = transport_datagram(member, frame, self.secret_key, self._nonce)
        self._nonce += 1
        return datagram

    def send(self, datagrams: Iterable[bytes]) -> None:
        assert self._bot_address is not None, "the bot has not connected"
        for datagram in datagrams:
            self._socket.sendto(datagram, self._bot_address)

    def speech(
        self, member: SimulatedMember, pcm: bytes, *, silence_frames: int = 5
    ) -> list[bytes]:
        """The datagrams of `pcm` spoken by `member`, then the silence frames a client ends
        a burst with."""
        packets = [self.datagram(member, frame) for frame in member.frames(pcm)]
        packets += [self.datagram(member, OPUS_SILENCE) for _ in range(silence_frames)]
        return packets

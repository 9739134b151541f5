"""A fake Discord gateway + REST API on 127.0.0.1, enough for discord.py 2.7 to run end to end.

The gateway says HELLO, acknowledges heartbeats, answers IDENTIFY with READY and one
GUILD_CREATE per guild of the shard, then sends whatever a test dispatches. The REST side
keeps messages, threads and interaction responses in memory and records every call, so a
test reads like a conversation: dispatch a message, then look at what the bot posted.

What discord.py needs from such a fake (checked against 2.7.1): REST answers carry
`Content-Type: application/json` exactly; member payloads carry `flags`;
INTERACTION_CREATE carries `attachment_size_limit`; the interaction callback (sent with
`with_response=1`) answers `{"interaction": ..., "resource": ...}`.

Voice: the guild has a voice channel (type 2). `join_voice`/`leave_voice` move a person
and dispatch VOICE_STATE_UPDATE; the bot's own gateway voice requests (op 4) are recorded
and answered the way Discord does, with VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE (no
voice server exists: a test connects through a fake `discord.VoiceProtocol`). Files added
with `add_attachment` are served for download, as Discord's CDN would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import WSMsgType, web

DISCORD_EPOCH_MS = 1420070400000
MANAGE_CHANNELS = 1 << 4
# View channel, send messages, send in threads, create public threads, read history,
# embed links, attach files, add reactions, use application commands.
MEMBER_PERMISSIONS = (
    (1 << 10)
    | (1 << 11)
    | (1 << 38)
    | (1 << 35)
    | (1 << 16)
    | (1 << 14)
    | (1 << 15)
    | (1 << 6)
    | (1 << 31)
)
INTENT_MESSAGE_CONTENT = 1 << 15
CONNECT = 1 << 20
SPEAK = 1 << 21
VOICE_MESSAGE_FLAG = 1 << 13
NONCE_WINDOW_SECONDS = 120.0


@dataclass
class RestCall:
    method: str
    path: str  # below the API base, e.g. "/channels/1/messages"
    query: dict[str, str]
    json: Any
    at: float = field(default_factory=time.monotonic)

    @property
    def is_message_write(self) -> bool:
        """A call that posts or edits a visible message (what a user sees change)."""
        if self.method == "POST" and self.path.endswith("/messages"):
            return True
        if self.method == "PATCH" and "/messages/" in self.path:
            return True
        return self.method == "POST" and self.path.startswith("/webhooks/")


@dataclass
class FakeUser:
    id: str
    username: str
    bot: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "global_name": self.username.title(),
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }


class _Session:
    def __init__(self, ws: web.WebSocketResponse, shard: tuple[int, int] | None) -> None:
        self.ws = ws
        self.shard = shard
        self.seq = 0
        self.ready = asyncio.Event()

    async def send_dispatch(self, event: str, data: Any) -> None:
        self.seq += 1
        await self.ws.send_str(json.dumps({"op": 0, "t": event, "s": self.seq, "d": data}))


class FakeDiscordServer:
    """One fake Discord: a guild with channels and members, and a bot user."""

    def __init__(
        self,
        *,
        token: str = "fake-bot-token",
        message_content_allowed: bool = True,
        echo_own_messages: bool = True,
        heartbeat_interval_ms: int = 41250,
    ) -> None:
        self.token = token
        self.message_content_allowed = message_content_allowed
        self.echo_own_messages = echo_own_messages
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self._ids = itertools.count(1)
        self.bot = FakeUser(self.new_id(), "botservice", bot=True)
        self.application_id = self.bot.id
        self.owner = FakeUser(self.new_id(), "owner")
        self.alice = FakeUser(self.new_id(), "alice")  # has Manage Channels through a role
        self.bob = FakeUser(self.new_id(), "bob")  # a plain member
        self.other_bot = FakeUser(self.new_id(), "otherbot", bot=True)
        self.guild_id = self.new_id()
        self.manager_role_id = self.new_id()
        self.channel_id = self.new_id()
        self.second_channel_id = self.new_id()
        self.extra_channel_ids: list[str] = []
        self.voice_channel_id = self.new_id()
        # A server the bot is not in, where people use /ask as a user-installed command,
        # and a group DM (people only, no bot).
        self.foreign_guild_id = self.new_id()
        self.foreign_channel_id = self.new_id()
        self.group_dm_id = self.new_id()
        # user id -> voice channel id, as GUILD_CREATE and VOICE_STATE_UPDATE report it.
        self.voice_states: dict[str, str] = {}
        # The bot's op-4 requests: (guild id, channel id or None).
        self.voice_requests: list[tuple[str, str | None]] = []
        # Where VOICE_SERVER_UPDATE sends the bot (tests/fakes/discord_voice_gateway.py).
        self.voice_endpoint = "127.0.0.1:1"
        # Deny the bot Connect and Speak in the voice channel.
        self.bot_voice_denied = False
        # Voice channel statuses (`PUT /channels/{id}/voice-status`), in the order set:
        # (channel id, status; None or "" clears it).
        self.voice_statuses: list[tuple[str, str | None]] = []
        # Refuse setting a voice channel status, as without Set Voice Channel Status.
        self.voice_status_denied = False
        self.attachments: dict[str, tuple[str, bytes]] = {}
        self.calls: list[RestCall] = []
        self.messages: dict[str, dict[str, Any]] = {}
        self.threads: dict[str, dict[str, Any]] = {}
        self.commands: dict[str | None, list[dict[str, Any]]] = {}
        self.identifies: list[dict[str, Any]] = []
        self.interaction_responses: dict[str, dict[str, Any]] = {}
        self._interaction_tokens: dict[str, str] = {}  # token -> interaction id
        self._interaction_channels: dict[str, str] = {}  # interaction id -> channel id
        # interaction id -> the message whose button was clicked (a component interaction)
        self._interaction_messages: dict[str, str] = {}
        self._sessions: list[_Session] = []
        self._call_event = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.slow_rest_seconds = 0.0
        # Raw frames sent to each new session between READY and GUILD_CREATE (start-up),
        # and before HELLO (the very first frames a connection reads).
        self.startup_frames: list[str] = []
        self.before_hello_frames: list[str] = []
        # Frames sent instead of READY (and GUILD_CREATE), one per IDENTIFY, while any remain.
        self.ready_replacements: list[str] = []
        # While True the gateway refuses websocket handshakes (503), like an outage.
        self.refuse_gateway = False
        # When set, posting a channel message creates it and then waits for this event
        # before answering: the window in which a bot process can die without the id.
        self.hold_posts: asyncio.Event | None = None
        # Messages created with `enforce_nonce`: (author id, nonce) -> (message id, created).
        self._nonces: dict[tuple[str, str], tuple[str, float]] = {}

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{id}/{name}", self._attachment)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def close(self) -> None:
        for session in list(self._sessions):
            with contextlib.suppress(Exception):
                await session.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    def new_id(self) -> str:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return str((ms << 22) | (next(self._ids) & 0x3FFFFF))

    # --- payloads --------------------------------------------------------------

    def member_payload(self, user: FakeUser, *, permissions: int | None = None) -> dict[str, Any]:
        roles = [self.manager_role_id] if user is self.alice else []
        data: dict[str, Any] = {
            "user": user.payload(),
            "roles": roles,
            "nick": None,
            "avatar": None,
            "joined_at": "2025-01-01T00:00:00+00:00",
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
        }
        if permissions is not None:
            data["permissions"] = str(permissions)
        return data

    def channel_payload(self, channel_id: str, name: str, position: int) -> dict[str, Any]:
        return {
            "id": channel_id,
            "type": 0,
            "guild_id": self.guild_id,
            "name": name,
            "position": position,
            "permission_overwrites": [],
            "parent_id": None,
            "topic": None,
            "nsfw": False,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "flags": 0,
        }

    def voice_channel_payload(self) -> dict[str, Any]:
        overwrites = []
        if self.bot_voice_denied:
            overwrites.append(
                {"id": self.bot.id, "type": 1, "allow": "0", "deny": str(CONNECT | SPEAK)}
            )
        return {
            "id": self.voice_channel_id,
            "type": 2,
            "guild_id": self.guild_id,
            "name": "Lounge",
            "position": 0,
            "permission_overwrites": overwrites,
            "parent_id": None,
            "nsfw": False,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "bitrate": 64000,
            "user_limit": 0,
            "rtc_region": None,
            "video_quality_mode": 1,
            "flags": 0,
        }

    def voice_state_payload(self, user: FakeUser, channel_id: str | None) -> dict[str, Any]:
        return {
            "guild_id": self.guild_id,
            "channel_id": channel_id,
            "user_id": user.id,
            "member": self.member_payload(user),
            "session_id": f"voice-session-{user.id}",
            "deaf": False,
            "mute": False,
            "self_deaf": user.bot,
            "self_mute": False,
            "self_video": False,
            "suppress": False,
            "request_to_speak_timestamp": None,
        }

    def guild_payload(self) -> dict[str, Any]:
        role = {"color": 0, "hoist": False, "managed": False, "mentionable": False, "flags": 0}
        channels = [
            self.channel_payload(self.channel_id, "general", 0),
            self.channel_payload(self.second_channel_id, "random", 1),
        ]
        channels += [
            self.channel_payload(cid, f"extra-{n}", n + 2)
            for n, cid in enumerate(self.extra_channel_ids)
        ]
        channels.append(self.voice_channel_payload())
        users = {u.id: u for u in (self.owner, self.alice, self.bob, self.other_bot, self.bot)}
        voice_states = [
            {k: v for k, v in self.voice_state_payload(users[uid], cid).items() if k != "guild_id"}
            for uid, cid in self.voice_states.items()
            if uid in users
        ]
        return {
            "id": self.guild_id,
            "name": "Test Guild",
            "icon": None,
            "owner_id": self.owner.id,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "system_channel_id": None,
            "system_channel_flags": 0,
            "features": [],
            "emojis": [],
            "stickers": [],
            "roles": [
                {
                    "id": self.guild_id,
                    "name": "@everyone",
                    "position": 0,
                    "permissions": str(MEMBER_PERMISSIONS | CONNECT | SPEAK),
                    **role,
                },
                {
                    "id": self.manager_role_id,
                    "name": "managers",
                    "position": 1,
                    "permissions": str(MEMBER_PERMISSIONS | MANAGE_CHANNELS),
                    **role,
                },
            ],
            "channels": channels,
            "threads": [t for t in self.threads.values() if not t["thread_metadata"]["archived"]],
            "members": [self.member_payload(self.bot)]
            + [
                self.member_payload(users[uid])
                for uid in self.voice_states
                if uid in users and uid != self.bot.id
            ],
            "member_count": 5,
            "large": False,
            "unavailable": False,
            "voice_states": voice_states,
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "joined_at": "2025-01-01T00:00:00+00:00",
        }

    def member_permissions(self, user: FakeUser) -> int:
        if user is self.alice or user is self.owner:
            return MEMBER_PERMISSIONS | MANAGE_CHANNELS
        return MEMBER_PERMISSIONS

    def _message(
        self,
        *,
        channel_id: str,
        author: FakeUser,
        content: str,
        guild: bool = True,
        mentions: list[FakeUser] = (),  # type: ignore[assignment]
        reference: dict[str, Any] | None = None,
        attachments: list[dict[str, Any]] | None = None,
        message_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": message_id or self.new_id(),
            "channel_id": channel_id,
            "type": 19 if reference else 0,
            "content": content,
            "author": author.payload(),
            "timestamp": datetime.now(UTC).isoformat(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [u.payload() for u in mentions],
            "mention_roles": [],
            "attachments": attachments or [],
            "embeds": [],
            "pinned": False,
            "flags": 0,
            "components": [],
        }
        if guild:
            data["guild_id"] = self.guild_id
            data["member"] = {k: v for k, v in self.member_payload(author).items() if k != "user"}
        if reference is not None:
            data["message_reference"] = {
                "type": 0,
                "message_id": reference["id"],
                "channel_id": reference["channel_id"],
                **({"guild_id": self.guild_id} if guild else {}),
            }
            # Discord nests the referenced message without its own referenced_message.
            nested = {k: v for k, v in reference.items() if k != "referenced_message"}
            data["referenced_message"] = nested
        if extra:
            data.update(extra)
        return data

    # --- scripted dispatches -----------------------------------------------------------

    async def wait_ready(self, seconds: float = 10.0) -> None:
        await self.wait_until(
            lambda: any(s.ready.is_set() for s in self._sessions), seconds, "a ready session"
        )

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        sessions = [s for s in self._sessions if s.ready.is_set()]
        guild_id = data.get("guild_id")
        for session in sessions:
            if guild_id is not None and session.shard is not None:
                shard_id, count = session.shard
                if (int(guild_id) >> 22) % count != shard_id:
                    continue
            await session.send_dispatch(event, data)

    async def send_raw(self, frame: str | bytes) -> None:
        """Send one raw frame, as is, to every ready session (malformed on purpose); bytes
        go as a binary frame, which discord.py reads as part of its zlib stream."""
        for session in [s for s in self._sessions if s.ready.is_set()]:
            if isinstance(frame, bytes):
                await session.ws.send_bytes(frame)
            else:
                await session.ws.send_str(frame)

    async def dispatch_raw(self, event: str, data: Any) -> None:
        """A dispatch whose `d` is whatever the test says (`[]`, a message without author)."""
        for session in [s for s in self._sessions if s.ready.is_set()]:
            await session.send_dispatch(event, data)

    async def drop_gateway(self, *, refuse: bool = False, code: int = 1001) -> None:
        """Close every gateway connection (with a gateway close `code`); with `refuse`,
        refuse new ones until `refuse_gateway` is set back to False."""
        self.refuse_gateway = refuse
        for session in list(self._sessions):
            with contextlib.suppress(Exception):
                await session.ws.close(code=code, message=b"closed by the fake")

    def gateway_sessions(self) -> int:
        return sum(1 for s in self._sessions if s.ready.is_set())

    async def send_message(
        self,
        content: str,
        *,
        author: FakeUser | None = None,
        channel_id: str | None = None,
        mention_bot: bool = False,
        reply_to: dict[str, Any] | None = None,
        dm: bool = False,
        attachments: list[dict[str, Any]] | None = None,
        message_id: str | None = None,
        flags: int = 0,
    ) -> dict[str, Any]:
        """A person posts a message; the gateway dispatches MESSAGE_CREATE. Returns the payload."""
        author = author or self.bob
        if mention_bot:
            content = f"<@{self.bot.id}> {content}"
        if dm:
            channel_id = channel_id or self.dm_channel_id(author)
        data = self._message(
            channel_id=channel_id or self.channel_id,
            author=author,
            content=content,
            guild=not dm,
            mentions=[self.bot] if mention_bot else [],
            reference=reply_to,
            attachments=attachments,
            message_id=message_id,
            extra={"flags": flags} if flags else None,
        )
        self.messages[data["id"]] = data
        await self.dispatch("MESSAGE_CREATE", data)
        return data

    async def send_forward(
        self,
        original: dict[str, Any],
        *,
        author: FakeUser | None = None,
        channel_id: str | None = None,
        dm: bool = False,
    ) -> dict[str, Any]:
        """A person forwards `original` (a message payload): as Discord sends it, an empty
        message whose reference has type 1 (forward) and whose `message_snapshots` carry
        the original's content and files, without its author."""
        author = author or self.bob
        if dm:
            channel_id = channel_id or self.dm_channel_id(author)
        data = self._message(
            channel_id=channel_id or self.channel_id, author=author, content="", guild=not dm
        )
        data["message_reference"] = {
            "type": 1,
            "message_id": original["id"],
            "channel_id": original["channel_id"],
            **({"guild_id": original["guild_id"]} if "guild_id" in original else {}),
        }
        snapshot_keys = (
            "type",
            "content",
            "embeds",
            "attachments",
            "timestamp",
            "edited_timestamp",
            "flags",
            "mentions",
            "mention_roles",
            "components",
        )
        data["message_snapshots"] = [{"message": {k: original[k] for k in snapshot_keys}}]
        self.messages[data["id"]] = data
        await self.dispatch("MESSAGE_CREATE", data)
        return data

    def delete_message(self, message_id: str) -> None:
        """A person deleted a message: Discord forgets it, and replies to it carry
        `referenced_message: null` from then on."""
        self.messages.pop(message_id, None)
        for message in self.messages.values():
            if (message.get("message_reference") or {}).get("message_id") == message_id:
                message["referenced_message"] = None

    def add_attachment(
        self, filename: str, content_type: str | None, data: bytes, *, voice: bool = False
    ) -> dict[str, Any]:
        """A file on the fake CDN; returns the attachment payload for `send_message`."""
        attachment_id = self.new_id()
        self.attachments[attachment_id] = (content_type or "application/octet-stream", data)
        url = f"http://127.0.0.1:{self.port}/attachments/{attachment_id}/{filename}"
        payload: dict[str, Any] = {
            "id": attachment_id,
            "filename": filename,
            "size": len(data),
            "url": url,
            "proxy_url": url,
        }
        if content_type is not None:
            payload["content_type"] = content_type
        if voice:
            payload["duration_secs"] = 1.5
            payload["waveform"] = "AAAA"
        return payload

    async def send_voice_message(
        self, data: bytes, *, author: FakeUser | None = None, **options: Any
    ) -> dict[str, Any]:
        """A voice message as Discord's clients send it: no text, one OGG/Opus file."""
        attachment = self.add_attachment("voice-message.ogg", "audio/ogg", data, voice=True)
        return await self.send_message(
            "", author=author, attachments=[attachment], flags=VOICE_MESSAGE_FLAG, **options
        )

    async def join_voice(self, user: FakeUser, channel_id: str | None = None) -> None:
        """A person joins (or moves to) a voice channel."""
        channel_id = channel_id or self.voice_channel_id
        self.voice_states[user.id] = channel_id
        await self.dispatch("VOICE_STATE_UPDATE", self.voice_state_payload(user, channel_id))

    async def leave_voice(self, user: FakeUser) -> None:
        self.voice_states.pop(user.id, None)
        await self.dispatch("VOICE_STATE_UPDATE", self.voice_state_payload(user, None))

    def dm_channel_id(self, user: FakeUser) -> str:
        return str(int(user.id) + 7)

    async def redispatch(self, message: dict[str, Any]) -> None:
        await self.dispatch("MESSAGE_CREATE", message)

    def interaction_payload(
        self,
        name: str,
        options: list[dict[str, Any]] | None = None,
        *,
        user: FakeUser | None = None,
        channel_id: str | None = None,
        dm: bool = False,
        user_install: str | None = None,
    ) -> dict[str, Any]:
        """`user_install`: the command as a user-installed app, used in "foreign_guild" (a
        server without the bot) or in "group_dm" (a private channel of people)."""
        user = user or self.bob
        if user_install == "foreign_guild":
            channel_id = self.foreign_channel_id
        elif user_install == "group_dm":
            channel_id = self.group_dm_id
        channel_id = channel_id or (self.dm_channel_id(user) if dm else self.channel_id)
        interaction_id = self.new_id()
        token = f"itoken-{interaction_id}"
        self._interaction_tokens[token] = interaction_id
        self._interaction_channels[interaction_id] = channel_id
        channel: dict[str, Any]
        if channel_id in self.threads:
            channel = dict(self.threads[channel_id])
        else:
            channel = self.channel_payload(channel_id, "general", 0)
        payload: dict[str, Any] = {
            "id": interaction_id,
            "application_id": self.application_id,
            "type": 2,
            "token": token,
            "version": 1,
            "guild_id": self.guild_id,
            "guild": {"id": self.guild_id, "locale": "en-US", "features": []},
            "channel_id": channel_id,
            "channel": channel,
            "member": self.member_payload(user, permissions=self.member_permissions(user)),
            "app_permissions": str(MEMBER_PERMISSIONS),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": self.guild_id},
            "context": 0,
            "attachment_size_limit": 10 * 1024 * 1024,
            "data": {"id": self.new_id(), "name": name, "type": 1, "options": options or []},
        }
        if dm:
            # A command in a direct message with the bot: no guild, the user instead of a member.
            for key in ("guild_id", "guild", "member", "guild_locale"):
                del payload[key]
            payload["user"] = user.payload()
            payload["channel"] = {"id": channel_id, "type": 1, "recipients": [user.payload()]}
            payload["authorizing_integration_owners"] = {"1": user.id}
            payload["context"] = 1
        if user_install is not None:
            # The person installed the app for themselves (key "1" only): the bot is no
            # member there, and the interaction is all it has. In a server Discord still
            # sends the person's member data (of a guild the bot never received); in a
            # group DM there is no guild: `user` instead of `member`.
            payload["authorizing_integration_owners"] = {"1": user.id}
            payload["app_permissions"] = str((1 << 14) | (1 << 15) | (1 << 38))
            if user_install == "group_dm":
                del payload["member"]
                payload["user"] = user.payload()
            if user_install == "foreign_guild":
                payload["guild_id"] = self.foreign_guild_id
                payload["guild"] = {"id": self.foreign_guild_id, "locale": "en-US", "features": []}
                payload["channel"] = {
                    **self.channel_payload(channel_id, "elsewhere", 0),
                    "guild_id": self.foreign_guild_id,
                }
                payload["context"] = 0
            else:
                for key in ("guild_id", "guild", "guild_locale"):
                    payload.pop(key, None)
                payload["channel"] = {
                    "id": channel_id,
                    "type": 3,
                    "name": None,
                    "icon": None,
                    "owner_id": self.alice.id,
                    "recipients": [self.alice.payload(), user.payload()],
                    "last_message_id": None,
                }
                payload["context"] = 2
        return payload

    async def send_command(
        self,
        name: str,
        options: list[dict[str, Any]] | None = None,
        *,
        user: FakeUser | None = None,
        channel_id: str | None = None,
        dm: bool = False,
        user_install: str | None = None,
    ) -> dict[str, Any]:
        data = self.interaction_payload(
            name, options, user=user, channel_id=channel_id, dm=dm, user_install=user_install
        )
        await self.dispatch("INTERACTION_CREATE", data)
        return data

    async def click_button(
        self, message: dict[str, Any], custom_id: str, *, user: FakeUser | None = None
    ) -> dict[str, Any]:
        """A person clicks a button of `message` (INTERACTION_CREATE, MESSAGE_COMPONENT)."""
        user = user or self.bob
        in_dm = "guild_id" not in message
        data = self.interaction_payload("", user=user, channel_id=message["channel_id"], dm=in_dm)
        data["type"] = 3
        data["data"] = {"custom_id": custom_id, "component_type": 2}
        data["message"] = _public(message)
        self._interaction_messages[data["id"]] = message["id"]
        await self.dispatch("INTERACTION_CREATE", data)
        return data

    @staticmethod
    def buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
        """The buttons a message shows, in order."""
        return [
            item
            for row in message.get("components") or []
            for item in row.get("components") or []
            if item.get("type") == 2
        ]

    # --- reading what happened -----------------------------------------------------

    def voice_status(self, channel_id: str) -> str | None:
        """The voice channel's status now (None: none was set, or it was cleared)."""
        statuses = [status for channel, status in self.voice_statuses if channel == channel_id]
        return (statuses[-1] or None) if statuses else None

    def calls_to(self, method: str, fragment: str = "") -> list[RestCall]:
        return [c for c in self.calls if c.method == method and fragment in c.path]

    async def wait_until(
        self, condition: Callable[[], Any], seconds: float = 10.0, what: str = "condition"
    ) -> Any:
        deadline = time.monotonic() + seconds
        while True:
            value = condition()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; REST calls: {self.summary()}")
            self._call_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._call_event.wait(), min(remaining, 0.05))

    def summary(self) -> list[str]:
        return [f"{c.method} {c.path}" for c in self.calls]

    def channel_messages(self, channel_id: str) -> list[dict[str, Any]]:
        return [m for m in self.messages.values() if m["channel_id"] == channel_id]

    def bot_messages(self, channel_id: str | None = None) -> list[dict[str, Any]]:
        return [
            m
            for m in self.messages.values()
            if m["author"]["id"] == self.bot.id
            and (channel_id is None or m["channel_id"] == channel_id)
        ]

    def original_response(self, interaction: dict[str, Any]) -> dict[str, Any] | None:
        return self.interaction_responses.get(interaction["id"])

    def followups(self, interaction: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            m
            for m in self.messages.values()
            if m.get("_interaction_id") == interaction["id"] and not m.get("_original")
        ]

    # --- gateway -----------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        if self.refuse_gateway:
            return web.Response(status=503, text="gateway unavailable")
        # A short close timeout: dropping a connection does not wait for the client's reply.
        ws = web.WebSocketResponse(autoping=True, timeout=0.5)
        await ws.prepare(request)
        session = _Session(ws, None)
        self._sessions.append(session)
        try:
            for raw in self.before_hello_frames:
                await ws.send_str(raw)
            await ws.send_str(
                json.dumps({"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
            )
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    break
                payload = json.loads(frame.data)
                op = payload.get("op")
                if op == 1:
                    await ws.send_str(json.dumps({"op": 11}))
                elif op == 2:
                    await self._identify(session, payload["d"])
                elif op == 6:
                    await ws.send_str(json.dumps({"op": 9, "d": False}))
                elif op == 4:
                    await self._bot_voice_state(session, payload["d"])
        finally:
            self._sessions.remove(session)
        return ws

    async def _identify(self, session: _Session, data: dict[str, Any]) -> None:
        self.identifies.append(data)
        if data.get("token") != self.token:
            await session.ws.close(code=4004, message=b"Authentication failed.")
            return
        if data.get("intents", 0) & INTENT_MESSAGE_CONTENT and not self.message_content_allowed:
            await session.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        if self.ready_replacements:
            await session.ws.send_str(self.ready_replacements.pop(0))
            return
        shard = data.get("shard")
        session.shard = (shard[0], shard[1]) if shard else None
        in_shard = (
            session.shard is None
            or (int(self.guild_id) >> 22) % session.shard[1] == (session.shard[0])
        )
        ready: dict[str, Any] = {
            "v": 10,
            "user": {**self.bot.payload(), "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": self.guild_id, "unavailable": True}] if in_shard else [],
            "session_id": f"session-{self.new_id()}",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": self.application_id, "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
        if shard:
            ready["shard"] = shard
        await session.send_dispatch("READY", ready)
        for frame in self.startup_frames:
            await session.ws.send_str(frame)
        if in_shard:
            await session.send_dispatch("GUILD_CREATE", self.guild_payload())
        session.ready.set()

    async def _bot_voice_state(self, session: _Session, data: dict[str, Any]) -> None:
        """The bot asked to join, move or leave: Discord confirms with VOICE_STATE_UPDATE
        (and VOICE_SERVER_UPDATE on a join)."""
        guild_id, channel_id = str(data["guild_id"]), data.get("channel_id")
        channel_id = str(channel_id) if channel_id else None
        self.voice_requests.append((guild_id, channel_id))
        moved = self.voice_states.get(self.bot.id) != channel_id
        if channel_id is None:
            self.voice_states.pop(self.bot.id, None)
        else:
            self.voice_states[self.bot.id] = channel_id
        state = self.voice_state_payload(self.bot, channel_id)
        state["self_deaf"] = bool(data.get("self_deaf"))
        await session.send_dispatch("VOICE_STATE_UPDATE", state)
        # Only a join or a move brings a voice server; (un)deafening in place does not.
        if channel_id is not None and moved:
            await session.send_dispatch(
                "VOICE_SERVER_UPDATE",
                {"token": "voice-token", "guild_id": guild_id, "endpoint": self.voice_endpoint},
            )
        self._call_event.set()

    async def _attachment(self, request: web.Request) -> web.Response:
        found = self.attachments.get(request.match_info["id"])
        self.calls.append(RestCall("GET", request.path, {}, None))
        self._call_event.set()
        if found is None:
            return web.Response(status=404)
        content_type, data = found
        return web.Response(body=data, headers={"Content-Type": content_type})

    # --- REST -------------------------------------------------------------------------

    def _json(self, data: Any, status: int = 200) -> web.Response:
        return web.Response(
            status=status,
            body=json.dumps(data).encode(),
            headers={"Content-Type": "application/json"},
        )

    def _error(self, status: int, code: int, message: str) -> web.Response:
        return self._json({"message": message, "code": code}, status)

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        body: Any = None
        if request.content_type == "multipart/form-data":
            body = await self._uploaded(request)
        elif request.can_read_body:
            raw = await request.read()
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
        self.calls.append(RestCall(request.method, path, dict(request.query), body))
        self._call_event.set()
        if self.slow_rest_seconds:
            await asyncio.sleep(self.slow_rest_seconds)
        parts = path.strip("/").split("/")
        is_webhook = parts[0] in ("webhooks", "interactions")
        if not is_webhook and request.headers.get("Authorization") != f"Bot {self.token}":
            return self._error(401, 0, "401: Unauthorized")
        try:
            return await self._route(request.method, parts, body)
        finally:
            self._call_event.set()

    async def _route(self, method: str, parts: list[str], body: Any) -> web.Response:
        match (method, parts):
            case ("GET", ["users", "@me"]):
                return self._json({**self.bot.payload(), "verified": True, "flags": 0})
            case ("GET", ["oauth2", "applications", "@me"]):
                return self._json(self._application())
            case ("GET", ["gateway"]):
                return self._json({"url": self.gateway_url})
            case ("GET", ["gateway", "bot"]):
                return self._json(
                    {
                        "url": self.gateway_url,
                        "shards": 1,
                        "session_start_limit": {
                            "total": 1000,
                            "remaining": 1000,
                            "reset_after": 0,
                            "max_concurrency": 1,
                        },
                    }
                )
            case ("PUT", ["applications", _app, "commands"]):
                return self._json(self._store_commands(None, body))
            case ("PUT", ["applications", _app, "guilds", guild_id, "commands"]):
                return self._json(self._store_commands(guild_id, body))
            case ("PUT", ["channels", channel_id, "voice-status"]):
                if self.voice_status_denied:
                    return self._error(403, 50013, "Missing Permissions")
                self.voice_statuses.append((channel_id, (body or {}).get("status")))
                return web.Response(status=204)
            case ("POST", ["channels", channel_id, "typing"]):
                return web.Response(status=204)
            case ("POST", ["channels", channel_id, "messages"]):
                created = await self._post_message(channel_id, body)
                if self.hold_posts is not None:
                    await self.hold_posts.wait()
                return self._json(created)
            case ("PATCH", ["channels", channel_id, "messages", message_id]):
                return await self._edit_message(message_id, body)
            case ("GET", ["channels", channel_id, "messages", message_id]):
                found = self.messages.get(message_id)
                if found is None or found["channel_id"] != channel_id:
                    return self._error(404, 10008, "Unknown Message")
                return self._json(_public(found))
            case ("GET", ["channels", channel_id, "messages"]):
                return self._json(
                    [_public(m) for m in reversed(self.channel_messages(channel_id))][:50]
                )
            case ("POST", ["channels", channel_id, "messages", message_id, "threads"]):
                return self._json(await self._create_thread(channel_id, body, message_id))
            case ("POST", ["channels", channel_id, "threads"]):
                return self._json(await self._create_thread(channel_id, body, None))
            case ("POST", ["users", "@me", "channels"]):
                return self._json(
                    {
                        "id": self.dm_channel_id(FakeUser(body["recipient_id"], "x")),
                        "type": 1,
                        "recipients": [],
                        "last_message_id": None,
                    }
                )
            case ("POST", ["interactions", interaction_id, _token, "callback"]):
                return self._interaction_callback(interaction_id, body)
            case ("PATCH", ["webhooks", _app, token, "messages", "@original"]):
                return self._edit_original(token, body)
            case ("GET", ["webhooks", _app, token, "messages", "@original"]):
                original = self.interaction_responses.get(self._interaction_tokens.get(token, ""))
                if original is None:
                    return self._error(404, 10008, "Unknown Message")
                return self._json(_public(original))
            case ("POST", ["webhooks", _app, token]):
                return self._followup(token, body)
            case ("PATCH", ["webhooks", _app, token, "messages", message_id]):
                return await self._edit_message(message_id, body)
        return self._error(404, 0, f"404: Not Found ({method} /{'/'.join(parts)})")

    def _application(self) -> dict[str, Any]:
        return {
            "id": self.application_id,
            "name": "botservice",
            "icon": None,
            "description": "",
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": self.owner.payload(),
            "team": None,
            "verify_key": "00",
            "flags": 0,
            "summary": "",
            "interactions_endpoint_url": None,
        }

    def _store_commands(self, guild_id: str | None, body: Any) -> list[dict[str, Any]]:
        stored = []
        for command in body or []:
            stored.append(
                {
                    **command,
                    "id": self.new_id(),
                    "application_id": self.application_id,
                    "version": self.new_id(),
                    "default_member_permissions": command.get("default_member_permissions"),
                    **({"guild_id": guild_id} if guild_id else {}),
                }
            )
        self.commands[guild_id] = stored
        return stored

    async def _uploaded(self, request: web.Request) -> dict[str, Any]:
        """A message sent with files (multipart: `payload_json` and `files[n]`), as its JSON
        body with `attachments` on the fake CDN."""
        form = await request.post()
        body: dict[str, Any] = json.loads(str(form.get("payload_json") or "{}"))
        attachments = []
        for name, value in form.items():
            if name.startswith("files[") and isinstance(value, web.FileField):
                data = value.file.read()
                attachments.append(self.add_attachment(value.filename, value.content_type, data))
        body["attachments"] = attachments
        return body

    def _bot_message(self, channel_id: str, body: dict[str, Any]) -> dict[str, Any]:
        reference = None
        ref = body.get("message_reference")
        if ref:
            reference = self.messages.get(str(ref["message_id"]))
        in_guild = channel_id not in {
            self.dm_channel_id(u) for u in (self.alice, self.bob, self.owner)
        }
        data = self._message(
            channel_id=channel_id,
            author=self.bot,
            content=body.get("content") or "",
            guild=in_guild,
            reference=reference,
            attachments=body.get("attachments") or None,
        )
        if body.get("components"):
            data["components"] = body["components"]
        if reference is None and ref:
            data["message_reference"] = {
                "type": 0,
                "message_id": str(ref["message_id"]),
                "channel_id": channel_id,
            }
        return data

    async def _post_message(self, channel_id: str, body: dict[str, Any]) -> dict[str, Any]:
        nonce = body.get("nonce")
        key = (self.bot.id, str(nonce))
        if nonce is not None and body.get("enforce_nonce"):
            # Discord: the same author and nonce within a few minutes returns the message
            # created the first time instead of creating another.
            earlier = self._nonces.get(key)
            if earlier is not None and time.monotonic() - earlier[1] < NONCE_WINDOW_SECONDS:
                found = self.messages.get(earlier[0])
                if found is not None:
                    return _public(found)
        data = self._bot_message(channel_id, body)
        if nonce is not None:
            # Returned on create and in MESSAGE_CREATE only; Discord does not keep it
            # for later reads of the channel.
            data["_nonce"] = str(nonce)
            self._nonces[key] = (data["id"], time.monotonic())
        self.messages[data["id"]] = data
        if channel_id in self.threads:
            self.threads[channel_id]["message_count"] += 1
        created = _public(data)
        if nonce is not None:
            created["nonce"] = str(nonce)
        if self.echo_own_messages:
            await self.dispatch("MESSAGE_CREATE", created)
        return created

    async def _edit_message(self, message_id: str, body: dict[str, Any]) -> web.Response:
        found = self.messages.get(message_id)
        if found is None:
            return self._error(404, 10008, "Unknown Message")
        if "content" in body:
            found["content"] = body["content"] or ""
        if "components" in body:
            found["components"] = body["components"] or []
        found["edited_timestamp"] = datetime.now(UTC).isoformat()
        found.setdefault("_edits", 0)
        found["_edits"] += 1
        return self._json(_public(found))

    async def _create_thread(
        self, channel_id: str, body: dict[str, Any], message_id: str | None
    ) -> dict[str, Any]:
        thread_id = message_id or self.new_id()
        thread = {
            "id": thread_id,
            "guild_id": self.guild_id,
            "parent_id": channel_id,
            "owner_id": self.bot.id,
            "name": body["name"],
            "type": body.get("type", 11),
            "last_message_id": None,
            "message_count": 0,
            "member_count": 1,
            "rate_limit_per_user": 0,
            "flags": 0,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": body.get("auto_archive_duration", 1440),
                "archive_timestamp": datetime.now(UTC).isoformat(),
                "locked": False,
            },
        }
        self.threads[thread_id] = thread
        if message_id and message_id in self.messages:
            self.messages[message_id]["thread"] = thread
        await self.dispatch("THREAD_CREATE", {**thread, "newly_created": True})
        return thread

    def _interaction_callback(self, interaction_id: str, body: dict[str, Any]) -> web.Response:
        if interaction_id in self.interaction_responses:
            return self._error(400, 40060, "Interaction has already been acknowledged.")
        kind = body.get("type")
        data = body.get("data") or {}
        clicked = self.messages.get(self._interaction_messages.get(interaction_id, ""))
        if kind in (6, 7) and clicked is not None:
            return self._update_clicked(interaction_id, clicked, kind, data)
        ephemeral = bool(data.get("flags", 0) & 64)
        token = next(t for t, i in self._interaction_tokens.items() if i == interaction_id)
        channel_id = self._channel_of_interaction(token)
        message = self._bot_message(channel_id, {"content": data.get("content") or ""})
        message.update(
            {
                "webhook_id": self.application_id,
                "flags": 64 if ephemeral else (128 if kind == 5 else 0),
                "_interaction_id": interaction_id,
                "_original": True,
                "_callback_type": kind,
                "_ephemeral": ephemeral,
                "interaction_metadata": {
                    "id": interaction_id,
                    "type": 2,
                    "user": self.bob.payload(),
                    "authorizing_integration_owners": {},
                },
            }
        )
        if kind == 5:
            message["flags"] |= 128  # loading
        self.messages[message["id"]] = message
        self.interaction_responses[interaction_id] = message
        return self._json(
            {
                "interaction": {
                    "id": interaction_id,
                    "type": 2,
                    "response_message_id": message["id"],
                    "response_message_loading": kind == 5,
                    "response_message_ephemeral": ephemeral,
                },
                "resource": {"type": kind, "message": _public(message)},
            }
        )

    def _update_clicked(
        self, interaction_id: str, clicked: dict[str, Any], kind: int, data: dict[str, Any]
    ) -> web.Response:
        """A button's click answered by updating its message (7), now or later (6): the
        clicked message becomes the interaction's original response, as on Discord."""
        if kind == 7:
            if "content" in data:
                clicked["content"] = data["content"] or ""
            if "components" in data:
                clicked["components"] = data["components"] or []
            clicked.setdefault("_edits", 0)
            clicked["_edits"] += 1
        clicked.setdefault("flags", 0)
        self.interaction_responses[interaction_id] = clicked
        return self._json(
            {
                "interaction": {
                    "id": interaction_id,
                    "type": 3,
                    "response_message_id": clicked["id"],
                    "response_message_loading": False,
                    "response_message_ephemeral": bool(clicked["flags"] & 64),
                },
                "resource": {"type": kind, "message": _public(clicked)},
            }
        )

    def _channel_of_interaction(self, token: str) -> str:
        interaction_id = self._interaction_tokens[token]
        return self._interaction_channels.get(interaction_id, self.channel_id)

    def _edit_original(self, token: str, body: dict[str, Any]) -> web.Response:
        interaction_id = self._interaction_tokens.get(token)
        original = self.interaction_responses.get(interaction_id or "")
        if original is None:
            return self._error(404, 10015, "Unknown Webhook")
        if "content" in body:
            original["content"] = body["content"] or ""
        if "components" in body:
            original["components"] = body["components"] or []
        original["flags"] = original["flags"] & ~128
        original.setdefault("_edits", 0)
        original["_edits"] += 1
        return self._json(_public(original))

    def _followup(self, token: str, body: dict[str, Any]) -> web.Response:
        interaction_id = self._interaction_tokens.get(token)
        if interaction_id is None:
            return self._error(404, 10015, "Unknown Webhook")
        message = self._bot_message(self._channel_of_interaction(token), body)
        ephemeral = bool((body.get("flags") or 0) & 64)
        message.update(
            {
                "webhook_id": self.application_id,
                "flags": 64 if ephemeral else 0,
                "_interaction_id": interaction_id,
                "_ephemeral": ephemeral,
            }
        )
        self.messages[message["id"]] = message
        return self._json(_public(message))


def _public(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if not k.startswith("_")}


@pytest.fixture
async def discord_server() -> AsyncIterator[FakeDiscordServer]:
    server = FakeDiscordServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()

"""A fake Slack Web API on 127.0.0.1 that records every call and answers like Slack.

It keeps the messages the bot posts (so a test can read the thread as a user
would see it), users with admin flags, threads for `conversations.replies`,
downloadable files, and a Socket Mode websocket that pushes envelopes and
records their acknowledgements. With `update_limit_per_minute` it answers
`chat.update` beyond Tier 3 with a 429 and `Retry-After`, like Slack.

With `enforce_tiers=True` it enforces Slack's published rate limits for every
method it serves (`TIERS`), per method per workspace, and answers a call beyond
them with HTTP 429 `ratelimited` and a `Retry-After` of the seconds until the
call would have been allowed. Slack publishes floors ("Tier 3: 50+ per minute,
sporadic bursts are welcome"), not algorithms, so the fake takes the strictest
reading that still allows bursts: at most N calls in any 60-second window, all
N at once if the caller likes. `chat.postMessage` is Slack's special tier: about
one message a second per channel with short bursts (at most 60 in any 60 s per
channel here) under a workspace-wide cap Slack calls "several hundred per
minute" (300 here). Every 429 is counted in `rate_limited` and
`rate_limited_by_method`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import WSMsgType, web

BOT_USER_ID = "UBOT0001"
BOT_ID = "BBOT0001"
BOT_TOKEN = "xoxb-test-token"
APP_TOKEN = "xapp-1-test-token"


# Slack's published tiers: calls allowed in any 60-second window, per method per workspace.
TIER_1, TIER_2, TIER_3, TIER_4 = 1, 20, 50, 100
TIERS: dict[str, int] = {
    "auth.test": TIER_4,  # "special": hundreds a minute; Tier 4 is the closest floor
    "chat.update": TIER_3,
    "chat.delete": TIER_3,
    "chat.postEphemeral": TIER_4,
    # chat.stopStream is Tier 2 in Slack's method reference; startStream is taken
    # to be Tier 2 and appendStream Tier 4 (not checked against the reference here).
    "chat.startStream": TIER_2,
    "chat.appendStream": TIER_4,
    "chat.stopStream": TIER_2,
    "users.info": TIER_4,
    # Apps outside the Marketplace: Tier 1 for conversations.history / .replies (2025-05).
    "conversations.replies": TIER_1,
    "conversations.history": TIER_1,
    "assistant.threads.setStatus": TIER_3,
    "assistant.threads.setSuggestedPrompts": TIER_3,
    "assistant.threads.setTitle": TIER_3,
}
# The task states a `task_update` chunk may carry, and Slack's limit on its texts.
TASK_STATES = frozenset({"pending", "in_progress", "complete", "error"})
TASK_TEXT_LIMIT = 256
POST_PER_CHANNEL_PER_MINUTE = 60
POST_PER_WORKSPACE_PER_MINUTE = 300
WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class SlackCall:
    method: str
    args: dict[str, Any]
    token: str | None
    at: float


@dataclass
class PostedMessage:
    channel: str
    ts: str
    text: str
    thread_ts: str | None
    user: str = BOT_USER_ID
    edits: int = 0
    # Message metadata (`event_type`, `event_payload`), returned only on request.
    metadata: dict[str, Any] | None = None
    # Every text the message has shown, first to last (the post, then each edit),
    # with when it was shown (monotonic clock).
    shown: list[tuple[float, str]] = field(default_factory=list)
    # A message made by chat.startStream stays open for appends until it is stopped
    # or has been idle for the fake's `stream_idle_seconds`.
    streaming: bool = False
    last_streamed: float = 0.0
    # The blocks the message shows (Slack shows them instead of `text`).
    blocks: list[dict[str, Any]] | None = None
    # A streamed message as Slack lays it out (the default "timeline" mode): text and
    # task cards in the order they first arrived, each card showing its newest state
    # (`{"type": "text", "text": …}`, `{"type": "task", "id": …, "title": …, …}`).
    timeline: list[dict[str, Any]] = field(default_factory=list)
    # Every `task_update` chunk received for this message, first to last.
    task_updates: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.shown:
            self.shown.append((time.monotonic(), self.text))

    @property
    def texts(self) -> list[str]:
        return [text for _, text in self.shown]

    @property
    def cards(self) -> list[dict[str, Any]]:
        """The task cards the message shows, top to bottom, each as it stands now."""
        return [item for item in self.timeline if item["type"] == "task"]

    def stream_in(self, markdown_text: str, chunks: list[dict[str, Any]]) -> str:
        """Lay out what one streaming call brings; returns the text it adds."""
        added = ""
        for chunk in [{"type": "markdown_text", "text": markdown_text}, *chunks]:
            if chunk["type"] == "markdown_text" and chunk["text"]:
                added += chunk["text"]
                if self.timeline and self.timeline[-1]["type"] == "text":
                    self.timeline[-1]["text"] += chunk["text"]
                else:
                    self.timeline.append({"type": "text", "text": chunk["text"]})
            elif chunk["type"] == "task_update":
                self.task_updates.append(dict(chunk))
                fields = {k: v for k, v in chunk.items() if k != "type"}
                card = next((c for c in self.cards if c["id"] == chunk["id"]), None)
                if card is None:
                    self.timeline.append({"type": "task", **fields})
                else:
                    card.update(fields)  # updated in place, where it first appeared
        return added

    def payload(self, *, with_metadata: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "type": "message",
            "user": self.user,
            "text": self.text,
            "ts": self.ts,
        }
        if self.user == BOT_USER_ID:
            data["bot_id"] = BOT_ID
        if self.thread_ts:
            data["thread_ts"] = self.thread_ts
        if with_metadata and self.metadata is not None:
            data["metadata"] = self.metadata
        return data


@dataclass(frozen=True)
class UploadedFile:
    """A file the bot uploaded with files.uploadV2, as it was completed."""

    file_id: str
    filename: str
    title: str
    data: bytes
    channel: str
    thread_ts: str | None


@dataclass
class FakeSlackApi:
    team_id: str = "T0001"
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (channel, thread_ts) -> messages returned by conversations.replies
    threads: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    # file name -> where `/files/<name>` redirects to (302), instead of serving it.
    redirects: dict[str, str] = field(default_factory=dict)
    update_limit_per_minute: int | None = None
    # method -> error code to answer with (ok: false)
    failures: dict[str, str] = field(default_factory=dict)
    # How many of the next calls of a method get a 429 with `Retry-After: 1`.
    rate_limit_next: dict[str, int] = field(default_factory=dict)

    calls: list[SlackCall] = field(default_factory=list)
    messages: dict[tuple[str, str], PostedMessage] = field(default_factory=dict)
    ephemeral: list[dict[str, Any]] = field(default_factory=list)
    rate_limited: int = 0
    file_downloads: list[tuple[str, str | None]] = field(default_factory=list)
    socket_acks: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    socket_connections: int = 0
    # When set, chat.postMessage creates the message and then waits for this event before
    # answering: the window in which a bot process can die without learning the ts.
    hold_posts: asyncio.Event | None = None
    # While True the Socket Mode endpoint refuses websocket handshakes (503).
    refuse_sockets: bool = False
    # Slack's tiers per method per workspace (see the module docstring).
    enforce_tiers: bool = False
    # Native streaming (chat.startStream / appendStream / stopStream): a workspace
    # without it answers `unknown_method`; a stream idle this long has expired and
    # answers `message_not_in_streaming_state`, as Slack's do after long pauses.
    streaming_supported: bool = True
    stream_idle_seconds: float = 300.0
    rate_limited_by_method: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._ts = itertools.count(1)
        self._updates: dict[str, list[float]] = {}
        # (method, workspace or channel) -> times of the calls Slack accepted, oldest first.
        self._windows: dict[tuple[str, str], collections.deque[float]] = {}
        self._sockets: list[web.WebSocketResponse] = []
        self._ack_events: dict[str, asyncio.Event] = {}
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.startStream": self._start_stream,
            "chat.appendStream": self._append_stream,
            "chat.stopStream": self._stop_stream,
            "chat.postEphemeral": self._post_ephemeral,
            "users.info": self._users_info,
            "conversations.replies": self._replies,
            "conversations.history": self._history,
            "apps.connections.open": self._connections_open,
            "assistant.threads.setStatus": self._ok,
            "assistant.threads.setSuggestedPrompts": self._ok,
            "assistant.threads.setTitle": self._ok,
            "oauth.v2.access": self._oauth_access,
            "files.getUploadURLExternal": self._upload_url,
            "files.completeUploadExternal": self._complete_upload,
        }
        # files.uploadV2: bytes sent to an upload URL, by file id; then completed.
        self._uploading: dict[str, tuple[str, bytes | None]] = {}
        self.uploads: list[UploadedFile] = []

    # --- lifecycle -------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/files/{name}", self._file)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_get("/socket", self._socket)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- what tests read ---------------------------------------------------------

    def calls_to(self, method: str) -> list[SlackCall]:
        return [call for call in self.calls if call.method == method]

    def count(self, method: str) -> int:
        return len(self.calls_to(method))

    def thread(self, channel: str, thread_ts: str | None) -> list[PostedMessage]:
        """What the bot posted in a thread (or at the top of a channel), oldest first."""
        return [
            m for m in self.messages.values() if m.channel == channel and m.thread_ts == thread_ts
        ]

    def add_user(
        self, user_id: str, name: str, *, admin: bool = False, owner: bool = False
    ) -> None:
        self.users[user_id] = {
            "id": user_id,
            "team_id": self.team_id,
            "name": name.lower(),
            "real_name": name,
            "is_admin": admin,
            "is_owner": owner,
            "is_bot": False,
            "profile": {"display_name": name, "real_name": name},
        }

    def add_file(self, name: str, content_type: str, data: bytes) -> str:
        self.files[name] = (content_type, data)
        return f"{self.root_url}/files/{name}"

    async def wait_for(
        self, predicate: Callable[[], bool], within: float = 5.0, what: str = "condition"
    ) -> None:
        deadline = time.monotonic() + within
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; calls: {self.summary()}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.05))

    def summary(self) -> list[str]:
        return [call.method for call in self.calls]

    # --- Socket Mode ----------------------------------------------------------------

    async def wait_for_socket(self, within: float = 5.0) -> None:
        await self.wait_for(lambda: bool(self._sockets), within, "a Socket Mode connection")

    async def push(
        self,
        payload: dict[str, Any],
        *,
        kind: str = "events_api",
        retry_attempt: int = 0,
        connection: int = -1,
    ) -> str:
        """Send an envelope over a Socket Mode connection; returns its envelope id."""
        envelope_id = str(uuid.uuid4())
        self._ack_events[envelope_id] = asyncio.Event()
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": kind != "events_api",
            "retry_attempt": retry_attempt,
            "retry_reason": "timeout" if retry_attempt else "",
        }
        await self._sockets[connection].send_str(json.dumps(envelope))
        return envelope_id

    async def wait_ack(self, envelope_id: str, within: float = 5.0) -> dict[str, Any] | None:
        await asyncio.wait_for(self._ack_events[envelope_id].wait(), within)
        return self.socket_acks[envelope_id]

    async def drop_sockets(self, *, refuse: bool = False) -> None:
        """Close every Socket Mode connection; with `refuse`, refuse new ones until
        `refuse_sockets` is set back to False."""
        self.refuse_sockets = refuse
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"going away")

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        if self.refuse_sockets:
            return web.Response(status=503, text="socket mode unavailable")
        ws = web.WebSocketResponse(autoping=True, timeout=0.5)
        await ws.prepare(request)
        self._sockets.append(ws)
        self.socket_connections += 1
        self._notify()
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": len(self._sockets),
                    "connection_info": {"app_id": "A0001"},
                    "debug_info": {"host": "fake", "approximate_connection_time": 3600},
                }
            )
        )
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    data = json.loads(message.data)
                    envelope_id = data.get("envelope_id")
                    if envelope_id:
                        self.socket_acks[envelope_id] = data.get("payload")
                        event = self._ack_events.get(envelope_id)
                        if event is not None:
                            event.set()
                        self._notify()
        finally:
            self._sockets.remove(ws)
        return ws

    # --- HTTP -----------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                args.update(await request.json())
            else:
                args.update(dict(await request.post()))
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else args.get("token")
        self.calls.append(SlackCall(method, args, token, time.monotonic()))
        self._notify()
        if method in self.failures:
            return web.json_response({"ok": False, "error": self.failures[method]})
        if self.rate_limit_next.get(method, 0) > 0:
            self.rate_limit_next[method] -= 1
            self.rate_limited += 1
            return web.json_response(
                {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": "1"}
            )
        if method != "oauth.v2.access" and not token:
            return web.json_response({"ok": False, "error": "not_authed"})
        if method == "chat.update" and self._over_limit(str(args.get("channel", ""))):
            self.rate_limited += 1
            return web.json_response(
                {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": "1"}
            )
        if self.enforce_tiers and (wait := self._over_tier(method, args)) is not None:
            self.rate_limited += 1
            self.rate_limited_by_method[method] = self.rate_limited_by_method.get(method, 0) + 1
            return web.json_response(
                {"ok": False, "error": "ratelimited"},
                status=429,
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        handler = self.handlers.get(method)
        if method.endswith("Stream") and not self.streaming_supported:
            handler = None
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        answer = handler(args)
        if method == "chat.postMessage" and self.hold_posts is not None:
            await self.hold_posts.wait()
        return web.json_response(answer)

    def _over_tier(self, method: str, args: dict[str, Any]) -> float | None:
        """Seconds until this call would be allowed, or None (then it is counted)."""
        team = self.team_id
        if method == "chat.postMessage":
            limits = [
                ((method, f"{team}/{args.get('channel', '')}"), POST_PER_CHANNEL_PER_MINUTE),
                ((method, team), POST_PER_WORKSPACE_PER_MINUTE),
            ]
        elif method in TIERS:
            limits = [((method, team), TIERS[method])]
        else:
            return None
        now = time.monotonic()
        waits = []
        for key, limit in limits:
            window = self._windows.setdefault(key, collections.deque())
            while window and now - window[0] >= WINDOW_SECONDS:
                window.popleft()
            if len(window) >= limit:
                waits.append(window[0] + WINDOW_SECONDS - now)
        if waits:
            return max(waits)
        for key, _ in limits:
            self._windows[key].append(now)
        return None

    def _over_limit(self, channel: str) -> bool:
        if self.update_limit_per_minute is None:
            return False
        now = time.monotonic()
        recent = [t for t in self._updates.get(self.team_id, []) if now - t < 60]
        if len(recent) >= self.update_limit_per_minute:
            self._updates[self.team_id] = recent
            return True
        recent.append(now)
        self._updates[self.team_id] = recent
        return False

    def _next_ts(self) -> str:
        return f"{1_800_000_000 + next(self._ts)}.000100"

    def _ok(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://fake.slack.test/",
            "team": "Fake Team",
            "user": "botservice",
            "team_id": self.team_id,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _post_message(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = str(args.get("channel", ""))
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        ts = self._next_ts()
        thread_ts = args.get("thread_ts") or None
        metadata = args.get("metadata")
        if isinstance(metadata, str):  # form-encoded calls send it as JSON text
            metadata = json.loads(metadata)
        self.messages[(channel, ts)] = PostedMessage(
            channel, ts, str(args.get("text", "")), thread_ts, metadata=metadata
        )
        self.messages[(channel, ts)].blocks = _blocks(args)
        self._notify()
        return {
            "ok": True,
            "channel": channel,
            "ts": ts,
            "message": {
                "type": "message",
                "user": BOT_USER_ID,
                "bot_id": BOT_ID,
                "text": args.get("text", ""),
                "ts": ts,
            },
        }

    def _update(self, args: dict[str, Any]) -> dict[str, Any]:
        key = (str(args.get("channel", "")), str(args.get("ts", "")))
        message = self.messages.get(key)
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        message.text = str(args.get("text", ""))
        message.blocks = _blocks(args)
        message.edits += 1
        message.shown.append((time.monotonic(), message.text))
        self._notify()
        return {"ok": True, "channel": key[0], "ts": key[1], "text": message.text}

    def _start_stream(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = str(args.get("channel", ""))
        thread_ts = args.get("thread_ts") or None
        if not channel or not thread_ts:
            return {"ok": False, "error": "invalid_arguments"}
        chunks = _chunks(args)
        if chunks is None:
            return {"ok": False, "error": "invalid_arguments"}
        ts = self._next_ts()
        metadata = args.get("metadata")
        if isinstance(metadata, str):
            metadata = json.loads(metadata)
        message = PostedMessage(channel, ts, "", str(thread_ts), metadata=metadata)
        message.text = message.stream_in(str(args.get("markdown_text") or ""), chunks)
        message.shown = [(time.monotonic(), message.text)]
        message.streaming = True
        message.last_streamed = time.monotonic()
        self.messages[(channel, ts)] = message
        self._notify()
        return {"ok": True, "channel": channel, "ts": ts}

    def _streaming_message(self, args: dict[str, Any]) -> PostedMessage | dict[str, Any]:
        key = (str(args.get("channel", "")), str(args.get("ts", "")))
        message = self.messages.get(key)
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        if message.streaming and time.monotonic() - message.last_streamed > (
            self.stream_idle_seconds
        ):
            message.streaming = False
        if not message.streaming:
            return {"ok": False, "error": "message_not_in_streaming_state"}
        return message

    def _append_stream(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self._streaming_message(args)
        if isinstance(message, dict):
            return message
        chunks = _chunks(args)
        if chunks is None:
            return {"ok": False, "error": "invalid_arguments"}
        message.text += message.stream_in(str(args.get("markdown_text") or ""), chunks)
        message.last_streamed = time.monotonic()
        message.shown.append((message.last_streamed, message.text))
        self._notify()
        return {"ok": True, "channel": message.channel, "ts": message.ts}

    def _stop_stream(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self._streaming_message(args)
        if isinstance(message, dict):
            return message
        chunks = _chunks(args)
        if chunks is None:
            return {"ok": False, "error": "invalid_arguments"}
        added = message.stream_in(str(args.get("markdown_text") or ""), chunks)
        message.streaming = False
        if added:
            message.text += added
            message.shown.append((time.monotonic(), message.text))
        metadata = args.get("metadata")
        if isinstance(metadata, str):
            metadata = json.loads(metadata)
        if metadata:
            message.metadata = metadata
        if blocks := _blocks(args):
            message.blocks = blocks
        self._notify()
        return {"ok": True, "channel": message.channel, "ts": message.ts}

    def _post_ephemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        self.ephemeral.append(args)
        return {"ok": True, "message_ts": self._next_ts()}

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user_id = str(args.get("user", ""))
        user = self.users.get(user_id)
        if user is None:
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "user": user}

    def _replies(self, args: dict[str, Any]) -> dict[str, Any]:
        key = (str(args.get("channel", "")), str(args.get("ts", "")))
        messages = self.threads.get(key)
        posted = [
            m.payload(with_metadata=_flag(args.get("include_all_metadata")))
            for m in self.messages.values()
            if (m.channel, m.thread_ts) == key
        ]
        if messages is None and not posted:
            return {"ok": False, "error": "thread_not_found"}
        # People's messages as the test set them, and what the bot posted, oldest first.
        merged = sorted([*(messages or []), *posted], key=lambda m: float(m.get("ts", 0)))
        limit = int(args.get("limit") or 1000)
        return {"ok": True, "messages": merged[:limit], "has_more": len(merged) > limit}

    def _history(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = str(args.get("channel", ""))
        posted = [
            m.payload(with_metadata=_flag(args.get("include_all_metadata")))
            for m in self.messages.values()
            if m.channel == channel and m.thread_ts is None
        ]
        # Newest first, as Slack returns a channel's history.
        posted.sort(key=lambda m: float(m["ts"]), reverse=True)
        limit = int(args.get("limit") or 100)
        return {"ok": True, "messages": posted[:limit], "has_more": len(posted) > limit}

    def _connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/socket?ticket={uuid.uuid4()}"}

    def _oauth_access(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "app_id": "A0001",
            "authed_user": {"id": "UINSTALLER"},
            "scope": "app_mentions:read,chat:write",
            "token_type": "bot",
            "access_token": BOT_TOKEN,
            "bot_user_id": BOT_USER_ID,
            "team": {"id": self.team_id, "name": "Fake Team"},
            "enterprise": None,
            "is_enterprise_install": False,
        }

    def _upload_url(self, args: dict[str, Any]) -> dict[str, Any]:
        file_id = f"F{next(self._ts):06d}"
        self._uploading[file_id] = (str(args.get("filename", "")), None)
        return {"ok": True, "file_id": file_id, "upload_url": f"{self.root_url}/upload/{file_id}"}

    async def _upload(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        if file_id not in self._uploading:
            return web.Response(status=404)
        data = await request.read()
        self._uploading[file_id] = (self._uploading[file_id][0], data)
        return web.Response(text=f"OK - {len(data)}")

    def _complete_upload(self, args: dict[str, Any]) -> dict[str, Any]:
        files = args.get("files")
        files = json.loads(files) if isinstance(files, str) else files or []
        done = []
        for entry in files:
            filename, data = self._uploading.pop(entry["id"], ("", None))
            if data is None:
                return {"ok": False, "error": "file_not_found"}
            self.uploads.append(
                UploadedFile(
                    file_id=entry["id"],
                    filename=filename,
                    title=str(entry.get("title") or ""),
                    data=data,
                    channel=str(args.get("channel_id", "")),
                    thread_ts=args.get("thread_ts"),
                )
            )
            done.append({"id": entry["id"], "title": entry.get("title"), "name": filename})
        return {"ok": True, "files": done}

    async def _file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        auth = request.headers.get("Authorization")
        self.file_downloads.append((name, auth))
        self._notify()
        if name in self.redirects:
            raise web.HTTPFound(self.redirects[name])
        if name not in self.files or auth != f"Bearer {BOT_TOKEN}":
            return web.Response(status=404)
        content_type, data = self.files[name]
        return web.Response(body=data, content_type=content_type)


def _blocks(args: dict[str, Any]) -> list[dict[str, Any]] | None:
    blocks = args.get("blocks")
    if isinstance(blocks, str):  # form-encoded calls send them as JSON text
        blocks = json.loads(blocks)
    return blocks if isinstance(blocks, list) and blocks else None


def _chunks(args: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A streaming call's `chunks` as Slack documents them (markdown text, task
    updates, plan updates, blocks); None when one of them is malformed."""
    chunks = args.get("chunks") or []
    if isinstance(chunks, str):  # form-encoded calls send them as JSON text
        chunks = json.loads(chunks)
    if not isinstance(chunks, list):
        return None
    for chunk in chunks:
        if not isinstance(chunk, dict):
            return None
        kind = chunk.get("type")
        if kind == "markdown_text":
            if not isinstance(chunk.get("text"), str):
                return None
        elif kind == "task_update":
            if not all(isinstance(chunk.get(k), str) and chunk[k] for k in ("id", "title")):
                return None
            if chunk.get("status") not in TASK_STATES:
                return None
            for key in ("details", "output"):
                value = chunk.get(key)
                if value is not None and not (
                    isinstance(value, str) and len(value) <= TASK_TEXT_LIMIT
                ):
                    return None
        elif kind not in ("plan_update", "blocks"):
            return None
    return chunks


def _flag(value: Any) -> bool:
    return str(value).lower() in ("1", "true")


@pytest.fixture
async def slack_api() -> AsyncIterator[FakeSlackApi]:
    fake = FakeSlackApi()
    fake.add_user("UALICE", "Alice")
    fake.add_user("UBOB", "Bob")
    fake.add_user("UADMIN", "Ada", admin=True)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()

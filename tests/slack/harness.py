"""The Slack adapter running for real: Bolt on an aiohttp server on 127.0.0.1, the core,
SQLite, the fake model server and the fake Slack Web API. Tests talk to it the way
Slack does: signed HTTP requests (or Socket Mode envelopes)."""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from botservice.adapters.slack import create_adapter
from botservice.app.config import load_settings
from botservice.app.runtime import library_engine
from botservice.core.conversation import ConversationCore
from botservice.core.ports import Adapter
from botservice.core.settings import Settings
from botservice.core.tools import ToolSource
from botservice.model.client import OpenAIChatClient
from botservice.storage.repository import SqlStore
from tests.fakes.slack_api import APP_TOKEN, BOT_TOKEN, FakeSlackApi

PAYLOADS = Path(__file__).parent / "payloads"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TEAM = "T0001"
CHANNEL = "C0GENERAL"


def payload(name: str) -> dict[str, Any]:
    """A recorded payload, as a fresh copy a test may change."""
    data: dict[str, Any] = json.loads((PAYLOADS / f"{name}.json").read_text())
    return copy.deepcopy(data)


def sign(
    body: bytes, *, secret: str = SIGNING_SECRET, timestamp: int | None = None
) -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    base = b"v0:" + stamp.encode() + b":" + body
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest}"}


def slack_settings(
    *, model_url: str, slack_url: str, database_url: str, extra: Mapping[str, str] | None = None
) -> Settings:
    env = {
        "OPENAI_BASE_URL": model_url,
        "OPENAI_API_KEY": "sk-test-secret-key",
        "DATABASE_URL": database_url,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack_url,
        "BOTSERVICE_MODEL__BACKOFF_BASE_SECONDS": "0.01",
        "BOTSERVICE_MODEL__MAX_ATTEMPTS": "1",
        "BOTSERVICE_MODEL__READ_TIMEOUT_SECONDS": "5",
        "BOTSERVICE_CONVERSATION__STREAM_UPDATE_INTERVAL_SECONDS": "0.05",
        # Not a real Slack setting: keeps tests quiet about the (absent) config file.
        "BOTSERVICE_CONFIG": str(
            Path(__file__).resolve().parents[2] / "config" / "botservice.toml"
        ),
    }
    env.update(extra or {})
    return load_settings({key: value for key, value in env.items() if value})


@dataclass
class SlackHarness:
    slack: FakeSlackApi
    settings: Settings
    store: SqlStore
    core: ConversationCore
    model: OpenAIChatClient
    adapter: Adapter
    url: str = ""
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    _ts: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @classmethod
    async def start(
        cls,
        slack: FakeSlackApi,
        settings: Settings,
        store: SqlStore,
        *,
        tool_sources: Sequence[ToolSource] = (),
    ) -> SlackHarness:
        model = OpenAIChatClient(settings.model)
        core = ConversationCore(
            settings=settings,
            store=store,
            model=model,
            feedback=store,
            tool_sources=tool_sources,
        )
        adapter = create_adapter(settings, core, store, database=library_engine(store))
        harness = cls(slack, settings, store, core, model, adapter)
        app = web.Application()
        app.router.add_get("/healthz", _healthz)
        app.router.add_routes(adapter.http_routes())
        harness._runner = web.AppRunner(app, access_log=None)
        await harness._runner.setup()
        site = web.TCPSite(harness._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        harness.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        harness._session = aiohttp.ClientSession()
        await adapter.start()
        return harness

    async def close(self) -> None:
        await self.core.drain()
        await self.adapter.stop()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.model.aclose()

    # --- requests as Slack sends them -------------------------------------------------

    async def post(
        self,
        body: bytes,
        *,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        signed: bool = True,
        path: str = "/slack/events",
    ) -> tuple[int, str]:
        assert self._session is not None
        all_headers = {"Content-Type": content_type}
        if signed:
            all_headers.update(sign(body))
        all_headers.update(headers or {})
        async with self._session.post(self.url + path, data=body, headers=all_headers) as response:
            return response.status, await response.text()

    async def event(self, data: Mapping[str, Any], *, retry: int | None = None) -> tuple[int, str]:
        headers = (
            {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"}
            if retry
            else {}
        )
        return await self.post(json.dumps(data).encode(), headers=headers)

    async def command(
        self, text: str, *, user: str = "UALICE", channel: str = CHANNEL
    ) -> dict[str, Any]:
        data = payload("slash_command")
        data.update(
            text=text,
            user_id=user,
            channel_id=channel,
            trigger_id=f"{next(self._ts)}.{time.monotonic_ns()}.trigger",
        )
        status, text_body = await self.post(
            urllib.parse.urlencode(data).encode(), content_type="application/x-www-form-urlencoded"
        )
        assert status == 200, (status, text_body)
        return json.loads(text_body) if text_body else {}

    # --- building events ---------------------------------------------------------------

    def next_ts(self) -> str:
        return f"{1_767_100_000 + next(self._ts)}.000100"

    def mention(
        self,
        text: str,
        *,
        user: str = "UALICE",
        channel: str = CHANNEL,
        ts: str | None = None,
        thread_ts: str | None = None,
    ) -> dict[str, Any]:
        data = payload("app_mention")
        event = data["event"]
        event.update(
            text=f"<@UBOT0001> {text}", user=user, channel=channel, ts=ts or self.next_ts()
        )
        event["event_ts"] = event["ts"]
        if thread_ts:
            event["thread_ts"] = thread_ts
        data["event_id"] = f"Ev{event['ts'].replace('.', '')}M"
        return data

    def as_message_event(self, mention: Mapping[str, Any]) -> dict[str, Any]:
        """The `message` twin Slack sends for every mention (another event id)."""
        data = copy.deepcopy(dict(mention))
        data["event"]["type"] = "message"
        data["event"]["channel_type"] = "channel"
        data["event_id"] = data["event_id"][:-1] + "X"
        return data

    def reply(
        self, text: str, *, thread_ts: str, user: str = "UALICE", channel: str = CHANNEL
    ) -> dict[str, Any]:
        data = payload("message_thread_reply")
        event = data["event"]
        ts = self.next_ts()
        event.update(text=text, user=user, channel=channel, ts=ts, event_ts=ts, thread_ts=thread_ts)
        data["event_id"] = f"Ev{ts.replace('.', '')}R"
        return data

    def direct(
        self,
        text: str,
        *,
        user: str = "UBOB",
        channel: str = "D0BOBDM",
        thread_ts: str | None = None,
    ) -> dict[str, Any]:
        data = payload("message_im")
        event = data["event"]
        ts = self.next_ts()
        event.update(text=text, user=user, channel=channel, ts=ts, event_ts=ts)
        if thread_ts:
            event["thread_ts"] = thread_ts
        data["event_id"] = f"Ev{ts.replace('.', '')}D"
        return data

    async def click(
        self,
        *,
        value: str,
        message_ts: str,
        user: str = "UALICE",
        channel: str = CHANNEL,
        thread_ts: str | None = None,
    ) -> int:
        """A click on a feedback button, as Slack posts it (a signed form with `payload`)."""
        message: dict[str, Any] = {"type": "message", "ts": message_ts}
        if thread_ts:
            message["thread_ts"] = thread_ts
        body = {
            "type": "block_actions",
            "user": {"id": user, "team_id": TEAM},
            "team": {"id": TEAM, "domain": "fake"},
            "channel": {"id": channel, "name": "general"},
            "api_app_id": "A0001",
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel},
            "message": message,
            "trigger_id": f"{next(self._ts)}.trigger",
            "actions": [
                {
                    "type": "feedback_buttons",
                    "action_id": "botservice_feedback",
                    "block_id": "feedback",
                    "value": value,
                    "action_ts": self.next_ts(),
                }
            ],
        }
        form = urllib.parse.urlencode({"payload": json.dumps(body)}).encode()
        status, _ = await self.post(form, content_type="application/x-www-form-urlencoded")
        return status

    async def settle(self) -> None:
        """Wait until every answer in flight has been shown."""
        await self.core.drain()


def user_texts(request_body: Mapping[str, Any]) -> list[str]:
    """What the model was shown as user turns, in order."""
    texts = []
    for message in request_body.get("messages") or []:
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            texts.append(" ".join(p.get("text", "") for p in content if p.get("type") == "text"))
        else:
            texts.append(str(content))
    return texts


__all__ = ["APP_TOKEN", "SlackHarness", "payload", "sign", "slack_settings", "user_texts"]


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})

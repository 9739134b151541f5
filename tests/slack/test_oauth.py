"""Multi-workspace installs: OAuth install and redirect, installations in our database,
uninstall forgetting the workspace."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest_asyncio

from botservice.core.events import ConversationKey
from botservice.storage.engine import create_engine
from botservice.storage.repository import SqlStore
from tests.bot_process import clean_environment
from tests.fakes.model_server import FakeModelServer
from tests.fakes.slack_api import BOT_TOKEN, FakeSlackApi
from tests.slack.harness import CHANNEL, SlackHarness, payload, slack_settings

ROOT = Path(__file__).resolve().parents[2]


async def upgrade_with_the_cli(database_url: str, cwd: Path) -> None:
    """`botservice db upgrade`, as an operator runs it: the only thing that creates tables."""
    clean = clean_environment()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "botservice",
        "db",
        "upgrade",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env={
            **clean,
            "PYTHONPATH": str(ROOT),
            "BOTSERVICE_CONFIG": str(ROOT / "config" / "botservice.toml"),
            "DATABASE_URL": database_url,
        },
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    assert out.decode().strip() == "database is up to date"


async def start_oauth_bot(
    slack_api: FakeSlackApi, fake_model: FakeModelServer, store: SqlStore, database_url: str
) -> SlackHarness:
    settings = slack_settings(
        model_url=fake_model.base_url,
        slack_url=slack_api.base_url,
        database_url=database_url,
        extra={
            "SLACK_BOT_TOKEN": "",
            "SLACK_CLIENT_ID": "1111.2222",
            "SLACK_CLIENT_SECRET": "client-secret-value",
        },
    )
    return await SlackHarness.start(slack_api, settings, store)


@pytest_asyncio.fixture
async def oauth_bot(
    slack_api: FakeSlackApi,
    fake_model: FakeModelServer,
    empty_database_url: str,
    tmp_path: Path,
) -> AsyncIterator[SlackHarness]:
    """Multi-workspace installs on SQLite and PostgreSQL, on a database that only
    `botservice db upgrade` prepared (the OAuth stores never create tables)."""
    await upgrade_with_the_cli(empty_database_url, tmp_path)
    store = SqlStore(create_engine(empty_database_url))
    try:
        harness = await start_oauth_bot(slack_api, fake_model, store, empty_database_url)
        try:
            yield harness
        finally:
            await harness.close()
    finally:
        await store.aclose()


async def _install(bot: SlackHarness) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(bot.url + "/slack/install", allow_redirects=False) as response:
            assert response.status in (200, 302)
            page = await response.text()
            cookie = response.headers.getall("Set-Cookie")[0].split(";")[0]
        location = (
            response.headers.get("Location") or re.search(r"href=\"([^\"]*oauth[^\"]+)\"", page)[1]
        )  # type: ignore[index]
        assert "/oauth/v2/authorize" in location and "client_id=1111.2222" in location
        state = re.search(r"state=([^&\"]+)", location)[1]  # type: ignore[index]
        async with session.get(
            bot.url + "/slack/oauth_redirect",
            params={"code": "temporary-code", "state": state},
            headers={"Cookie": cookie},
            allow_redirects=False,
        ) as response:
            return response.status


async def test_install_then_mention_then_uninstall(
    oauth_bot: SlackHarness, slack_api: FakeSlackApi, fake_model: FakeModelServer
) -> None:
    assert {route.path for route in oauth_bot.adapter.http_routes()} >= {  # type: ignore[attr-defined]
        "/slack/events",
        "/slack/install",
        "/slack/oauth_redirect",
    }
    assert await _install(oauth_bot) == 200
    access = slack_api.calls_to("oauth.v2.access")
    assert len(access) == 1 and access[0].args["code"] == "temporary-code"

    mention = oauth_bot.mention("hello from an installed workspace")
    await oauth_bot.event(mention)
    await oauth_bot.settle()
    (posted,) = slack_api.thread(CHANNEL, mention["event"]["ts"])
    assert posted.text == "You said: hello from an installed workspace"
    assert slack_api.calls_to("chat.postMessage")[0].token == BOT_TOKEN

    key = ConversationKey("slack", "T0001", CHANNEL, mention["event"]["ts"])
    assert await oauth_bot.store.has_conversation(key)
    assert (await oauth_bot.event(payload("app_uninstalled")))[0] == 200
    await oauth_bot.settle()
    assert not await oauth_bot.store.has_conversation(key), "the workspace's data stays"
    after = oauth_bot.mention("anyone home?")
    await oauth_bot.event(after)
    await oauth_bot.settle()
    assert len(fake_model.chat_requests) == 1, "no installation, no answer"
    assert slack_api.thread(CHANNEL, after["event"]["ts"]) == []


async def test_install_with_a_forged_state_is_refused(
    oauth_bot: SlackHarness, slack_api: FakeSlackApi
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            oauth_bot.url + "/slack/oauth_redirect",
            params={"code": "temporary-code", "state": "forged"},
            allow_redirects=False,
        ) as response,
    ):
        assert response.status >= 400
    assert slack_api.calls_to("oauth.v2.access") == []

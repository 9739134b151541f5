"""Slack is acknowledged on a thread of its own (botservice.core.accept_loop, issue 8).

`botservice run` on PostgreSQL, in this process (so a test can keep its main loop
busy) or as a real process: an event is acknowledged while the main loop is stuck
in a CPU-heavy step next to a streaming answer; it is still answered once and in
order; stopping drains both loops; a database outage during accept is a 500.
In either mode the accepting connections are open before Slack can call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest_asyncio

from botservice.adapters.slack import create_adapter
from botservice.app.runtime import Services, open_services, serve
from botservice.core.accept_loop import THREAD_NAME, AcceptLoop
from botservice.storage.migrate import upgrade
from botservice.storage.postgres_hot import ACCEPTING_CONNECTIONS_AHEAD
from botservice.storage.repository import SqlStore
from tests.bot_process import free_port
from tests.chat_kit import Chat
from tests.db import PostgresServer
from tests.fakes.model_server import FakeModelServer, Reply
from tests.fakes.slack_api import FakeSlackApi
from tests.scale_out import Cluster
from tests.slack.harness import CHANNEL, payload, sign, slack_settings


@dataclass
class RunningBot:
    services: Services
    url: str
    stop: asyncio.Event
    serving: asyncio.Task[None]
    _ts: int = 0

    def mention(self, text: str, *, thread_ts: str | None = None) -> dict[str, Any]:
        self._ts += 1
        ts = f"{1_767_200_000 + self._ts}.000100"
        data = payload("app_mention")
        event = data["event"]
        event.update(text=f"<@UBOT0001> {text}", user="UALICE", channel=CHANNEL, ts=ts)
        event["event_ts"] = ts
        if thread_ts:
            event["thread_ts"] = thread_ts
        data["event_id"] = f"Ev{ts.replace('.', '')}M"
        return data

    def post_blocking(self, data: dict[str, Any]) -> int:
        """Deliver an event like Slack, without this loop (for use from a thread)."""
        body = json.dumps(data).encode()
        request = urllib.request.Request(
            self.url + "/slack/events",
            data=body,
            headers={"Content-Type": "application/json", **sign(body)},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status: int = response.status
                return status
        except urllib.error.HTTPError as error:
            return error.code

    async def post(self, data: dict[str, Any]) -> int:
        body = json.dumps(data).encode()
        headers = {"Content-Type": "application/json", **sign(body)}
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.url + "/slack/events", data=body, headers=headers) as response,
        ):
            return response.status


@pytest_asyncio.fixture
async def postgres_url(postgres_server: PostgresServer) -> AsyncIterator[str]:
    name = f"botservice_accept_{secrets.token_hex(6)}"
    await postgres_server.create_database(name)
    try:
        url = postgres_server.url(name)
        await upgrade(url)
        yield url
    finally:
        await postgres_server.drop_database(name)


@pytest_asyncio.fixture
async def bot(
    slack_api: FakeSlackApi, fake_model: FakeModelServer, postgres_url: str
) -> AsyncIterator[RunningBot]:
    port = free_port()
    settings = slack_settings(
        model_url=fake_model.base_url,
        slack_url=slack_api.base_url,
        database_url=postgres_url,
        extra={
            "PORT": str(port),
            "BOTSERVICE_HTTP__HOST": "127.0.0.1",
            "BOTSERVICE_HTTP__ACCEPT_THREAD": "true",
        },
    )
    async with open_services(settings) as services:
        adapter = create_adapter(settings, services.core, services.store)
        stop = asyncio.Event()
        serving = asyncio.create_task(serve(services, [adapter], with_http=True, stop=stop))
        bot = RunningBot(services, f"http://127.0.0.1:{port}", stop, serving)
        deadline = time.monotonic() + 20
        while not _accept_thread_alive() or not await _healthy(bot.url):
            assert time.monotonic() < deadline, "the bot did not start"
            assert not serving.done(), serving
            await asyncio.sleep(0.05)
        try:
            yield bot
        finally:
            stop.set()
            await serving


def _accept_thread_alive() -> bool:
    return any(t.name == THREAD_NAME and t.is_alive() for t in threading.enumerate())


async def _healthy(url: str) -> bool:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(url + "/healthz") as response,
        ):
            return response.status == 200
    except aiohttp.ClientError:
        return False


def _busy(seconds: float) -> None:
    """A CPU-heavy step on the main loop: it runs Python, holding the loop, for `seconds`."""
    until = time.monotonic() + seconds
    total = 0
    while time.monotonic() < until:
        total += sum(range(1000))


async def test_the_store_stores_and_deletes_from_the_accept_loop_on_its_own_connections(
    postgres_url: str,
) -> None:
    store = await SqlStore.open(postgres_url, migrate=False)
    accept_loop = AcceptLoop()
    accept_loop.on_stop(store.leave_loop)
    accept_loop.start()
    try:
        chat = Chat()
        kept, deleted = chat.message("keep me", key="k1"), chat.message("delete me", key="k2")
        deleted = dataclasses.replace(deleted, platform_message_id="1767.0002")
        for message in (kept, deleted):
            accepted = await accept_loop.run(store.accept(message, text=message.text, tokens=2))
            assert accepted is not None
        assert await accept_loop.run(store.has_conversation(kept.conversation))
        # A write of several statements (the pending turn failed, the message deleted).
        removed = store.delete_platform_message("test", "W1", "C1", "1767.0002")
        assert await accept_loop.run(removed) == 1

        # The main loop sees what the accept loop stored, through its own connections.
        [pending] = await store.pending_turns()
        history = await store.history(pending.conversation_id, up_to_message_id=10**9, limit=5)
        assert [m.text for m in history] == ["keep me"]
    finally:
        await accept_loop.stop()
        await store.aclose()
    assert not _accept_thread_alive()


async def test_slack_is_acknowledged_while_the_main_loop_is_busy_and_answered_in_order(
    bot: RunningBot, slack_api: FakeSlackApi, fake_model: FakeModelServer
) -> None:
    # A first message: Bolt's auth.test and the user's name are fetched once.
    first = bot.mention("hello")
    assert await bot.post(first) == 200
    await slack_api.wait_for(
        lambda: any(m.text == "You said: hello" for m in slack_api.messages.values()),
        within=10,
        what="the first answer",
    )
    thread = first["event"]["ts"]

    # A long answer streams on the main loop...
    fake_model.script(Reply("a long answer " * 20, chunk_size=10, delay_between_chunks=0.05))
    assert await bot.post(bot.mention("tell me a long story", thread_ts=thread)) == 200
    await slack_api.wait_for(
        lambda: len(fake_model.chat_requests) >= 2, within=10, what="the long answer"
    )

    # ...when the main loop gets stuck in a CPU-heavy step, and Slack sends a follow-up.
    follow_up = bot.mention("and then?", thread_ts=thread)
    acknowledged: list[tuple[int, float]] = []
    sender = threading.Thread(
        target=lambda: acknowledged.append((bot.post_blocking(follow_up), time.monotonic()))
    )
    sender.start()
    _busy(3.0)
    busy_until = time.monotonic()
    await asyncio.to_thread(sender.join, 10)

    assert acknowledged, "Slack got no answer"
    status, answered_at = acknowledged[0]
    assert status == 200
    assert answered_at < busy_until, "the acknowledgement waited for the main loop"

    # Answered once, after the long answer, with it in the prompt.
    await slack_api.wait_for(
        lambda: any(m.text == "You said: and then?" for m in slack_api.messages.values()),
        within=15,
        what="the follow-up's answer",
    )
    await asyncio.sleep(0.5)
    answers = [m.text for m in slack_api.thread(CHANNEL, thread)]
    assert answers.count("You said: and then?") == 1
    long_answer = next(i for i, text in enumerate(answers) if text.startswith("a long answer"))
    assert answers.index("You said: and then?") > long_answer
    prompt = fake_model.chat_requests[-1].body["messages"]
    assert any("a long answer" in str(m.get("content")) for m in prompt)


async def test_stopping_finishes_the_answer_in_flight_and_ends_the_accept_thread(
    bot: RunningBot, slack_api: FakeSlackApi, fake_model: FakeModelServer
) -> None:
    fake_model.script(Reply("slowly but surely", chunk_size=3, delay_between_chunks=0.1))
    assert await bot.post(bot.mention("take your time")) == 200
    await slack_api.wait_for(
        lambda: len(fake_model.chat_requests) >= 1, within=10, what="the model call"
    )

    bot.stop.set()
    await asyncio.wait_for(bot.serving, 30)

    assert any(m.text == "slowly but surely" for m in slack_api.messages.values())
    assert not _accept_thread_alive()
    assert await bot.services.store.pending_turns() == []


async def test_a_database_outage_during_accept_is_a_500_and_the_redelivery_is_answered(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    async with Cluster.running(
        postgres_server,
        tmp_path,
        processes=1,
        database_via_proxy=True,
        env={"BOTSERVICE_HTTP__ACCEPT_THREAD": "true"},
    ) as cluster:
        assert cluster.proxy is not None
        process = cluster.processes[0]
        warm, question = cluster.questions(threads=2, per_thread=1)
        await cluster.deliver(warm)
        await cluster.wait_answered([warm], within=15)
        assert "acknowledging slack events on their own thread" in process.log()

        await cluster.proxy.cut()
        during = await cluster.post_once(process, question)
        await cluster.proxy.restore()
        await cluster.deliver(question, retry=1, within=30)
        await cluster.wait_answered([question], within=15)
        await cluster.quiet(1.0)

        # Slack was told to deliver again, not that the message was taken.
        assert during.status == 500, during
        assert cluster.problems([warm, question], ack_limit=None) == []


async def test_the_accepting_connections_are_open_before_slack_can_call(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    # On the main loop (the default): the first acknowledgements wait for no connection
    # to open (a burst waits for one to come back, or the pool grows).
    async with Cluster.running(postgres_server, tmp_path, processes=1) as cluster:
        connection = await asyncpg.connect(postgres_server.dsn(cluster.database))
        try:
            backends = await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> "
                "pg_backend_pid()",
                cluster.database,
            )
        finally:
            await connection.close()
    assert backends >= ACCEPTING_CONNECTIONS_AHEAD

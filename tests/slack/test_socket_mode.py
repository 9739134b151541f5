"""Socket Mode against the fake's websocket: events and commands, acknowledged after storing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from botservice.storage.repository import SqlStore
from tests.fakes.model_server import FakeModelServer
from tests.fakes.slack_api import APP_TOKEN, FakeSlackApi
from tests.slack.harness import CHANNEL, SlackHarness, payload, slack_settings


@pytest_asyncio.fixture
async def socket_bots(
    slack_api: FakeSlackApi,
    fake_model: FakeModelServer,
    sqlite_store: SqlStore,
    sqlite_database_url: str,
) -> AsyncIterator[list[SlackHarness]]:
    """Two processes' worth of adapters in Socket Mode on one database (no signing secret)."""
    settings = slack_settings(
        model_url=fake_model.base_url,
        slack_url=slack_api.base_url,
        database_url=sqlite_database_url,
        extra={"SLACK_APP_TOKEN": APP_TOKEN, "SLACK_SIGNING_SECRET": ""},
    )
    bots = []
    try:
        for count in (1, 2):
            bots.append(await SlackHarness.start(slack_api, settings, sqlite_store))
            await slack_api.wait_for(lambda: slack_api.socket_connections == count)  # noqa: B023
        yield bots
    finally:
        for harness in bots:
            await harness.close()


async def test_mention_over_socket_mode_is_acknowledged_and_answered(
    socket_bots: list[SlackHarness], slack_api: FakeSlackApi, fake_model: FakeModelServer
) -> None:
    bot = socket_bots[0]
    assert bot.adapter.http_routes() == [], "no signing secret: no HTTP events route"
    assert slack_api.calls_to("apps.connections.open")[0].token == APP_TOKEN
    mention = bot.mention("over the socket")
    envelope = await slack_api.push(mention, connection=0)
    await slack_api.wait_ack(envelope)
    await bot.settle()

    (posted,) = slack_api.thread(CHANNEL, mention["event"]["ts"])
    assert posted.text == "You said: over the socket"


async def test_same_event_on_two_connections_is_answered_once(
    socket_bots: list[SlackHarness], slack_api: FakeSlackApi, fake_model: FakeModelServer
) -> None:
    mention = socket_bots[0].mention("delivered twice")
    first = await slack_api.push(mention, connection=0)
    second = await slack_api.push(mention, connection=1, retry_attempt=1)
    await slack_api.wait_ack(first)
    await slack_api.wait_ack(second)
    for harness in socket_bots:
        await harness.settle()

    assert len(fake_model.chat_requests) == 1
    assert len(slack_api.thread(CHANNEL, mention["event"]["ts"])) == 1


async def test_slash_command_over_socket_mode_answers_in_the_ack(
    socket_bots: list[SlackHarness], slack_api: FakeSlackApi
) -> None:
    command = payload("slash_command")
    command["text"] = "model show"
    envelope = await slack_api.push(command, kind="slash_commands")
    ack = await slack_api.wait_ack(envelope)
    assert ack is not None and ack["response_type"] == "ephemeral"
    assert "uses the model" in ack["text"]


async def test_is_connected_follows_the_socket_mode_websocket(
    socket_bots: list[SlackHarness], slack_api: FakeSlackApi, fake_model: FakeModelServer
) -> None:
    bot = socket_bots[0]
    assert bot.adapter.is_connected()

    await slack_api.drop_sockets(refuse=True)
    await slack_api.wait_for(
        lambda: not any(b.adapter.is_connected() for b in socket_bots), what="disconnected"
    )

    slack_api.refuse_sockets = False
    await slack_api.wait_for(
        lambda: all(b.adapter.is_connected() for b in socket_bots), 30, "reconnected"
    )
    mention = bot.mention("after the reconnect")
    await slack_api.wait_ack(await slack_api.push(mention))
    for harness in socket_bots:
        await harness.settle()
    (posted,) = slack_api.thread(CHANNEL, mention["event"]["ts"])
    assert posted.text == "You said: after the reconnect"

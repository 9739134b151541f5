"""Exactly once, nothing lost, and bad input turned away without work."""

from __future__ import annotations

import json
import logging
import time

import pytest

from botservice.storage.engine import create_engine
from botservice.storage.repository import SqlStore
from tests.fakes.model_server import FakeModelServer, Reply
from tests.fakes.slack_api import FakeSlackApi
from tests.slack.harness import CHANNEL, SlackHarness, payload, sign


async def test_retried_delivery_is_answered_once(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    mention = bot.mention("hello once")
    ts = mention["event"]["ts"]
    assert (await bot.event(mention))[0] == 200
    assert (await bot.event(mention, retry=1))[0] == 200
    assert (await bot.event(mention, retry=2))[0] == 200
    await bot.settle()

    assert len(fake_model.chat_requests) == 1
    assert [m.text for m in bot.slack.thread(CHANNEL, ts)] == ["You said: hello once"]
    assert bot.slack.count("chat.postMessage") == 1, "a single placeholder"


async def test_mention_and_its_message_twin_give_one_answer(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    mention = bot.mention("twins")
    twin = bot.as_message_event(mention)
    assert twin["event_id"] != mention["event_id"]
    await bot.event(twin)
    await bot.event(mention)
    await bot.settle()

    assert len(fake_model.chat_requests) == 1
    assert len(bot.slack.thread(CHANNEL, mention["event"]["ts"])) == 1


async def test_message_is_stored_before_slack_is_acknowledged(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    fake_model.script(Reply("slow answer", chunk_size=2, delay_between_chunks=0.05))
    mention = bot.mention("store me first")
    status, _ = await bot.event(mention)
    assert status == 200
    # By the time Slack has its 200, the message is taken: a redelivery now
    # (even to another process on this database) is a duplicate.
    claimed = await bot.store.claim_key("slack", f"{CHANNEL}:{mention['event']['ts']}")
    assert claimed is False
    await bot.settle()


@pytest.mark.parametrize("how", ["forged", "stale", "missing"])
async def test_bad_signatures_get_401_and_no_work(
    bot: SlackHarness, fake_model: FakeModelServer, how: str
) -> None:
    body = json.dumps(bot.mention("let me in")).encode()
    if how == "forged":
        headers = sign(body, secret="not-the-signing-secret")
    elif how == "stale":
        headers = sign(body, timestamp=int(time.time()) - 6 * 60)
    else:
        headers = {}
    status, _ = await bot.post(body, signed=False, headers=headers)
    await bot.settle()

    assert status == 401
    assert fake_model.chat_requests == []
    assert [c.method for c in bot.slack.calls] == ["auth.test"], "only the start-up check"


async def test_malformed_json_is_refused_without_a_stack_trace(
    bot: SlackHarness, fake_model: FakeModelServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for body in (b'{"type": "event_callback", "event": {', b"{not json at all", b"\xff\xfe{"):
        status, text = await bot.post(body)
        assert 400 <= status < 500, (status, text)
        assert "Traceback" not in text
    await bot.settle()

    assert fake_model.chat_requests == []
    assert not [r for r in caplog.records if r.exc_info], "no stack traces logged"


async def test_unknown_events_and_url_verification(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    status, _ = await bot.event(payload("reaction_added"))
    assert status == 200
    odd = payload("reaction_added")
    odd["event"] = {"type": "something_new_from_slack", "x": 1}
    assert (await bot.event(odd))[0] == 200
    status, _ = await bot.event({"type": "event_callback"})
    assert status in (200, 404)

    status, text = await bot.event(payload("url_verification"))
    assert status == 200
    assert json.loads(text)["challenge"] == payload("url_verification")["challenge"]
    await bot.settle()
    assert fake_model.chat_requests == []


async def test_bots_edits_and_own_messages_never_reach_the_model(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    mention = bot.mention("start a thread")
    ts = mention["event"]["ts"]
    await bot.event(mention)
    await bot.settle()
    calls_before = len(bot.slack.calls)

    other_bot = payload("message_bot")
    other_bot["event"]["thread_ts"] = ts
    own = bot.reply("my own words", thread_ts=ts, user="UBOT0001")
    own["event"]["bot_id"] = "BBOT0001"
    edited = payload("message_changed")
    edited["event"]["message"]["thread_ts"] = ts
    deleted = payload("message_deleted")
    for event in (other_bot, own, edited, deleted):
        assert (await bot.event(event))[0] == 200
    await bot.settle()

    assert len(fake_model.chat_requests) == 1
    assert len(bot.slack.calls) == calls_before


async def test_a_huge_message_gets_the_cores_refusal_not_a_model_call(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    limit = bot.settings.conversation.max_message_chars
    mention = bot.mention("x" * (limit + 10))
    await bot.event(mention)
    await bot.settle()

    assert fake_model.chat_requests == []
    posted = bot.slack.thread(CHANNEL, mention["event"]["ts"])
    assert len(posted) == 1 and "limit" in posted[0].text


async def test_message_text_stays_out_of_info_logs(
    bot: SlackHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await bot.event(bot.mention("the secret launch date is 2027-03-01"))
    await bot.settle()
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert "2027-03-01" not in logged
    assert "xoxb-" not in logged


async def test_a_wrong_bot_token_is_a_configuration_error_at_start(
    bot: SlackHarness,
) -> None:
    from botservice.adapters.slack import create_adapter
    from botservice.core.errors import ConfigError

    bot.slack.failures["auth.test"] = "invalid_auth"
    adapter = create_adapter(bot.settings, bot.core, bot.store)
    with pytest.raises(ConfigError) as raised:
        await adapter.start()
    await adapter.stop()
    assert raised.value.setting == "SLACK_BOT_TOKEN"
    assert "xoxb-test-token" not in str(raised.value)


async def test_when_storing_fails_slack_gets_a_500_to_redeliver_later(
    bot: SlackHarness, fake_model: FakeModelServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    bot.slack.failures["users.info"] = "ratelimited"  # names degrade, storing must not
    await bot.store.aclose()  # the database goes away
    status, body = await bot.event(bot.mention("is anything lost?"))

    assert status == 500 and "Traceback" not in body
    assert fake_model.chat_requests == []
    failures = [r for r in caplog.records if r.exc_info]
    assert len(failures) == 1 and failures[0].name == "botservice.adapters.slack.app"


async def test_a_retry_of_a_message_another_process_stored_is_acknowledged_unread(
    bot: SlackHarness,
    slack_api: FakeSlackApi,
    fake_model: FakeModelServer,
    sqlite_database_url: str,
) -> None:
    # Two processes behind one URL: Slack's retry may reach the one that did not store it.
    other_store = SqlStore(create_engine(sqlite_database_url))
    other = await SlackHarness.start(slack_api, bot.settings, other_store)
    try:
        mention = bot.mention("hello from one process")
        assert (await bot.event(mention))[0] == 200
        await bot.settle()
        looked_up = slack_api.count("users.info")

        assert (await other.event(mention, retry=1))[0] == 200
        await other.settle()
    finally:
        await other.close()
        await other_store.aclose()

    assert len(fake_model.chat_requests) == 1
    assert [m.text for m in slack_api.thread(CHANNEL, mention["event"]["ts"])] == [
        "You said: hello from one process"
    ]
    # The other process answered from the store alone: it never read the message as far
    # as looking up its author.
    assert slack_api.count("users.info") == looked_up

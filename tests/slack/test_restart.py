"""After a restart: no second answer, and a pending turn edits its own first message."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from botservice.adapters.slack.events import (
    BotIdentity,
    Converse,
    SlackUser,
    build_incoming,
    translate_event,
)
from botservice.adapters.slack.sink import PLACEHOLDER, TURN_EVENT_TYPE
from tests.bot_process import BotProcess
from tests.fakes.model_server import FakeModelServer, Reply, Slow
from tests.fakes.slack_api import BOT_TOKEN, BOT_USER_ID, FakeSlackApi, PostedMessage
from tests.slack.harness import CHANNEL, SIGNING_SECRET, SlackHarness, payload, sign, user_texts


async def test_redelivery_after_a_restart_is_not_answered_again(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    mention = bot.mention("before the restart")
    await bot.event(mention)
    await bot.settle()
    await bot.close()

    restarted = await SlackHarness.start(bot.slack, bot.settings, bot.store)
    try:
        assert (await restarted.event(mention, retry=1))[0] == 200
        await restarted.settle()
    finally:
        await restarted.close()
    assert len(fake_model.chat_requests) == 1
    assert len(bot.slack.thread(CHANNEL, mention["event"]["ts"])) == 1


async def test_a_pending_turn_resumes_by_editing_its_placeholder(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    # The state a crash leaves behind: the message stored, the placeholder
    # posted and its ts stored with the turn, no answer yet.
    mention = bot.mention("answer me after the crash")
    action = translate_event(mention, BotIdentity(user_id=BOT_USER_ID))
    assert isinstance(action, Converse)
    message = build_incoming(
        action.draft, user=SlackUser("UALICE", "Alice"), is_channel_admin=False
    )
    accepted = await bot.store.accept(message, text=message.text, tokens=5)
    assert accepted is not None
    placeholder_ts = "1767200000.000100"
    bot.slack.messages[(CHANNEL, placeholder_ts)] = PostedMessage(
        CHANNEL, placeholder_ts, "_Thinking…_", mention["event"]["ts"]
    )
    await bot.store.set_reply_ref(accepted.turn_id, placeholder_ts)

    resumed = await bot.core.resume_pending(bot.adapter.sink_for)
    await bot.settle()

    assert resumed == 1
    assert bot.slack.count("chat.postMessage") == 0, "no second placeholder"
    (posted,) = bot.slack.thread(CHANNEL, mention["event"]["ts"])
    assert posted.ts == placeholder_ts
    assert posted.text == "You said: answer me after the crash"


async def test_a_follow_up_after_a_restart_continues_without_a_mention(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    mention = bot.mention("remember the word teapot")
    await bot.event(mention)
    await bot.settle()
    await bot.close()

    restarted = await SlackHarness.start(bot.slack, bot.settings, bot.store)
    try:
        # Built by the first harness so its ts comes after the mention's.
        follow_up = bot.reply("what was the word?", thread_ts=mention["event"]["ts"])
        await restarted.event(follow_up)
        await restarted.settle()
    finally:
        await restarted.close()
    assert len(fake_model.chat_requests) == 2
    assert user_texts(fake_model.chat_requests[-1].body) == [
        "remember the word teapot",
        "what was the word?",
    ]
    assert bot.slack.count("conversations.replies") == 0


async def test_a_message_deleted_in_slack_is_deleted_from_the_store(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    mention = bot.mention("first question")
    await bot.event(mention)
    oops = bot.reply("my password is hunter2", thread_ts=mention["event"]["ts"])
    await bot.event(oops)
    await bot.settle()

    deleted = payload("message_deleted")
    deleted["event"].update(channel=CHANNEL, deleted_ts=oops["event"]["ts"], ts=bot.next_ts())
    deleted["event"]["previous_message"].update(
        ts=oops["event"]["ts"], thread_ts=mention["event"]["ts"]
    )
    assert (await bot.event(deleted))[0] == 200
    await bot.settle()

    await bot.event(bot.reply("and now?", thread_ts=mention["event"]["ts"]))
    await bot.settle()
    shown = user_texts(fake_model.chat_requests[-1].body)
    assert shown == ["first question", "and now?"]
    assert len(fake_model.chat_requests) == 3, "a deletion never calls the model"


@pytest.mark.parametrize("first_token_after", [0.0, 1.6], ids=["answer-posted", "placeholder"])
async def test_a_crash_while_the_first_message_is_posted_leaves_nothing_stuck(
    slack_api: FakeSlackApi, fake_model: FakeModelServer, tmp_path: Path, first_token_after: float
) -> None:
    env = {
        "OPENAI_BASE_URL": fake_model.base_url,
        "OPENAI_API_KEY": "sk-test-secret-key",
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack_api.base_url,
    }
    # A quick answer is the first message itself; a first token slower than a
    # second is preceded by a placeholder. Either is what a crash can strand.
    fake_model.script(
        Slow(delay_before_first_byte=first_token_after, then=Reply("You said: survive the crash"))
    )
    first_text = "You said: survive the crash" if first_token_after == 0 else PLACEHOLDER
    mention = payload("app_mention")
    mention["event"].update(text="<@UBOT0001> survive the crash", user="UALICE", channel=CHANNEL)
    thread_ts = mention["event"]["ts"]
    # Slack creates the message but its answer (with the ts) never reaches the bot:
    # the process is killed in between, before the ts could be stored with the turn.
    slack_api.hold_posts = asyncio.Event()
    first = await BotProcess.start(env, cwd=tmp_path, name="first")
    try:
        await first.wait_healthy()
        assert await _send_event(first.url, mention) == 200
        await slack_api.wait_for(lambda: slack_api.count("chat.postMessage") == 1, 20, "a post")
    finally:
        await first.kill()
    slack_api.hold_posts.set()
    slack_api.hold_posts = None
    (stuck,) = slack_api.thread(CHANNEL, thread_ts)
    assert stuck.texts == [first_text]
    assert stuck.metadata == {"event_type": TURN_EVENT_TYPE, "event_payload": {"turn": "1"}}

    second = await BotProcess.start(env, cwd=tmp_path, name="second")
    try:
        await second.wait_healthy()
        await slack_api.wait_for(lambda: stuck.edits == 1, 20, "the stranded message edited")
    finally:
        await second.stop()
    (answer,) = slack_api.thread(CHANNEL, thread_ts)
    assert answer.ts == stuck.ts, "one bot message in the thread: the stranded one, edited"
    assert answer.text == "You said: survive the crash"
    assert slack_api.count("chat.postMessage") == 1
    (lookup,) = slack_api.calls_to("conversations.replies")
    assert lookup.args["ts"] == thread_ts
    # The first process had asked the model before it died; its answer was never
    # stored, so the resumed turn asks again.
    assert len(fake_model.chat_requests) == 2


async def _send_event(url: str, data: dict[str, object]) -> int:
    body = json.dumps(data).encode()
    headers = {"Content-Type": "application/json", **sign(body)}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/slack/events", data=body, headers=headers) as response,
    ):
        return response.status

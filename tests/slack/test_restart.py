"""After a restart: no second answer, and a pending turn edits its own placeholder."""

from __future__ import annotations

from adapters.slack.events import BotIdentity, Converse, SlackUser, build_incoming, translate_event
from tests.fakes.model_server import FakeModelServer
from tests.fakes.slack_api import BOT_USER_ID, PostedMessage
from tests.slack.harness import CHANNEL, SlackHarness, payload, user_texts


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

"""A mention gets a streamed, threaded answer; the thread continues without mentions."""

from __future__ import annotations

from tests.fakes.model_server import FakeModelServer, Reply
from tests.slack.harness import CHANNEL, SlackHarness, user_texts


async def test_mention_is_answered_in_its_thread_with_throttled_updates(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    words = " ".join(f"word{i}" for i in range(40))
    fake_model.script(Reply(words, chunk_size=6, delay_between_chunks=0.01))
    mention = bot.mention("what is the capital of France?")
    ts = mention["event"]["ts"]

    status, _ = await bot.event(mention)
    assert status == 200
    await bot.settle()

    posted = bot.slack.thread(CHANNEL, ts)
    assert len(posted) == 1, "one placeholder, edited into the answer"
    assert posted[0].text == words
    assert bot.slack.count("chat.postMessage") == 1
    updates = bot.slack.calls_to("chat.update")
    # Streamed (more than the final edit) yet throttled: the stream has ~50 chunks
    # over ~0.5 s and the interval is 0.05 s.
    assert 2 <= len(updates) < 30
    assert updates[-1].args["text"] == words
    assert all(call.args["ts"] == posted[0].ts for call in updates)
    assert fake_model.chat_requests[-1].last_user_text.endswith("what is the capital of France?")


async def test_follow_up_in_thread_needs_no_mention_and_carries_earlier_turns(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    mention = bot.mention("remember the number 42")
    ts = mention["event"]["ts"]
    await bot.event(mention)
    await bot.settle()

    await bot.event(bot.reply("which number did I ask you to remember?", thread_ts=ts))
    await bot.settle()

    posted = bot.slack.thread(CHANNEL, ts)
    assert len(posted) == 2
    assert posted[1].text == "You said: which number did I ask you to remember?"
    request = fake_model.chat_requests[-1].body
    assert any("remember the number 42" in text for text in user_texts(request))
    assistant = [m["content"] for m in request["messages"] if m["role"] == "assistant"]
    assert assistant == ["You said: remember the number 42"]
    assert bot.slack.count("conversations.replies") == 0
    assert bot.slack.count("users.info") == 1, "the name is looked up once"


async def test_chatter_and_other_threads_are_ignored_at_no_cost(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    chatter = bot.as_message_event(bot.mention("hello"))
    chatter["event"]["text"] = "lunch anyone?"
    await bot.event(chatter)
    await bot.event(bot.reply("unrelated thread", thread_ts="1767000000.999999"))
    await bot.settle()

    assert fake_model.chat_requests == []
    assert [c.method for c in bot.slack.calls if c.method != "auth.test"] == []


async def test_first_mention_in_an_existing_thread_reads_it_once(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    root = "1767000000.500000"
    bot.slack.threads[(CHANNEL, root)] = [
        {"type": "message", "user": "UBOB", "text": "The build fails on arm64", "ts": root},
        {
            "type": "message",
            "user": "UALICE",
            "text": "Only since the last bump",
            "ts": "1767000001.000000",
            "thread_ts": root,
        },
    ]
    mention = bot.mention("any idea why?", thread_ts=root)
    bot.slack.threads[(CHANNEL, root)].append(dict(mention["event"]))
    await bot.event(mention)
    await bot.settle()
    await bot.event(bot.reply("and how do I fix it?", thread_ts=root))
    await bot.settle()

    assert bot.slack.count("conversations.replies") == 1
    first, second = fake_model.chat_requests
    shown = "\n".join(user_texts(first.body))
    assert "The build fails on arm64" in shown and "Only since the last bump" in shown
    assert "any idea why?" in shown
    assert any("The build fails on arm64" in text for text in user_texts(second.body))

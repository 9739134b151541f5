"""How answers look in Slack: mrkdwn, split long answers, failures, the shared edit budget."""

from __future__ import annotations

import asyncio

from botservice.adapters.slack.mrkdwn import MESSAGE_LIMIT
from tests.fakes.model_server import FakeModelServer, Reply, ServerError
from tests.slack.harness import CHANNEL, SlackHarness


def _long_answer() -> str:
    prose = "\n\n".join(f"Paragraph {i}: " + "lorem ipsum dolor sit amet " * 20 for i in range(12))
    code = "```python\n" + "\n".join(f"print('line {i}')" for i in range(120)) + "\n```"
    return f"{prose}\n\n{code}\n\n**Done.**"


async def test_long_answer_is_split_without_cutting_code_blocks(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    answer = _long_answer()
    fake_model.script(Reply(answer, chunk_size=500))
    mention = bot.mention("write a lot")
    await bot.event(mention)
    await bot.settle()

    posted = bot.slack.thread(CHANNEL, mention["event"]["ts"])
    assert len(posted) >= 3
    for message in posted:
        assert len(message.text) <= MESSAGE_LIMIT
        assert message.text.count("```") % 2 == 0, "every message closes the code it opens"
    joined = "\n".join(m.text for m in posted)
    for i in range(120):
        assert f"print('line {i}')" in joined
    assert posted[-1].text.endswith("*Done.*")
    assert "```python" not in joined


async def test_model_failure_is_one_short_sentence_in_the_thread(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    fake_model.script(ServerError(status=503))
    mention = bot.mention("are you there?")
    await bot.event(mention)
    await bot.settle()

    posted = bot.slack.thread(CHANNEL, mention["event"]["ts"])
    assert len(posted) == 1, "the placeholder becomes the error, no second message"
    text = posted[0].text
    assert "model endpoint" in text and "503" in text
    assert text.count(".") <= 2 and "Traceback" not in text


async def test_markdown_becomes_mrkdwn(bot: SlackHarness, fake_model: FakeModelServer) -> None:
    fake_model.script(Reply("**Bold** and [docs](https://example.com) & `x<y`"))
    mention = bot.mention("format")
    await bot.event(mention)
    await bot.settle()
    (posted,) = bot.slack.thread(CHANNEL, mention["event"]["ts"])
    assert posted.text == "*Bold* and <https://example.com|docs> &amp; `x&lt;y`"


async def test_ten_simultaneous_replies_stay_inside_the_update_budget(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    bot.slack.update_limit_per_minute = 50  # Slack's Tier 3, enforced by the fake with 429s
    answer = " ".join(f"w{i}" for i in range(60))
    fake_model.script(*[Reply(answer, chunk_size=4, delay_between_chunks=0.02)] * 10)
    mentions = [bot.mention(f"question {i}", channel=f"C0CHAN{i}") for i in range(10)]
    statuses = await asyncio.gather(*(bot.event(m) for m in mentions))
    assert all(status == 200 for status, _ in statuses)
    await bot.settle()

    assert bot.slack.rate_limited == 0
    assert bot.slack.count("chat.update") <= 50
    for mention in mentions:
        (posted,) = bot.slack.thread(mention["event"]["channel"], mention["event"]["ts"])
        assert posted.text == answer


async def test_slacks_own_429_is_retried_after_retry_after(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    bot.slack.rate_limit_next["chat.postMessage"] = 1
    mention = bot.mention("are you rate limited?")
    await bot.event(mention)
    await bot.settle()

    posts = bot.slack.calls_to("chat.postMessage")
    assert len(posts) == 2, "the placeholder is posted again after the 429"
    assert posts[1].at - posts[0].at >= 0.9, "Retry-After: 1 was not honoured"
    (posted,) = bot.slack.thread(CHANNEL, mention["event"]["ts"])
    assert posted.text == "You said: are you rate limited?"


async def test_over_http_the_adapter_is_always_connected(bot: SlackHarness) -> None:
    # Slack calls in over HTTP: readiness does not depend on a connection of ours.
    assert bot.adapter.is_connected()

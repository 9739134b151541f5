"""Native streaming in assistant threads and direct-message threads (chat.startStream,
appendStream, stopStream), its expiry mid-answer, and workspaces that refuse it."""

from __future__ import annotations

from botservice.adapters.slack.sink import TURN_EVENT_TYPE
from tests.fakes.model_server import FakeModelServer, Reply
from tests.slack.harness import SlackHarness, payload

DM, THREAD = "D0BOBDM", "1767000400.000700"
STREAM_METHODS = ("chat.startStream", "chat.appendStream", "chat.stopStream")


def _question(bot: SlackHarness, text: str) -> dict[str, object]:
    """A question in Bob's assistant thread, with a fresh ts each time."""
    data = payload("message_im_assistant_thread")
    ts = bot.next_ts()
    data["event"].update(text=text, ts=ts, event_ts=ts)
    data["event_id"] = f"Ev{ts.replace('.', '')}A"
    return data


def _long(prefix: str, words: int = 40) -> str:
    return " ".join(f"{prefix}{i}" for i in range(words))


async def test_a_long_answer_streams_natively_in_an_assistant_thread(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    answer = _long("word")
    fake_model.script(Reply(answer, chunk_size=8, delay_between_chunks=0.02))
    await bot.event(_question(bot, "tell me a lot"))
    await bot.settle()

    (message,) = bot.slack.thread(DM, THREAD)
    assert message.text == answer
    # It grew in place: every text shown is a beginning of the answer.
    assert len(message.texts) >= 3
    assert all(answer.startswith(text) for text in message.texts)
    assert bot.slack.count("chat.startStream") == 1
    assert bot.slack.count("chat.appendStream") >= 1
    assert bot.slack.count("chat.stopStream") == 1
    assert bot.slack.count("chat.postMessage") == 0
    assert bot.slack.count("chat.update") == 0
    start = bot.slack.calls_to("chat.startStream")[0].args
    assert start["thread_ts"] == THREAD and start["recipient_user_id"] == "UBOB"
    assert message.metadata == {"event_type": TURN_EVENT_TYPE, "event_payload": {"turn": "1"}}


async def test_a_short_answer_is_one_post_even_where_streaming_is_possible(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    await bot.event(_question(bot, "hi"))
    await bot.settle()

    (message,) = bot.slack.thread(DM, THREAD)
    assert message.texts == ["You said: hi"]
    assert bot.slack.count("chat.postMessage") == 1
    assert not any(bot.slack.count(m) for m in STREAM_METHODS)


async def test_a_stream_that_expires_mid_answer_continues_by_edits_and_loses_nothing(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    # Slack closes a stream after a long pause (a tool call, a slow model): here
    # after 0.3 s idle, and the model pauses 0.8 s between its two halves.
    bot.slack.stream_idle_seconds = 0.3
    first_half, second_half = _long("early", 20), " " + _long("late", 20)
    fake_model.script(
        Reply(first_half + second_half, chunk_size=len(first_half), delay_between_chunks=0.8)
    )
    await bot.event(_question(bot, "think hard"))
    await bot.settle()

    (message,) = bot.slack.thread(DM, THREAD)
    assert message.text == first_half + second_half, "nothing lost"
    assert message.texts[0] == first_half[: len(message.texts[0])]
    assert bot.slack.count("chat.startStream") == 1
    updates = bot.slack.calls_to("chat.update")
    assert updates, "the expired stream is continued by chat.update"
    assert updates[-1].args["text"] == first_half + second_half
    assert bot.slack.count("chat.postMessage") == 0, "no second message"


async def test_a_workspace_without_streaming_gets_edits_and_is_not_asked_again(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    bot.slack.streaming_supported = False
    answers = [_long("one"), _long("two")]
    fake_model.script(*(Reply(a, chunk_size=8, delay_between_chunks=0.02) for a in answers))
    await bot.event(_question(bot, "first"))
    await bot.settle()
    await bot.event(_question(bot, "second"))
    await bot.settle()

    messages = bot.slack.thread(DM, THREAD)
    assert [m.text for m in messages] == answers
    assert bot.slack.count("chat.startStream") == 1, "refused once, then not asked again"
    assert bot.slack.count("chat.postMessage") == 2
    assert bot.slack.count("chat.update") >= 2

"""Feedback buttons under every final answer in Slack; a click is kept with its turn,
acknowledged only to the person, and summed up by `botservice feedback`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from botservice.adapters.slack.sink import FEEDBACK_ACTION
from tests.fakes.model_server import FakeModelServer, Reply
from tests.slack.harness import CHANNEL, SlackHarness, payload
from tests.test_console import botservice


def _buttons(blocks: list[dict[str, object]] | None) -> dict[str, object]:
    assert blocks, "the answer shows blocks"
    last = blocks[-1]
    assert last["type"] == "context_actions"
    (element,) = last["elements"]  # type: ignore[misc]
    assert element["type"] == "feedback_buttons" and element["action_id"] == FEEDBACK_ACTION
    return element  # type: ignore[no-any-return]


async def test_every_final_answer_carries_feedback_buttons_and_its_text(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    mention = bot.mention("rate me")
    await bot.event(mention)
    await bot.settle()

    (answer,) = bot.slack.thread(CHANNEL, mention["event"]["ts"])
    assert answer.texts == ["You said: rate me"], "still one post, nothing else"
    assert answer.blocks is not None
    assert answer.blocks[0] == {
        "type": "section",
        "text": {"type": "mrkdwn", "text": "You said: rate me"},
    }
    buttons = _buttons(answer.blocks)
    assert buttons["positive_button"]["value"] == "up:1"  # type: ignore[index]
    assert buttons["negative_button"]["value"] == "down:1"  # type: ignore[index]


async def test_a_streamed_answer_ends_with_the_buttons(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    text = " ".join(f"word{i}" for i in range(40))
    fake_model.script(Reply(text, chunk_size=8, delay_between_chunks=0.02))
    await bot.event(payload("message_im_assistant_thread"))
    await bot.settle()
    (answer,) = bot.slack.thread("D0BOBDM", "1767000400.000700")
    assert bot.slack.count("chat.stopStream") == 1
    assert answer.text == text
    _buttons(answer.blocks)


async def test_a_click_is_kept_acknowledged_privately_and_summed_up(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    fake_model.model = "gpt-4o-mini"
    first, second = bot.mention("one"), bot.mention("two")
    for mention in (first, second):
        await bot.event(mention)
    await bot.settle()
    (one,) = bot.slack.thread(CHANNEL, first["event"]["ts"])
    (two,) = bot.slack.thread(CHANNEL, second["event"]["ts"])

    assert await bot.click(value="up:1", message_ts=one.ts, thread_ts=first["event"]["ts"]) == 200
    assert await bot.click(value="down:2", message_ts=two.ts, user="UBOB") == 200
    # Alice changes her mind about the first answer: her later click replaces the first.
    assert await bot.click(value="down:1", message_ts=one.ts) == 200
    await bot.slack.wait_for(lambda: len(bot.slack.ephemeral) == 3, what="three thanks")

    thanks = bot.slack.ephemeral
    assert [t["user"] for t in thanks] == ["UALICE", "UBOB", "UALICE"]
    assert "👍" in thanks[0]["text"] and "👎" in thanks[1]["text"]
    assert thanks[0]["thread_ts"] == first["event"]["ts"]

    summary = await bot.store.feedback_summary(datetime.now(UTC) - timedelta(days=7))
    (row,) = summary.counts
    assert (row.platform, row.channel, row.up, row.down) == ("slack", CHANNEL, 0, 2)
    assert [(v.turn_id, v.user_id, v.answer_ref) for v in summary.latest_down] == [
        (1, "UALICE", one.ts),
        (2, "UBOB", two.ts),
    ]


async def test_a_forged_or_foreign_click_is_not_kept(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    mention = bot.mention("mine")
    await bot.event(mention)
    await bot.settle()
    (answer,) = bot.slack.thread(CHANNEL, mention["event"]["ts"])

    # A turn of another channel, a turn that does not exist, and junk values.
    assert await bot.click(value="up:1", message_ts=answer.ts, channel="C0OTHER") == 200
    assert await bot.click(value="up:999", message_ts=answer.ts) == 200
    assert await bot.click(value="maybe:1", message_ts=answer.ts) == 200
    assert await bot.click(value="up:1;DROP", message_ts=answer.ts) == 200
    await bot.slack.wait_for(lambda: len(bot.slack.ephemeral) == 2, what="two refusals")

    summary = await bot.store.feedback_summary(datetime.now(UTC) - timedelta(days=7))
    assert summary.counts == [] and summary.latest_down == []
    assert all("no longer have that answer" in e["text"] for e in bot.slack.ephemeral)


async def test_the_feedback_command_prints_counts_and_the_latest_thumbs_down(
    bot: SlackHarness, fake_model: FakeModelServer, sqlite_database_url: str, tmp_path: Path
) -> None:
    mention = bot.mention("judge this")
    await bot.event(mention)
    await bot.settle()
    (answer,) = bot.slack.thread(CHANNEL, mention["event"]["ts"])
    await bot.click(value="down:1", message_ts=answer.ts)
    await bot.slack.wait_for(lambda: len(bot.slack.ephemeral) == 1, what="the thanks")

    env = {"OPENAI_BASE_URL": fake_model.base_url, "DATABASE_URL": sqlite_database_url}
    run = await botservice("feedback", "--since", "7d", env=env, cwd=tmp_path)
    assert run.status == 0, run.stderr
    lines = run.stdout.splitlines()
    (row,) = [line for line in lines if line.startswith("slack ")]
    assert row.split() == ["slack", CHANNEL, bot.settings.model.name, "0", "1"]
    assert any(line.split()[:5] == ["turn", "1", "slack", CHANNEL, answer.ts] for line in lines)

    refused = await botservice("feedback", "--since", "a week", env=env, cwd=tmp_path)
    assert refused.status == 2
    assert "is not a period like 7d" in refused.stderr


async def test_forgetting_a_person_forgets_their_clicks(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    mention = bot.mention("forget me")
    await bot.event(mention)
    await bot.settle()
    (answer,) = bot.slack.thread(CHANNEL, mention["event"]["ts"])
    await bot.click(value="down:1", message_ts=answer.ts, user="UBOB")
    await bot.click(value="up:1", message_ts=answer.ts, user="UALICE")
    await bot.slack.wait_for(lambda: len(bot.slack.ephemeral) == 2, what="two thanks")

    await bot.store.forget_user("slack", "UBOB")
    summary = await bot.store.feedback_summary(datetime.now(UTC) - timedelta(days=7))
    assert [(c.up, c.down) for c in summary.counts] == [(1, 0)]
    assert summary.latest_down == []

"""Direct messages, Slack's assistant threads, and files."""

from __future__ import annotations

from botservice.adapters.slack.sink import LOADING_MESSAGES
from tests.fakes.model_server import FakeModelServer
from tests.slack.harness import CHANNEL, SlackHarness, payload, user_texts


async def test_every_direct_message_is_answered_and_remembered(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    await bot.event(bot.direct("my name is Bob"))
    await bot.settle()
    await bot.event(bot.direct("what is my name?"))
    await bot.settle()

    top = bot.slack.thread("D0BOBDM", None)
    assert [m.text for m in top] == ["You said: my name is Bob", "You said: what is my name?"]
    assert any("my name is Bob" in t for t in user_texts(fake_model.chat_requests[-1].body))


async def test_a_dm_thread_is_its_own_conversation(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    await bot.event(bot.direct("top-level secret: apples"))
    await bot.settle()
    root = bot.slack.thread("D0BOBDM", None)[0].ts
    await bot.event(bot.direct("in a thread now", thread_ts=root))
    await bot.settle()

    shown = user_texts(fake_model.chat_requests[-1].body)
    assert not any("apples" in text for text in shown)
    (reply,) = bot.slack.thread("D0BOBDM", root)
    assert reply.text == "You said: in a thread now"


async def test_dm_markup_reaches_the_model_as_plain_text(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    await bot.event(payload("message_im"))
    await bot.settle()
    assert fake_model.chat_requests[-1].last_user_text == (
        "hi there, can you help me & my team with this doc (https://example.com/doc)?"
    )


async def test_assistant_thread_gets_prompts_status_title_and_answer(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    assert (await bot.event(payload("assistant_thread_started")))[0] == 200
    await bot.slack.wait_for(lambda: bot.slack.count("assistant.threads.setSuggestedPrompts") == 1)
    prompts = bot.slack.calls_to("assistant.threads.setSuggestedPrompts")[0].args
    assert prompts["channel_id"] == "D0BOBDM" and prompts["thread_ts"] == "1767000400.000700"
    assert len(prompts["prompts"]) >= 1

    await bot.event(payload("message_im_assistant_thread"))
    await bot.settle()
    await bot.slack.wait_for(lambda: bot.slack.count("assistant.threads.setTitle") == 1)

    status = bot.slack.calls_to("assistant.threads.setStatus")
    assert [c.args["status"] for c in status] == ["is thinking…"]
    # Slack rotates these under the status until the first words arrive.
    assert status[0].args["loading_messages"] == list(LOADING_MESSAGES)
    title = bot.slack.calls_to("assistant.threads.setTitle")[0].args["title"]
    assert title.startswith("How do I rotate a PostgreSQL password")
    (answer,) = bot.slack.thread("D0BOBDM", "1767000400.000700")
    assert answer.text.startswith("You said: How do I rotate")
    assert fake_model.chat_requests[-1].last_user_text.startswith("How do I rotate")


async def test_images_go_to_the_model_and_other_files_are_named(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    png = b"\x89PNG\r\n\x1a\n"
    data = payload("app_mention_with_image")
    image, pdf = data["event"]["files"]
    image["url_private_download"] = bot.slack.add_file("cat.png", "image/png", png)
    pdf["url_private_download"] = bot.slack.add_file("report.pdf", "application/pdf", b"%PDF")
    await bot.event(data)
    await bot.settle()

    assert bot.slack.file_downloads == [("cat.png", "Bearer xoxb-test-token")], "only images"
    last = fake_model.chat_requests[-1].body["messages"][-1]
    assert isinstance(last["content"], list)
    kinds = [part["type"] for part in last["content"]]
    assert "image_url" in kinds
    text = " ".join(p.get("text", "") for p in last["content"] if p["type"] == "text")
    assert "report.pdf" in text
    assert "what is in this picture?" in text
    assert bot.slack.thread(CHANNEL, data["event"]["ts"])

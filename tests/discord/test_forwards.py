"""Forwarded messages: Discord sends them empty, with the forwarded content in snapshots."""

from __future__ import annotations

import asyncio

from tests.discord.conftest import Guild


async def test_a_forward_in_a_direct_message_is_read_from_its_snapshot(guild: Guild) -> None:
    server = guild.server
    original = server._message(
        channel_id=server.second_channel_id,
        author=server.alice,
        content="The meeting moved to 3pm.\nBring the slides.",
    )
    server.messages[original["id"]] = original

    forward = await server.send_forward(original, dm=True)
    answers = await guild.answered_in(forward["channel_id"])

    expected = "Forwarded message:\n> The meeting moved to 3pm.\n> Bring the slides."
    assert guild.model.chat_requests[-1].last_user_text == expected
    assert answers[0]["content"] == f"You said: {expected}"
    # The snapshot is enough: the original is never fetched.
    assert not server.calls_to("GET", "/channels/")


async def test_a_forwarded_image_goes_to_the_model(guild: Guild) -> None:
    server = guild.server
    image = {
        "id": server.new_id(),
        "filename": "chart.png",
        "size": 2048,
        "url": "https://cdn.discordapp.com/attachments/1/2/chart.png",
        "proxy_url": "https://media.discordapp.net/attachments/1/2/chart.png",
        "content_type": "image/png",
        "width": 10,
        "height": 10,
    }
    original = server._message(
        channel_id=server.second_channel_id,
        author=server.alice,
        content="Sales this quarter",
        attachments=[image],
    )
    server.messages[original["id"]] = original

    forward = await server.send_forward(original, dm=True)
    await guild.answered_in(forward["channel_id"])

    content = guild.prompt()[-1]["content"]
    assert isinstance(content, list)
    texts = [part["text"] for part in content if part.get("type") == "text"]
    assert any("Forwarded message:\n> Sales this quarter" in text for text in texts)
    urls = [part["image_url"]["url"] for part in content if part.get("type") == "image_url"]
    assert urls == [image["url"]]


async def test_a_forward_into_a_channel_is_not_taken_for_a_reply(guild: Guild) -> None:
    """A forward of the bot's own answer carries a reference to it, yet is no reply: in a
    channel, without a mention, it is not answered (and nothing is fetched)."""
    server = guild.server
    asked = await server.send_message("Name a colour.", mention_bot=True)
    answer = await guild.reply_to(asked)

    await server.send_forward(answer, channel_id=server.second_channel_id)
    await asyncio.sleep(0.2)
    await guild.core.drain()

    assert len(guild.model.chat_requests) == 1
    assert not server.bot_messages(server.second_channel_id)
    assert not server.calls_to("GET", "/channels/")

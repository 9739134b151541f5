"""Mentions, reply chains, bot threads and DMs, through the real discord.py client."""

from __future__ import annotations

import asyncio

from botservice.adapters.discord import create_adapter
from botservice.core.conversation import ConversationCore
from botservice.core.settings import Settings
from botservice.model.client import OpenAIChatClient
from botservice.storage.repository import SqlStore
from tests.discord.conftest import Guild, discord_settings


async def test_a_mention_is_answered_as_a_reply(guild: Guild) -> None:
    server = guild.server
    asked = await server.send_message("What is the capital of France?", mention_bot=True)

    reply = await guild.reply_to(asked)

    assert reply["content"] == "You said: What is the capital of France?"
    assert guild.model.chat_requests[-1].last_user_text == "What is the capital of France?"
    # History comes from the store: nothing was read back from the channel.
    assert not server.calls_to("GET", "/channels/")


async def test_replying_to_the_answer_continues_the_conversation(guild: Guild) -> None:
    server = guild.server
    first = await server.send_message("My name is Ada.", mention_bot=True)
    answer = await guild.reply_to(first)

    follow_up = await server.send_message("What is my name?", reply_to=answer)
    await guild.reply_to(follow_up)

    texts = [m["content"] for m in guild.prompt()]
    assert "My name is Ada." in texts
    assert "You said: My name is Ada." in texts
    assert texts[-1] == "What is my name?"
    assert not server.calls_to("GET", "/channels/")


async def test_a_cold_reply_chain_quotes_the_answer_without_reading_the_channel(
    guild: Guild,
) -> None:
    """An answer posted before this process started: its text arrives with the reply."""
    server = guild.server
    question = await server.send_message("Which river runs through Paris?")
    old_answer = server._message(
        channel_id=server.channel_id, author=server.bot, content="The Seine.", reference=question
    )
    server.messages[old_answer["id"]] = old_answer

    follow_up = await server.send_message("How long is it?", reply_to=old_answer)
    await guild.reply_to(follow_up)

    user_turn = guild.prompt()[-1]["content"]
    assert "The Seine." in str(user_turn)
    assert "How long is it?" in str(user_turn)
    assert not server.calls_to("GET", "/channels/")


async def test_own_messages_and_other_bots_are_ignored(guild: Guild) -> None:
    server = guild.server
    await server.send_message("hello bot", author=server.other_bot, mention_bot=True)
    asked = await server.send_message("hello", mention_bot=True)
    await guild.reply_to(asked)
    await asyncio.sleep(0.1)  # the bot's own echoed messages have arrived by now
    await guild.core.drain()

    assert [r.last_user_text for r in guild.model.chat_requests] == ["hello"]


async def test_a_plain_channel_message_is_not_answered(guild: Guild) -> None:
    await guild.server.send_message("just chatting")
    await asyncio.sleep(0.2)
    await guild.core.drain()
    assert guild.model.chat_requests == []


async def test_a_direct_message_is_answered(guild: Guild) -> None:
    server = guild.server
    asked = await server.send_message("hi in private", dm=True)
    answers = await guild.answered_in(asked["channel_id"])
    assert answers[0]["content"] == "You said: hi in private"


async def test_the_same_message_create_twice_is_answered_once(guild: Guild) -> None:
    server = guild.server
    asked = await server.send_message("Only once, please.", mention_bot=True)
    await server.redispatch(asked)  # e.g. replayed after a gateway resume
    await guild.reply_to(asked)
    await server.redispatch(asked)
    await asyncio.sleep(0.2)
    await guild.core.drain()

    assert len(guild.model.chat_requests) == 1
    replies = [
        m
        for m in server.bot_messages(server.channel_id)
        if (m.get("message_reference") or {}).get("message_id") == asked["id"]
    ]
    assert len(replies) == 1


async def test_an_image_goes_to_the_model_as_an_image_part(
    guild: Guild,
) -> None:
    server = guild.server
    image = {
        "id": server.new_id(),
        "filename": "cat.png",
        "size": 1234,
        "url": "https://cdn.discordapp.com/attachments/1/2/cat.png",
        "proxy_url": "https://media.discordapp.net/attachments/1/2/cat.png",
        "content_type": "image/png",
        "width": 10,
        "height": 10,
    }
    asked = await server.send_message("What is this?", mention_bot=True, attachments=[image])
    await guild.reply_to(asked)

    content = guild.prompt()[-1]["content"]
    parts = content if isinstance(content, list) else []
    assert {"type": "image_url", "image_url": {"url": image["url"]}} in parts or any(
        part.get("type") == "image_url" and part["image_url"]["url"] == image["url"]
        for part in parts
    )


async def test_a_reply_deep_in_a_chain_from_before_a_restart_continues_from_the_store(
    guild: Guild, settings: Settings, sqlite_store: SqlStore
) -> None:
    server = guild.server
    first = await server.send_message("My name is Ada.", mention_bot=True)
    answer = await guild.reply_to(first)
    second = await server.send_message("I live in Paris.", reply_to=answer)
    second_answer = await guild.reply_to(second)
    await guild.adapter.stop()

    # A new process: nothing in memory, the same database.
    configured = discord_settings(server, settings)
    model = OpenAIChatClient(configured.model)
    core = ConversationCore(settings=configured, store=sqlite_store, model=model)
    restarted = create_adapter(configured, core, sqlite_store, guild_ready_timeout=0.05)
    await restarted.start()
    try:
        follow_up = await server.send_message("Where do I live?", reply_to=second_answer)
        await Guild(server, guild.model, core, restarted).reply_to(follow_up)
    finally:
        await core.drain()
        await restarted.stop()
        await model.aclose()

    texts = [m["content"] for m in guild.prompt()[1:]]
    assert texts == [
        "My name is Ada.",
        "You said: My name is Ada.",
        "I live in Paris.",
        "You said: I live in Paris.",
        "Where do I live?",
    ]
    assert not server.calls_to("GET", "/channels/")

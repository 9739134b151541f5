"""After a crash: the placeholder Discord created for a turn is found and edited, never left
stuck under a second one."""

from __future__ import annotations

import asyncio
from pathlib import Path

from botservice.adapters.discord.sink import PLACEHOLDER
from tests.bot_process import BotProcess
from tests.discord.conftest import Guild
from tests.fakes.discord_server import FakeDiscordServer
from tests.fakes.model_server import FakeModelServer


async def test_a_crash_while_the_placeholder_is_posted_leaves_no_stuck_placeholder(
    discord_server: FakeDiscordServer, fake_model: FakeModelServer, tmp_path: Path
) -> None:
    server = discord_server
    env = {
        "OPENAI_BASE_URL": fake_model.base_url,
        "OPENAI_API_KEY": "sk-test-secret-key",
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        "DISCORD_TOKEN": server.token,
        "DISCORD_API_URL": server.api_url,
        "DISCORD_GATEWAY_URL": server.gateway_url,
    }
    # Discord creates the placeholder but its answer (with the id) never reaches the bot:
    # the process is killed in between, before the id could be stored with the turn.
    server.hold_posts = asyncio.Event()
    first = await BotProcess.start(env, cwd=tmp_path, name="first")
    try:
        await first.wait_healthy()
        await server.wait_ready(30)
        asked = await server.send_message("survive the crash", mention_bot=True)
        await server.wait_until(lambda: server.bot_messages(server.channel_id), 20, "a post")
    finally:
        await first.kill()
    server.hold_posts.set()
    server.hold_posts = None
    (stuck,) = server.bot_messages(server.channel_id)
    assert stuck["content"] == PLACEHOLDER

    second = await BotProcess.start(env, cwd=tmp_path, name="second")
    try:
        await server.wait_until(
            lambda: stuck["content"] == "You said: survive the crash",
            30,
            "the placeholder edited",
        )
    finally:
        await second.stop()
    (answer,) = server.bot_messages(server.channel_id)
    assert answer["id"] == stuck["id"], "one bot message: the placeholder, edited"
    assert answer["message_reference"]["message_id"] == asked["id"]
    assert len(fake_model.chat_requests) == 1


async def test_posting_a_turns_placeholder_twice_shows_one_message(guild: Guild) -> None:
    # Where there is no reply to match (threads, DMs), the nonce alone keeps a second
    # attempt at the same turn from posting a second placeholder.
    server = guild.server
    channel = int(server.second_channel_id)
    first = guild.adapter.messages.sink(channel, reply_to=None, thread="")
    second = guild.adapter.messages.sink(channel, reply_to=None, thread="")

    ref = await first.begin(None, turn_tag="41", resumed=False)
    again = await second.begin(None, turn_tag="41", resumed=True)
    other = await second.begin(None, turn_tag="42", resumed=False)

    assert ref == again != other
    assert len(server.bot_messages(server.second_channel_id)) == 2

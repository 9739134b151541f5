"""`/ask` as a user-installed command: in servers without the bot and in group DMs, answered
through the interaction alone (no guild member in the payload, the bot cannot post)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import select

from botservice.adapters.discord import sync_commands
from botservice.core.events import ConversationKey
from botservice.core.ports import PendingTurn
from botservice.core.settings import Settings
from botservice.storage.repository import SqlStore
from botservice.storage.tables import TURNS
from tests.discord.conftest import Guild, discord_settings, option
from tests.fakes.discord_server import FakeDiscordServer


def _channel_posts(server: FakeDiscordServer) -> list[str]:
    return [c.path for c in server.calls_to("POST", "/channels/") if c.path.endswith("/messages")]


async def test_ask_in_a_server_without_the_bot_is_answered_through_the_interaction(
    guild: Guild,
) -> None:
    server = guild.server
    command = await server.send_command(
        "ask", [option("prompt", "What is a haiku?")], user_install="foreign_guild"
    )
    original = await guild.original_response(command)

    assert original["content"] == "You said: What is a haiku?"
    assert guild.model.chat_requests[-1].last_user_text == "What is a haiku?"
    # Everything went through the interaction's webhook: the bot cannot post there.
    assert _channel_posts(server) == []
    assert server.calls_to("POST", f"/interactions/{command['id']}/")
    # And it was asked by the user, not a member: the bot answers with the feedback
    # buttons as anywhere else.
    assert len(server.buttons(original)) == 2


async def test_ask_in_a_group_dm_is_answered_and_a_long_answer_continues_in_follow_ups(
    guild: Guild,
) -> None:
    server = guild.server
    prompt = "word " * 500  # the echoed answer passes Discord's 2,000 characters
    command = await server.send_command(
        "ask", [option("prompt", prompt.strip())], user_install="group_dm"
    )
    original = await guild.original_response(command)

    def followed() -> list[dict[str, object]] | None:
        found = server.followups(command)
        return found if found else None

    followups = await server.wait_until(followed, what="a follow-up")
    await guild.core.drain()
    pieces = [original["content"], *(str(m["content"]) for m in server.followups(command))]
    shown = " ".join(pieces)
    assert len(original["content"]) <= 2000
    assert shown.replace("\n", " ").split() == ("You said: " + prompt.strip()).split()
    assert followups[0]["channel_id"] == server.group_dm_id
    assert _channel_posts(server) == []


async def test_ask_in_the_bots_own_dm_still_works(guild: Guild) -> None:
    command = await guild.server.send_command("ask", [option("prompt", "hi")], dm=True)
    original = await guild.original_response(command)
    assert original["content"] == "You said: hi"


async def test_sync_commands_registers_ask_for_server_and_user_installs(
    discord_server: FakeDiscordServer, settings: Settings
) -> None:
    await sync_commands(discord_settings(discord_server, settings), None)

    [call] = discord_server.calls_to("PUT", "/commands")
    sent = {command["name"]: command for command in call.json}
    assert sent["ask"]["integration_types"] == [0, 1]
    assert sent["ask"]["contexts"] == [0, 1, 2]
    # The rest act on a server's channel settings: server installs only.
    assert sent["chat"].get("integration_types") in (None, [0])
    assert sent["instructions"].get("integration_types") in (None, [0])


async def test_an_answer_where_the_bot_cannot_post_is_not_resumed_to_the_channel(
    guild: Guild, sqlite_store: SqlStore
) -> None:
    server = guild.server
    command = await server.send_command(
        "ask", [option("prompt", "hello there")], user_install="foreign_guild"
    )
    await guild.original_response(command)
    async with sqlite_store.engine.connect() as connection:
        rows = await connection.execute(select(TURNS.c.reply_target))
        [target] = [t for t in (json.loads(row[0]) for row in rows) if t["kind"] == "interaction"]
    assert target["channel_id"] == ""

    expired = PendingTurn(
        turn_id=1,
        conversation_id=1,
        user_message_id=1,
        platform="discord",
        conversation=ConversationKey("discord", server.foreign_guild_id, command["channel_id"], ""),
        reply_target={**target, "expires_at": 0},
        reply_ref=None,
        created_at=datetime.now(UTC),
    )
    # Past the token's 15 minutes nothing can reach that channel: no sink, no stray post.
    assert guild.adapter.sink_for(expired) is None

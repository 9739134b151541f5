"""Start-up, failure at start-up, sharding, command sync and resuming pending turns."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from botservice.adapters.discord import create_adapter, sync_commands
from botservice.app.expiry import forget_reply_secrets
from botservice.core.conversation import ConversationCore
from botservice.core.errors import ConfigError
from botservice.core.events import ConversationKey
from botservice.core.ports import PendingTurn
from botservice.core.settings import Settings, StorageSettings
from botservice.model.client import OpenAIChatClient
from botservice.storage.repository import SqlStore
from botservice.storage.tables import TURNS
from tests.discord.conftest import Guild, discord_settings
from tests.fakes.discord_server import FakeDiscordServer


async def _start(server: FakeDiscordServer, settings: Settings, store: SqlStore, **discord: object):
    configured = discord_settings(server, settings, **discord)
    model = OpenAIChatClient(configured.model)
    core = ConversationCore(settings=configured, store=store, model=model)
    adapter = create_adapter(configured, core, store, guild_ready_timeout=0.05)
    return adapter, model


async def test_a_bad_token_is_one_clear_sentence(
    discord_server: FakeDiscordServer, settings: Settings, sqlite_store: SqlStore
) -> None:
    adapter, model = await _start(discord_server, settings, sqlite_store)
    adapter.settings = discord_settings(discord_server, settings, token="wrong")
    with pytest.raises(ConfigError) as raised:
        await adapter.start()
    await model.aclose()
    assert raised.value.setting == "DISCORD_TOKEN"
    assert "rejected the bot token" in raised.value.problem


async def test_a_missing_message_content_intent_is_one_clear_sentence(
    discord_server: FakeDiscordServer, settings: Settings, sqlite_store: SqlStore
) -> None:
    discord_server.message_content_allowed = False
    adapter, model = await _start(discord_server, settings, sqlite_store)
    with pytest.raises(ConfigError) as raised:
        await adapter.start()
    await model.aclose()
    assert raised.value.setting == "DISCORD_TOKEN"
    assert "Message Content intent" in raised.value.problem


async def test_sharding_comes_from_settings(
    discord_server: FakeDiscordServer, settings: Settings, sqlite_store: SqlStore
) -> None:
    shard = (int(discord_server.guild_id) >> 22) % 2
    adapter, model = await _start(
        discord_server, settings, sqlite_store, shard_count=2, shard_ids=(shard,)
    )
    await adapter.start()
    try:
        assert [i["shard"] for i in discord_server.identifies] == [[shard, 2]]
        asked = await discord_server.send_message("sharded hello", mention_bot=True)
        await discord_server.wait_until(
            lambda: any(
                m["content"] == "You said: sharded hello"
                for m in discord_server.bot_messages(asked["channel_id"])
            ),
            what="the answer",
        )
    finally:
        await adapter.stop()
        await model.aclose()


async def test_shard_ids_outside_the_count_are_refused(
    discord_server: FakeDiscordServer, settings: Settings, sqlite_store: SqlStore
) -> None:
    adapter, model = await _start(
        discord_server, settings, sqlite_store, shard_count=2, shard_ids=(2,)
    )
    with pytest.raises(ConfigError) as raised:
        await adapter.start()
    await model.aclose()
    assert raised.value.setting == "DISCORD_SHARD_IDS"


EXPECTED_COMMANDS = {
    "ask",
    "chat",
    "instructions",
    "model",
    "speech",
    "tools",
    "retention",
    "reset",
    "forget-me",
    "usage",
    "help",
    "voice",
}


async def test_sync_commands_sends_the_command_tree_to_a_guild(
    discord_server: FakeDiscordServer, settings: Settings
) -> None:
    configured = discord_settings(discord_server, settings)
    names = await sync_commands(configured, int(discord_server.guild_id))

    assert set(names) == EXPECTED_COMMANDS
    [call] = discord_server.calls_to("PUT", "/commands")
    assert call.path == (
        f"/applications/{discord_server.application_id}/guilds/{discord_server.guild_id}/commands"
    )
    sent = {command["name"]: command for command in call.json}
    assert set(sent) == EXPECTED_COMMANDS
    ask_options = {o["name"]: o for o in sent["ask"]["options"]}
    assert ask_options["prompt"]["required"] and not ask_options["private"].get("required")
    subcommands = {o["name"]: o for o in sent["instructions"]["options"]}
    assert set(subcommands) == {"show", "set", "clear"}
    assert [o["name"] for o in subcommands["set"]["options"]] == ["text"]
    assert {o["name"] for o in sent["model"]["options"]} == {"show", "set"}
    speech = {o["name"]: o for o in sent["speech"]["options"]}
    assert set(speech) == {"show", "set", "clear"}
    assert [(o["name"], o.get("required", False)) for o in speech["set"]["options"]] == [
        ("voice", False),
        ("model", False),
    ]
    assert {o["name"] for o in sent["voice"]["options"]} == {
        "join",
        "leave",
        "stop",
        "ask",
        "listen",
        "ignore-me",
        "mode",
    }
    [mode] = [o for o in sent["voice"]["options"] if o["name"] == "mode"]
    [value] = mode["options"]
    assert not value.get("required")
    assert [c["value"] for c in value["choices"]] == ["pipeline", "realtime", "default"]
    assert {o["name"] for o in sent["tools"]["options"]} == {"show", "enable", "disable"}
    # Nothing but the sync: no gateway connection, no other writes.
    assert discord_server.identifies == []


async def test_sync_commands_globally(
    discord_server: FakeDiscordServer, settings: Settings
) -> None:
    names = await sync_commands(discord_settings(discord_server, settings), None)
    assert set(names) == EXPECTED_COMMANDS
    [call] = discord_server.calls_to("PUT", "/commands")
    assert call.path == f"/applications/{discord_server.application_id}/commands"


async def test_starting_does_not_sync_commands(guild: Guild) -> None:
    assert guild.server.calls_to("PUT", "/commands") == []


async def test_a_pending_turn_resumes_by_editing_its_placeholder(guild: Guild) -> None:
    server = guild.server
    asked = await server.send_message("Are you there?", mention_bot=True)
    placeholder = server._message(
        channel_id=server.channel_id,
        author=server.bot,
        content="\N{HOURGLASS WITH FLOWING SAND} …",
        reference=asked,
    )
    server.messages[placeholder["id"]] = placeholder
    turn = PendingTurn(
        turn_id=1,
        conversation_id=1,
        user_message_id=1,
        platform="discord",
        conversation=ConversationKey("discord", server.guild_id, server.channel_id, asked["id"]),
        reply_target={"kind": "message", "channel_id": server.channel_id, "reply_to": asked["id"]},
        reply_ref=placeholder["id"],
        created_at=datetime.now(UTC),
    )
    sink = guild.adapter.sink_for(turn)
    assert sink is not None
    before = len(server.calls_to("POST", "/messages"))

    assert await sink.begin(placeholder["id"], turn_tag="1", resumed=True) == placeholder["id"]
    await sink.finish("Yes, here.")

    assert placeholder["content"] == "Yes, here."
    assert len(server.calls_to("POST", "/messages")) == before  # no second placeholder


async def test_a_pending_ask_resumes_through_its_token_until_the_token_expires(
    guild: Guild, sqlite_store: SqlStore
) -> None:
    server = guild.server
    interaction = await server.send_command("ask", [{"name": "prompt", "type": 3, "value": "hi"}])
    original = await guild.original_response(interaction)
    [stored] = [t for t in await _reply_targets(sqlite_store) if t.get("kind") == "interaction"]

    def pending(reply_target: dict[str, object]) -> PendingTurn:
        return PendingTurn(
            turn_id=1,
            conversation_id=1,
            user_message_id=1,
            platform="discord",
            conversation=ConversationKey("discord", server.guild_id, server.channel_id, ""),
            reply_target=reply_target,
            reply_ref=None,
            created_at=datetime.now(UTC),
        )

    resumed = guild.adapter.sink_for(pending(stored))
    assert resumed is not None
    await resumed.begin(None, turn_tag="1", resumed=True)
    await resumed.finish("Answered after a restart.")
    assert original["content"] == "Answered after a restart."

    await forget_reply_secrets(
        sqlite_store, StorageSettings(), now=datetime.now(UTC) + timedelta(minutes=16)
    )
    [expired] = [t for t in await _reply_targets(sqlite_store) if t.get("kind") == "interaction"]
    assert "secrets" not in expired
    # Without its token a public answer still reaches the channel, as a message of its own.
    fallback = guild.adapter.sink_for(pending({**expired, "expires_at": 0}))
    assert fallback is not None
    before = len(server.calls_to("POST", f"/channels/{server.channel_id}/messages"))
    await fallback.begin(None, turn_tag="1", resumed=True)
    await fallback.finish("Answered later.")
    assert len(server.calls_to("POST", f"/channels/{server.channel_id}/messages")) > before


async def _reply_targets(store: SqlStore) -> list[dict[str, object]]:
    async with store.engine.connect() as connection:
        rows = await connection.execute(select(TURNS.c.reply_target))
        return [json.loads(row[0]) for row in rows]


async def test_the_adapter_serves_once_every_guild_arrived_without_waiting_out_the_quiet_period(
    discord_server: FakeDiscordServer, settings: Settings, sqlite_store: SqlStore
) -> None:
    """discord.py calls a client ready only after no GUILD_CREATE came for
    `guild_ready_timeout`; READY lists every guild, so once each arrived there is
    nothing left to wait for (the shipped default of 2 s was most of a start-up)."""
    configured = discord_settings(discord_server, settings)
    model = OpenAIChatClient(configured.model)
    core = ConversationCore(settings=configured, store=sqlite_store, model=model)
    adapter = create_adapter(configured, core, sqlite_store, guild_ready_timeout=600)
    try:
        await asyncio.wait_for(adapter.start(), timeout=60)
        assert adapter.is_connected()
        assert [guild.id for guild in adapter.client.guilds] == [int(discord_server.guild_id)]
        assert not adapter.client.guilds[0].unavailable
        # The configured quiet period is back for the next session's READY.
        assert adapter.client._connection.guild_ready_timeout == 600
    finally:
        await adapter.stop()
        await model.aclose()

"""The gateway connection is supervised: a malformed frame is logged and skipped, a dropped
connection comes back, and `is_connected` says which is the case (for `/readyz`)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import aiohttp
import pytest

from botservice.adapters.discord import create_adapter
from botservice.core.conversation import ConversationCore
from botservice.core.settings import Settings
from botservice.model.client import OpenAIChatClient
from botservice.storage.repository import SqlStore
from tests.bot_process import BotProcess
from tests.discord.conftest import Guild, discord_settings
from tests.fakes.discord_server import FakeDiscordServer
from tests.fakes.model_server import FakeModelServer

SECRET = "do-not-log-this-text"


def _malformed(server: FakeDiscordServer, kind: str) -> str:
    if kind == "not-json":
        return f"{{this is not json {SECRET}"
    if kind == "no-author":
        message = server._message(channel_id=server.channel_id, author=server.bob, content=SECRET)
        del message["author"]
        return json.dumps({"op": 0, "t": "MESSAGE_CREATE", "s": None, "d": message})
    assert kind == "empty-list"
    return json.dumps({"op": 0, "t": "MESSAGE_CREATE", "s": None, "d": []})


KINDS = ["not-json", "no-author", "empty-list"]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_malformed_frame_is_logged_and_the_next_mention_is_answered(
    guild: Guild, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = guild.server
    caplog.set_level(logging.INFO)

    await server.send_raw(_malformed(server, kind))
    asked = await server.send_message("still there?", mention_bot=True)

    reply = await guild.reply_to(asked)
    assert reply["content"] == "You said: still there?"
    assert guild.adapter.is_connected()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("gateway" in r.getMessage().lower() for r in warnings), warnings
    assert SECRET not in caplog.text


@pytest.mark.parametrize("when", ["before-hello", "after-ready", "instead-of-ready"])
@pytest.mark.parametrize("kind", KINDS)
async def test_a_malformed_frame_during_start_up_is_a_warning_not_an_exit(
    discord_server: FakeDiscordServer,
    settings: Settings,
    sqlite_store: SqlStore,
    kind: str,
    when: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    frame = _malformed(discord_server, kind)
    if when == "before-hello":
        discord_server.before_hello_frames = [frame]
    elif when == "after-ready":
        discord_server.startup_frames = [frame]
    else:
        # A READY that does not parse leaves no session to serve: a new connection
        # identifies again (discord.py waits 5 s before a repeated IDENTIFY).
        ready = frame.replace('"MESSAGE_CREATE"', '"READY"')
        discord_server.ready_replacements = [ready]
    configured = discord_settings(discord_server, settings)
    model = OpenAIChatClient(configured.model)
    core = ConversationCore(settings=configured, store=sqlite_store, model=model)
    adapter = create_adapter(configured, core, sqlite_store, guild_ready_timeout=0.05)
    await adapter.start()
    try:
        asked = await discord_server.send_message("hello after start", mention_bot=True)
        guild = Guild(discord_server, None, core, adapter)  # type: ignore[arg-type]
        reply = await guild.reply_to(asked)
        assert reply["content"] == "You said: hello after start"
    finally:
        await core.drain()
        await adapter.stop()
        await model.aclose()
    assert any(
        r.levelno == logging.WARNING and "gateway" in r.getMessage().lower() for r in caplog.records
    )
    assert SECRET not in caplog.text


async def test_a_broken_compressed_frame_makes_a_new_connection(
    guild: Guild, caplog: pytest.LogCaptureFixture
) -> None:
    # discord.py reads binary frames as one zlib stream: a broken one spoils the stream,
    # so skipping is not enough and the connection is made again.
    server = guild.server
    identified = len(server.identifies)

    # Ends with zlib's sync-flush marker, so discord.py tries to decompress it at once.
    await server.send_raw(b"not a zlib stream\x00\x00\xff\xff")
    await server.wait_until(lambda: len(server.identifies) > identified, 20, "a new session")
    await _wait_connected(guild, True, seconds=20)
    asked = await server.send_message("and now?", mention_bot=True)
    assert (await guild.reply_to(asked))["content"] == "You said: and now?"
    assert "skipped a malformed frame (compressed" in caplog.text


async def test_a_dropped_connection_comes_back_and_answers(guild: Guild) -> None:
    server = guild.server
    identified = len(server.identifies)

    await server.drop_gateway()
    await server.wait_until(
        lambda: len(server.identifies) > identified and server.gateway_sessions(),
        what="a new gateway session",
    )
    await _wait_connected(guild, True)
    asked = await server.send_message("back again?", mention_bot=True)
    assert (await guild.reply_to(asked))["content"] == "You said: back again?"


async def test_a_connection_that_ends_after_start_up_is_started_again(
    guild: Guild, caplog: pytest.LogCaptureFixture
) -> None:
    # Close code 4014 (disallowed intents) ends discord.py's connect with an exception
    # without closing the client: before supervision, that was the end of every answer.
    server = guild.server
    identified = len(server.identifies)

    await server.drop_gateway(code=4014)
    await server.wait_until(lambda: len(server.identifies) > identified, 20, "a new IDENTIFY")
    await _wait_connected(guild, True, seconds=20)
    asked = await server.send_message("once more?", mention_bot=True)
    assert (await guild.reply_to(asked))["content"] == "You said: once more?"
    assert "Discord gateway connection ended (PrivilegedIntentsRequired)" in caplog.text


async def test_a_connection_closed_for_good_is_logged_and_not_ready(
    guild: Guild, caplog: pytest.LogCaptureFixture
) -> None:
    # 4013 (invalid intents) is not worth retrying: discord.py closes the client.
    await guild.server.drop_gateway(code=4013)
    await _wait_connected(guild, False)
    await guild.server.wait_until(
        lambda: "Discord gateway closed for good (close code 4013)" in caplog.text,
        what="the error logged",
    )


async def test_is_connected_follows_the_gateway(guild: Guild) -> None:
    server = guild.server
    assert guild.adapter.is_connected()

    await server.drop_gateway(refuse=True)
    await _wait_connected(guild, False)

    server.refuse_gateway = False
    await _wait_connected(guild, True, seconds=30)
    asked = await server.send_message("reconnected?", mention_bot=True)
    assert (await guild.reply_to(asked))["content"] == "You said: reconnected?"


async def _wait_connected(guild: Guild, expected: bool, seconds: float = 10.0) -> None:
    await guild.server.wait_until(
        lambda: guild.adapter.is_connected() == expected,
        seconds,
        what=f"is_connected() == {expected}",
    )


async def test_readyz_of_a_running_bot_follows_the_gateway(
    discord_server: FakeDiscordServer, fake_model: FakeModelServer, tmp_path: Path
) -> None:
    server = discord_server
    bot = await BotProcess.start(
        {
            "OPENAI_BASE_URL": fake_model.base_url,
            "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
            "DISCORD_TOKEN": server.token,
            "DISCORD_API_URL": server.api_url,
            "DISCORD_GATEWAY_URL": server.gateway_url,
        },
        cwd=tmp_path,
    )
    try:
        await bot.wait_healthy()
        assert await _readyz(bot, expected=200) == {"status": "ready"}

        await server.drop_gateway(refuse=True)
        down = await _readyz(bot, expected=503)
        assert down["discord"] == "disconnected"

        server.refuse_gateway = False
        await _readyz(bot, expected=200, seconds=40)
    finally:
        await bot.stop()


async def _readyz(bot: BotProcess, *, expected: int, seconds: float = 20) -> dict[str, str]:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(bot.url + "/readyz") as response:
                if response.status == expected:
                    body: dict[str, str] = await response.json()
                    return body
            if time.monotonic() > deadline:
                raise AssertionError(f"/readyz never answered {expected}:\n{bot.output()}")
            await asyncio.sleep(0.1)

"""A mention in a reply chain the bot never saw: the chain is read once, then stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from botservice.adapters.discord import create_adapter
from botservice.core.conversation import ConversationCore
from botservice.core.settings import Settings
from botservice.model.client import OpenAIChatClient
from botservice.storage.repository import SqlStore
from tests.discord.conftest import Guild, discord_settings
from tests.fakes.discord_server import FakeDiscordServer
from tests.fakes.model_server import FakeModelServer


@pytest_asyncio.fixture
async def short_reach(
    discord_server: FakeDiscordServer,
    fake_model: FakeModelServer,
    settings: Settings,
    sqlite_store: SqlStore,
) -> AsyncIterator[Guild]:
    """The bot reading at most 3 earlier messages of an unseen chain."""
    configured = discord_settings(discord_server, settings, unseen_chain_fetch=3)
    model = OpenAIChatClient(configured.model)
    core = ConversationCore(settings=configured, store=sqlite_store, model=model)
    adapter = create_adapter(configured, core, sqlite_store, guild_ready_timeout=0.05)
    await adapter.start()
    try:
        yield Guild(discord_server, fake_model, core, adapter)
    finally:
        await core.drain()
        await adapter.stop()
        await model.aclose()


async def _chain(server: FakeDiscordServer, texts: list[str]) -> list[dict[str, Any]]:
    """People talk in a reply chain, without mentioning the bot (it answers none)."""
    chain: list[dict[str, Any]] = []
    for n, text in enumerate(texts):
        author = server.alice if n % 2 == 0 else server.bob
        chain.append(
            await server.send_message(text, author=author, reply_to=chain[-1] if chain else None)
        )
    return chain


def _message_reads(server: FakeDiscordServer) -> list[str]:
    return [c.path for c in server.calls_to("GET", "/channels/") if "/messages/" in c.path]


async def test_a_mention_in_an_unseen_chain_reads_the_chain_once(guild: Guild) -> None:
    server = guild.server
    chain = await _chain(
        server,
        ["Shall we ship on Friday?", "Only if the tests pass.", "They failed on Windows."],
    )

    asked = await server.send_message(
        "what did they decide?", mention_bot=True, reply_to=chain[-1], author=server.owner
    )
    answer = await guild.reply_to(asked)

    question = guild.prompt()[-1]["content"]
    assert question == (
        "Earlier in this thread:\n"
        "> Alice: Shall we ship on Friday?\n"
        "> Bob: Only if the tests pass.\n"
        "> Alice: They failed on Windows.\n\n"
        "what did they decide?"
    )
    assert answer["content"].startswith("You said: Earlier in this thread:")
    # The payload carried the message replied to; one read brought the two before it
    # (Discord nests each fetched message's parent).
    reads = _message_reads(server)
    assert reads == [f"/channels/{server.channel_id}/messages/{chain[1]['id']}"]

    # Stored with the question: the follow-up has the chain from the store, unread.
    follow_up = await server.send_message("And on Linux?", reply_to=answer, author=server.owner)
    await guild.reply_to(follow_up)
    texts = [str(m["content"]) for m in guild.prompt()]
    assert "> Bob: Only if the tests pass." in texts[1]
    assert texts[-1] == "And on Linux?"
    assert _message_reads(server) == reads


async def test_only_the_configured_number_of_earlier_messages_is_read(
    short_reach: Guild,
) -> None:
    server = short_reach.server
    chain = await _chain(server, [f"message {n}" for n in range(1, 8)])

    asked = await server.send_message("summarize", mention_bot=True, reply_to=chain[-1])
    await short_reach.reply_to(asked)

    question = str(short_reach.prompt()[-1]["content"])
    # The message replied to and 3 before it; the 3 oldest are left out.
    quoted = [line for line in question.splitlines() if line.startswith("> ")]
    assert quoted == [
        "> Bob: message 4",
        "> Alice: message 5",
        "> Bob: message 6",
        "> Alice: message 7",
    ]
    assert len(_message_reads(server)) == 2


async def test_a_deleted_message_ends_the_chain_where_it_breaks(guild: Guild) -> None:
    server = guild.server
    chain = await _chain(server, ["first", "second", "third", "fourth"])
    server.delete_message(chain[1]["id"])  # "second"

    asked = await server.send_message("context?", mention_bot=True, reply_to=chain[-1])
    await guild.reply_to(asked)

    quoted = [line for line in str(guild.prompt()[-1]["content"]).splitlines() if line[:2] == "> "]
    assert quoted == ["> Alice: third", "> Bob: fourth"]

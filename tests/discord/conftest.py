"""A real discord.py client against the fake Discord (gateway + REST) and the fake model,
with a real SQLite store: every test reads like a conversation in a Discord guild."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from pydantic import SecretStr

from botservice.adapters.discord import DiscordAdapter, create_adapter
from botservice.core.conversation import ConversationCore
from botservice.core.settings import DiscordSettings, Settings
from botservice.model.client import OpenAIChatClient
from botservice.storage.repository import SqlStore
from tests.chat_kit import settings_for
from tests.fakes.discord_server import FakeDiscordServer, FakeUser
from tests.fakes.model_server import FakeModelServer


def discord_settings(server: FakeDiscordServer, base: Settings, **discord: Any) -> Settings:
    values: dict[str, Any] = {
        "token": SecretStr(server.token),
        "api_url": server.api_url,
        "gateway_url": server.gateway_url,
        **discord,
    }
    return base.model_copy(update={"discord": DiscordSettings(**values)})


@dataclass
class Guild:
    """The bot running in a guild of the fake Discord; `model` is the fake model server."""

    server: FakeDiscordServer
    model: FakeModelServer
    core: ConversationCore
    adapter: DiscordAdapter

    async def answered_in(self, channel_id: str, count: int = 1) -> list[dict[str, Any]]:
        """Wait until `count` answers in the channel show their final text; return them."""

        def finished() -> list[dict[str, Any]] | None:
            found = [m for m in self.server.bot_messages(channel_id) if not _placeholder(m)]
            return found if len(found) >= count else None

        await self.server.wait_until(finished, what=f"{count} answers in {channel_id}")
        await self.core.drain()
        result = finished()
        assert result is not None
        return result

    async def reply_to(self, message: dict[str, Any]) -> dict[str, Any]:
        """The bot's reply to a message, once answered."""

        def reply() -> dict[str, Any] | None:
            for found in self.server.bot_messages(message["channel_id"]):
                reference = found.get("message_reference") or {}
                if reference.get("message_id") == message["id"] and not _placeholder(found):
                    return found
            return None

        result: dict[str, Any] = await self.server.wait_until(reply, what="a reply")
        await self.core.drain()
        return result

    async def original_response(self, interaction: dict[str, Any]) -> dict[str, Any]:
        """The interaction's original response, once it shows text."""

        def edited() -> dict[str, Any] | None:
            original = self.server.original_response(interaction)
            return original if original and original.get("_edits") else None

        result: dict[str, Any] = await self.server.wait_until(edited, what="the response")
        await self.core.drain()
        return result

    def prompt(self, index: int = -1) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.model.chat_requests[index].body["messages"]
        return messages


def _placeholder(message: dict[str, Any]) -> bool:
    return str(message["content"]).startswith("\N{HOURGLASS WITH FLOWING SAND}")


@pytest.fixture
def settings(fake_model: FakeModelServer) -> Settings:
    return settings_for(fake_model.base_url)


@pytest_asyncio.fixture
async def guild(
    discord_server: FakeDiscordServer,
    fake_model: FakeModelServer,
    settings: Settings,
    sqlite_store: SqlStore,
) -> AsyncIterator[Guild]:
    configured = discord_settings(discord_server, settings)
    model = OpenAIChatClient(configured.model)
    core = ConversationCore(
        settings=configured, store=sqlite_store, model=model, feedback=sqlite_store
    )
    adapter = create_adapter(configured, core, sqlite_store, guild_ready_timeout=0.05)
    await adapter.start()
    try:
        yield Guild(discord_server, fake_model, core, adapter)
    finally:
        await core.drain()
        await adapter.stop()
        await model.aclose()


def option(name: str, value: Any) -> dict[str, Any]:
    kind = {str: 3, int: 4, bool: 5}[type(value)]
    return {"name": name, "type": kind, "value": value}


def subcommand(name: str, *options: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "type": 1, "options": list(options)}


__all__ = ["FakeUser", "Guild", "discord_settings", "option", "subcommand"]

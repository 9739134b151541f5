"""Traces over Discord: the REST calls of a turn are children of its span, with the
route template and status only. The bot runs in this process (the fake gateway and
REST), wired the way `open_services` wires it; spans go over OTLP/HTTP to a fake
collector, flushed at the stop."""

from __future__ import annotations

import asyncio

import pytest

from botservice.adapters.discord import create_adapter
from botservice.app.runtime import open_tracing
from botservice.core.conversation import ConversationCore
from botservice.core.settings import Settings
from botservice.core.telemetry import NO_TELEMETRY
from botservice.model.client import OpenAIChatClient
from botservice.storage.repository import SqlStore
from tests.discord.conftest import discord_settings
from tests.fakes.discord_server import FakeDiscordServer
from tests.fakes.model_server import FakeModelServer, Reply
from tests.fakes.otlp_collector import FakeCollector

QUESTION = "tell me the vault code heron-5150"
ANSWER = "the vault code is marlin-7788"


async def test_discord_rest_calls_are_children_of_the_turn(
    discord_server: FakeDiscordServer,
    fake_model: FakeModelServer,
    settings: Settings,
    sqlite_store: SqlStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    collector = FakeCollector()
    await collector.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.base_url)
    tracing = open_tracing()
    assert tracing is not None
    configured = discord_settings(discord_server, settings)
    telemetry = tracing.telemetry(NO_TELEMETRY)
    model = OpenAIChatClient(configured.model, telemetry=telemetry)
    core = ConversationCore(
        settings=configured,
        store=tracing.store(sqlite_store, system="sqlite"),
        model=tracing.model(model, configured.model),
        telemetry=telemetry,
        tracer=tracing,
    )
    adapter = create_adapter(configured, core, sqlite_store, guild_ready_timeout=0.05)
    fake_model.script(Reply(ANSWER))
    await adapter.start()
    try:
        asked = await discord_server.send_message(QUESTION, mention_bot=True)
        await discord_server.wait_until(
            lambda: any(
                m["content"] == ANSWER for m in discord_server.bot_messages(asked["channel_id"])
            ),
            what="the answer",
        )
        await core.drain()
    finally:
        await adapter.stop()
        await model.aclose()
        # Blocking (an HTTP request to the collector, which runs on this loop).
        await asyncio.to_thread(tracing.shutdown)
        await collector.close()

    (turn,) = collector.named("turn")
    assert turn.attributes["botservice.platform"] == "discord"
    assert turn.attributes["botservice.turn.outcome"] == "answered"
    children = collector.children_of(turn)
    rest = [child for child in children if child.name.startswith("discord ")]
    assert rest, [child.name for child in children]
    for call in rest:
        method = call.attributes["botservice.platform.method"]
        assert call.name == f"discord {method}"
        assert "{channel_id}" in method  # the route template, never an id
        assert call.attributes["botservice.platform.status"] == "ok"
        assert turn.start_ns <= call.start_ns <= call.end_ns <= turn.end_ns
    assert any(c.name.startswith("chat ") for c in children)
    exported = b"".join(collector.bodies)
    for text in (QUESTION, "heron-5150", ANSWER, "marlin-7788", discord_server.token):
        assert text.encode() not in exported, text

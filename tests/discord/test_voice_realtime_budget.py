"""Realtime mode and the budgets text messages are refused by (`[limits]`: daily token
budgets, usage quotas), end to end: members speak in the voice channel (Opus, DAVE, RTP
on loopback), the fake `/v1/realtime` server hears them, and the usage of each answer
lands in the ledger the quotas read. A member whose budget is spent gets no response
(no `response.create`), and the text chat says the sentence a refused text message
gets, once per member and budget period; a channel whose budget is spent is not
listened to at all. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import select

from botservice.core.settings import Settings
from botservice.storage.repository import SqlStore
from botservice.storage.tables import MESSAGES
from botservice.storage.usage_ledger import SqlUsage
from tests.db import incoming
from tests.discord.conftest import Guild, discord_settings
from tests.discord.test_voice import joined, running_voice_guild, voice_command, with_voice
from tests.discord.test_voice_listen import QUESTION, Room, listening, stored_texts
from tests.discord.test_voice_realtime_mode import fake_realtime  # noqa: F401
from tests.fakes.discord_server import FakeDiscordServer
from tests.fakes.model_server import FakeModelServer
from tests.fakes.realtime_server import FakeRealtimeServer, Speak
from tests.voice.spoken_audio import spoken

# The fake server's every response spends 1,500 tokens (1,200 in, 300 out).
MONTHLY = "You have used the 1,000 tokens allowed this month; the limit resets on 1 "


@pytest.fixture
def limits() -> dict[str, Any]:
    return {"user_monthly_tokens": 1000}


@pytest_asyncio.fixture
async def voice_guild(
    discord_server: FakeDiscordServer,
    fake_model: FakeModelServer,
    settings: Settings,
    store: SqlStore,
    fake_realtime: FakeRealtimeServer,  # noqa: F811
    limits: dict[str, Any],
) -> AsyncIterator[Guild]:
    """The bot in realtime mode with the usage ledger and `limits`."""
    configured = with_voice(
        discord_settings(discord_server, settings),
        mode="realtime",
        realtime_base_url=fake_realtime.base_url,
        realtime_silence_ms=300,
    )
    configured = configured.model_copy(
        update={"limits": configured.limits.model_copy(update=limits)}
    )
    async with running_voice_guild(
        discord_server, fake_model, configured, store, usage=SqlUsage(store)
    ) as guild:
        yield guild


@pytest_asyncio.fixture
async def room(voice_guild: Guild) -> AsyncIterator[Room]:
    server = voice_guild.server
    await server.join_voice(server.alice)
    connection = await joined(voice_guild)
    room = Room(voice_guild, connection)
    yield room
    room.server.close()


def _turns_created(fake_realtime: FakeRealtimeServer) -> int:  # noqa: F811
    return sum(
        1
        for event in fake_realtime.of_type("response.create")
        if (event.get("response") or {}).get("metadata", {}).get("botservice") == "turn"
    )


def _refusals(room: Room, user_id: str) -> list[str]:
    return [text for text in room.posted() if text.startswith(f"<@{user_id}> You have used")]


async def test_a_member_over_their_quota_is_not_answered_and_is_told_once(
    room: Room,
    fake_realtime: FakeRealtimeServer,  # noqa: F811
    store: SqlStore,
) -> None:
    server = room.guild.server
    fake_realtime.script.extend(
        [Speak("Sunny, twenty degrees.", audio_ms=200), Speak("Alice, it is noon.", audio_ms=200)]
    )
    await listening(room)
    bob = await room.enters(server.bob)

    room.says(bob, spoken(QUESTION))
    await server.wait_until(
        lambda: "\N{SPEAKER WITH THREE SOUND WAVES} Sunny, twenty degrees." in room.posted(),
        what="the first answer",
    )
    await server.wait_until(
        lambda: len(fake_realtime.of_type_sent("response.done")) == 1, what="its usage"
    )

    # 1,500 tokens spent: Bob's monthly 1,000 are gone once the ledger has the row.
    async def spent() -> bool:
        totals = await SqlUsage(store).usage_totals(
            platform="discord", since=_long_ago(), user_id=server.bob.id
        )
        return totals.tokens >= 1000

    await _until(spent)

    room.says(bob, spoken(QUESTION))
    await server.wait_until(lambda: _refusals(room, server.bob.id), what="the refusal")
    [told] = _refusals(room, server.bob.id)
    assert told.startswith(f"<@{server.bob.id}> {MONTHLY}"), told
    # The refused turn leaves the session's conversation.
    await server.wait_until(
        lambda: len(fake_realtime.of_type("conversation.item.delete")) == 1,
        what="the refused turn deleted",
    )

    # Said again: still no answer, and the chat does not repeat itself.
    room.says(bob, spoken(QUESTION))
    await server.wait_until(
        lambda: len(fake_realtime.of_type("conversation.item.delete")) == 2,
        what="the second refused turn",
    )
    assert _turns_created(fake_realtime) == 1
    assert len(_refusals(room, server.bob.id)) == 1
    # Refused words are not kept, as a refused text message is not.
    assert await stored_texts(store, "user") == [fake_realtime.heard]

    # Alice's budget is her own: she is answered.
    alice = await room.enters(server.alice)
    room.says(alice, spoken(QUESTION))
    await server.wait_until(
        lambda: "\N{SPEAKER WITH THREE SOUND WAVES} Alice, it is noon." in room.posted(),
        what="Alice's answer",
    )
    assert _turns_created(fake_realtime) == 2
    assert _refusals(room, server.alice.id) == []


@pytest.mark.parametrize("limits", [{"channel_daily_tokens": 1}])
async def test_listening_does_not_start_in_a_channel_whose_budget_is_spent(
    room: Room,
    fake_realtime: FakeRealtimeServer,  # noqa: F811
) -> None:
    server = room.guild.server
    # Earlier today the voice channel's conversation spent more than its 1 token.
    earlier = incoming(
        "voice:1",
        text="What is the weather like?",
        platform="discord",
        workspace=server.guild_id,
        channel=server.voice_channel_id,
        thread="",
        user_id="U-earlier",
    )
    await room.guild.core.record_spoken_turn(earlier, "Sunny.", model="gpt-realtime")

    reply = await voice_command(room.guild, "listen", user=server.alice)

    assert reply == (
        "This channel has used its 1 tokens for today; the allowance renews at 00:00 UTC. "
        f"I will listen in <#{server.voice_channel_id}> once it renews."
    )
    assert fake_realtime.requests_headers == [], "no session was opened"
    assert room.connection.self_deaf, "still not hearing anyone"


@pytest.mark.parametrize("limits", [{"user_daily_tokens": 1000}])
async def test_the_daily_token_budget_counts_what_the_session_spent_and_stops_a_member(
    room: Room,
    fake_realtime: FakeRealtimeServer,  # noqa: F811
    store: SqlStore,
) -> None:
    server = room.guild.server
    fake_realtime.script.append(Speak("Sunny, twenty degrees.", audio_ms=200))
    await listening(room)
    bob = await room.enters(server.bob)
    room.says(bob, spoken(QUESTION))

    async def answered() -> bool:
        return bool(await stored_texts(store, "assistant"))

    await _until(answered)
    # The answer is kept with what its response spent (the words alone are a few
    # tokens): 1,500 of Bob's 1,000 for today.
    async with store.engine.connect() as connection:
        kept = (
            await connection.execute(
                select(MESSAGES.c.prompt_tokens, MESSAGES.c.completion_tokens).where(
                    MESSAGES.c.role == "assistant"
                )
            )
        ).one()
    assert (kept.prompt_tokens, kept.completion_tokens) == (1200, 300)
    room.says(bob, spoken(QUESTION))

    await server.wait_until(lambda: _told(room, server.bob.id), what="the refusal")
    assert _told(room, server.bob.id) == [
        f"<@{server.bob.id}> You have used your 1,000 tokens for today; "
        "the allowance renews at 00:00 UTC."
    ]
    assert _turns_created(fake_realtime) == 1


def _told(room: Room, user_id: str) -> list[str]:
    return [text for text in room.posted() if text.startswith(f"<@{user_id}> ")]


def _long_ago() -> datetime:
    return datetime(2000, 1, 1, tzinfo=UTC)


async def _until(condition: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(10):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.02)

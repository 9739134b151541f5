"""Usage and cost: each answer's tokens kept with who and where, priced per model; the
`usage` command; quotas; `botservice usage`; retention and forget-me. The real core and
store (SQLite and PostgreSQL), the fake model server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from sqlalchemy import func, select, update

from botservice.app.expiry import purge_once
from botservice.core.conversation import ConversationCore
from botservice.core.settings import ModelInfo, Settings
from botservice.core.usage import UsageRecord, resets
from botservice.model.client import OpenAIChatClient
from botservice.storage.repository import SqlStore
from botservice.storage.tables import USAGE
from botservice.storage.usage_ledger import SqlUsage
from tests.chat_kit import Chat, settings_for
from tests.fakes.model_server import FakeModelServer, Reply

MODEL = "gpt-4o-mini"
PRICES = ModelInfo(
    context_window=128000,
    price_input_per_mtok=2.0,
    price_output_per_mtok=8.0,
    price_cached_input_per_mtok=0.5,
)


def priced(settings: Settings, **limits: object) -> Settings:
    updates: dict[str, object] = {"models": {**settings.models, MODEL: PRICES}}
    if limits:
        updates["limits"] = settings.limits.model_copy(update=limits)
    return settings.model_copy(update=updates)


@pytest.fixture
def settings(fake_model: FakeModelServer) -> Settings:
    return priced(
        settings_for(
            fake_model.base_url,
            access__admin_user_ids="UADMIN",
            limits__messages_per_minute="0",
        )
    )


@pytest_asyncio.fixture
async def model(settings: Settings) -> AsyncIterator[OpenAIChatClient]:
    client = OpenAIChatClient(settings.model)
    yield client
    await client.aclose()


def chat_with(settings: Settings, store: SqlStore, model: OpenAIChatClient) -> Chat:
    core = ConversationCore(settings=settings, store=store, model=model, usage=SqlUsage(store))
    return Chat(core)


async def stored_rows(store: SqlStore) -> list[dict[str, object]]:
    async with store._engine.connect() as connection:
        result = await connection.execute(select(USAGE).order_by(USAGE.c.id))
        return [dict(row._mapping) for row in result]


# --- prices ------------------------------------------------------------------------


def test_prices_give_the_cost_with_cached_tokens_at_their_own_price() -> None:
    # 1,000 in (400 of them cached) and 500 out at $2 / $0.50 / $8 a million.
    cost = PRICES.cost(prompt=1000, completion=500, cached=400)
    assert cost == pytest.approx((600 * 2.0 + 400 * 0.5 + 500 * 8.0) / 1e6)
    # Without a cached price, cached tokens cost what input costs.
    plain = ModelInfo(price_input_per_mtok=1.0, price_output_per_mtok=3.0)
    assert plain.cost(prompt=1000, completion=100, cached=999) == pytest.approx(
        (1000 * 1.0 + 100 * 3.0) / 1e6
    )
    assert ModelInfo().cost(prompt=10**6, completion=10**6) == 0


async def test_each_answer_keeps_its_tokens_and_cost_with_who_and_where(
    settings: Settings, store: SqlStore, model: OpenAIChatClient, fake_model: FakeModelServer
) -> None:
    fake_model.cached_tokens = 3
    fake_model.reasoning_tokens = 2
    chat = chat_with(settings, store, model)
    await chat.say("How much does this cost?", user="U7", channel="C9")

    [row] = await stored_rows(store)
    assert (row["platform"], row["workspace"], row["channel"], row["user_id"]) == (
        "test",
        "W1",
        "C9",
        "U7",
    )
    assert row["model"] == MODEL and not row["estimated"]
    assert row["cached_tokens"] == 3 and row["reasoning_tokens"] == 2
    prompt, completion = int(row["prompt_tokens"]), int(row["completion_tokens"])  # type: ignore[call-overload]
    assert prompt > 0 and completion > 0
    assert row["cost"] == pytest.approx(((prompt - 3) * 2.0 + 3 * 0.5 + completion * 8.0) / 1e6)
    # No text anywhere in the row.
    assert not any("cost?" in str(value) for value in row.values())


async def test_an_endpoint_without_usage_is_estimated(
    settings: Settings, store: SqlStore, model: OpenAIChatClient, fake_model: FakeModelServer
) -> None:
    fake_model.script(Reply("A short answer.", include_usage=False))
    chat = chat_with(settings, store, model)
    await chat.say("Count me anyway")

    [row] = await stored_rows(store)
    assert row["estimated"]
    assert int(row["prompt_tokens"]) > 0 and int(row["completion_tokens"]) > 0  # type: ignore[call-overload]


# --- the usage command ----------------------------------------------------------------


async def test_the_usage_command_shows_mine_and_to_managers_the_channel(
    settings: Settings, store: SqlStore, model: OpenAIChatClient
) -> None:
    chat = chat_with(settings, store, model)
    await chat.say("one", user="U1")
    await chat.say("two", user="U2")

    mine = await chat.say("/usage", user="U1")
    [reply] = mine.notices
    assert reply.startswith("Your usage: today ")
    assert "in 1 answer" in reply and "This channel" not in reply

    manager = await chat.say("/usage", user="U3", admin=True)
    [reply] = manager.notices
    assert "Your usage: today 0 tokens in 0 answers" in reply
    assert "This channel: today " in reply and "in 2 answers" in reply


# --- quotas -------------------------------------------------------------------------


async def test_a_quota_stops_the_next_turn_with_when_it_resets_and_lets_an_admin_through(
    settings: Settings, store: SqlStore, model: OpenAIChatClient, fake_model: FakeModelServer
) -> None:
    limited = priced(settings, user_monthly_tokens=10)
    chat = chat_with(limited, store, model)
    first = await chat.say("first question", user="U1")
    assert first.finals  # under the quota: answered (it spends more than 10 tokens)
    asked = len(fake_model.chat_requests)

    second = await chat.say("second question", user="U1")
    assert not second.finals
    [refusal] = second.notices
    assert refusal.startswith(
        "You have used the 10 tokens allowed this month; the limit resets on 1 "
    )
    assert "at 00:00 UTC (in " in refusal
    assert len(fake_model.chat_requests) == asked  # the model was not called

    # Someone else is not held to U1's quota; a bot admin is not held to any.
    assert (await chat.say("mine", user="U2")).finals
    await chat.say("admin spends", user="UADMIN")
    admin = await chat.say("admin again", user="UADMIN")
    assert admin.finals and not admin.notices


async def test_a_channel_cost_quota_counts_everyone_in_the_channel(
    settings: Settings, store: SqlStore, model: OpenAIChatClient
) -> None:
    limited = priced(settings, channel_daily_cost=0.000001)
    chat = chat_with(limited, store, model)
    assert (await chat.say("first", user="U1", channel="C1")).finals
    refused = await chat.say("second", user="U2", channel="C1")
    assert refused.notices == [
        "This channel has used the $0.00 allowed today; the limit resets "
        + resets("day", datetime.now(UTC))
        + "."
    ]
    assert (await chat.say("elsewhere", user="U2", channel="C2")).finals


def test_reset_times_read_as_words() -> None:
    now = datetime(2026, 11, 30, 19, 0, tzinfo=UTC)
    assert resets("day", now) == "at 00:00 UTC (in 5 hours)"
    assert resets("month", now) == "on 1 December at 00:00 UTC (in 5 hours)"
    assert resets("month", datetime(2026, 2, 3, tzinfo=UTC)) == (
        "on 1 March at 00:00 UTC (in 26 days)"
    )


# --- retention and forget-me ---------------------------------------------------------


async def test_forget_me_removes_the_person_from_their_usage_rows(
    settings: Settings, store: SqlStore, model: OpenAIChatClient
) -> None:
    chat = chat_with(settings, store, model)
    await chat.say("remember my usage", user="U1")
    await chat.say("and mine", user="U2")

    reply = await chat.say("/forget-me", user="U1")
    assert "no longer name you" in reply.notices[0]
    rows = await stored_rows(store)
    assert sorted(str(row["user_id"]) for row in rows) == ["", "U2"]
    assert all(int(row["prompt_tokens"]) > 0 for row in rows)  # type: ignore[call-overload]


async def test_the_purge_keeps_usage_for_its_own_retention(store: SqlStore) -> None:
    ledger = SqlUsage(store)
    for user in ("old", "recent"):
        await ledger.record_usage(
            UsageRecord(
                turn_id=None,
                platform="test",
                workspace="W1",
                channel="C1",
                user_id=user,
                model=MODEL,
                prompt_tokens=10,
                completion_tokens=5,
            )
        )
    now = datetime.now(UTC)
    async with store._engine.begin() as connection:
        # Older than the messages' 30 days but younger than 400: kept.
        await connection.execute(
            update(USAGE)
            .where(USAGE.c.user_id == "recent")
            .values(created_at=now - timedelta(days=100))
        )
        await connection.execute(
            update(USAGE)
            .where(USAGE.c.user_id == "old")
            .values(created_at=now - timedelta(days=401))
        )
    settings = Settings().storage
    counts = await purge_once(store, settings, now=now, claim_period=False, usage=ledger)

    assert counts.usage == 1
    assert [row["user_id"] for row in await stored_rows(store)] == ["recent"]


# --- botservice usage --------------------------------------------------------------------


async def test_the_usage_csv_totals_equal_the_stored_usage(
    settings: Settings,
    sqlite_store: SqlStore,
    sqlite_database_url: str,
    model: OpenAIChatClient,
    fake_model: FakeModelServer,
) -> None:
    chat = chat_with(settings, sqlite_store, model)
    for n in range(6):
        await chat.say(f"question {n}", user=f"U{n % 3}", channel=f"C{n % 2}")

    env = {
        **os.environ,
        "DATABASE_URL": sqlite_database_url,
        "OPENAI_BASE_URL": fake_model.base_url,
        "BOTSERVICE_LOG_LEVEL": "WARNING",
    }
    for by, groups in (("user", 3), ("channel", 2), ("model", 1)):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "botservice",
            "usage",
            "--since",
            "1d",
            "--by",
            by,
            "--csv",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        rows = list(csv.DictReader(io.StringIO(out.decode())))
        assert len(rows) == groups
        async with sqlite_store._engine.connect() as connection:
            stored = (
                await connection.execute(
                    select(
                        func.count(),
                        func.sum(USAGE.c.prompt_tokens),
                        func.sum(USAGE.c.completion_tokens),
                        func.sum(USAGE.c.cost),
                    )
                )
            ).one()
        assert sum(int(r["calls"]) for r in rows) == stored[0] == 6
        assert sum(int(r["prompt_tokens"]) for r in rows) == stored[1]
        assert sum(int(r["completion_tokens"]) for r in rows) == stored[2]
        assert sum(float(r["cost"]) for r in rows) == pytest.approx(stored[3], abs=1e-5)


async def test_the_usage_command_line_refuses_a_bad_span() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "botservice",
        "usage",
        "--since",
        "last tuesday",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert process.returncode == 2
    assert "not a span like 30d" in err.decode()

"""Slash commands through the real discord.py client and its command tree."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from botservice.app.expiry import forget_reply_secrets
from botservice.core.settings import StorageSettings
from botservice.storage.repository import SqlStore
from botservice.storage.tables import TURNS
from tests.discord.conftest import Guild, option, subcommand


async def test_ask_is_deferred_then_answered_by_editing_the_response(guild: Guild) -> None:
    server = guild.server
    interaction = await server.send_command("ask", [option("prompt", "What is 2 + 2?")])

    original = await guild.original_response(interaction)

    assert original["content"] == "You said: What is 2 + 2?"
    assert not original["_ephemeral"]
    interaction_calls = [c for c in server.calls if interaction["token"] in c.path]
    callback = interaction_calls[0]
    assert callback.path.endswith("/callback")
    assert callback.json["type"] == 5  # deferred: "thinking…" inside Discord's 3 seconds
    assert all(c.method == "PATCH" for c in interaction_calls[1:])
    assert guild.model.chat_requests[-1].last_user_text == "What is 2 + 2?"


async def test_ask_privately_keeps_question_and_answer_ephemeral(guild: Guild) -> None:
    interaction = await guild.server.send_command(
        "ask", [option("prompt", "secret question"), option("private", True)]
    )
    original = await guild.original_response(interaction)
    assert original["_ephemeral"]
    assert original["content"] == "You said: secret question"


async def test_ask_belongs_to_the_channel_conversation(guild: Guild) -> None:
    server = guild.server
    first = await server.send_command("ask", [option("prompt", "Remember the number 7.")])
    await guild.original_response(first)
    second = await server.send_command("ask", [option("prompt", "Which number?")])
    await guild.original_response(second)

    texts = [m["content"] for m in guild.prompt()]
    assert "Remember the number 7." in texts
    assert texts[-1] == "Which number?"


async def test_chat_opens_a_thread_that_continues_without_a_mention(guild: Guild) -> None:
    server = guild.server
    interaction = await server.send_command("chat", [option("prompt", "Plan a picnic for Sunday")])

    thread = await server.wait_until(
        lambda: next(iter(server.threads.values()), None), what="a thread"
    )
    assert thread["name"] == "Plan a picnic for Sunday"
    assert thread["parent_id"] == server.channel_id
    first = await guild.answered_in(thread["id"])
    assert first[0]["content"] == "You said: Plan a picnic for Sunday"
    opening = server.original_response(interaction)
    assert opening is not None and "Plan a picnic" in opening["content"]

    await server.send_message("Add some games.", channel_id=thread["id"])
    await guild.answered_in(thread["id"], count=2)

    texts = [m["content"] for m in guild.prompt()]
    assert texts[-3:] == [
        "Plan a picnic for Sunday",
        "You said: Plan a picnic for Sunday",
        "Add some games.",
    ]
    assert not server.calls_to("GET", "/channels/")


async def test_instructions_need_manage_channels_and_then_steer_the_answers(
    guild: Guild,
) -> None:
    server = guild.server
    refused = await server.send_command(
        "instructions",
        [subcommand("set", option("text", "Answer like a pirate."))],
        user=server.bob,
    )
    refusal = await guild.original_response(refused)
    assert refusal["_ephemeral"]
    assert "Manage Channels" in refusal["content"]

    allowed = await server.send_command(
        "instructions",
        [subcommand("set", option("text", "Answer like a pirate."))],
        user=server.alice,
    )
    confirmation = await guild.original_response(allowed)
    assert confirmation["_ephemeral"]
    assert "Manage Channels" not in confirmation["content"]

    asked = await server.send_message("Hello?", mention_bot=True)
    await guild.reply_to(asked)
    system = guild.prompt()[0]
    assert system["role"] in ("system", "developer")
    assert "Answer like a pirate." in system["content"]

    shown = await server.send_command("instructions", [subcommand("show")], user=server.bob)
    assert "Answer like a pirate." in (await guild.original_response(shown))["content"]


async def test_the_bot_owner_may_set_the_model(guild: Guild) -> None:
    server = guild.server
    interaction = await server.send_command(
        "model", [subcommand("set", option("name", "gpt-4o"))], user=server.owner
    )
    reply = await guild.original_response(interaction)
    assert "gpt-4o" in reply["content"]
    asked = await server.send_message("Which model?", mention_bot=True)
    await guild.reply_to(asked)
    assert guild.model.chat_requests[-1].body["model"] == "gpt-4o"


async def test_help_answers_privately(guild: Guild) -> None:
    interaction = await guild.server.send_command("help")
    reply = await guild.original_response(interaction)
    assert reply["_ephemeral"]
    assert "instructions" in reply["content"]


async def test_retention_without_days_shows_it(guild: Guild) -> None:
    interaction = await guild.server.send_command("retention")
    reply = await guild.original_response(interaction)
    assert reply["_ephemeral"]
    assert reply["content"]


async def test_the_interaction_token_is_kept_only_for_its_15_minutes(
    guild: Guild, sqlite_store: SqlStore
) -> None:
    interaction = await guild.server.send_command("ask", [option("prompt", "What is 2 + 2?")])
    await guild.original_response(interaction)

    async def stored() -> str:
        async with sqlite_store.engine.connect() as connection:
            rows = await connection.execute(select(TURNS.c.reply_target))
            return " ".join(row[0] for row in rows)

    # Kept while valid: a restart within the 15 minutes still finishes the answer.
    assert interaction["token"] in await stored()
    await forget_reply_secrets(sqlite_store, StorageSettings())
    assert interaction["token"] in await stored()

    later = datetime.now(UTC) + timedelta(minutes=15, seconds=1)
    await forget_reply_secrets(sqlite_store, StorageSettings(), now=later)

    assert interaction["token"] not in await stored()
    assert '"kind":"interaction"' in await stored()


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("summarize", []),  # registered under an old name, gone from this version
        ("model", [subcommand("reset")]),  # a subcommand that no longer exists
    ],
)
async def test_a_stale_command_is_answered_with_what_to_do_and_one_warning(
    guild: Guild,
    caplog: pytest.LogCaptureFixture,
    name: str,
    options: list[dict[str, object]],
) -> None:
    server = guild.server
    with caplog.at_level(logging.INFO):
        interaction = await server.send_command(name, options)
        answer = await server.wait_until(
            lambda: server.original_response(interaction), what="the answer"
        )

    assert answer["content"] == (
        "This command is not available any more; an admin can run "
        "`botservice discord sync-commands`"
    )
    assert answer["_ephemeral"]
    assert answer["_callback_type"] == 4  # answered at once, within Discord's 3 seconds
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "sync-commands" in warnings[0].getMessage()
    assert warnings[0].exc_info is None and "Traceback" not in caplog.text
    assert guild.model.chat_requests == []


async def test_in_a_dm_only_bot_admins_choose_the_model(guild: Guild) -> None:
    server = guild.server
    refused = await server.send_command(
        "model", [subcommand("set", option("name", "gpt-4o"))], user=server.bob, dm=True
    )
    shown = await server.send_command("model", [subcommand("show")], user=server.bob, dm=True)

    assert (await guild.original_response(refused))["content"] == (
        "In direct messages only the bot's admins can change the model "
        "(the operator lists them in access.admin_user_ids)."
    )
    assert (await guild.original_response(shown))["content"] == (
        "This channel uses the model gpt-4o-mini (the default)."
    )


async def test_tools_enable_is_for_managers_and_is_kept_for_the_channel(
    guild: Guild, sqlite_store: SqlStore
) -> None:
    server = guild.server
    interaction = await server.send_command(
        "tools", [subcommand("enable", option("name", "jira__*"))], user=server.owner
    )
    reply = await guild.original_response(interaction)

    assert reply["_ephemeral"]
    assert reply["content"] == (
        "Tools matching jira__* are now enabled here; no tool matches it yet "
        "(it applies when one appears)."
    )
    settings = await sqlite_store.channel_settings("discord", server.guild_id, server.channel_id)
    assert settings.tools == "+jira__*"

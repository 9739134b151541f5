"""Approve / Deny on Discord before a tool call runs: the question with its buttons, and
what a click does (component interactions from the fake gateway, through discord.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio

from botservice.adapters.discord import create_adapter
from botservice.core.conversation import ConversationCore
from botservice.core.events import ConversationKey
from botservice.core.ports import PendingTurn, abilities_of
from botservice.core.settings import Settings
from botservice.core.tools import ConfirmationRequest
from botservice.model.client import OpenAIChatClient
from botservice.storage.repository import SqlStore
from tests.chat_kit import settings_for
from tests.discord.conftest import Guild, discord_settings, option
from tests.fakes.discord_server import FakeDiscordServer, FakeUser
from tests.fakes.model_server import CallTool, FakeModelServer, Reply, ToolCalls
from tests.remote_tool import RemoteTools, jira_tools


def _request(asker: FakeUser, **changes: Any) -> ConfirmationRequest:
    values: dict[str, Any] = {
        "confirmation_id": 7,
        "tool": "jira__create_issue",
        "arguments": '{"title": "Printer on fire"}',
        "asker_id": asker.id,
        "asker_name": asker.username,
        "timeout_seconds": 120.0,
    }
    values.update(changes)
    return ConfirmationRequest(**values)


async def _ask(guild: Guild, request: ConfirmationRequest) -> dict[str, Any]:
    """The question for `request`, asked by the sink the adapter builds for a turn that
    answers a message of the asker's, as the channel shows it."""
    server = guild.server
    asked = await server.send_message("File a ticket, please", author=server.alice)
    turn = PendingTurn(
        turn_id=1,
        conversation_id=1,
        user_message_id=1,
        platform="discord",
        conversation=ConversationKey("discord", server.guild_id, server.channel_id, asked["id"]),
        reply_target={"kind": "message", "channel_id": server.channel_id, "reply_to": asked["id"]},
        reply_ref=None,
        created_at=datetime.now(UTC),
    )
    sink = guild.adapter.sink_for(turn)
    assert sink is not None
    confirm = abilities_of(sink).confirm
    assert confirm is not None, "a Discord answer can ask"
    await confirm(request)
    (question,) = [m for m in server.bot_messages(server.channel_id) if m.get("components")]
    return question


def _custom_ids(message: dict[str, Any]) -> list[str]:
    return [button["custom_id"] for button in FakeDiscordServer.buttons(message)]


async def _private_reply(server: FakeDiscordServer, click: dict[str, Any]) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        replies = server.followups(click)
        return replies[0] if replies else None

    reply: dict[str, Any] = await server.wait_until(found, what="a reply only the clicker sees")
    return reply


async def test_the_question_names_the_tool_its_arguments_the_asker_and_offers_two_buttons(
    guild: Guild,
) -> None:
    server = guild.server
    question = await _ask(guild, _request(server.alice))

    lines = question["content"].split("\n")
    assert "`jira__create_issue`" in lines[0]
    assert lines[1] == 'Arguments: `{"title": "Printer on fire"}`'
    assert lines[2].startswith(f"-# Only <@{server.alice.id}> can approve this")
    assert "2 minutes" in lines[2]
    approve, deny = FakeDiscordServer.buttons(question)
    assert (approve["label"], approve["custom_id"]) == (
        "Approve",
        f"botservice_tool:approve:7:{server.alice.id}",
    )
    assert (deny["label"], deny["custom_id"]) == (
        "Deny",
        f"botservice_tool:deny:7:{server.alice.id}",
    )
    [post] = [
        call
        for call in server.calls_to("POST", f"/channels/{server.channel_id}/messages")
        if call.json.get("components")
    ]
    pinged = [str(user) for user in post.json["allowed_mentions"]["users"]]
    assert pinged == [server.alice.id], "only the asker is pinged"
    assert post.json["allowed_mentions"]["parse"] == []


async def test_arguments_cannot_break_out_of_their_code_span(guild: Guild) -> None:
    server = guild.server
    question = await _ask(
        guild, _request(server.alice, arguments='{"body": "`@everyone` see\nthis"}')
    )

    arguments = question["content"].split("\n")[1]
    assert arguments.count("`") == 2, "a backtick inside would end the span early"
    assert "see this" in arguments


async def test_a_click_with_a_forged_id_is_answered_privately_and_decides_nothing(
    guild: Guild, caplog: pytest.LogCaptureFixture
) -> None:
    server = guild.server
    question = await _ask(guild, _request(server.alice))
    caplog.set_level(logging.INFO, logger="botservice.adapters.discord")
    forged = "botservice_tool:approve:seven:" + server.alice.id
    question["components"][0]["components"][0]["custom_id"] = forged

    click = await server.click_button(question, forged, user=server.alice)

    def answered() -> dict[str, Any] | None:
        return server.original_response(click)

    reply = await server.wait_until(answered, what="the answer to the click")
    assert reply["content"] == "This request has expired."
    assert reply["_ephemeral"]
    assert "names no confirmation was ignored" in caplog.text
    assert question["content"].startswith("**May I run"), "the question is left as it was"


# --- through the tool loop: a destructive tool waits for its asker ---------------------


@pytest_asyncio.fixture
async def jira() -> RemoteTools:
    return jira_tools()


async def _start_bot(
    server: FakeDiscordServer,
    fake_model: FakeModelServer,
    settings: Settings,
    store: SqlStore,
    jira: RemoteTools,
) -> tuple[Guild, OpenAIChatClient]:
    """The bot in the guild with a JIRA server's tools, enabled in the channel (and the
    client it talks to the model with, closed by `_stop`)."""
    configured = discord_settings(server, settings)
    await store.change_setting(
        "discord",
        server.guild_id,
        server.channel_id,
        field="tools",
        value="+jira__*",
        changed_by=server.alice.id,
    )
    model = OpenAIChatClient(configured.model)
    core = ConversationCore(
        settings=configured,
        store=store,
        model=model,
        feedback=store,
        tool_sources=[jira],
    )
    adapter = create_adapter(configured, core, store, guild_ready_timeout=0.05)
    await adapter.start()
    return Guild(server, fake_model, core, adapter), model


async def _stop(guild: Guild, model: OpenAIChatClient) -> None:
    await guild.core.drain()
    await guild.adapter.stop()
    await model.aclose()


@pytest_asyncio.fixture
async def jira_guild(
    discord_server: FakeDiscordServer,
    fake_model: FakeModelServer,
    settings: Settings,
    sqlite_store: SqlStore,
    jira: RemoteTools,
) -> AsyncIterator[Guild]:
    guild, model = await _start_bot(discord_server, fake_model, settings, sqlite_store, jira)
    try:
        yield guild
    finally:
        await _stop(guild, model)


def _the_model_files_a_ticket(fake_model: FakeModelServer) -> None:
    fake_model.script(
        ToolCalls(CallTool("jira__create_issue", {"title": "Printer on fire"}, id="call_jira")),
        Reply("Filed it as JIRA-101."),
    )


async def _question_after(guild: Guild, asked: dict[str, Any]) -> dict[str, Any]:
    """The question the bot posted about the message `asked`, once it is there."""
    server = guild.server

    def posted() -> dict[str, Any] | None:
        return next(
            (
                m
                for m in server.bot_messages(asked["channel_id"])
                if (m.get("message_reference") or {}).get("message_id") == asked["id"]
                and _custom_ids(m)
                and _custom_ids(m)[0].startswith("botservice_tool:")
            ),
            None,
        )

    found: dict[str, Any] = await server.wait_until(posted, what="the question with buttons")
    return found


async def _edited(server: FakeDiscordServer, message: dict[str, Any], edits: int = 1) -> None:
    await server.wait_until(lambda: message.get("_edits", 0) >= edits, what="the question edited")


def _tool_results(fake_model: FakeModelServer) -> list[dict[str, Any]]:
    messages = fake_model.chat_requests[-1].body["messages"]
    return [m for m in messages if m.get("role") == "tool"]


async def test_a_destructive_tool_runs_only_once_its_asker_clicks_approve(
    jira_guild: Guild, jira: RemoteTools
) -> None:
    server, alice = jira_guild.server, jira_guild.server.alice
    _the_model_files_a_ticket(jira_guild.model)
    asked = await server.send_message(
        "file a ticket: the printer is on fire", author=alice, mention_bot=True
    )

    question = await _question_after(jira_guild, asked)
    assert "`jira__create_issue`" in question["content"]
    assert jira.calls == [], "nothing runs before the click"

    await server.click_button(question, f"botservice_tool:approve:1:{alice.id}", user=alice)
    await _edited(server, question)
    answer = await jira_guild.reply_to(asked)

    assert [(c.name, c.arguments, c.user_id) for c in jira.calls] == [
        ("jira__create_issue", {"title": "Printer on fire"}, alice.id)
    ]
    lines = question["content"].split("\n")
    assert lines[-1] == f"✅ Approved by <@{alice.id}>"
    assert "`jira__create_issue`" in lines[0], "what was approved stays readable"
    assert question["components"] == [], "the buttons are gone"
    [result] = _tool_results(jira_guild.model)
    assert (result["tool_call_id"], result["content"]) == ("call_jira", "Created JIRA-101.")
    assert "Filed it as JIRA-101." in answer["content"]


async def test_deny_keeps_the_tool_from_running(jira_guild: Guild, jira: RemoteTools) -> None:
    server, alice = jira_guild.server, jira_guild.server.alice
    _the_model_files_a_ticket(jira_guild.model)
    asked = await server.send_message("file a ticket", author=alice, mention_bot=True)
    question = await _question_after(jira_guild, asked)

    await server.click_button(question, f"botservice_tool:deny:1:{alice.id}", user=alice)
    await _edited(server, question)
    await jira_guild.reply_to(asked)

    assert jira.calls == []
    assert question["content"].split("\n")[-1] == f"🚫 Denied by <@{alice.id}>"
    assert question["components"] == []
    [result] = _tool_results(jira_guild.model)
    assert "declined" in result["content"]


async def test_another_persons_click_is_answered_privately_and_decides_nothing(
    jira_guild: Guild, jira: RemoteTools
) -> None:
    server, alice = jira_guild.server, jira_guild.server.alice
    _the_model_files_a_ticket(jira_guild.model)
    asked = await server.send_message("file a ticket", author=alice, mention_bot=True)
    question = await _question_after(jira_guild, asked)
    approve = f"botservice_tool:approve:1:{alice.id}"

    bobs = await server.click_button(question, approve, user=server.bob)
    told = await _private_reply(server, bobs)

    assert told["content"] == f"Only <@{alice.id}> can approve this."
    assert told["_ephemeral"]
    assert "_edits" not in question and _custom_ids(question), "the question is unchanged"
    assert jira.calls == []

    await server.click_button(question, approve, user=alice)
    await _edited(server, question)
    await jira_guild.reply_to(asked)
    assert len(jira.calls) == 1


async def test_a_click_after_the_decision_says_so_and_runs_nothing_again(
    jira_guild: Guild, jira: RemoteTools
) -> None:
    server, alice = jira_guild.server, jira_guild.server.alice
    _the_model_files_a_ticket(jira_guild.model)
    asked = await server.send_message("file a ticket", author=alice, mention_bot=True)
    question = await _question_after(jira_guild, asked)
    buttons = question["components"]
    await server.click_button(question, f"botservice_tool:approve:1:{alice.id}", user=alice)
    await _edited(server, question)
    await jira_guild.reply_to(asked)

    # A second click from a client still showing the buttons (a stale screen).
    question["components"] = buttons
    await server.click_button(question, f"botservice_tool:deny:1:{alice.id}", user=alice)
    await _edited(server, question, edits=2)

    assert question["content"].split("\n")[-1] == (
        "This request was already decided or has timed out."
    )
    assert question["components"] == []
    assert len(jira.calls) == 1


async def test_a_click_on_a_confirmation_the_bot_does_not_have_has_expired(
    jira_guild: Guild,
) -> None:
    server = jira_guild.server
    question = await _ask(jira_guild, _request(server.alice, confirmation_id=999))

    click = await server.click_button(
        question, f"botservice_tool:approve:999:{server.alice.id}", user=server.alice
    )
    told = await _private_reply(server, click)

    assert told["content"] == "This request has expired." and told["_ephemeral"]
    assert "_edits" not in question


async def test_a_private_ask_asks_privately_and_approval_edits_that_question(
    jira_guild: Guild, jira: RemoteTools
) -> None:
    server, bob = jira_guild.server, jira_guild.server.bob
    _the_model_files_a_ticket(jira_guild.model)
    command = await server.send_command(
        "ask", [option("prompt", "file a ticket"), option("private", True)], user=bob
    )

    def asked() -> dict[str, Any] | None:
        return next((m for m in server.followups(command) if _custom_ids(m)), None)

    question: dict[str, Any] = await server.wait_until(asked, what="the question")
    assert question["_ephemeral"], "as private as the answer"
    assert jira.calls == []

    await server.click_button(question, f"botservice_tool:approve:1:{bob.id}", user=bob)
    await _edited(server, question)
    original = await jira_guild.original_response(command)

    assert question["content"].split("\n")[-1] == f"✅ Approved by <@{bob.id}>"
    assert len(jira.calls) == 1
    assert "Filed it as JIRA-101." in original["content"]


async def test_approval_after_a_restart_runs_the_tool_once_and_asks_no_second_time(
    discord_server: FakeDiscordServer,
    fake_model: FakeModelServer,
    settings: Settings,
    sqlite_store: SqlStore,
    jira: RemoteTools,
) -> None:
    server, alice = discord_server, discord_server.alice
    first, first_model = await _start_bot(server, fake_model, settings, sqlite_store, jira)
    _the_model_files_a_ticket(fake_model)
    asked = await server.send_message("file a ticket", author=alice, mention_bot=True)
    question = await _question_after(first, asked)
    # The process dies while the turn waits for the click: its task ends where it is,
    # and the turn stays as the database last saw it.
    answering = [t for t in asyncio.all_tasks() if t.get_name().startswith("conversation-")]
    for task in answering:
        task.cancel()
    await asyncio.gather(*answering, return_exceptions=True)
    await _stop(first, first_model)

    restarted, model = await _start_bot(server, fake_model, settings, sqlite_store, jira)
    try:
        # The buttons shown before the restart still work, then the turn resumes.
        await server.click_button(question, f"botservice_tool:approve:1:{alice.id}", user=alice)
        await _edited(server, question)
        assert await restarted.core.resume_pending(restarted.adapter.sink_for) == 1
        answer = await restarted.reply_to(asked)
    finally:
        await _stop(restarted, model)

    assert len(jira.calls) == 1
    questions = [
        call
        for call in server.calls_to("POST", f"/channels/{server.channel_id}/messages")
        if "botservice_tool:" in str(call.json)
    ]
    assert len(questions) == 1, "the resumed turn waits on the question it asked before"
    assert question["content"].split("\n")[-1] == f"✅ Approved by <@{alice.id}>"
    assert "Filed it as JIRA-101." in answer["content"]


# --- nobody answers in time ----------------------------------------------------------


@pytest_asyncio.fixture
async def impatient_guild(
    discord_server: FakeDiscordServer,
    fake_model: FakeModelServer,
    sqlite_store: SqlStore,
    jira: RemoteTools,
) -> AsyncIterator[Guild]:
    """The bot with JIRA's tools, waiting 0.3 s for an answer to its questions."""
    settings = settings_for(fake_model.base_url, tools__confirm_timeout_seconds="0.3")
    guild, model = await _start_bot(discord_server, fake_model, settings, sqlite_store, jira)
    try:
        yield guild
    finally:
        await _stop(guild, model)


async def test_no_answer_in_time_takes_the_buttons_away_and_says_the_call_was_not_run(
    impatient_guild: Guild, jira: RemoteTools
) -> None:
    guild = impatient_guild
    server, alice = guild.server, guild.server.alice
    _the_model_files_a_ticket(guild.model)
    asked = await server.send_message("file a ticket", author=alice, mention_bot=True)
    question = await _question_after(guild, asked)
    await _edited(server, question)
    await guild.reply_to(asked)

    lines = question["content"].split("\n")
    assert lines[-1] == "No answer within 0.3 s: not run."
    assert "`jira__create_issue`" in lines[0], "what was asked stays readable"
    assert question["components"] == [], "the buttons are gone"
    assert jira.calls == []
    [result] = _tool_results(guild.model)
    assert "no answer within 0.3 s" in result["content"]

    # A click from a screen that still showed the buttons is told it is over.
    approve = f"botservice_tool:approve:1:{alice.id}"
    stale = {
        **question,
        "components": [{"type": 1, "components": [{"type": 2, "style": 3, "custom_id": approve}]}],
    }
    await server.click_button(stale, approve, user=alice)
    await _edited(server, question, edits=2)
    assert question["content"].split("\n")[-1] == (
        "This request was already decided or has timed out."
    )
    assert jira.calls == []


async def test_a_private_question_nobody_answers_loses_its_buttons_too(
    impatient_guild: Guild, jira: RemoteTools
) -> None:
    server, bob = impatient_guild.server, impatient_guild.server.bob
    _the_model_files_a_ticket(impatient_guild.model)
    command = await server.send_command(
        "ask", [option("prompt", "file a ticket"), option("private", True)], user=bob
    )

    def asked() -> dict[str, Any] | None:
        return next((m for m in server.followups(command) if _custom_ids(m)), None)

    question: dict[str, Any] = await server.wait_until(asked, what="the question")
    await _edited(server, question)

    assert question["content"].split("\n")[-1] == "No answer within 0.3 s: not run."
    assert question["components"] == []
    assert jira.calls == []

"""Approve / Deny on Discord before a tool call runs: the question with its buttons, and
what a click does (component interactions from the fake gateway, through discord.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from botservice.core.events import ConversationKey
from botservice.core.ports import PendingTurn, abilities_of
from botservice.core.tools import ConfirmationRequest
from tests.discord.conftest import Guild
from tests.fakes.discord_server import FakeDiscordServer, FakeUser


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

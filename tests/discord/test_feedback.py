"""👍 / 👎 buttons under every final answer on Discord, and what a click does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from botservice.storage.repository import SqlStore
from tests.discord.conftest import Guild, option
from tests.fakes.discord_server import FakeDiscordServer


def _custom_ids(message: dict[str, Any]) -> list[str]:
    return [button["custom_id"] for button in FakeDiscordServer.buttons(message)]


async def _acknowledgement(server: FakeDiscordServer, click: dict[str, Any]) -> dict[str, Any]:
    def shown() -> dict[str, Any] | None:
        original = server.original_response(click)
        return original if original and original.get("_edits") else None

    found: dict[str, Any] = await server.wait_until(shown, what="the click's acknowledgement")
    return found


async def test_a_final_answer_carries_the_buttons_and_a_click_is_kept(
    guild: Guild, sqlite_store: SqlStore
) -> None:
    server = guild.server
    asked = await server.send_message("Is the sky green?", mention_bot=True)
    answer = await guild.reply_to(asked)

    up, down = _custom_ids(answer)
    assert up.startswith("botservice_feedback:up:")
    assert down == up.replace(":up:", ":down:")
    assert [b["emoji"]["name"] for b in server.buttons(answer)] == ["👍", "👎"]

    click = await server.click_button(answer, down, user=server.alice)
    thanks = await _acknowledgement(server, click)

    assert thanks["content"] == "Thanks for the 👎, noted: it helps make the answers better."
    assert thanks["_ephemeral"]  # only the person who clicked sees it
    summary = await sqlite_store.feedback_summary(datetime.now(UTC) - timedelta(days=1))
    assert [(c.platform, c.channel, c.up, c.down) for c in summary.counts] == [
        ("discord", server.channel_id, 0, 1)
    ]
    [vote] = summary.latest_down
    assert (vote.user_id, vote.answer_ref) == (server.alice.id, answer["id"])


async def test_a_slash_command_answer_carries_the_buttons_too(
    guild: Guild, sqlite_store: SqlStore
) -> None:
    server = guild.server
    command = await server.send_command("ask", [option("prompt", "Name a planet.")])
    original = await guild.original_response(command)

    up, _ = _custom_ids(original)
    click = await server.click_button(original, up)
    thanks = await _acknowledgement(server, click)

    assert thanks["content"] == "Thanks for the 👍, noted."
    summary = await sqlite_store.feedback_summary(datetime.now(UTC) - timedelta(days=1))
    assert [(c.up, c.down) for c in summary.counts] == [(1, 0)]


async def test_a_click_naming_no_answer_here_is_not_kept(
    guild: Guild, sqlite_store: SqlStore
) -> None:
    server = guild.server
    asked = await server.send_message("Hello?", mention_bot=True)
    answer = await guild.reply_to(asked)
    up, _ = _custom_ids(answer)
    real_buttons = answer["components"]

    # An answer whose turn the store no longer has (posted before the database was
    # replaced, say): its button names a turn that does not exist.
    stale = server.messages[answer["id"]]
    stale["components"] = [
        {
            "type": 1,
            "components": [
                {**server.buttons(answer)[0], "custom_id": "botservice_feedback:up:999999"}
            ],
        }
    ]
    forged = await server.click_button(stale, "botservice_feedback:up:999999")
    assert (await _acknowledgement(server, forged))["content"] == (
        "I no longer have that answer, so that click was not kept."
    )
    # A real turn, clicked from another channel (a copied message): not this channel's turn.
    moved = {**answer, "channel_id": server.second_channel_id, "components": real_buttons}
    elsewhere = await server.click_button(moved, up)
    assert "not kept" in (await _acknowledgement(server, elsewhere))["content"]

    summary = await sqlite_store.feedback_summary(datetime.now(UTC) - timedelta(days=1))
    assert summary.counts == []


async def test_notices_carry_no_buttons(guild: Guild) -> None:
    server = guild.server
    command = await server.send_command("help")
    original = await guild.original_response(command)
    assert _custom_ids(original) == []

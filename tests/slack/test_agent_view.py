"""Slack's agent view: the Messages tab opening shows suggested prompts, and the channel a
person looks at beside the app is known (`app_context_changed`)."""

from __future__ import annotations

import asyncio

from botservice.adapters.slack.app import SlackAdapter
from tests.slack.harness import CHANNEL, TEAM, SlackHarness, payload


def _in_view(bot: SlackHarness) -> SlackAdapter:
    assert isinstance(bot.adapter, SlackAdapter)
    return bot.adapter


async def test_opening_the_messages_tab_shows_suggested_prompts(bot: SlackHarness) -> None:
    assert (await bot.event(payload("app_home_opened_messages")))[0] == 200
    await bot.slack.wait_for(lambda: bot.slack.count("assistant.threads.setSuggestedPrompts") == 1)

    [call] = bot.slack.calls_to("assistant.threads.setSuggestedPrompts")
    assert call.args["channel_id"] == "D0BOBDM"
    # An agent app names no thread: Slack silently drops a call that does.
    assert "thread_ts" not in call.args
    assert [p["title"] for p in call.args["prompts"]]


async def test_opening_the_home_tab_suggests_nothing(bot: SlackHarness) -> None:
    home = payload("app_home_opened_messages")
    home["event"]["tab"] = "home"
    assert (await bot.event(home))[0] == 200
    await asyncio.sleep(0.1)
    assert bot.slack.count("assistant.threads.setSuggestedPrompts") == 0


async def test_the_channel_in_view_is_recorded_and_cleared(bot: SlackHarness) -> None:
    adapter = _in_view(bot)
    assert (await bot.event(payload("app_context_changed")))[0] == 200
    assert adapter.in_view.channel_of(TEAM, "UBOB") == CHANNEL

    # A message's context names its channel too.
    on_message = payload("app_context_changed")
    on_message["event_id"] = "Ev0CTX000002"
    on_message["event"]["context"]["entities"] = [
        {
            "type": "slack#/types/message_context",
            "value": {"channel_id": "C0RANDOM", "message_ts": "1767000000.000100"},
        }
    ]
    await bot.event(on_message)
    assert adapter.in_view.channel_of(TEAM, "UBOB") == "C0RANDOM"

    # Looking at no channel (a canvas, say): nothing is in view.
    nothing = payload("app_context_changed")
    nothing["event_id"] = "Ev0CTX000003"
    nothing["event"]["context"] = {}
    await bot.event(nothing)
    assert adapter.in_view.channel_of(TEAM, "UBOB") is None


async def test_the_assistant_view_reports_its_channel_too(bot: SlackHarness) -> None:
    adapter = _in_view(bot)
    changed = payload("assistant_thread_started")
    changed["event"]["type"] = "assistant_thread_context_changed"
    changed["event_id"] = "Ev0ASSIST002"
    await bot.event(changed)
    assert adapter.in_view.channel_of(TEAM, "UBOB") == CHANNEL

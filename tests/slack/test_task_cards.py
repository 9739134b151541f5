"""Tool calls as Slack shows them: task cards in a native stream (assistant and DM
threads), the core's status line anywhere else. Through the real Bolt app, the fake
model asking for the calls and the fake Slack API laying out the streamed message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest_asyncio

from botservice.core.tools import BUILTIN, ToolContext, ToolOutput, ToolSpec
from botservice.storage.repository import SqlStore
from tests.fakes.model_server import CallTool, FakeModelServer, Reply, Slow, ToolCalls
from tests.fakes.slack_api import FakeSlackApi
from tests.remote_tool import jira_tools
from tests.slack.harness import CHANNEL, TEAM, SlackHarness, payload, slack_settings

DM, THREAD = "D0BOBDM", "1767000400.000700"
STREAM_METHODS = ("chat.startStream", "chat.appendStream", "chat.stopStream")
ANSWER = "The wiki says deploys are on Fridays; I could not get the weather."


@dataclass
class WikiAndWeather:
    """Two read-only tools at the edge, as a trusted server would offer them: the wiki
    answers, the weather service is down (its call raises)."""

    name: str = BUILTIN
    trusted: bool = True
    calls: list[str] = field(default_factory=list)
    # How long the wiki takes to answer.
    wiki_seconds: float = 0.0

    def tools(self) -> list[ToolSpec]:
        read_only: dict[str, Any] = {
            "read_only": True,
            "destructive": False,
            "trusted": True,
            "source": BUILTIN,
            "parameters": {"type": "object", "properties": {}},
        }
        return [
            ToolSpec(
                name="wiki",
                description="Search the wiki.",
                status="Searching the wiki…",
                **read_only,
            ),
            ToolSpec(
                name="weather",
                description="The weather.",
                status="Checking the weather…",
                **read_only,
            ),
        ]

    async def call(
        self, name: str, arguments: Mapping[str, Any], context: ToolContext
    ) -> ToolOutput:
        self.calls.append(name)
        if name == "weather":
            raise ConnectionError("weather service unreachable")
        await asyncio.sleep(self.wiki_seconds)
        return ToolOutput("Deploys happen on Fridays.")

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


@pytest_asyncio.fixture
async def tools() -> WikiAndWeather:
    return WikiAndWeather()


@pytest_asyncio.fixture
async def bot(
    slack_api: FakeSlackApi,
    fake_model: FakeModelServer,
    sqlite_store: SqlStore,
    sqlite_database_url: str,
    tools: WikiAndWeather,
) -> AsyncIterator[SlackHarness]:
    settings = slack_settings(
        model_url=fake_model.base_url,
        slack_url=slack_api.base_url,
        database_url=sqlite_database_url,
    )
    harness = await SlackHarness.start(slack_api, settings, sqlite_store, tool_sources=[tools])
    try:
        yield harness
    finally:
        await harness.close()


def _the_model_calls_both_then_answers(fake_model: FakeModelServer) -> None:
    fake_model.script(
        ToolCalls(CallTool("wiki", {}, id="call_wiki"), CallTool("weather", {}, id="call_sky")),
        Reply(ANSWER, chunk_size=12, delay_between_chunks=0.02),
    )


def _question(bot: SlackHarness, text: str) -> dict[str, Any]:
    """A question in Bob's assistant thread."""
    data = payload("message_im_assistant_thread")
    ts = bot.next_ts()
    data["event"].update(text=text, ts=ts, event_ts=ts)
    data["event_id"] = f"Ev{ts.replace('.', '')}A"
    return data


def _card(item: Mapping[str, Any]) -> tuple[str, str, str]:
    return (item["title"], item["status"], item.get("output") or item.get("details") or "")


async def test_a_round_of_two_calls_shows_two_cards_then_the_answer_streams_below_them(
    bot: SlackHarness, fake_model: FakeModelServer, tools: WikiAndWeather
) -> None:
    _the_model_calls_both_then_answers(fake_model)
    await bot.event(_question(bot, "When do we deploy, and will it rain?"))
    await bot.settle()

    (message,) = bot.slack.thread(DM, THREAD)
    assert sorted(tools.calls) == ["weather", "wiki"]
    # What Bob sees, top to bottom: a card per call in the order the model asked,
    # each in its final state, then the answer.
    assert [item["type"] for item in message.timeline] == ["task", "task", "text"]
    assert [_card(card) for card in message.cards] == [
        ("Searching the wiki…", "complete", ""),
        (
            "Checking the weather…",
            "error",
            "The tool failed (ConnectionError); it returned no result.",
        ),
    ]
    assert message.timeline[-1]["text"] == f"{ANSWER}\n\n_Tools used: wiki, weather_"
    # How the cards got there: both started in one call, then each ended on its own.
    updates = message.task_updates
    assert [(u["title"], u["status"]) for u in updates[:2]] == [
        ("Searching the wiki…", "in_progress"),
        ("Checking the weather…", "in_progress"),
    ]
    ends = {u["title"]: u["status"] for u in updates[2:]}
    assert ends == {"Searching the wiki…": "complete", "Checking the weather…": "error"}
    assert len(updates) == 4
    assert len({u["id"] for u in updates}) == 2, "each call keeps one card"
    start = bot.slack.calls_to("chat.startStream")[0].args
    assert [c["type"] for c in start["chunks"]] == ["task_update", "task_update"]
    # One streamed message: no status line posted or edited, no second message.
    assert bot.slack.count("chat.startStream") == 1
    assert bot.slack.count("chat.stopStream") == 1
    assert bot.slack.count("chat.postMessage") == 0
    assert bot.slack.count("chat.update") == 0
    assert "Searching the wiki" not in message.text, "the cards are not the answer's text"
    assert message.text == f"{ANSWER}\n\n_Tools used: wiki, weather_"


async def test_the_weather_error_never_shows_the_tools_own_message(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    _the_model_calls_both_then_answers(fake_model)
    await bot.event(_question(bot, "Will it rain?"))
    await bot.settle()

    (message,) = bot.slack.thread(DM, THREAD)
    shown = str(message.timeline)
    assert "weather service unreachable" not in shown


async def test_in_a_channel_the_round_is_a_status_line_and_no_stream_is_started(
    bot: SlackHarness, fake_model: FakeModelServer, tools: WikiAndWeather
) -> None:
    tools.wiki_seconds = 1.0  # long enough for the status line to be posted
    _the_model_calls_both_then_answers(fake_model)
    mention = bot.mention("when do we deploy, and will it rain?")
    await bot.event(mention)
    await bot.settle()

    (message,) = bot.slack.thread(CHANNEL, mention["event"]["ts"])
    assert "_Searching the wiki…\nChecking the weather…_" in message.texts
    assert message.text == f"{ANSWER}\n\n_Tools used: wiki, weather_"
    assert message.timeline == []
    assert not any(bot.slack.count(m) for m in STREAM_METHODS)


async def test_a_workspace_without_streaming_gets_the_status_line(
    bot: SlackHarness, fake_model: FakeModelServer, tools: WikiAndWeather
) -> None:
    bot.slack.streaming_supported = False
    tools.wiki_seconds = 1.0
    _the_model_calls_both_then_answers(fake_model)
    await bot.event(_question(bot, "When do we deploy?"))
    await bot.settle()

    (message,) = bot.slack.thread(DM, THREAD)
    assert "_Searching the wiki…\nChecking the weather…_" in message.texts
    assert message.text == f"{ANSWER}\n\n_Tools used: wiki, weather_"
    assert bot.slack.count("chat.startStream") == 1, "asked once, refused"
    assert message.cards == []


async def test_words_before_the_calls_stay_above_the_cards(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    # The model takes a moment over its calls, so its words reach Slack's sink first
    # (held for the answer's first post, which the first card then starts instead).
    fake_model.script(
        ToolCalls(
            CallTool("wiki", {}, id="call_wiki"),
            text="Let me look that up. ",
            delay_between_chunks=0.05,
        ),
        Reply("Fridays.", chunk_size=4, delay_between_chunks=0.02),
    )
    await bot.event(_question(bot, "When do we deploy?"))
    await bot.settle()

    (message,) = bot.slack.thread(DM, THREAD)
    assert [(i["type"], i.get("text") or i.get("status")) for i in message.timeline] == [
        ("text", "Let me look that up. "),
        ("task", "complete"),
        ("text", "Fridays.\n\n_Tools used: wiki_"),
    ]
    assert bot.slack.count("chat.update") == 0


async def test_a_stream_that_expires_while_tools_run_continues_by_edits_and_loses_nothing(
    bot: SlackHarness, fake_model: FakeModelServer, tools: WikiAndWeather
) -> None:
    # Slack closes a stream after a pause; here after 0.2 s, and the model takes 0.5 s
    # to begin its answer after the calls.
    bot.slack.stream_idle_seconds = 0.2
    fake_model.script(
        ToolCalls(CallTool("wiki", {}, id="call_wiki")),
        Slow(0.5, then=Reply("Fridays, always.", chunk_size=4, delay_between_chunks=0.02)),
    )
    await bot.event(_question(bot, "When do we deploy?"))
    await bot.settle()

    (message,) = bot.slack.thread(DM, THREAD)
    assert message.text == "Fridays, always.\n\n_Tools used: wiki_", "nothing lost"
    assert bot.slack.count("chat.startStream") == 1
    assert bot.slack.count("chat.update") >= 1, "the expired stream is continued by edits"
    assert bot.slack.count("chat.postMessage") == 0, "no second message"


async def test_a_call_waiting_for_approval_is_a_pending_card_and_no_answer_ends_it(
    slack_api: FakeSlackApi,
    fake_model: FakeModelServer,
    sqlite_store: SqlStore,
    sqlite_database_url: str,
) -> None:
    settings = slack_settings(
        model_url=fake_model.base_url,
        slack_url=slack_api.base_url,
        database_url=sqlite_database_url,
        extra={"BOTSERVICE_TOOLS__CONFIRM_TIMEOUT_SECONDS": "0.3"},
    )
    await sqlite_store.change_setting(
        "slack", TEAM, DM, field="tools", value="+jira__*", changed_by="UADMIN"
    )
    jira = jira_tools()
    bot = await SlackHarness.start(slack_api, settings, sqlite_store, tool_sources=[jira])
    try:
        fake_model.script(
            ToolCalls(CallTool("jira__create_issue", {"title": "Printer on fire"}, id="c1")),
            Reply("I did not file it: nobody approved."),
        )
        await bot.event(_question(bot, "File a ticket: the printer is on fire."))
        await bot.settle()
    finally:
        await bot.close()

    answer, question = bot.slack.thread(DM, THREAD)
    assert [(u["status"], u.get("details") or u.get("output")) for u in answer.task_updates] == [
        ("pending", None),
        ("pending", "Waiting for Bob to approve"),
        (
            "error",
            "The user declined this call (no answer within 0.3 s); it was not run.",
        ),
    ]
    assert [item["type"] for item in answer.timeline] == ["task", "text"]
    assert answer.text.startswith("I did not file it: nobody approved.")
    # The question asked beside the stream has lost its buttons and says why.
    assert question.text == "No answer within 0.3 s: not run."
    assert not [b for b in question.blocks or [] if b["type"] == "actions"]
    assert jira.calls == []


async def test_a_card_update_slack_refused_is_sent_again_with_the_stop(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    # The first call's end is refused (a 429 on chat.appendStream).
    bot.slack.rate_limit_next["chat.appendStream"] = 1
    _the_model_calls_both_then_answers(fake_model)
    await bot.event(_question(bot, "When do we deploy, and will it rain?"))
    await bot.settle()

    (message,) = bot.slack.thread(DM, THREAD)
    assert [card["status"] for card in message.cards] == ["complete", "error"]
    stop = bot.slack.calls_to("chat.stopStream")[0].args
    assert [c["type"] for c in stop["chunks"]][:1] == ["task_update"], "the lost end, again"
    assert message.timeline[-1]["text"] == f"{ANSWER}\n\n_Tools used: wiki, weather_"

"""Approve / Deny in Slack before a tool call runs: the question in the thread, and what
a click on its buttons does (through the real Bolt app, signed `block_actions`)."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio

from botservice.adapters.slack.confirmation import APPROVE_ACTION, DENY_ACTION
from botservice.core.events import ConversationKey
from botservice.core.ports import PendingTurn, abilities_of
from botservice.core.tools import ConfirmationRequest
from botservice.storage.repository import SqlStore
from tests.fakes.model_server import CallTool, FakeModelServer, Reply, ToolCalls
from tests.fakes.slack_api import APP_TOKEN, FakeSlackApi, PostedMessage
from tests.remote_tool import RemoteTools, jira_tools
from tests.slack.harness import CHANNEL, TEAM, SlackHarness, slack_settings

THREAD = "1767100001.000100"


def _request(**changes: Any) -> ConfirmationRequest:
    values: dict[str, Any] = {
        "confirmation_id": 7,
        "tool": "jira__create_issue",
        "arguments": '{"title": "Printer on fire"}',
        "asker_id": "UALICE",
        "asker_name": "Alice",
        "timeout_seconds": 120.0,
    }
    values.update(changes)
    return ConfirmationRequest(**values)


async def _ask(bot: SlackHarness, request: ConfirmationRequest) -> PostedMessage:
    """The question for `request`, asked by the sink the adapter builds for a turn of
    Alice's thread, as Slack shows it."""
    turn = PendingTurn(
        turn_id=1,
        conversation_id=1,
        user_message_id=1,
        platform="slack",
        conversation=ConversationKey("slack", TEAM, CHANNEL, THREAD),
        reply_target={"team": TEAM, "channel": CHANNEL, "thread_ts": THREAD, "user": "UALICE"},
        reply_ref=None,
        created_at=datetime.now(UTC),
    )
    sink = bot.adapter.sink_for(turn)
    assert sink is not None
    confirm = abilities_of(sink).confirm
    assert confirm is not None, "a Slack answer can ask"
    await confirm(request)
    (question,) = bot.slack.thread(CHANNEL, THREAD)
    return question


def _buttons(message: PostedMessage) -> list[dict[str, Any]]:
    assert message.blocks is not None
    return [
        element
        for block in message.blocks
        if block["type"] == "actions"
        for element in block["elements"]
    ]


def _shown(message: PostedMessage) -> str:
    """Every text the message's blocks show, one block a line."""
    assert message.blocks is not None
    lines = []
    for block in message.blocks:
        if block["type"] == "section":
            lines.append(block["text"]["text"])
        elif block["type"] == "context":
            lines.extend(element["text"] for element in block["elements"])
    return "\n".join(lines)


def click_body(
    question: PostedMessage, *, approve: bool = True, user: str = "UALICE", value: str | None = None
) -> dict[str, Any]:
    """A click on the question's Approve (or Deny) button as Slack sends it: the action,
    and the message with its blocks."""
    buttons = _buttons(question)
    button = buttons[0 if approve else 1]
    actions_block = next(b for b in question.blocks or [] if b["type"] == "actions")
    return {
        "type": "block_actions",
        "user": {"id": user, "team_id": TEAM},
        "team": {"id": TEAM, "domain": "fake"},
        "channel": {"id": question.channel, "name": "general"},
        "api_app_id": "A0001",
        "container": {
            "type": "message",
            "message_ts": question.ts,
            "channel_id": question.channel,
            "is_ephemeral": False,
        },
        "message": {
            "type": "message",
            "ts": question.ts,
            "thread_ts": question.thread_ts,
            "text": question.text,
            "blocks": question.blocks,
        },
        "trigger_id": "1.trigger",
        "actions": [
            {
                "type": "button",
                "action_id": button["action_id"],
                "block_id": actions_block["block_id"],
                "value": button["value"] if value is None else value,
                "action_ts": "1767100099.000100",
            }
        ],
    }


async def click(
    bot: SlackHarness,
    question: PostedMessage,
    *,
    approve: bool = True,
    user: str = "UALICE",
    value: str | None = None,
) -> int:
    """A click posted to `/slack/events` as Slack does: a signed form with `payload`."""
    body = click_body(question, approve=approve, user=user, value=value)
    form = urllib.parse.urlencode({"payload": json.dumps(body)}).encode()
    status, _ = await bot.post(form, content_type="application/x-www-form-urlencoded")
    return status


async def test_the_question_names_the_tool_its_arguments_the_asker_and_offers_two_buttons(
    bot: SlackHarness,
) -> None:
    question = await _ask(bot, _request())

    shown = _shown(question)
    assert "`jira__create_issue`" in shown
    assert '`{"title": "Printer on fire"}`' in shown
    assert "Only <@UALICE> can approve this" in shown
    assert "2 minutes" in shown
    approve, deny = _buttons(question)
    assert (approve["action_id"], approve["text"]["text"], approve["value"]) == (
        APPROVE_ACTION,
        "Approve",
        "7",
    )
    assert (deny["action_id"], deny["text"]["text"], deny["value"]) == (DENY_ACTION, "Deny", "7")
    assert "<@UALICE>" in question.text, "the notification names who must decide"
    assert question.metadata is None, "not tagged as the answer's message"


async def test_arguments_cannot_break_out_of_their_code_span_or_mention_anyone(
    bot: SlackHarness,
) -> None:
    question = await _ask(
        bot, _request(arguments='{"body": "`<!channel>` see\\nthis", "x": "a\nb & <@U1>"}')
    )

    arguments = _shown(question).split("Arguments: ", 1)[1].split("\n", 1)[0]
    assert arguments.startswith("`") and arguments.endswith("`")
    assert arguments.count("`") == 2, "a backtick inside would end the span early"
    assert "<!channel>" not in arguments and "&lt;!channel&gt;" in arguments
    assert "&lt;@U1&gt;" in arguments and "&amp;" in arguments


async def test_a_click_with_a_forged_value_is_ignored_and_logged(
    bot: SlackHarness, caplog: pytest.LogCaptureFixture
) -> None:
    question = await _ask(bot, _request())
    caplog.set_level(logging.INFO, logger="botservice.adapters.slack")

    for forged in ("7; DROP TABLE turns", "", "-7", "1e3", "9" * 40):
        assert await click(bot, question, value=forged) == 200

    assert "names no confirmation was ignored" in caplog.text
    assert bot.slack.count("chat.update") == 0 and bot.slack.ephemeral == []
    assert _buttons(question), "the question is left as it was"


# --- through the tool loop: a destructive tool waits for its asker ---------------------


async def _bot_with_jira(
    slack_api: FakeSlackApi,
    fake_model: FakeModelServer,
    store: SqlStore,
    database_url: str,
    jira: RemoteTools,
    **settings: str,
) -> SlackHarness:
    """The Slack bot with a JIRA server's tools, enabled in the channel by its manager."""
    configured = slack_settings(
        model_url=fake_model.base_url,
        slack_url=slack_api.base_url,
        database_url=database_url,
        extra=settings,
    )
    await store.change_setting(
        "slack", TEAM, CHANNEL, field="tools", value="+jira__*", changed_by="UADMIN"
    )
    return await SlackHarness.start(slack_api, configured, store, tool_sources=[jira])


@pytest_asyncio.fixture
async def jira() -> RemoteTools:
    return jira_tools()


@pytest_asyncio.fixture
async def jira_bot(
    slack_api: FakeSlackApi,
    fake_model: FakeModelServer,
    sqlite_store: SqlStore,
    sqlite_database_url: str,
    jira: RemoteTools,
) -> AsyncIterator[SlackHarness]:
    harness = await _bot_with_jira(slack_api, fake_model, sqlite_store, sqlite_database_url, jira)
    try:
        yield harness
    finally:
        await harness.close()


def _the_model_files_a_ticket(fake_model: FakeModelServer) -> None:
    fake_model.script(
        ToolCalls(CallTool("jira__create_issue", {"title": "Printer on fire"}, id="call_jira")),
        Reply("Filed it as JIRA-101."),
    )


async def _question_in(bot: SlackHarness, thread_ts: str) -> PostedMessage:
    def asked() -> PostedMessage | None:
        return next((m for m in bot.slack.thread(CHANNEL, thread_ts) if _buttons_of(m)), None)

    await bot.slack.wait_for(lambda: asked() is not None, what="the question with buttons")
    question = asked()
    assert question is not None
    return question


def _buttons_of(message: PostedMessage) -> list[dict[str, Any]]:
    return [
        element
        for block in message.blocks or []
        if block["type"] == "actions"
        for element in block["elements"]
    ]


def _tool_results(fake_model: FakeModelServer) -> list[dict[str, Any]]:
    """What the model was told of its tool calls in the last request."""
    messages = fake_model.chat_requests[-1].body["messages"]
    return [m for m in messages if m.get("role") == "tool"]


async def test_a_destructive_tool_runs_only_once_its_asker_clicks_approve(
    jira_bot: SlackHarness, fake_model: FakeModelServer, jira: RemoteTools
) -> None:
    bot = jira_bot
    _the_model_files_a_ticket(fake_model)
    mention = bot.mention("file a ticket: the printer is on fire")
    await bot.event(mention)
    thread = mention["event"]["ts"]

    question = await _question_in(bot, thread)
    assert "`jira__create_issue`" in _shown(question)
    assert '`{"title": "Printer on fire"}`' in _shown(question)
    assert jira.calls == [], "nothing runs before the click"

    assert await click(bot, question, approve=True, user="UALICE") == 200
    await bot.slack.wait_for(lambda: question.edits == 1, what="the question edited")
    await bot.settle()

    assert [(c.name, c.arguments, c.user_id) for c in jira.calls] == [
        ("jira__create_issue", {"title": "Printer on fire"}, "UALICE")
    ]
    assert question.text == "✅ Approved by <@UALICE>"
    assert _buttons_of(question) == [], "the buttons are gone"
    assert "`jira__create_issue`" in _shown(question), "what was approved stays readable"
    [result] = _tool_results(fake_model)
    assert (result["tool_call_id"], result["content"]) == ("call_jira", "Created JIRA-101.")
    answer = next(m for m in bot.slack.thread(CHANNEL, thread) if m is not question)
    assert "Filed it as JIRA-101." in answer.text


async def test_deny_keeps_the_tool_from_running_and_the_model_hears_the_user_declined(
    jira_bot: SlackHarness, fake_model: FakeModelServer, jira: RemoteTools
) -> None:
    bot = jira_bot
    _the_model_files_a_ticket(fake_model)
    mention = bot.mention("file a ticket")
    await bot.event(mention)
    question = await _question_in(bot, mention["event"]["ts"])

    assert await click(bot, question, approve=False, user="UALICE") == 200
    await bot.slack.wait_for(lambda: question.edits == 1, what="the question edited")
    await bot.settle()

    assert jira.calls == []
    assert question.text == "🚫 Denied by <@UALICE>"
    assert _buttons_of(question) == []
    [result] = _tool_results(fake_model)
    assert "declined" in result["content"]


async def test_another_persons_click_is_told_whose_it_is_and_decides_nothing(
    jira_bot: SlackHarness, fake_model: FakeModelServer, jira: RemoteTools
) -> None:
    bot = jira_bot
    _the_model_files_a_ticket(fake_model)
    mention = bot.mention("file a ticket")
    await bot.event(mention)
    question = await _question_in(bot, mention["event"]["ts"])

    assert await click(bot, question, approve=True, user="UBOB") == 200
    await bot.slack.wait_for(lambda: bool(bot.slack.ephemeral), what="Bob's private answer")

    [told] = bot.slack.ephemeral
    assert (told["user"], told["text"]) == ("UBOB", "Only <@UALICE> can approve this.")
    assert told["thread_ts"] == mention["event"]["ts"]
    assert question.edits == 0 and _buttons_of(question), "the question is unchanged"
    assert jira.calls == []

    # Alice still decides.
    await click(bot, question, approve=True, user="UALICE")
    await bot.slack.wait_for(lambda: question.edits == 1, what="the question edited")
    await bot.settle()
    assert len(jira.calls) == 1


async def test_a_click_after_the_decision_says_it_was_decided_and_runs_nothing_again(
    jira_bot: SlackHarness, fake_model: FakeModelServer, jira: RemoteTools
) -> None:
    bot = jira_bot
    _the_model_files_a_ticket(fake_model)
    mention = bot.mention("file a ticket")
    await bot.event(mention)
    question = await _question_in(bot, mention["event"]["ts"])
    shown_with_buttons = list(question.blocks or [])
    await click(bot, question, approve=True, user="UALICE")
    await bot.slack.wait_for(lambda: question.edits == 1, what="the question edited")
    await bot.settle()

    # A second click from a client still showing the buttons (a stale screen).
    stale = PostedMessage(question.channel, question.ts, question.text, question.thread_ts)
    stale.blocks = shown_with_buttons
    await click(bot, stale, approve=False, user="UALICE")
    await bot.slack.wait_for(lambda: question.edits == 2, what="the question edited again")

    assert question.text == "This request was already decided or has timed out."
    assert _buttons_of(question) == []
    assert len(jira.calls) == 1


async def test_no_answer_in_time_is_a_denial_the_buttons_go_and_a_late_click_says_so(
    slack_api: FakeSlackApi,
    fake_model: FakeModelServer,
    sqlite_store: SqlStore,
    sqlite_database_url: str,
    jira: RemoteTools,
) -> None:
    bot = await _bot_with_jira(
        slack_api,
        fake_model,
        sqlite_store,
        sqlite_database_url,
        jira,
        BOTSERVICE_TOOLS__CONFIRM_TIMEOUT_SECONDS="0.3",
    )
    try:
        _the_model_files_a_ticket(fake_model)
        mention = bot.mention("file a ticket")
        await bot.event(mention)
        question = await _question_in(bot, mention["event"]["ts"])
        shown_with_buttons = list(question.blocks or [])
        await bot.settle()  # the turn gives up waiting and answers

        [result] = _tool_results(fake_model)
        assert "declined" in result["content"]
        # Nobody clicked: the question says so, and its buttons are gone.
        assert question.edits == 1
        assert question.text == "No answer within 0.3 s: not run."
        assert _buttons_of(question) == []
        assert "`jira__create_issue`" in _shown(question), "what was asked stays readable"
        assert _shown(question).endswith("No answer within 0.3 s: not run.")

        # A click from a screen that still showed the buttons.
        stale = PostedMessage(question.channel, question.ts, question.text, question.thread_ts)
        stale.blocks = shown_with_buttons
        await click(bot, stale, approve=True, user="UALICE")
        await bot.slack.wait_for(lambda: question.edits == 2, what="the question edited")
        assert question.text == "This request was already decided or has timed out."
        assert jira.calls == []
    finally:
        await bot.close()


async def test_a_click_on_a_confirmation_the_bot_does_not_have_has_expired(
    jira_bot: SlackHarness,
) -> None:
    question = await _ask(jira_bot, _request(confirmation_id=999))

    assert await click(jira_bot, question, value="999") == 200
    await jira_bot.slack.wait_for(lambda: bool(jira_bot.slack.ephemeral), what="the answer")

    assert [e["text"] for e in jira_bot.slack.ephemeral] == ["This request has expired."]
    assert question.edits == 0


async def test_approval_after_a_restart_runs_the_tool_once_and_asks_no_second_time(
    slack_api: FakeSlackApi,
    fake_model: FakeModelServer,
    sqlite_store: SqlStore,
    sqlite_database_url: str,
    jira: RemoteTools,
) -> None:
    first = await _bot_with_jira(slack_api, fake_model, sqlite_store, sqlite_database_url, jira)
    _the_model_files_a_ticket(fake_model)
    mention = first.mention("file a ticket")
    await first.event(mention)
    question = await _question_in(first, mention["event"]["ts"])
    # The process dies while the turn waits for the click: its task ends where it is,
    # and the turn stays as the database last saw it.
    await _crash(first)

    restarted = await _bot_with_jira(slack_api, fake_model, sqlite_store, sqlite_database_url, jira)
    try:
        # The buttons shown before the restart still work, then the turn resumes.
        assert await click(restarted, question, approve=True, user="UALICE") == 200
        await restarted.slack.wait_for(lambda: question.edits == 1, what="the question edited")
        assert await restarted.core.resume_pending(restarted.adapter.sink_for) == 1
        await restarted.settle()
    finally:
        await restarted.close()

    assert len(jira.calls) == 1
    asked = [c for c in slack_api.calls_to("chat.postMessage") if APPROVE_ACTION in str(c.args)]
    assert len(asked) == 1, "the resumed turn waits on the question it asked before"
    assert question.text == "✅ Approved by <@UALICE>"
    [result] = _tool_results(fake_model)
    assert result["content"] == "Created JIRA-101."


async def _crash(bot: SlackHarness) -> None:
    """Stop `bot` the way a killed process stops: every task answering a turn ends
    where it is (nothing finishes or is saved), then the adapter goes away."""
    answering = [t for t in asyncio.all_tasks() if t.get_name().startswith("conversation-")]
    for task in answering:
        task.cancel()
    await asyncio.gather(*answering, return_exceptions=True)
    await bot.close()


async def test_a_click_taken_by_another_process_over_socket_mode_lets_the_waiting_turn_go_on(
    slack_api: FakeSlackApi,
    fake_model: FakeModelServer,
    sqlite_store: SqlStore,
    sqlite_database_url: str,
    jira: RemoteTools,
) -> None:
    settings = {"SLACK_APP_TOKEN": APP_TOKEN, "SLACK_SIGNING_SECRET": ""}
    asking = await _bot_with_jira(
        slack_api, fake_model, sqlite_store, sqlite_database_url, jira, **settings
    )
    other = await _bot_with_jira(
        slack_api, fake_model, sqlite_store, sqlite_database_url, jira, **settings
    )
    try:
        await slack_api.wait_for(lambda: slack_api.socket_connections == 2)
        _the_model_files_a_ticket(fake_model)
        mention = asking.mention("file a ticket")
        await slack_api.wait_ack(await slack_api.push(mention, connection=0))
        question = await _question_in(asking, mention["event"]["ts"])

        # The click reaches the other process: it decides; the waiting turn sees it
        # in the database and goes on.
        clicked = click_body(question, approve=True, user="UALICE")
        await slack_api.wait_ack(await slack_api.push(clicked, kind="interactive", connection=1))
        await slack_api.wait_for(lambda: question.edits == 1, what="the question edited")
        await asking.settle()
    finally:
        await asking.close()
        await other.close()

    assert question.text == "✅ Approved by <@UALICE>"
    assert len(jira.calls) == 1
    [result] = _tool_results(fake_model)
    assert result["content"] == "Created JIRA-101."

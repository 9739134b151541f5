"""Approve / Deny in Slack before a tool call runs: the question in the thread, and what
a click on its buttons does (through the real Bolt app, signed `block_actions`)."""

from __future__ import annotations

import json
import urllib.parse
from datetime import UTC, datetime
from typing import Any

from botservice.adapters.slack.confirmation import APPROVE_ACTION, DENY_ACTION
from botservice.core.events import ConversationKey
from botservice.core.ports import PendingTurn, abilities_of
from botservice.core.tools import ConfirmationRequest
from tests.fakes.slack_api import PostedMessage
from tests.slack.harness import CHANNEL, TEAM, SlackHarness

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


async def click(
    bot: SlackHarness,
    question: PostedMessage,
    *,
    approve: bool = True,
    user: str = "UALICE",
    value: str | None = None,
) -> int:
    """A click on the question's Approve (or Deny) button, as Slack posts it: a signed form
    whose payload carries the action and the message with its blocks."""
    buttons = _buttons(question)
    button = buttons[0 if approve else 1]
    actions_block = next(b for b in question.blocks or [] if b["type"] == "actions")
    body = {
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

"""Approve / Deny before a tool call runs, in Slack: the question's blocks, and what a
click on its buttons (`block_actions`) comes to.

The buttons carry the confirmation id as their value and the asker in their block id,
nothing secret; the click goes to `ConversationCore.decide_tool_call`, which alone
decides whether it counts. Nothing is kept per message: the click's payload names the
message to edit, so buttons shown before a restart work after it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botservice.adapters.slack.mrkdwn import escape
from botservice.core.tools import ConfirmationRequest, Decision, unanswered_text

APPROVE_ACTION = "botservice_tool_approve"
DENY_ACTION = "botservice_tool_deny"
# The question's own blocks, kept when the message is edited to say what was decided.
REQUEST_BLOCK = "botservice_tool_request"
# The buttons' block; its id names the asker (`botservice_tool_buttons:U123`), so a
# click by someone else can be told whom to ask without a lookup.
BUTTONS_BLOCK = "botservice_tool_buttons"

ONLY_ASKER = "Only {asker} can approve this."
EXPIRED = "This request has expired."
ALREADY_DECIDED = "This request was already decided or has timed out."
FAILED = "I could not record that click just now; please try again."

# Slack user ids (U…, W… in Enterprise Grid); anything else is never put in a mention.
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,30}$")
# A confirmation id: a row id, so digits only and bounded (a forged value is not parsed).
_CONFIRMATION_ID = re.compile(r"^[0-9]{1,18}$")


def prompt_message(request: ConfirmationRequest) -> tuple[str, list[dict[str, Any]]]:
    """The question for `request` as Slack shows it: (notification text, blocks)."""
    asker = mention(request.asker_id) or escape(request.asker_name)
    question = (
        f"*May I run {code_span(request.tool)}?* {asker} asked for something that needs it.\n"
        f"Arguments: {code_span(request.arguments or '{}')}"
    )
    rule = (
        f"Only {asker} can approve this. No answer within "
        f"{_duration(request.timeout_seconds)} counts as Deny."
    )
    value = str(request.confirmation_id)
    blocks: list[dict[str, Any]] = [
        {
            "type": "section",
            "block_id": REQUEST_BLOCK,
            "text": {"type": "mrkdwn", "text": question},
        },
        {"type": "context", "elements": [{"type": "mrkdwn", "text": rule}]},
        {
            "type": "actions",
            "block_id": f"{BUTTONS_BLOCK}:{request.asker_id}",
            "elements": [
                {
                    "type": "button",
                    "action_id": APPROVE_ACTION,
                    "text": {"type": "plain_text", "text": "Approve"},
                    "style": "primary",
                    "value": value,
                },
                {
                    "type": "button",
                    "action_id": DENY_ACTION,
                    "text": {"type": "plain_text", "text": "Deny"},
                    "style": "danger",
                    "value": value,
                },
            ],
        },
    ]
    text = f"May I run {code_span(request.tool)}? Only {asker} can approve this."
    return text, blocks


def unanswered_message(request: ConfirmationRequest) -> tuple[str, list[dict[str, Any]]]:
    """The question for `request` once nobody answered in time: what was asked stays,
    the buttons give way to what came of it."""
    outcome = unanswered_text(request)
    _, blocks = prompt_message(request)
    kept = [block for block in blocks if block.get("block_id") == REQUEST_BLOCK]
    verdict = {"type": "context", "elements": [{"type": "mrkdwn", "text": outcome}]}
    return outcome, [*kept, verdict]


@dataclass(frozen=True, slots=True)
class ConfirmationClick:
    """A click on Approve or Deny, as read from a `block_actions` payload."""

    confirmation_id: int
    approve: bool
    user_id: str
    channel: str
    # The question's message (edited to show the outcome) and its thread.
    message_ts: str
    thread_ts: str | None
    # Who may decide, as the buttons' block says: only for telling someone else so.
    asker_id: str | None
    # The question's blocks as the click saw them (those kept in the edited message).
    request_blocks: tuple[dict[str, Any], ...]


def read_click(body: Mapping[str, Any]) -> ConfirmationClick | None:
    """The Approve / Deny click in a `block_actions` body; None for anything else, a value
    that is not a confirmation id, or a payload missing who clicked where."""
    if body.get("type") != "block_actions":
        return None
    actions = body.get("actions")
    action = next(
        (
            a
            for a in (actions if isinstance(actions, list) else ())
            if isinstance(a, dict) and a.get("action_id") in (APPROVE_ACTION, DENY_ACTION)
        ),
        None,
    )
    if action is None:
        return None
    value = action.get("value")
    if not isinstance(value, str) or not _CONFIRMATION_ID.match(value):
        return None
    user, channel = _field(body, "user"), _field(body, "channel")
    message, container = _field(body, "message"), _field(body, "container")
    user_id, channel_id = user.get("id"), channel.get("id") or container.get("channel_id")
    message_ts = message.get("ts") or container.get("message_ts")
    if not all(isinstance(v, str) and v for v in (user_id, channel_id, message_ts)):
        return None
    thread_ts = message.get("thread_ts")
    block_id = action.get("block_id")
    asker = (
        block_id.removeprefix(BUTTONS_BLOCK + ":")
        if isinstance(block_id, str) and block_id.startswith(BUTTONS_BLOCK + ":")
        else None
    )
    blocks = message.get("blocks")
    kept = tuple(
        block
        for block in (blocks if isinstance(blocks, list) else ())
        if isinstance(block, dict) and block.get("block_id") == REQUEST_BLOCK
    )
    return ConfirmationClick(
        confirmation_id=int(value),
        approve=action.get("action_id") == APPROVE_ACTION,
        user_id=str(user_id),
        channel=str(channel_id),
        message_ts=str(message_ts),
        thread_ts=thread_ts if isinstance(thread_ts, str) and thread_ts else None,
        asker_id=asker if asker and _USER_ID.match(asker) else None,
        request_blocks=kept,
    )


@dataclass(frozen=True, slots=True)
class PromptEdit:
    """The question's message, edited: the request stays, the buttons go."""

    text: str
    blocks: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class PrivateReply:
    """A message only the clicker sees; the question stays as it is."""

    text: str


def click_outcome(click: ConfirmationClick, decision: Decision) -> PromptEdit | PrivateReply:
    """What the clicker sees once the core has decided."""
    clicker = mention(click.user_id) or "someone"
    if decision == "approved":
        return _edited(click, f"✅ Approved by {clicker}")
    if decision == "denied":
        return _edited(click, f"🚫 Denied by {clicker}")
    if decision == "already_decided":
        return _edited(click, ALREADY_DECIDED)
    if decision == "not_asker":
        asker = mention(click.asker_id) if click.asker_id else None
        return PrivateReply(ONLY_ASKER.format(asker=asker or "the person who asked"))
    return PrivateReply(EXPIRED)


def _edited(click: ConfirmationClick, outcome: str) -> PromptEdit:
    verdict = {"type": "context", "elements": [{"type": "mrkdwn", "text": outcome}]}
    return PromptEdit(text=outcome, blocks=[*click.request_blocks, verdict])


def mention(user_id: str | None) -> str | None:
    """`<@U…>` for a Slack user id; None for anything that is not one."""
    return f"<@{user_id}>" if user_id and _USER_ID.match(user_id) else None


def code_span(text: str) -> str:
    """`text` as inline code that nothing in it can end early or turn into markup."""
    # A backtick would close the span, and a line break ends it in Slack: both are
    # replaced by look-alikes; `&`, `<`, `>` are escaped (Slack reads them inside code).
    flat = " ".join(text.replace("`", "\u02cb").split())
    return "`" + escape(flat) + "`" if flat else "` `"


def _duration(seconds: float) -> str:
    whole = round(seconds)
    if whole >= 120 and whole % 60 == 0:
        return f"{whole // 60} minutes"
    return f"{whole} seconds" if whole != 1 else "1 second"


def _field(body: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = body.get(name)
    return value if isinstance(value, dict) else {}

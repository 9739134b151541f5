"""A click on the 👍 / 👎 buttons under an answer (`block_actions`), as a core click."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botservice.adapters.slack.sink import FEEDBACK_ACTION
from botservice.core.feedback import FeedbackClick, parse_verdict

PLATFORM = "slack"
THANKS = {
    "up": "Thanks for the 👍, noted.",
    "down": "Thanks for the 👎, noted: it helps make the answers better.",
}
GONE = "I no longer have that answer, so that click was not kept."


@dataclass(frozen=True, slots=True)
class FeedbackAction:
    click: FeedbackClick
    # Where the ephemeral thanks goes: the answer's thread.
    thread_ts: str | None


def feedback_action(body: Mapping[str, Any]) -> FeedbackAction | None:
    """The feedback click in a `block_actions` body; None for anything else or junk."""
    if body.get("type") != "block_actions":
        return None
    actions = body.get("actions")
    action = (
        next(
            (
                a
                for a in actions or ()
                if isinstance(a, dict) and a.get("action_id") == FEEDBACK_ACTION
            ),
            None,
        )
        if isinstance(actions, list)
        else None
    )
    if action is None or not isinstance(action.get("value"), str):
        return None
    parsed = parse_verdict(action["value"])
    user, team, channel = body.get("user"), body.get("team"), body.get("channel")
    message = body.get("message") if isinstance(body.get("message"), dict) else {}
    assert isinstance(message, dict)
    user_id = user.get("id") if isinstance(user, dict) else None
    team_id = (team.get("id") if isinstance(team, dict) else None) or (
        user.get("team_id") if isinstance(user, dict) else None
    )
    channel_id = channel.get("id") if isinstance(channel, dict) else None
    if parsed is None or not all(isinstance(v, str) and v for v in (user_id, team_id, channel_id)):
        return None
    verdict, turn_id = parsed
    ts, thread_ts = message.get("ts"), message.get("thread_ts")
    return FeedbackAction(
        click=FeedbackClick(
            turn_id=turn_id,
            platform=PLATFORM,
            workspace=str(team_id),
            channel=str(channel_id),
            user_id=str(user_id),
            verdict=verdict,
            answer_ref=ts if isinstance(ts, str) else "",
        ),
        thread_ts=thread_ts if isinstance(thread_ts, str) else None,
    )

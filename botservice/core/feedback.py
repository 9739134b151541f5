"""Feedback on answers: a person's 👍 or 👎 on one answer, kept with its turn."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

Verdict = Literal["up", "down"]
VERDICTS: tuple[Verdict, ...] = ("up", "down")


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackClick:
    """A click on an answer's feedback button, as the platform reported it."""

    turn_id: int
    platform: str
    workspace: str
    channel: str
    user_id: str
    verdict: Verdict
    # The platform's id of the message clicked (Slack ts, Discord message id).
    answer_ref: str = ""


@dataclass(frozen=True, slots=True)
class FeedbackCount:
    platform: str
    workspace: str
    channel: str
    model: str
    up: int
    down: int


@dataclass(frozen=True, slots=True)
class DownVote:
    """A 👎, newest first in a summary: enough to find the answer again."""

    turn_id: int
    platform: str
    channel: str
    answer_ref: str
    user_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class FeedbackSummary:
    counts: Sequence[FeedbackCount]
    latest_down: Sequence[DownVote]


class FeedbackStore(Protocol):
    async def record_feedback(self, click: FeedbackClick) -> bool:
        """Keep the click (a person's later click on the same answer replaces it).
        False when the turn is not one answered in that workspace and channel."""
        ...

    async def feedback_summary(self, since: datetime, *, latest: int = 10) -> FeedbackSummary:
        """Counts per channel and model since `since`, and the latest 👎s."""
        ...


def parse_verdict(value: str) -> tuple[Verdict, int] | None:
    """A button's value, `up:<turn id>` or `down:<turn id>`; None when malformed."""
    verdict, _, turn = value.partition(":")
    if verdict not in VERDICTS or not turn.isdigit() or len(turn) > 18:
        return None
    return ("up" if verdict == "up" else "down"), int(turn)

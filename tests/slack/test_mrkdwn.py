from __future__ import annotations

import pytest

from adapters.slack.budget import UpdateBudget
from adapters.slack.mrkdwn import markdown_to_mrkdwn


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("**bold** and __bold__", "*bold* and *bold*"),
        ("*italic* and _italic_", "_italic_ and _italic_"),
        ("~~gone~~", "~gone~"),
        ("[docs](https://e.com/a?b=1&c=2)", "<https://e.com/a?b=1&amp;c=2|docs>"),
        ("# Heading", "*Heading*"),
        ("- one\n* two\n  + three", "• one\n• two\n  • three"),
        ("1. first", "1. first"),
        ("a < b & c > d", "a &lt; b &amp; c &gt; d"),
        ("> quoted **text**", "> quoted *text*"),
        ("`**not bold**`", "`**not bold**`"),
        ("```python\nx = a**2 < 3\n```", "```\nx = a**2 &lt; 3\n```"),
        ("snake_case_name stays", "snake_case_name stays"),
        ("```\nunclosed", "```\nunclosed\n```"),
    ],
)
def test_markdown_to_mrkdwn(markdown: str, mrkdwn: str) -> None:
    assert markdown_to_mrkdwn(markdown) == mrkdwn


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_budget_never_exceeds_the_limit_in_a_minute_and_saves_room_for_finals() -> None:
    clock = Clock()
    budget = UpdateBudget(per_minute=50, burst=15, clock=clock)
    for _ in range(10):
        budget.opened("T1")
    taken = 0
    for _ in range(600):  # ten replies asking once a second for a minute
        clock.now += 0.1
        taken += budget.try_take("T1")
    assert taken + 10 <= 50, "room left for the ten final edits"
    assert budget.try_take("T2"), "workspaces have their own budget"


async def test_final_edit_waits_for_a_token() -> None:
    clock = Clock()
    budget = UpdateBudget(per_minute=50, burst=1, clock=clock, max_wait_seconds=0.0)
    await budget.take("T1")
    await budget.take("T1")  # over budget: goes anyway after max_wait

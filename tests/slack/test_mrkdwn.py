from __future__ import annotations

import pytest

from adapters.slack.budget import UpdateBudget
from adapters.slack.mrkdwn import markdown_to_mrkdwn, split_message


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


def test_short_text_is_one_message() -> None:
    assert split_message("hello", 100) == ["hello"]


def test_split_prefers_paragraphs_and_keeps_code_whole() -> None:
    text = "intro paragraph\n\n" + "```\n" + "\n".join(["code line"] * 5) + "\n```\n\nafter"
    chunks = split_message(text, 70)
    assert all(len(c) <= 70 for c in chunks)
    code = "```\n" + "\n".join(["code line"] * 5) + "\n```"
    assert any(code in c for c in chunks), "the code block travels whole"
    assert all(c.count("```") % 2 == 0 for c in chunks)
    assert "".join(chunks).replace("\n", "") == text.replace("\n", "")


def test_oversized_code_block_is_closed_and_reopened() -> None:
    text = "```\n" + "\n".join(f"line {i}" for i in range(100)) + "\n```"
    chunks = split_message(text, 200)
    assert len(chunks) > 1
    for chunk in chunks:
        assert len(chunk) <= 200
        assert chunk.startswith("```\n") and chunk.endswith("\n```")


def test_a_word_longer_than_the_limit_is_cut() -> None:
    chunks = split_message("x" * 250, 100)
    assert [len(c) for c in chunks] == [100, 100, 50]


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

"""The per-workspace `chat.update` budget: inside Slack's Tier 3, final texts first."""

from __future__ import annotations

import asyncio
import time

from botservice.adapters.slack.budget import UpdateBudget


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_budget_never_exceeds_the_limit_in_a_minute_and_saves_room_for_finals() -> None:
    clock = Clock()
    budget = UpdateBudget(per_minute=50, clock=clock)
    for _ in range(10):
        budget.opened("T1")
    taken = 0
    for _ in range(600):  # ten replies asking once a second for a minute
        clock.now += 0.1
        taken += budget.try_take("T1")
    assert taken + 10 <= 50, "room left for the ten final edits"
    assert budget.try_take("T2"), "workspaces have their own budget"


def test_no_window_ever_holds_more_than_the_limit() -> None:
    clock = Clock()
    budget = UpdateBudget(per_minute=50, clock=clock)
    budget.opened("T1")
    times: list[float] = []
    for _ in range(3000):  # five minutes of asking ten times a second
        clock.now += 0.1
        if budget.try_take("T1"):
            times.append(clock.now)
    assert times
    for i, start in enumerate(times):
        assert sum(1 for t in times[i:] if t - start < 60) <= 50


async def test_intermediate_edits_of_others_never_delay_a_final_text() -> None:
    clock = Clock()
    budget = UpdateBudget(per_minute=50, clock=clock)
    for _ in range(20):
        budget.opened("T1")
    for _ in range(1000):  # twenty replies asking for edits as fast as they can
        budget.try_take("T1")
    # Every open reply's final edit finds its slot at once (the clock never moves:
    # a final that had to wait would never return).
    for _ in range(20):
        await asyncio.wait_for(budget.take("T1"), 0.5)
        budget.closed("T1")
    assert budget.used("T1") <= 50


async def test_a_final_edit_waits_for_a_slot_only_when_finals_filled_the_window() -> None:
    budget = UpdateBudget(per_minute=3, headroom=0, window_seconds=0.3)
    for _ in range(3):
        await budget.take("T1")
    assert not budget.try_take("T1"), "no intermediate edit in a full window"
    started = time.monotonic()
    await budget.take("T1")
    assert time.monotonic() - started >= 0.25

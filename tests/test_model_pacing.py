"""Model-aware rate limits: calls are paced under what the endpoint's x-ratelimit
headers (or the config) allow, in order, before a 429 happens."""

from __future__ import annotations

import asyncio

from botservice.core.conversation import ConversationCore
from botservice.core.pacing import ModelPacer
from botservice.core.ports import RateLimits
from botservice.model.client import OpenAIChatClient, parse_duration, read_rate_limits
from botservice.storage.repository import SqlStore
from tests.chat_kit import Chat, RecordingSink, settings_for
from tests.fakes.model_server import FakeModelServer


async def test_a_burst_of_50_turns_under_20_requests_a_window_meets_no_429_and_keeps_order(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    # The fake's "minute" lasts 2 s, so the test takes three of them, not three minutes.
    fake_model.rate_limit = (20, 2.0)
    settings = settings_for(
        fake_model.base_url,
        limits__messages_per_minute="0",
        model__read_timeout_seconds="20",
    )
    client = OpenAIChatClient(settings.model)
    core = ConversationCore(settings=settings, store=sqlite_store, model=client)
    chat = Chat(core)
    sinks = [RecordingSink() for _ in range(50)]
    try:
        submissions = []
        for n, sink in enumerate(sinks):
            message = chat.message(f"question {n}", thread=f"T{n}", user=f"U{n}")
            submission = await core.submit(message, sink)
            assert submission is not None
            submissions.append(submission)
        await asyncio.wait_for(asyncio.gather(*(s.answered for s in submissions)), 30)
    finally:
        await core.stop()
        await client.aclose()

    assert fake_model.rate_limited == 0
    assert [sink.final for sink in sinks] == [f"You said: question {n}" for n in range(50)]
    asked = [int(r.last_user_text.split()[1]) for r in fake_model.chat_requests]
    assert sorted(asked) == list(range(50))
    # Three windows of the fake, none crowded: twenty, twenty, ten.
    started = [r.received_at for r in fake_model.chat_requests]
    windows: list[list[int]] = [[], [], []]
    for at, turn in zip(started, asked, strict=True):
        windows[min(2, int((at - started[0]) / 2.0))].append(turn)
    assert [len(window) for window in windows] == [20, 20, 10]
    assert started[40] - started[0] >= 2 * 2.0 - 0.1
    # The first window's twenty go as they reach the gate and the pacer (each turn
    # reads the database first, so under load a later turn may get there before an
    # earlier one has: it takes a free place, it does not wait). Every turn that had
    # to wait went in the order the turns were taken: all of the second window's
    # before any of the third's. (Within a window the calls are let go together, so
    # which of two reaches the server first is a race.)
    assert max(windows[1]) < min(windows[2])
    # Those that waited a window or more were told, as a status line, about how long.
    waited = [sink.statuses for sink in sinks if sink.statuses]
    assert waited, "nobody was told about the wait"
    assert all(
        len(lines) == 1 and lines[0].startswith("Waiting for capacity on gpt-4o-mini… about ")
        for lines in waited
    )
    assert all("Waiting" not in sink.final for sink in sinks)


async def test_a_wait_shows_through_update_on_a_sink_without_a_status_line(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    fake_model.rate_limit = (1, 1.5)
    settings = settings_for(fake_model.base_url, limits__messages_per_minute="0")
    client = OpenAIChatClient(settings.model)
    core = ConversationCore(settings=settings, store=sqlite_store, model=client)

    class EditingSink(RecordingSink):
        status = None  # type: ignore[assignment]  # this platform cannot show a status line

    try:
        chat = Chat(core)
        first = await chat.say("one", thread="A")
        second = EditingSink()
        await core.handle(chat.message("two", thread="B"), second)
    finally:
        await core.stop()
        await client.aclose()
    assert first.final == "You said: one"
    assert fake_model.rate_limited == 0
    assert second.updates[0].startswith("_Waiting for capacity on gpt-4o-mini… about ")
    assert second.final == "You said: two"


def test_rate_limit_headers_are_read_in_openais_formats() -> None:
    import httpx

    limits = read_rate_limits(
        httpx.Headers(
            {
                "x-ratelimit-limit-requests": "500",
                "x-ratelimit-remaining-requests": "499",
                "x-ratelimit-reset-requests": "120ms",
                "x-ratelimit-limit-tokens": "30000",
                "x-ratelimit-remaining-tokens": "29000",
                "x-ratelimit-reset-tokens": "6m0s",
            }
        )
    )
    assert limits == RateLimits(500, 499, 0.12, 30000, 29000, 360.0)
    assert read_rate_limits(httpx.Headers({"content-type": "text/event-stream"})) is None
    assert parse_duration("1h2m3.5s") == 3723.5
    assert parse_duration("0.5") == 0.5
    assert parse_duration("soon") is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_requests_per_minute_from_config_pace_without_any_headers() -> None:
    settings = settings_for(
        "http://127.0.0.1:9/v1", model_defaults__requests_per_minute="3", model__name="local"
    )
    clock = Clock()
    pacer = ModelPacer(settings, clock=clock)
    tickets = [await pacer.admit("local", 10) for _ in range(1)]
    pacer.observe(tickets[0], None, answered=True)  # a local server: no headers
    clock.now += 10
    tickets += [await pacer.admit("local", 10) for _ in range(2)]
    for ticket in tickets[1:]:
        pacer.observe(ticket, None, answered=True)

    fourth = asyncio.ensure_future(pacer.admit("local", 10))
    fifth = asyncio.ensure_future(pacer.admit("local", 10))
    await asyncio.sleep(0.05)
    assert not fourth.done()
    assert 49 <= pacer.expected_wait("local", 10) <= 111

    clock.now += 50.01  # a minute after the first call, it leaves the window
    pacer.observe(tickets[0], None, answered=True)  # any answer makes the queue look again
    ticket = await asyncio.wait_for(fourth, 1)
    assert not fifth.done()  # the next two calls of that minute are still in it
    fifth.cancel()
    assert ticket.model == "local"


async def test_a_token_limit_from_headers_holds_back_a_call_too_large_for_what_is_left() -> None:
    settings = settings_for("http://127.0.0.1:9/v1")
    clock = Clock()
    pacer = ModelPacer(settings, clock=clock)
    first = await pacer.admit("gpt-4o", 1000)
    pacer.observe(
        first,
        RateLimits(
            limit_requests=100,
            remaining_requests=99,
            reset_requests_seconds=0.6,
            limit_tokens=5000,
            remaining_tokens=1500,
            reset_tokens_seconds=42.0,
        ),
        answered=True,
    )
    await pacer.admit("gpt-4o", 1000)  # fits in the 1,500 left
    held = asyncio.ensure_future(pacer.admit("gpt-4o", 1000))
    await asyncio.sleep(0.05)
    assert not held.done()
    assert 41 <= pacer.expected_wait("gpt-4o", 1000) <= 43
    clock.now += 42
    pacer.observe(first, None, answered=False)
    await asyncio.wait_for(held, 1)


async def test_an_answer_that_has_not_counted_an_earlier_call_yet_does_not_add_room() -> None:
    # Calls reach the endpoint in another order than they were sent: the answer to the
    # third call can come back counting itself but not the second, still on its way.
    settings = settings_for("http://127.0.0.1:9/v1")
    clock = Clock()
    pacer = ModelPacer(settings, clock=clock)
    limits = {"limit_requests": 4, "reset_requests_seconds": 10.0}
    first = await pacer.admit("gpt-4o", 10)
    pacer.observe(first, RateLimits(remaining_requests=3, **limits), answered=True)
    await pacer.admit("gpt-4o", 10)  # the second: still on its way
    third = await pacer.admit("gpt-4o", 10)
    pacer.observe(third, RateLimits(remaining_requests=2, **limits), answered=True)

    await pacer.admit("gpt-4o", 10)  # the fourth of four: fits
    fifth = asyncio.ensure_future(pacer.admit("gpt-4o", 10))
    await asyncio.sleep(0.05)

    assert not fifth.done()  # the endpoint has counted four by now: no room till the reset
    assert 9 <= pacer.expected_wait("gpt-4o", 10) <= 10
    fifth.cancel()

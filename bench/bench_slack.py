"""Benchmark for the Slack adapter (issue 3). Prints a table; not a test.

- Slack Web API calls per answered follow-up in a thread the bot already
  answered (expected: no thread reads, one post plus the throttled updates).
- Added latency from a signed request in to the first `chat.postMessage` at the
  fake Slack API: median and p99 at 20 concurrent threads, instant fake model.

- Against the fake Slack with Slack's rate-limit tiers enforced (429 with
  Retry-After beyond them), the production edit interval (1 s) and the instant
  fake model: 20 follow-ups back to back in one thread (each sent once the
  previous answer is shown) and 20 mentions at once in one channel, signed
  request in -> final text shown; with the 429s the bot was sent.

Everything runs on 127.0.0.1: real Bolt + aiohttp, SQLite, the fake model
server and the fake Slack Web API from tests/fakes.

    python -m bench.bench_slack [--threads 20] [--rounds 10] [--follow-ups 20]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botservice.storage.engine import create_engine
from botservice.storage.migrate import upgrade
from botservice.storage.repository import SqlStore
from tests.fakes.model_server import FakeModelServer
from tests.fakes.slack_api import FakeSlackApi
from tests.slack.harness import CHANNEL, SlackHarness, slack_settings


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def _first_post_at(slack: FakeSlackApi, channel: str, thread_ts: str) -> float:
    await slack.wait_for(
        lambda: any(
            c.method == "chat.postMessage"
            and c.args.get("channel") == channel
            and c.args.get("thread_ts") == thread_ts
            for c in slack.calls
        ),
        within=30,
    )
    return next(
        c.at
        for c in slack.calls
        if c.method == "chat.postMessage"
        and c.args.get("channel") == channel
        and c.args.get("thread_ts") == thread_ts
    )


def _final_shown_at(slack: FakeSlackApi, channel: str, thread_ts: str, final: str) -> float | None:
    for message in slack.thread(channel, thread_ts):
        for at, text in message.shown:
            if text == final:
                return at
    return None


async def _wait_final(slack: FakeSlackApi, channel: str, thread_ts: str, final: str) -> float:
    await slack.wait_for(
        lambda: _final_shown_at(slack, channel, thread_ts, final) is not None,
        within=120,
        what=f"final text {final!r}",
    )
    at = _final_shown_at(slack, channel, thread_ts, final)
    assert at is not None
    return at


@dataclass
class TieredFigures:
    follow_ups: list[float] = field(default_factory=list)
    follow_up_calls: collections.Counter[str] = field(default_factory=collections.Counter)
    follow_up_429s: int = 0
    at_once: list[float] = field(default_factory=list)
    at_once_calls: collections.Counter[str] = field(default_factory=collections.Counter)
    at_once_429s: int = 0


async def run_tiered(follow_ups: int, at_once: int) -> TieredFigures:
    """The two rows of issue 14, against Slack's tiers."""
    figures = TieredFigures()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        await upgrade(url)
        slack = FakeSlackApi(enforce_tiers=True)
        slack.add_user("UALICE", "Alice")
        model = FakeModelServer()
        await slack.start()
        await model.start()
        store = SqlStore(create_engine(url))
        settings = slack_settings(
            model_url=model.base_url,
            slack_url=slack.base_url,
            database_url=url,
            extra={
                "BOTSERVICE_CONVERSATION__STREAM_UPDATE_INTERVAL_SECONDS": "1.0",
                "BOTSERVICE_LIMITS__MESSAGES_PER_MINUTE": "0",
            },
        )
        bot = await SlackHarness.start(slack, settings, store)
        try:
            mention = bot.mention("start")
            root = mention["event"]["ts"]
            await bot.event(mention)
            await bot.settle()
            before, limited = len(slack.calls), slack.rate_limited
            for i in range(follow_ups):
                start = time.monotonic()
                await bot.event(bot.reply(f"follow-up {i}", thread_ts=root))
                shown = await _wait_final(slack, CHANNEL, root, f"You said: follow-up {i}")
                figures.follow_ups.append(shown - start)
            await bot.settle()
            figures.follow_up_calls.update(c.method for c in slack.calls[before:])
            figures.follow_up_429s = slack.rate_limited - limited

            before, limited = len(slack.calls), slack.rate_limited
            mentions = [bot.mention(f"at once {i}") for i in range(at_once)]

            async def one(i: int, event: dict[str, Any]) -> float:
                start = time.monotonic()
                status, _ = await bot.event(event)
                assert status == 200
                ts = event["event"]["ts"]
                return await _wait_final(slack, CHANNEL, ts, f"You said: at once {i}") - start

            figures.at_once = list(
                await asyncio.gather(*(one(i, e) for i, e in enumerate(mentions)))
            )
            await bot.settle()
            figures.at_once_calls.update(c.method for c in slack.calls[before:])
            figures.at_once_429s = slack.rate_limited - limited
        finally:
            await bot.close()
            await store.aclose()
            await model.stop()
            await slack.close()
    return figures


def _calls(counter: collections.Counter[str], answers: int) -> str:
    return ", ".join(f"{n / answers:.2f} {method}" for method, n in sorted(counter.items()))


async def run(threads: int, rounds: int, follow_ups: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        await upgrade(url)
        slack = FakeSlackApi()
        slack.add_user("UALICE", "Alice")
        model = FakeModelServer()
        await slack.start()
        await model.start()
        store = SqlStore(create_engine(url))
        settings = slack_settings(
            model_url=model.base_url,
            slack_url=slack.base_url,
            database_url=url,
            extra={
                "BOTSERVICE_CONVERSATION__STREAM_UPDATE_INTERVAL_SECONDS": "1.0",
                # One person sends the whole load; the per-person rate is not measured here.
                "BOTSERVICE_LIMITS__MESSAGES_PER_MINUTE": "0",
            },
        )
        bot = await SlackHarness.start(slack, settings, store)
        try:
            # --- calls per follow-up ---
            mention = bot.mention("start")
            root = mention["event"]["ts"]
            await bot.event(mention)
            await bot.settle()
            before = len(slack.calls)
            for i in range(follow_ups):
                await bot.event(bot.reply(f"follow-up {i}", thread_ts=root))
                await bot.settle()
            per_method = collections.Counter(c.method for c in slack.calls[before:])

            # --- latency at N concurrent threads ---
            samples: list[float] = []
            for round_ in range(rounds):
                events = [
                    bot.mention(f"q{round_}-{i}", channel=f"C{round_:02d}{i:03d}")
                    for i in range(threads)
                ]

                async def one(event: dict[str, object]) -> float:
                    inner = event["event"]
                    assert isinstance(inner, dict)
                    start = time.monotonic()
                    status, _ = await bot.event(event)
                    assert status == 200
                    posted = await _first_post_at(slack, inner["channel"], inner["ts"])
                    return posted - start

                samples += await asyncio.gather(*(one(e) for e in events))
                await bot.settle()
        finally:
            await bot.close()
            await store.aclose()
            await model.stop()
            await slack.close()

    print("Slack adapter benchmark (127.0.0.1 fakes, SQLite, instant model)")
    print()
    print(f"Web API calls per answered follow-up (mean of {follow_ups})")
    print(f"  {'method':<28}{'calls':>8}")
    for method in ("conversations.replies", "users.info", "chat.postMessage", "chat.update"):
        print(f"  {method:<28}{per_method[method] / follow_ups:>8.2f}")
    others = sum(
        n
        for m, n in per_method.items()
        if m not in ("conversations.replies", "users.info", "chat.postMessage", "chat.update")
    )
    print(f"  {'other':<28}{others / follow_ups:>8.2f}")
    print()
    print(
        f"Signed request in -> first chat.postMessage ({threads} concurrent threads, "
        f"{len(samples)} samples)"
    )
    print(f"  {'median':<28}{statistics.median(samples) * 1000:>8.1f} ms")
    print(f"  {'p99':<28}{_percentile(samples, 0.99) * 1000:>8.1f} ms")
    print(f"  {'max':<28}{max(samples) * 1000:>8.1f} ms")

    tiered = await run_tiered(follow_ups, threads)
    print()
    print("Slack's tiers enforced (429 + Retry-After), edit interval 1 s: request in -> final text")
    print(f"  {'row':<34}{'p50':>9}{'p99':>9}{'max':>9}{'429s':>6}  calls per answer")
    for name, values, calls, limited in (
        (
            f"{follow_ups} follow-ups back to back",
            tiered.follow_ups,
            tiered.follow_up_calls,
            tiered.follow_up_429s,
        ),
        (f"{threads} mentions at once", tiered.at_once, tiered.at_once_calls, tiered.at_once_429s),
    ):
        print(
            f"  {name:<34}{statistics.median(values) * 1000:>6.0f} ms"
            f"{_percentile(values, 0.99) * 1000:>6.0f} ms{max(values) * 1000:>6.0f} ms"
            f"{limited:>6}  {_calls(calls, len(values))}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--follow-ups", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(args.threads, args.rounds, args.follow_ups))


if __name__ == "__main__":
    main()

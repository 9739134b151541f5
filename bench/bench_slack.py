"""Benchmark for the Slack adapter (issue 3). Prints a table; not a test.

- Slack Web API calls per answered follow-up in a thread the bot already
  answered (expected: no thread reads, one post plus the throttled updates).
- Added latency from a signed request in to the first `chat.postMessage` at the
  fake Slack API: median and p99 at 20 concurrent threads, instant fake model.

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
from pathlib import Path

from botservice.storage.engine import create_engine
from botservice.storage.migrate import upgrade
from botservice.storage.repository import SqlStore
from tests.fakes.model_server import FakeModelServer
from tests.fakes.slack_api import FakeSlackApi
from tests.slack.harness import SlackHarness, slack_settings


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

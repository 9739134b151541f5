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
from tests.fakes.model_server import FakeModelServer, Reply
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
class Row:
    name: str
    seconds: list[float] = field(default_factory=list)
    calls: collections.Counter[str] = field(default_factory=collections.Counter)
    rate_limited: int = 0
    # CPU time of this whole process (bot, fakes and sender share it) during the
    # row: on a shared machine, wall time is this divided by the CPU share it got.
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0


LONG_WORDS, LONG_CHUNK, LONG_DELAY = 60, 12, 0.05


def _long_answer(tag: str) -> str:
    return " ".join(f"{tag}w{j}" for j in range(LONG_WORDS))


async def run_tiered(follow_ups: int, at_once: int) -> list[Row]:
    """Issue 14's rows, against Slack's tiers: request in -> final text for instant
    answers; the model's last byte -> final text for answers streamed over ~1.5 s."""
    rows: list[Row] = []
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

        cpu, wall = time.process_time(), time.monotonic()

        def measured(row: Row, before: int, limited: int) -> Row:
            nonlocal cpu, wall
            row.calls.update(c.method for c in slack.calls[before:])
            row.rate_limited = slack.rate_limited - limited
            row.cpu_seconds = time.process_time() - cpu
            row.wall_seconds = time.monotonic() - wall
            rows.append(row)
            return row

        def restart_clock() -> None:
            nonlocal cpu, wall
            cpu, wall = time.process_time(), time.monotonic()

        try:
            mention = bot.mention("start")
            root = mention["event"]["ts"]
            await bot.event(mention)
            await bot.settle()

            restart_clock()
            row, before, limited = (
                Row(f"{follow_ups} follow-ups back to back"),
                len(slack.calls),
                slack.rate_limited,
            )
            for i in range(follow_ups):
                start = time.monotonic()
                await bot.event(bot.reply(f"follow-up {i}", thread_ts=root))
                shown = await _wait_final(slack, CHANNEL, root, f"You said: follow-up {i}")
                row.seconds.append(shown - start)
            await bot.settle()
            measured(row, before, limited)

            restart_clock()
            row, before, limited = (
                Row(f"{at_once} mentions at once"),
                len(slack.calls),
                slack.rate_limited,
            )
            mentions = [bot.mention(f"at once {i}") for i in range(at_once)]

            async def one(i: int, event: dict[str, Any]) -> float:
                start = time.monotonic()
                status, _ = await bot.event(event)
                assert status == 200
                ts = event["event"]["ts"]
                return await _wait_final(slack, CHANNEL, ts, f"You said: at once {i}") - start

            row.seconds = list(await asyncio.gather(*(one(i, e) for i, e in enumerate(mentions))))
            await bot.settle()
            measured(row, before, limited)

            for where in ("channel threads", "DM threads"):
                tag = "c" if where == "channel threads" else "d"
                answers = [_long_answer(f"{tag}{i}") for i in range(at_once)]
                model.script(
                    *(
                        Reply(a, chunk_size=LONG_CHUNK, delay_between_chunks=LONG_DELAY)
                        for a in answers
                    )
                )
                if tag == "c":
                    # A channel of its own: Slack takes about one post a second per
                    # channel (60 a minute in the fake), and the rows above used CHANNEL.
                    events = [
                        bot.mention(f"long {tag}{i}", channel="C0LONG") for i in range(at_once)
                    ]
                else:
                    events = [
                        bot.direct(f"long {tag}{i}", user="UALICE", thread_ts=bot.next_ts())
                        for i in range(at_once)
                    ]
                restart_clock()
                row = Row(f"{at_once} long answers at once, {where}")
                before, limited = len(slack.calls), slack.rate_limited
                requests_before = len(model.chat_requests)
                await asyncio.gather(*(bot.event(e) for e in events))
                await bot.settle()
                # The fake model gives the script's answers in the order requests arrive.
                by_text = {f"long {tag}{i}": e for i, e in enumerate(events)}
                for request, answer in zip(
                    model.chat_requests[requests_before:], answers, strict=True
                ):
                    inner = by_text[request.last_user_text]["event"]
                    thread = inner.get("thread_ts") or inner["ts"]
                    shown = await _wait_final(slack, inner["channel"], thread, answer)
                    assert request.finished_at is not None
                    row.seconds.append(shown - request.finished_at)
                measured(row, before, limited)
        finally:
            await bot.close()
            await store.aclose()
            await model.stop()
            await slack.close()
    return rows


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

    rows = await run_tiered(follow_ups, threads)
    print()
    print("Slack's tiers enforced (429 + Retry-After), edit interval 1 s")
    print("  instant answers: request in -> final text shown;")
    print("  long answers (~1.5 s streams): the model's last byte -> final text shown")
    print(
        f"  {'row':<44}{'p50':>9}{'p99':>9}{'max':>9}{'429s':>6}{'CPU/wall':>10}  calls per answer"
    )
    for row in rows:
        values = row.seconds
        print(
            f"  {row.name:<44}{statistics.median(values) * 1000:>6.0f} ms"
            f"{_percentile(values, 0.99) * 1000:>6.0f} ms{max(values) * 1000:>6.0f} ms"
            f"{row.rate_limited:>6}{row.cpu_seconds / max(row.wall_seconds, 1e-9):>10.2f}"
            f"  {_calls(row.calls, len(values))}"
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

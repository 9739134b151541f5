"""A lone Slack sender that times acknowledgements in a process that does nothing else.

The cross-check for bench_scale_out's ack column: while the benchmark's driver
sends its load, this process sends its own signed messages, one every `--gap`
seconds whether or not the last one was acknowledged (as Slack does), each
once, to a random bot, and times each acknowledgement. It reads nothing and
serves nothing, and a few requests at a time are all it has open, so its figure
is what the bots make a caller wait, not what a busy sender adds.

Messages go round-robin over `--threads` threads of their own (thread numbers
from `--first-thread`, timestamps from `--first-ts`, so they meet none of the
driver's conversations): a mention opens each thread, follow-ups come after.

    python -m bench.ack_probe --url http://127.0.0.1:PORT [--url ...] [--gap 0.2]

Prints "READY", sends until stdin closes (or `--count` messages), then prints one JSON line:
{"acks": [seconds, ...], "failed": n}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

import aiohttp

from tests.scale_out import Question
from tests.slack.harness import sign


async def _post(session: aiohttp.ClientSession, url: str, question: Question) -> float | None:
    body = json.dumps(question.event()).encode()
    headers = {"Content-Type": "application/json", **sign(body)}
    started = time.monotonic()
    try:
        async with session.post(
            f"{url}/slack/events", data=body, headers=headers, timeout=aiohttp.ClientTimeout(15)
        ) as response:
            await response.read()
            if response.status != 200:
                return None
    except (aiohttp.ClientError, TimeoutError):
        return None
    return time.monotonic() - started


async def _probe(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    stop = asyncio.create_task(stdin.read())
    rng = random.Random(args.seed)
    roots: dict[int, str] = {}
    posts: list[asyncio.Task[float | None]] = []
    async with aiohttp.ClientSession() as session:
        print("READY", flush=True)
        for n in range(args.count):
            if stop.done():
                break
            thread = args.first_thread + n % args.threads
            ts = f"{args.first_ts + n}.000100"
            root = roots.setdefault(thread, ts)
            question = Question(thread, n // args.threads, ts, root)
            posts.append(asyncio.create_task(_post(session, rng.choice(args.url), question)))
            await asyncio.wait([stop], timeout=args.gap)
        results = await asyncio.gather(*posts)
    stop.cancel()
    acks = [seconds for seconds in results if seconds is not None]
    print(json.dumps({"acks": acks, "failed": len(results) - len(acks)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", action="append", required=True, help="a bot's base URL")
    parser.add_argument("--gap", type=float, default=0.2, help="seconds between messages")
    parser.add_argument("--threads", type=int, default=10)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--first-thread", type=int, default=100_000)
    parser.add_argument("--first-ts", type=int, default=1_767_900_000)
    parser.add_argument("--seed", type=int, default=1)
    asyncio.run(_probe(parser.parse_args()))


if __name__ == "__main__":
    main()

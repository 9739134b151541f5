"""Discord adapter benchmark: added latency from gateway dispatch to the first REST message call.

Runs the real adapter (discord.py client, core, SQLite store) against the fake Discord
gateway + REST server and the instant fake model, all on 127.0.0.1. Each round mentions
the bot in N channels at once; for every mention it measures, at the fake:

- dispatch -> first REST message call (the reply appearing, as a placeholder),
- dispatch -> first text (the first edit showing the model's words),
- dispatch -> final text,

and counts the REST calls each answer cost.

    python -m bench.bench_discord [--channels 20] [--rounds 25]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from botservice.adapters.discord import create_adapter
from botservice.app.config import load_settings
from botservice.core.conversation import ConversationCore
from botservice.core.settings import DiscordSettings
from botservice.model.client import OpenAIChatClient
from botservice.storage.engine import create_engine
from botservice.storage.migrate import upgrade
from botservice.storage.repository import SqlStore
from tests.fakes.discord_server import FakeDiscordServer
from tests.fakes.model_server import FakeModelServer

CONFIG = str(Path(__file__).resolve().parent.parent / "config" / "botservice.toml")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def run(channels: int, rounds: int, database: Path) -> dict[str, Any]:
    model_server = FakeModelServer()
    await model_server.start()
    server = FakeDiscordServer()
    server.extra_channel_ids = [server.new_id() for _ in range(channels)]
    await server.start()
    url = f"sqlite+aiosqlite:///{database}"
    await upgrade(url)
    store = SqlStore(create_engine(url))
    settings = load_settings(
        {
            "OPENAI_BASE_URL": model_server.base_url,
            "OPENAI_API_KEY": "sk-bench",
            "DATABASE_URL": url,
            "BOTSERVICE_CONFIG": CONFIG,
            # One person sends the whole load; the per-person rate is not measured here.
            "BOTSERVICE_LIMITS__MESSAGES_PER_MINUTE": "0",
        }
    )
    settings = settings.model_copy(
        update={
            "discord": DiscordSettings(
                token=SecretStr(server.token),
                api_url=server.api_url,
                gateway_url=server.gateway_url,
            )
        }
    )
    model = OpenAIChatClient(settings.model)
    core = ConversationCore(settings=settings, store=store, model=model)
    adapter = create_adapter(settings, core, store, guild_ready_timeout=0.05)
    await adapter.start()

    first_call: list[float] = []
    first_text: list[float] = []
    final: list[float] = []
    calls_per_answer: list[int] = []
    try:
        for round_number in range(rounds + 1):  # round 0 warms up connections and caches
            mark = len(server.calls)
            dispatched: dict[str, tuple[float, str]] = {}
            sends = []
            for channel_id in server.extra_channel_ids:
                text = f"round {round_number} in {channel_id}"
                dispatched[channel_id] = (time.monotonic(), f"You said: {text}")
                sends.append(server.send_message(text, mention_bot=True, channel_id=channel_id))
            await asyncio.gather(*sends)
            expected = {cid: answer for cid, (_, answer) in dispatched.items()}

            def all_answered(expected: dict[str, str] = expected) -> bool:
                return all(
                    any(m["content"] == answer for m in server.bot_messages(cid))
                    for cid, answer in expected.items()
                )

            await server.wait_until(all_answered, 30, "every channel answered")
            await core.drain()
            if round_number == 0:
                continue
            per_channel: dict[str, list[Any]] = defaultdict(list)
            for call in server.calls[mark:]:
                parts = call.path.split("/")
                if len(parts) > 2 and parts[1] == "channels" and call.is_message_write:
                    per_channel[parts[2]].append(call)
            for channel_id, (sent_at, answer) in dispatched.items():
                calls = per_channel[channel_id]
                calls_per_answer.append(len(calls))
                first_call.append(calls[0].at - sent_at)
                texts = [c for c in calls if c.method == "PATCH"]
                first_text.append((texts[0].at if texts else calls[0].at) - sent_at)
                done = next(c for c in calls if (c.json or {}).get("content") == answer)
                final.append(done.at - sent_at)
    finally:
        await core.drain()
        await adapter.stop()
        await model.aclose()
        await store.aclose()
        await server.close()
        await model_server.stop()
    return {
        "first REST message call": first_call,
        "first text shown (edit)": first_text,
        "final text shown": final,
        "calls": calls_per_answer,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as directory:
        results = asyncio.run(run(args.channels, args.rounds, Path(directory) / "bench.db"))
    calls = results.pop("calls")
    samples = len(calls)
    print(
        f"Discord adapter, {args.channels} concurrent channels, {args.rounds} rounds "
        f"({samples} answers), instant fake model, SQLite store, all on 127.0.0.1"
    )
    print()
    print(f"| {'dispatch ->':<26} | {'median ms':>9} | {'p99 ms':>7} |")
    print(f"|{'-' * 28}|{'-' * 11}|{'-' * 9}|")
    for name, values in results.items():
        millis = [v * 1000 for v in values]
        print(
            f"| {name:<26} | {statistics.median(millis):>9.1f} | {percentile(millis, 0.99):>7.1f} |"
        )
    print()
    print(
        f"REST message calls per answer: median {statistics.median(calls):.0f}, "
        f"min {min(calls)}, max {max(calls)} (POST reply + edits; no reads)"
    )


if __name__ == "__main__":
    main()

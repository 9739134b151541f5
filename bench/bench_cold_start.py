"""Cold start of the `botservice` command (issue 10). Prints a table; not a test.

Each figure is a fresh process (`python -m botservice ...`), timed from spawning it:

- a configuration error (no model endpoint; a bad URL) -> exit status 2  (goal 300 ms)
- `echo hi | botservice chat` -> the first answer on stdout, instant fake model; with
  the SQLite file already there (every start after the first), and on a fresh
  directory (the first start creates and migrates the database)      (goal 500 ms)
- `botservice run` -> ready: `/readyz` answers 200, which needs `/healthz`'s HTTP
  server, the database and the platform connected; Slack over HTTP, and Discord
  (gateway session up), against the fakes                             (goal 1.0 s)
- the interpreter alone (`python -c pass`), the floor under all of them on this machine

Everything listens on 127.0.0.1: the fake model, fake Slack Web API and fake Discord
(gateway and REST) from tests/fakes run in this process.

    python -m bench.bench_cold_start [--runs 9]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from tests.bot_process import free_port
from tests.fakes.discord_server import FakeDiscordServer
from tests.fakes.model_server import FakeModelServer
from tests.fakes.slack_api import FakeSlackApi

ROOT = Path(__file__).resolve().parent.parent


def _environment(extra: dict[str, str]) -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "SLACK_", "DISCORD_", "BOTSERVICE_", "DATABASE_URL"))
        # An installed package has its bytecode compiled; without it every start
        # compiles the project's modules again (about 40, 0.2 s on a loaded machine).
        # The uncounted first run of each row writes it.
        and k != "PYTHONDONTWRITEBYTECODE"
    }
    return {
        **clean,
        "PYTHONPATH": str(ROOT),
        "BOTSERVICE_CONFIG": str(ROOT / "config" / "botservice.toml"),
        **extra,
    }


async def _spawn(args: list[str], env: dict[str, str], cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=_environment(env),
    )


async def exit_time(args: list[str], env: dict[str, str], cwd: Path, status: int) -> float:
    started = time.perf_counter()
    process = await _spawn(args, env, cwd)
    _, err = await process.communicate(b"")
    elapsed = time.perf_counter() - started
    if process.returncode != status:
        raise SystemExit(f"{args} exited {process.returncode}, not {status}: {err.decode()}")
    return elapsed


async def first_answer_time(env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    process = await _spawn(["-m", "botservice", "chat"], env, cwd)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(b"hi\n")
    process.stdin.close()
    line = await process.stdout.readline()
    elapsed = time.perf_counter() - started
    _, err = await process.communicate()
    if line.decode().strip() != "You said: hi":
        raise SystemExit(f"unexpected answer {line!r}: {err.decode()}")
    return elapsed


async def ready_time(env: dict[str, str], cwd: Path) -> float:
    port = free_port()
    started = time.perf_counter()
    process = await _spawn(["-m", "botservice", "run"], {**env, "PORT": str(port)}, cwd)
    try:
        async with aiohttp.ClientSession() as session:
            while True:
                if process.returncode is not None:
                    _, err = await process.communicate()
                    raise SystemExit(f"run exited {process.returncode}: {err.decode()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                        if response.status == 200:
                            return time.perf_counter() - started
                await asyncio.sleep(0.005)
    finally:
        process.terminate()
        await process.communicate()


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


async def run(runs: int) -> None:
    model = FakeModelServer()
    slack = FakeSlackApi()
    discord = FakeDiscordServer()
    await model.start()
    await slack.start()
    await discord.start()
    # (name, goal, seconds to the event, CPU seconds of the whole process)
    rows: list[tuple[str, str, list[float], list[float]]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            endpoint = {"OPENAI_BASE_URL": model.base_url}
            database = {"DATABASE_URL": f"sqlite+aiosqlite:///{work / 'bot.db'}"}
            # The database exists (and is migrated) before the timed runs, as on every
            # start but the first.
            await first_answer_time({**endpoint, **database}, work)

            async def measure(
                name: str, goal: str, once: Callable[[int], Awaitable[float]]
            ) -> None:
                await once(-1)  # warm the page cache; not counted
                times, cpu = [], []
                for number in range(runs):
                    before = _children_cpu()
                    times.append(await once(number))
                    cpu.append(_children_cpu() - before)
                rows.append((name, goal, times, cpu))

            await measure(
                "python -c pass (the floor)",
                "",
                lambda _: exit_time(["-c", "pass"], {}, work, 0),
            )
            await measure(
                "config error: no endpoint -> exit 2",
                "0.300",
                lambda _: exit_time(["-m", "botservice", "chat"], {}, work, 2),
            )
            await measure(
                "config error: bad URL -> exit 2",
                "0.300",
                lambda _: exit_time(
                    ["-m", "botservice", "run"], {"OPENAI_BASE_URL": "ftp://x"}, work, 2
                ),
            )
            await measure(
                "echo hi | chat -> first answer",
                "0.500",
                lambda _: first_answer_time({**endpoint, **database}, work),
            )

            async def fresh_directory(number: int) -> float:
                where = work / f"fresh-{number + 1}"
                where.mkdir()
                return await first_answer_time(endpoint, where)

            await measure("  the same, first start (new SQLite)", "", fresh_directory)
            slack_env = {
                **endpoint,
                **database,
                "SLACK_BOT_TOKEN": "xoxb-bench",
                "SLACK_SIGNING_SECRET": "bench-signing-secret",
                "SLACK_API_URL": slack.base_url,
            }
            await measure(
                "run, Slack HTTP -> ready", "1.000", lambda _: ready_time(slack_env, work)
            )
            discord_env = {
                **endpoint,
                **database,
                "DISCORD_TOKEN": discord.token,
                "DISCORD_API_URL": discord.api_url,
                "DISCORD_GATEWAY_URL": discord.gateway_url,
            }
            await measure("run, Discord -> ready", "1.000", lambda _: ready_time(discord_env, work))
    finally:
        await discord.close()
        await slack.close()
        await model.stop()

    print(f"cold start, {runs} runs each; seconds from spawning the process")
    print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"{'':40} {'median':>7} {'p99':>7} {'goal':>7} {'CPU s':>7}")
    for name, goal, values, cpu in rows:
        print(
            f"{name:40} {statistics.median(values):7.3f} {_p99(values):7.3f} {goal:>7} "
            f"{statistics.median(cpu):7.3f}"
        )
    print("CPU s: median user+system time of the whole process (to its exit), which")
    print("other jobs on the machine inflate less than the wall-clock figures.")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    asyncio.run(run(args.runs))


if __name__ == "__main__":
    main()

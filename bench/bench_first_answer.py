"""`echo hi | botservice chat` -> first answer, checkouts side by side. Prints a table; not a test.

bench/bench_cold_start.py measures every start of one checkout, five or nine runs in a
row; on a shared machine whose load drifts, a difference of a tenth of a second between
two checkouts is lost in that drift. This measures one thing, the piped chat's first
answer (SQLite file already there, instant fake model), for each checkout given, their
runs interleaved (A B C, then C B A, ...), so that every checkout sees the same load.

    python -m bench.bench_first_answer [--runs 15] [CHECKOUT ...]   (default: this one)

Each checkout's bytecode is written by two uncounted runs first (as an installed
package has it), which also create and migrate its SQLite file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_cold_start import _environment
from tests.fakes.model_server import FakeModelServer

ROOT = Path(__file__).resolve().parent.parent


async def first_answer(checkout: Path, env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Seconds from spawning the process to its first answer, and the process's CPU
    seconds (user + system, to its exit)."""
    before = _children_cpu()
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "botservice",
        "chat",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env={
            **_environment(env),
            "PYTHONPATH": str(checkout),
            "BOTSERVICE_CONFIG": str(checkout / "config" / "botservice.toml"),
        },
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(b"hi\n")
    process.stdin.close()
    line = await process.stdout.readline()
    elapsed = time.perf_counter() - started
    _, err = await process.communicate()
    if line.decode().strip() != "You said: hi":
        raise SystemExit(f"{checkout}: unexpected answer {line!r}: {err.decode()}")
    return elapsed, _children_cpu() - before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def run(checkouts: list[Path], runs: int) -> None:
    model = FakeModelServer()
    await model.start()
    times: dict[Path, list[float]] = {checkout: [] for checkout in checkouts}
    cpu: dict[Path, list[float]] = {checkout: [] for checkout in checkouts}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            places = {
                checkout: Path(tmp) / str(number) for number, checkout in enumerate(checkouts)
            }
            envs = {
                checkout: {
                    "OPENAI_BASE_URL": model.base_url,
                    "DATABASE_URL": f"sqlite+aiosqlite:///{place / 'bot.db'}",
                }
                for checkout, place in places.items()
            }
            for checkout, place in places.items():
                place.mkdir()
                for _ in range(2):  # bytecode, and the database migrated: not counted
                    await first_answer(checkout, envs[checkout], place)
            load_before = os.getloadavg()[0]
            for number in range(runs):
                order = checkouts if number % 2 == 0 else checkouts[::-1]
                for checkout in order:
                    elapsed, used = await first_answer(checkout, envs[checkout], places[checkout])
                    times[checkout].append(elapsed)
                    cpu[checkout].append(used)
    finally:
        await model.stop()
    print(f"echo hi | botservice chat -> first answer, {runs} interleaved runs per checkout")
    print(f"load average {load_before:.1f} before the counted runs, {os.getloadavg()[0]:.1f} after")
    print(f"{'checkout':40} {'median':>7} {'q1':>7} {'q3':>7} {'CPU s':>7}")
    for checkout in checkouts:
        q1, _, q3 = statistics.quantiles(times[checkout], n=4)
        print(
            f"{checkout!s:40} {statistics.median(times[checkout]):7.3f} {q1:7.3f} {q3:7.3f} "
            f"{statistics.median(cpu[checkout]):7.3f}"
        )
    print("seconds from spawning the process; CPU s: median user+system of the whole process")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("checkouts", nargs="*", type=Path, default=[ROOT])
    args = parser.parse_args()
    asyncio.run(run([checkout.resolve() for checkout in args.checkouts], args.runs))


if __name__ == "__main__":
    main()

"""Scale-out benchmark (issue 8): 1, 2 and 3 `botservice run` processes on one PostgreSQL
database, the instant fake model, Slack events signed and delivered like Slack's.
Prints a table; not a test.

For each number of processes, on a fresh database (tests/scale_out.py starts it all):

- `--threads` threads of `--per-thread` messages, every thread at once, each message
  after the previous one of its thread was acknowledged, each delivered 1-4 times to
  random processes. Measured until the last answer is shown in the fake Slack:
  replies/s; CPU per reply of the bot processes (/proc utime + stime), the time
  their event loops waited for a CPU (run queue, /proc/<pid>/schedstat), and of the
  PostgreSQL backends serving this database (sampled from /proc while the run lasts;
  the server's shared background processes are left out); Slack acknowledgement
  p50/p99 over every delivery; and, as a check, how many follow-ups reached the
  model without the previous answer of their thread.
- With 2 or more processes: takeover after kill -9. `--burst` one-message threads
  are sent at once to process 0, which is killed the moment they are all
  acknowledged; takeover is the time from the kill until the last of them that was
  still unanswered at the kill is answered by another process (bounded by
  `--takeover-timeout`).

Who times what: the acknowledgements are timed by this process, whose loop
during the run does nothing but send. The fake Slack and the fake model run in a
child process of their own (tests/fakes/edge.py), so the bots' chat.postMessage,
chat.update, users.info and model calls are not served by the loop that times
the acks; /proc is sampled for the database's CPU by another child. With
`--probe-gap S` a lone sender in a third process (bench/ack_probe.py) sends one
message of its own every S seconds and times it: the cross-check (its messages
are answered too, so they add to the CPU columns; use it for the ack figure).
With `--trace-acks DIR`, each bot times the steps of its acknowledgements
(bench/ack_trace.py, wrapped from outside the bot's code) and the table is
followed by where their wall time went. With `--profile DIR`, py-spy records each bot process during the run (raw,
non-idle samples, 200 Hz) into DIR; py-spy's own CPU then weighs on the figures.
With `--accept-thread`, the bots acknowledge Slack on a thread and event loop of
their own (`[http] accept_thread`, botservice/core/accept_loop.py); without it,
on their main loop (the default). With `--warm-threads N`, N threads of two
messages are sent the run's way before it, so the bots' connection pools (the hot
path's asyncpg pool, SQLAlchemy's) have grown to what the load keeps busy: a
process that has served a while has them open, and each one opened costs the bot
and the database a few milliseconds (more processes open more). The table counts
the database connections opened during the run either way (`PG conns opened`).
With `--known-workspaces`, each process is sent one message in every workspace of the
run before it (a workspace per thread here), so no process looks up a user during the
measurement, as processes that have served a while would not. With `--apart`, each
count N of 2 or more is also run as N one-process clusters, each on a database of its
own with a share of the threads and fakes of its own, sending at once (`N apart` in
the table): the machine loaded as by N processes, with nothing shared between them; what N processes on one
database cost beyond that is their sharing it, what `N apart` costs beyond one process
is the machine's (two cores shared by more processes).
With `--logs DIR` the bots' and fakes' logs are kept there.

Goals from the issue: with 3 processes, CPU per reply (bot + database) within 1.2x
of one process's, ack p99 < 500 ms, takeover <= 30 s. This two-core machine cannot
show throughput growing with processes; the goals are per unit of work. `--rounds`
runs of each process count alternate (takeover is measured in the first only), and
the CPU ratio is that of the rounds' medians: on two cores shared by the bots, the
database, the fakes and this sender, one run's CPU per reply moved by up to a third
from run to run of the same code.

Runs on 127.0.0.1 only (PostgreSQL at 127.0.0.1:5432, or BOTSERVICE_TEST_POSTGRES_URL),
bounded in messages and time: a few minutes at the defaults.

    python -m bench.bench_scale_out [--processes 1,2,3] [--threads 30] [--per-thread 10]
                                    [--burst 30] [--takeover-timeout 60]
                                    [--probe-gap 0.2] [--profile DIR] [--trace-acks DIR]
                                    [--accept-thread] [--logs DIR] [--warm-threads N]
                                    [--rounds 3] [--apart] [--known-workspaces]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from bench.ack_trace import statements_per_reply, summarize
from botservice.model.tokens import EXACT_COUNTS_DELAY_SECONDS
from tests.db import _find_postgres
from tests.scale_out import ROOT, Cluster, percentile, proc_cpu_seconds

TARGET_CPU_RATIO = 1.2
TARGET_ACK_P99_MS = 500.0
TARGET_TAKEOVER_SECONDS = 30.0


@dataclass
class Row:
    processes: int
    replies: int = 0
    missing: int = 0
    seconds: float = math.nan
    bot_cpu: float = math.nan  # seconds, all bot processes
    bot_waited: float = math.nan  # seconds the bots' loops were ready to run but had no CPU
    database_cpu: float = math.nan  # seconds, this database's backends
    connections_opened: int = -1  # backends of this database started during the run
    driver_cpu: float = math.nan  # seconds, this process: the sender
    fakes_cpu: float = math.nan  # seconds, the fakes' process: fake Slack and fake model
    ack_p50: float = math.nan
    ack_p99: float = math.nan
    acks: int = 0
    probe_p50: float = math.nan
    probe_p99: float = math.nan
    probe_acks: int = 0
    # How late this process's own loop woke from 20 ms sleeps while it sent: the part
    # of an ack's measured time that is the sender's wait for a CPU, not the bot's.
    sender_lag_p99: float = math.nan
    without_previous: int = 0
    follow_ups: int = 0
    takeover: str = "-"
    trace: str = ""
    # One-process clusters on databases of their own, run at once (`--apart`).
    apart: bool = False

    @property
    def label(self) -> str:
        return f"{self.processes} apart" if self.apart else str(self.processes)

    @property
    def replies_per_second(self) -> float:
        return self.replies / self.seconds if self.seconds > 0 else math.nan

    def per_reply_ms(self, seconds: float) -> float:
        return 1000 * seconds / self.replies if self.replies else math.nan


def run_queue_seconds(pid: int) -> float:
    """How long the process's main thread (a bot's event loop) has waited, ready to
    run, for a CPU (/proc/<pid>/schedstat, field 2); 0 once it is gone."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class BackendCpu:
    """CPU time of the PostgreSQL backends connected to one database, from /proc.

    A backend's process title names its database ("postgres: <user> <db> <addr>
    <state>"). Backends come and go, so /proc is sampled while the run lasts and each
    backend counts from its first sample (from zero if it started during the run).
    """

    database: str
    first: dict[int, float] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)
    # Backends that started while the run lasted (a bot's pool opening a connection).
    opened: set[int] = field(default_factory=set)

    def sample(self, *, baseline: bool = False) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                title = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
            except OSError:
                continue
            if not title.startswith("postgres:") or f" {self.database} " not in f"{title} ":
                continue
            pid = int(entry.name)
            cpu = proc_cpu_seconds(pid)
            if cpu is None:
                continue
            if pid not in self.first and not baseline:
                self.opened.add(pid)
            self.first.setdefault(pid, cpu if baseline else 0.0)
            self.last[pid] = cpu

    def total(self) -> float:
        return sum(self.last[pid] - self.first[pid] for pid in self.last)


def _sample_until_told(database: str, conn: Connection, interval: float) -> None:
    cpu = BackendCpu(database)
    cpu.sample(baseline=True)
    conn.send("started")
    while not conn.poll(interval):
        cpu.sample()
    cpu.sample()
    conn.send((cpu.total(), len(cpu.opened)))


@contextlib.asynccontextmanager
async def sampling(database: str, total: list[tuple[float, int]]) -> AsyncIterator[None]:
    """CPU of the database's backends while the block runs, and how many of them
    started meanwhile, appended to `total`.

    Sampled in a process of its own: a pass over /proc takes milliseconds that
    would otherwise delay the acknowledgements this process times."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    sampler = context.Process(target=_sample_until_told, args=(database, theirs, 0.25))
    sampler.start()
    try:
        await asyncio.to_thread(ours.recv)  # the baseline is taken
        yield
        ours.send("stop")
        total.append(await asyncio.to_thread(ours.recv))
    finally:
        await asyncio.to_thread(sampler.join, 10)
        if sampler.is_alive():
            sampler.kill()


@contextlib.asynccontextmanager
async def probing(cluster: Cluster, gap: float | None, acks: list[float]) -> AsyncIterator[None]:
    """The lone sender (bench/ack_probe.py) while the block runs; its acks into `acks`."""
    if not gap:
        yield
        return
    command = [sys.executable, "-m", "bench.ack_probe", "--gap", str(gap)]
    for process in cluster.live():
        command += ["--url", process.url]
    probe = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert probe.stdout is not None
    await asyncio.wait_for(probe.stdout.readline(), 60)  # "READY": imports done
    try:
        yield
    finally:
        out, _ = await probe.communicate(b"")  # closing its stdin tells it to stop
        acks += json.loads(out.decode())["acks"] if out.strip() else []


@contextlib.asynccontextmanager
async def lagging(lags: list[float]) -> AsyncIterator[None]:
    """How late this loop wakes from 20 ms sleeps while the block runs, into `lags`."""

    async def watch() -> None:
        while True:
            slept = time.perf_counter()
            await asyncio.sleep(0.02)
            lags.append(time.perf_counter() - slept - 0.02)

    watcher = asyncio.create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def _spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    out.parent.mkdir(parents=True, exist_ok=True)
    command = ["py-spy", "record", "-p", str(pid), "-f", "raw", "-r", "200", "-o", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextlib.asynccontextmanager
async def profiling(cluster: Cluster, directory: Path | None) -> AsyncIterator[None]:
    """py-spy on every bot process while the block runs (raw, non-idle, 200 Hz)."""
    if directory is None:
        yield
        return
    spies = [
        _spy(p.popen.pid, directory / f"bot-{p.index}-of-{len(cluster.processes)}.txt")
        for p in cluster.live()
    ]
    await asyncio.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            await asyncio.to_thread(spy.wait, 30)


async def settled(cluster: Cluster, *, within: float = 15.0) -> None:
    """Wait until every bot process is idle: a started bot still has work of its own
    for a second or two (the token encoding built, the first purge; see
    `EXACT_COUNTS_DELAY_SECONDS`), which is not the CPU of the replies measured."""
    deadline = time.monotonic() + within
    idle_in_a_row = 0
    before = [p.cpu_seconds() or 0.0 for p in cluster.processes]
    # Two quiet quarter-seconds after the start-up work's delay has passed.
    await asyncio.sleep(EXACT_COUNTS_DELAY_SECONDS)
    while idle_in_a_row < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        after = [p.cpu_seconds() or 0.0 for p in cluster.processes]
        busy = max(b - a for a, b in zip(before, after, strict=True))
        idle_in_a_row = idle_in_a_row + 1 if busy < 0.01 else 0
        before = after


async def measure(
    processes: int,
    args: argparse.Namespace,
    workdir: Path,
    *,
    takeover_too: bool,
    threads: int | None = None,
    start_together: asyncio.Barrier | None = None,
) -> Row:
    """One run; `threads` instead of `--threads`; with `start_together`, the measured
    sending starts once every run sharing that barrier is ready (`--apart`)."""
    row = Row(processes)
    postgres = await _find_postgres()
    trace = args.trace_acks / f"{processes}" if args.trace_acks else None
    env = {"BOTSERVICE_HTTP__ACCEPT_THREAD": "true" if args.accept_thread else "false"}
    if trace is not None:
        site = ROOT / "bench" / "ack_trace_site"
        env |= {"PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "ACK_TRACE_DIR": str(trace)}
    async with Cluster.running(
        postgres, workdir, processes=processes, seed=args.seed, fakes_apart=True, env=env
    ) as cluster:
        # Warm each process up (first request: Bolt's auth.test, pools, caches).
        warm = cluster.questions(threads=processes, per_thread=1)
        for question, process in zip(warm, cluster.processes, strict=True):
            await cluster.deliver(question, first_to=process.index)
        await cluster.wait_answered(warm, within=30)
        if args.warm_threads:
            # The run's shape once before it (threads at once, repeats to random
            # processes): pools grow to the connections that load keeps busy, as in a
            # process that has been serving a while, so opening them is not counted.
            grown = cluster.questions(threads=args.warm_threads, per_thread=2)
            await cluster.send(grown)
            await cluster.settle_deliveries(within=30)
            await cluster.wait_answered(grown, within=60)
        questions = cluster.questions(threads=threads or args.threads, per_thread=args.per_thread)
        if args.known_workspaces:
            # Each process has served every workspace of the run before (a user's name
            # and rights, looked up once per process per hour): in service, processes
            # behind one load balancer soon have; in a short run, each would look up
            # each workspace's user anew, once per process.
            workspaces = sorted({question.team for question in questions})
            for process in cluster.processes:
                known = cluster.questions(
                    threads=len(workspaces), per_thread=1, workspaces=workspaces
                )
                await asyncio.gather(*(cluster.deliver(q, first_to=process.index) for q in known))
                await cluster.wait_answered(known, within=60)
        await cluster.quiet(0.5, within=10)
        await settled(cluster)
        cluster.acks.clear()
        if start_together is not None:
            await start_together.wait()

        database_cpu: list[tuple[float, int]] = []
        probe_acks: list[float] = []
        fakes_pid = cluster.fakes_pid
        assert fakes_pid is not None
        profile = args.profile / f"{processes}" if args.profile else None
        async with sampling(cluster.database, database_cpu), profiling(cluster, profile):
            bot_before = [p.cpu_seconds() or 0.0 for p in cluster.processes]
            waited_before = [run_queue_seconds(p.popen.pid) for p in cluster.processes]
            fakes_before = proc_cpu_seconds(fakes_pid) or 0.0
            driver_before = time.process_time()
            sender_lags: list[float] = []
            async with probing(cluster, args.probe_gap, probe_acks), lagging(sender_lags):
                started = time.monotonic()
                # Nothing polls while acks are timed: every delivery first, then the answers.
                await cluster.send(questions)
                await cluster.settle_deliveries(within=30)
                sent = time.monotonic()
            row.sender_lag_p99 = percentile(sender_lags, 0.99)
            await cluster.wait_answered(questions, within=args.run_timeout)
            answered = time.monotonic()
            bot_after = [p.cpu_seconds() or 0.0 for p in cluster.processes]
            waited_after = [run_queue_seconds(p.popen.pid) for p in cluster.processes]
            row.fakes_cpu = (proc_cpu_seconds(fakes_pid) or 0.0) - fakes_before
            row.driver_cpu = time.process_time() - driver_before

        shown = [at for q in questions if (at := cluster.answered_at(q)) is not None]
        row.replies = len(shown)
        row.missing = len(questions) - len(shown)
        row.seconds = max(shown, default=started) - started
        row.bot_cpu = sum(bot_after) - sum(bot_before)
        row.bot_waited = sum(waited_after) - sum(waited_before)
        row.database_cpu, row.connections_opened = (
            database_cpu[0] if database_cpu else (math.nan, -1)
        )
        acks = [a.seconds for a in cluster.acks if a.status == 200]
        row.acks = len(acks)
        row.ack_p50, row.ack_p99 = percentile(acks, 0.5), percentile(acks, 0.99)
        row.probe_acks = len(probe_acks)
        row.probe_p50, row.probe_p99 = percentile(probe_acks, 0.5), percentile(probe_acks, 0.99)
        row.follow_ups = sum(1 for q in questions if q.index)
        row.without_previous = len(cluster.follow_up_order(questions)[1])

        if trace is not None:
            await asyncio.sleep(1.2)  # each bot writes its counts every second
            row.trace = summarize(trace, since=started, until=sent)
            counted = statements_per_reply(
                trace, since=started, until=answered, replies=row.replies
            )
            row.trace += f"\n{counted}" if counted else ""

        if processes >= 2 and takeover_too:
            await cluster.quiet(0.5, within=10)
            row.takeover = await takeover(cluster, args)
    return row


async def takeover(cluster: Cluster, args: argparse.Namespace) -> str:
    victim = cluster.processes[0]
    burst = cluster.questions(threads=args.burst, per_thread=1)
    await asyncio.gather(*(cluster.deliver(q, first_to=victim.index, within=30) for q in burst))
    killed_at = victim.kill()
    await cluster.refresh()
    left = cluster.unanswered(burst)
    if not left:
        return f"n/a (all {len(burst)} answered before the kill)"
    missing = await cluster.wait_answered(left, within=args.takeover_timeout)
    if missing:
        return f"> {args.takeover_timeout:.0f} s ({len(missing)} of {len(left)} open)"
    last = max(at for q in left if (at := cluster.answered_at(q)) is not None)
    return f"{last - killed_at:.1f} s ({len(left)} open)"


async def measure_apart(processes: int, args: argparse.Namespace) -> Row:
    """`processes` one-process clusters, each on a database of its own with its share of
    the threads, sending at once: the machine as loaded as by `processes` processes on
    one database, with nothing shared between them (no repeat delivered to a process
    that has not seen the message, no turn handed from one process to another). What
    this costs per reply beyond one process is the machine's; what `processes` on one
    database cost beyond this is their sharing it."""
    start_together = asyncio.Barrier(processes)
    with contextlib.ExitStack() as stack:
        tmps = [
            Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-scale-")))
            for _ in range(processes)
        ]
        parts = await asyncio.gather(
            *(
                measure(
                    1,
                    args,
                    tmp,
                    takeover_too=False,
                    threads=args.threads // processes,
                    start_together=start_together,
                )
                for tmp in tmps
            )
        )
    row = Row(processes, apart=True)
    for name in (
        "replies",
        "missing",
        "bot_cpu",
        "bot_waited",
        "database_cpu",
        "connections_opened",
        "fakes_cpu",
        "acks",
        "without_previous",
        "follow_ups",
    ):
        setattr(row, name, sum(getattr(part, name) for part in parts))
    row.seconds = max(part.seconds for part in parts)
    # This process sent for all of them at once: its CPU is counted in each part.
    row.driver_cpu = max(part.driver_cpu for part in parts)
    # The parts' percentiles, not the percentile of all their acks: the highest of each.
    row.ack_p50 = max(part.ack_p50 for part in parts)
    row.ack_p99 = max(part.ack_p99 for part in parts)
    row.sender_lag_p99 = max(part.sender_lag_p99 for part in parts)
    return row


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    print(
        "Scale-out benchmark (127.0.0.1 fakes, one PostgreSQL database, instant model; "
        f"{args.threads} threads × {args.per_thread} messages, each delivered 1–4 times "
        "to random processes; acknowledged on "
        f"{'a thread of their own' if args.accept_thread else 'the main loop'})"
    )
    print()
    columns = [
        ("processes", ""),
        ("replies", ""),
        ("replies/s", ""),
        ("bot CPU", "ms/reply"),
        ("bot wait", "ms/reply"),
        ("PG CPU", "ms/reply"),
        ("total", "ms/reply"),
        ("ack p50", "ms"),
        ("ack p99", "ms"),
        ("no prev.", "answer"),
        ("driver", "ms/reply"),
        ("fakes", "ms/reply"),
        ("PG conns", "opened"),
    ]
    widths = [max(len(a), len(b)) + 1 for a, b in columns]
    print("  " + "".join(f"{a:>{w}}" for (a, _), w in zip(columns, widths, strict=True)), end="")
    print("   takeover after kill -9")
    print("  " + "".join(f"{b:>{w}}" for (_, b), w in zip(columns, widths, strict=True)))
    for row in rows:
        bot = row.per_reply_ms(row.bot_cpu)
        database = row.per_reply_ms(row.database_cpu)
        cells = [
            row.label,
            f"{row.replies}" + (f"/{row.replies + row.missing}" if row.missing else ""),
            f"{row.replies_per_second:.1f}",
            f"{bot:.1f}",
            f"{row.per_reply_ms(row.bot_waited):.1f}",
            f"{database:.1f}",
            f"{bot + database:.1f}",
            f"{row.ack_p50 * 1000:.0f}",
            f"{row.ack_p99 * 1000:.0f}",
            f"{row.without_previous}/{row.follow_ups}",
            f"{row.per_reply_ms(row.driver_cpu):.1f}",
            f"{row.per_reply_ms(row.fakes_cpu):.1f}",
            str(row.connections_opened),
        ]
        line = "".join(f"{cell:>{w}}" for cell, w in zip(cells, widths, strict=True))
        print(f"  {line}   {row.takeover}")
    print()
    print_summary(rows)
    print(
        f"  goals with 3 processes: ack p99 < {TARGET_ACK_P99_MS:.0f} ms, "
        f"takeover ≤ {TARGET_TAKEOVER_SECONDS:.0f} s"
    )
    if args.warm_threads:
        print(
            f"  warmed up with {args.warm_threads} threads of 2 messages first: the pools' "
            "connections opened before the measurement"
        )
    if args.known_workspaces:
        print(
            "  every process served each workspace of the run first: no process looked up "
            "its user during the measurement"
        )
    print("  replies: answered (answered/sent when some were still open at the run timeout)")
    print(
        "  no prev. answer: follow-ups whose prompt lacked the previous answer of their "
        "thread (should be 0)"
    )
    print(
        "  bot wait: time the bots' event loops were ready to run but waited for a CPU "
        "(run queue, /proc/<pid>/schedstat): the machine's share of the ack latency"
    )
    print(
        "  PG CPU: the backends serving this database (the server's shared background "
        "processes left out); driver: this process (the sender, timing the acks); fakes: "
        "the fake Slack and fake model's process; neither in total"
    )
    print(
        "  sender's own loop lag p99 while sending (part of every measured ack): "
        + ", ".join(f"{r.processes}: {r.sender_lag_p99 * 1000:.0f} ms" for r in rows)
    )
    for row in rows:
        if row.trace:
            print(f"  where the acks' wall time went, {row.label} process(es):")
            print(row.trace)
    if any(row.probe_acks for row in rows):
        print(
            "  lone sender (bench/ack_probe.py, its own process, one message every --probe-gap; "
            "its messages count in no column but add to the CPU ones):"
        )
        for row in rows:
            print(
                f"    {row.label} processes: ack p50 {row.probe_p50 * 1000:.0f} ms, "
                f"p99 {row.probe_p99 * 1000:.0f} ms over {row.probe_acks} messages"
            )


def print_summary(rows: list[Row]) -> None:
    """Per process count, the medians over the rounds; the CPU ratio of the medians."""
    labels = sorted({row.label for row in rows})

    def total(row: Row) -> float:
        return row.per_reply_ms(row.bot_cpu + row.database_cpu)

    medians: dict[str, float] = {}
    for label in labels:
        of = [row for row in rows if row.label == label and row.replies]
        if not of:
            continue
        medians[label] = statistics.median(total(row) for row in of)
        print(
            f"  {label} process(es), {len(of)} round(s): CPU per reply (bot + PG) median "
            f"{medians[label]:.1f} ms (runs: {', '.join(f'{total(r):.1f}' for r in of)}); "
            f"ack p99 median {statistics.median(r.ack_p99 for r in of) * 1000:.0f} ms, "
            f"highest {max(r.ack_p99 for r in of) * 1000:.0f} ms"
        )
    if "1" in medians:
        for label in labels:
            if label == "1" or label not in medians:
                continue
            goal = f" (goal ≤ {TARGET_CPU_RATIO}×)" if "apart" not in label else ""
            print(
                f"  CPU per reply (bot + PG), {label} processes vs 1, medians of the rounds: "
                f"{medians[label] / medians['1']:.2f}×{goal}"
            )


def keep_logs(workdir: Path, kept: Path) -> None:
    """The bots' and the fakes' logs of one measurement, out of its temporary directory."""
    kept.mkdir(parents=True, exist_ok=True)
    for log_file in workdir.glob("*.log"):
        shutil.copy(log_file, kept / log_file.name)


async def run(args: argparse.Namespace) -> None:
    rows = []
    # Rounds alternate the process counts, so a change in the machine's state hits each
    # alike; one round's CPU per reply moved by a third between runs here.
    for round_ in range(args.rounds):
        for processes in args.processes:
            with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
                try:
                    rows.append(await measure(processes, args, Path(tmp), takeover_too=round_ == 0))
                finally:
                    if args.logs is not None:
                        keep_logs(Path(tmp), args.logs / f"{processes}-{round_}")
            if args.apart and processes > 1:
                rows.append(await measure_apart(processes, args))
    print_table(rows, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--processes",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 2, 3],
        help="comma-separated process counts (default 1,2,3)",
    )
    parser.add_argument("--threads", type=int, default=30)
    parser.add_argument("--per-thread", type=int, default=10)
    parser.add_argument("--burst", type=int, default=30, help="messages sent to the killed process")
    parser.add_argument("--takeover-timeout", type=float, default=60.0)
    parser.add_argument("--run-timeout", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs of each process count, alternating"
    )
    parser.add_argument(
        "--probe-gap",
        type=float,
        default=0.0,
        help="run the lone sender, one message every this many seconds (default off)",
    )
    parser.add_argument(
        "--trace-acks",
        type=Path,
        default=None,
        help="time each bot's ack steps into this directory",
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy each bot process into this directory"
    )
    parser.add_argument(
        "--warm-threads",
        type=int,
        default=0,
        help="before measuring, send this many threads of 2 messages the run's way, so "
        "the bots' connection pools have grown (default 0: one message per process)",
    )
    parser.add_argument(
        "--apart",
        action="store_true",
        help="also run each count of 2 or more as that many one-process clusters on "
        "databases of their own, at once (the machine's share of the cost)",
    )
    parser.add_argument(
        "--known-workspaces",
        action="store_true",
        help="before measuring, send each process one message in every workspace of the run",
    )
    parser.add_argument(
        "--logs", type=Path, default=None, help="keep the bots' and fakes' logs in this directory"
    )
    parser.add_argument(
        "--accept-thread",
        action="store_true",
        help="bots acknowledge Slack on a thread of their own ([http] accept_thread)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()

"""Several real `botservice run` processes on one PostgreSQL database, driven the way
Slack drives them: the harness behind tests/test_scale_out.py and bench/bench_scale_out.py.

    async with Cluster.running(postgres_server, tmp_path, processes=3) as cluster:
        questions = cluster.questions(threads=10, per_thread=5)
        await cluster.send(questions)      # each delivered 1-4 times, to random processes
        await cluster.wait_answered(questions, within=30)
        await cluster.quiet()              # let late duplicates show up
        assert cluster.problems(questions) == []

`cluster.processes[i].kill()` is kill -9; `cluster.in_flight(process, seconds)` names
the questions a process is asking the model about; `cluster.proxy.cut()` /
`restore()` take the database away and back (`database_via_proxy=True`);
`cluster.readyz(process)` is one `GET /readyz`. `problems()` judges a run: every
question answered by exactly one Slack message in its thread, no placeholder or
partial text left, one model call per question, each follow-up's prompt holding
the previous answer of its thread and sent only after that answer was final,
acknowledgement p99 within Slack's 3 s, no "never retrieved" in any log.

What runs where:

- a fresh PostgreSQL database per cluster (`botservice_scale_<hex>`, dropped at
  the end), migrated as `botservice db upgrade` does (`botservice.storage.migrate.upgrade`);
- N `python -m botservice run` subprocesses, each with its own PORT, the tree
  under test first on PYTHONPATH, its own OPENAI_API_KEY (`sk-scale-<i>`) and
  SLACK_BOT_TOKEN (`xoxb-scale-<i>`) so the fakes can tell which process called;
- in this process: the fake Slack Web API and the fake model server (answers
  "Answer to q-<thread>-<k>." to the message "q-<thread>-<k>", in about
  `answer_seconds`), and optionally a TCP proxy between the bots and PostgreSQL
  that a test can cut (`database_via_proxy=True`);
- or, with `fakes_apart=True`, both fakes in a child process of their own
  (tests/fakes/edge.py), so that this process's loop, which times the
  acknowledgements, serves none of the bots' Slack and model calls (the
  benchmark does this). Then `cluster.slack` and `cluster.model` are copies as of
  the last `await cluster.refresh()`; the `wait_*` and `quiet` methods refresh as
  they poll.

Events are signed like Slack's. A delivery that fails (connection refused, a 5xx,
no answer in time) is redelivered with the next `X-Slack-Retry-Num` to another
live process, as Slack does, until one is acknowledged. Every acknowledgement's
latency is kept in `cluster.acks`.

Readiness is `GET /readyz` == 200; a build without `/readyz` (404) is ready when
`/healthz` answers 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import time
import weakref
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from botservice.storage.migrate import upgrade
from tests.db import PostgresServer
from tests.fakes.edge import EdgeFakes, ModelRecord, SlackRecord
from tests.fakes.model_server import FakeModelServer, RecordedRequest, last_user_text
from tests.fakes.slack_api import FakeSlackApi, PostedMessage
from tests.fakes.tcp_proxy import TcpProxy
from tests.slack.harness import SIGNING_SECRET, payload, sign

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "botservice.toml"
SLACK_ACK_LIMIT = 3.0  # Slack redelivers an event not acknowledged within this

_QUESTION = re.compile(r"q-\d+-\d+")
_ANSWER = re.compile(r"Answer to (q-\d+-\d+)\.")
# Writes the fake model makes for a three-word answer: the role chunk, three words,
# finish_reason, usage and [DONE]; it sleeps after each one.
_STREAM_WRITES = 7


def answer_to(body: dict[str, Any]) -> str:
    """The fake model's answer: names the question it answers, nothing else."""
    found = _QUESTION.search(last_user_text(body))
    return f"Answer to {found.group(0) if found else 'nothing'}."


# --- what is sent ----------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    """Message `index` of thread `thread`; index 0 mentions the bot and opens the thread."""

    thread: int
    index: int
    ts: str
    root_ts: str
    # The thread's workspace when not its own (see `team`).
    workspace: str | None = None

    @property
    def token(self) -> str:
        return f"q-{self.thread}-{self.index}"

    @property
    def answer(self) -> str:
        return f"Answer to {self.token}."

    @property
    def team(self) -> str:
        # A workspace per thread: each process's chat.update budget is per
        # workspace, and these tests are about turns, not Slack's rate limit.
        return self.workspace or f"T{self.thread:05d}"

    @property
    def channel(self) -> str:
        return "C0SCALE"

    def event(self, *, twin: bool = False) -> dict[str, Any]:
        """The Events API body; `twin`: the `message` event Slack also sends for a
        mention (another event id, the same message ts)."""
        if self.index == 0:
            data = payload("app_mention")
            text = f"<@UBOT0001> {self.token}"
        else:
            data = payload("message_thread_reply")
            text = self.token
        event = data["event"]
        event.update(
            text=text,
            user="UALICE",
            channel=self.channel,
            ts=self.ts,
            event_ts=self.ts,
            team=self.team,
            client_msg_id=f"{self.token}-{self.ts}",
        )
        event.pop("blocks", None)
        if self.index:
            event["thread_ts"] = self.root_ts
        data["team_id"] = self.team
        data["context_team_id"] = self.team
        for authorization in data.get("authorizations") or []:
            authorization["team_id"] = self.team
        data["event_id"] = f"Ev{self.team}{self.ts.replace('.', '')}"
        if twin:
            event.update(type="message", channel_type="channel")
            data["event_id"] += "X"
        return data


@dataclass(frozen=True)
class Ack:
    process: int
    status: int | None  # None: no HTTP answer (refused, reset, timed out)
    seconds: float
    retry: int
    token: str
    at: float


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


# --- the processes ---------------------------------------------------------------------


@dataclass
class BotProcess:
    index: int
    port: int
    popen: subprocess.Popen[bytes]
    log_path: Path
    api_key: str
    killed_at: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> float:
        """kill -9; returns when it happened (time.monotonic)."""
        self.popen.send_signal(signal.SIGKILL)
        self.killed_at = time.monotonic()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        return self.killed_at

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 25) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def cpu_seconds(self) -> float | None:
        """User + system CPU time so far, from /proc (None once the process is gone)."""
        return proc_cpu_seconds(self.popen.pid)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_seconds(pid: int, *, with_children: bool = False) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat.rpartition(")")[2].split()
    # After "pid (comm)": state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    ticks = int(fields[11]) + int(fields[12])
    if with_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _CLOCK_TICKS


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without anything that configures a bot, plus `extra`."""
    own = ("BOTSERVICE_", "SLACK_", "DISCORD_", "OPENAI_")
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(own) and name not in ("DATABASE_URL", "PORT")
    }
    # The tree under test wins over whatever is installed, in every subprocess.
    python_path = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(python_path))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def _fakes(
    workdir: Path, *, answer_seconds: float, apart: bool
) -> AsyncIterator[
    tuple[FakeSlackApi | SlackRecord, FakeModelServer | ModelRecord, EdgeFakes | None]
]:
    """The fake Slack and the fake model: in this process, or `apart` in a child."""
    chunk_delay = answer_seconds / _STREAM_WRITES
    if apart:
        async with EdgeFakes.running(
            log=workdir / "fakes.log",
            answer=f"{__name__}:answer_to",
            chunk_delay=chunk_delay,
            users=["UALICE=Alice"],
            env=_child_env({}),
        ) as edge:
            yield edge.slack, edge.model, edge
        return
    slack = FakeSlackApi()
    slack.add_user("UALICE", "Alice")
    model = FakeModelServer(answer=answer_to, default_delay_between_chunks=chunk_delay)
    await slack.start()
    try:
        await model.start()
        try:
            yield slack, model, None
        finally:
            await model.stop()
    finally:
        await slack.close()


# --- the cluster -----------------------------------------------------------------------


# Per event loop: a lock is bound to the loop it first waited on (tests run many).
_MIGRATING: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


@dataclass
class Cluster:
    postgres: PostgresServer
    workdir: Path
    database: str
    slack: FakeSlackApi | SlackRecord
    model: FakeModelServer | ModelRecord
    proxy: TcpProxy | None
    env: dict[str, str]
    seed: int
    processes: list[BotProcess] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    _session: aiohttp.ClientSession | None = None
    _deliveries: set[asyncio.Task[None]] = field(default_factory=set)
    _ts: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _threads: Iterator[int] = field(default_factory=itertools.count)
    _edge: EdgeFakes | None = None

    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls,
        postgres: PostgresServer,
        workdir: Path,
        *,
        processes: int,
        answer_seconds: float = 0.0,
        database_via_proxy: bool = False,
        fakes_apart: bool = False,
        env: Mapping[str, str] | None = None,
        seed: int | None = None,
    ) -> AsyncIterator[Cluster]:
        """A started cluster; everything is stopped and the database dropped on exit."""
        async with _fakes(workdir, answer_seconds=answer_seconds, apart=fakes_apart) as (
            slack,
            model,
            edge,
        ):
            database = f"botservice_scale_{secrets.token_hex(6)}"
            await postgres.create_database(database)
            cluster = cls(
                postgres=postgres,
                workdir=workdir,
                database=database,
                slack=slack,
                model=model,
                proxy=None,
                env=dict(env or {}),
                seed=seed if seed is not None else random.randrange(2**32),
                _edge=edge,
            )
            # A killed bot drops its model stream mid-write; the fake would log each one
            # as an error with a stack, which is expected here and only noise.
            server_log = logging.getLogger("aiohttp.server")
            server_log_level = server_log.level
            server_log.setLevel(logging.CRITICAL)
            try:
                await cluster._migrate()
                if database_via_proxy:
                    host, port = _host_port(postgres.url(database))
                    cluster.proxy = TcpProxy((host, port))
                    await cluster.proxy.start()
                cluster._session = aiohttp.ClientSession()
                for index in range(processes):
                    cluster.processes.append(cluster._spawn(index))
                await asyncio.gather(*(cluster.wait_ready(p) for p in cluster.processes))
                yield cluster
            finally:
                try:
                    await cluster._stop()
                    await postgres.drop_database(database)
                finally:
                    server_log.setLevel(server_log_level)

    # --- processes --------------------------------------------------------------------

    def database_url(self) -> str:
        url = self.postgres.url(self.database)
        if self.proxy is None:
            return url
        host, port = _host_port(url)
        return url.replace(f"@{host}:{port}/", f"@127.0.0.1:{self.proxy.port}/", 1)

    async def _migrate(self) -> None:
        # What `botservice db upgrade` runs, in this process: a subprocess would cost
        # seconds of imports on a busy two-core machine before any bot can start.
        # Alembic's context is the process's own: one cluster migrates at a time.
        loop = asyncio.get_running_loop()
        async with _MIGRATING.setdefault(loop, asyncio.Lock()):
            await upgrade(self.postgres.url(self.database))

    def _spawn(self, index: int) -> BotProcess:
        port = _free_port()
        api_key = f"sk-scale-{index}"
        env = _child_env(
            {
                "DATABASE_URL": self.database_url(),
                "PORT": str(port),
                "OPENAI_BASE_URL": self.model.base_url,
                "OPENAI_API_KEY": api_key,
                "SLACK_BOT_TOKEN": f"xoxb-scale-{index}",
                "SLACK_SIGNING_SECRET": SIGNING_SECRET,
                "SLACK_API_URL": self.slack.base_url,
                "BOTSERVICE_CONFIG": str(CONFIG),
                "BOTSERVICE_LOG_LEVEL": "INFO",
                "BOTSERVICE_CONVERSATION__STREAM_UPDATE_INTERVAL_SECONDS": "0.5",
                # One person (UALICE) sends the whole load: the per-person message
                # rate is not what is measured here.
                "BOTSERVICE_LIMITS__MESSAGES_PER_MINUTE": "0",
                **self.env,
            }
        )
        log_path = self.workdir / f"bot-{index}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", "botservice", "run"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return BotProcess(index, port, popen, log_path, api_key)

    async def start_process(self) -> BotProcess:
        """One more process on the same database and fakes (a restart, or scaling out)."""
        process = self._spawn(len(self.processes))
        self.processes.append(process)
        await self.wait_ready(process)
        return process

    async def wait_ready(self, process: BotProcess, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not process.alive:
                raise RuntimeError(
                    f"bot process {process.index} exited with status {process.popen.returncode} "
                    f"before it was ready:\n{process.log_tail()}"
                )
            status = await self.readyz(process)
            if status == 404:
                status = await self._get(process, "/healthz")
            if status == 200:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(
            f"bot process {process.index} not ready in {within:.0f} s:\n{process.log_tail()}"
        )

    async def readyz(self, process: BotProcess) -> int | None:
        return await self._get(process, "/readyz")

    async def _get(self, process: BotProcess, path: str) -> int | None:
        assert self._session is not None
        try:
            async with self._session.get(
                process.url + path, timeout=aiohttp.ClientTimeout(total=5)
            ) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return None

    def live(self) -> list[BotProcess]:
        return [p for p in self.processes if p.alive and p.killed_at is None]

    def process_of(self, request: RecordedRequest) -> int | None:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        for process in self.processes:
            if process.api_key == key:
                return process.index
        return None

    async def _stop(self) -> None:
        for task in list(self._deliveries):
            task.cancel()
        await asyncio.gather(*self._deliveries, return_exceptions=True)
        # Our keep-alive connections would hold each bot's HTTP server shutdown.
        if self._session is not None:
            await self._session.close()
        for process in self.processes:
            if process.alive:
                process.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.processes:
            try:
                await asyncio.to_thread(process.popen.wait, max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.popen.kill()
                await asyncio.to_thread(process.popen.wait, 5)
        if self.proxy is not None:
            await self.proxy.close()

    # --- sending ------------------------------------------------------------------------

    def questions(
        self, *, threads: int, per_thread: int, workspaces: Sequence[str] = ()
    ) -> list[Question]:
        """New threads of questions, each message's ts after the one before; with
        `workspaces`, thread i in the i-th of them (else each in a workspace of its own)."""
        made = []
        for number in range(threads):
            thread = next(self._threads)
            workspace = workspaces[number] if workspaces else None
            root = ""
            for index in range(per_thread):
                ts = f"{1_767_100_000 + next(self._ts)}.000100"
                root = root or ts
                made.append(Question(thread, index, ts, root, workspace))
        return made

    async def send(
        self,
        questions: Sequence[Question],
        *,
        copies: tuple[int, int] = (1, 4),
        first_to: int | None = None,
        gap: float = 0.02,
        twins: bool = True,
        within: float = 60.0,
    ) -> None:
        """Every thread at once; in a thread each message after the previous one was
        acknowledged (as a person types), each delivered copies[0]..copies[1] times in
        all: the extra copies go to random processes a moment later, like Slack's
        retries. A mention also comes as its `message` twin (`twins`). Returns when
        every first delivery is acknowledged."""
        threads: dict[int, list[Question]] = defaultdict(list)
        for question in questions:
            threads[question.thread].append(question)

        async def one_thread(items: list[Question]) -> None:
            for question in items:
                extra = self.rng.randint(*copies) - 1
                await self.deliver(question, first_to=first_to, within=within)
                later = [(retry, False) for retry in range(1, extra + 1)]
                if question.index == 0 and twins:
                    later.append((0, True))
                for retry, twin in later:
                    task = asyncio.create_task(
                        self._redeliver(question, retry, twin=twin, delay=self.rng.uniform(0, 0.3))
                    )
                    self._deliveries.add(task)
                    task.add_done_callback(self._deliveries.discard)
                if gap:
                    await asyncio.sleep(self.rng.uniform(0, gap))

        await asyncio.gather(*(one_thread(items) for items in threads.values()))

    async def deliver(
        self,
        question: Question,
        *,
        first_to: int | None = None,
        retry: int = 0,
        twin: bool = False,
        within: float = 60.0,
    ) -> Ack:
        """Deliver until a process acknowledges with 200, redelivering like Slack."""
        deadline = time.monotonic() + within
        target = first_to
        while True:
            candidates = self.live()
            if not candidates:
                raise RuntimeError("no live bot process to deliver to")
            process = next((p for p in candidates if p.index == target), None)
            process = process or self.rng.choice(candidates)
            ack = await self._post(process, question, retry, twin=twin)
            if ack.status == 200:
                return ack
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{question.token} was never acknowledged in {within:.0f} s "
                    f"(last: {ack.status} from process {ack.process})"
                )
            retry, target = retry + 1, None
            await asyncio.sleep(min(0.2 * retry, 1.0))

    async def post_once(self, process: BotProcess, question: Question) -> Ack:
        """One delivery to `process`, whatever it answers (no redelivery)."""
        return await self._post(process, question, 0)

    async def _redeliver(self, question: Question, retry: int, *, twin: bool, delay: float) -> None:
        await asyncio.sleep(delay)
        with contextlib.suppress(AssertionError, RuntimeError):
            await self.deliver(question, retry=retry, twin=twin)

    async def _post(
        self, process: BotProcess, question: Question, retry: int, *, twin: bool = False
    ) -> Ack:
        assert self._session is not None
        body = json.dumps(question.event(twin=twin)).encode()
        headers = {"Content-Type": "application/json", **sign(body)}
        if retry:
            headers.update(
                {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"}
            )
        started = time.monotonic()
        status: int | None
        try:
            async with self._session.post(
                process.url + "/slack/events",
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=15),
            ) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            status = None
        ack = Ack(process.index, status, time.monotonic() - started, retry, question.token, started)
        self.acks.append(ack)
        return ack

    async def settle_deliveries(self, within: float = 60.0) -> None:
        """Wait for every redelivery still under way."""
        if self._deliveries:
            await asyncio.wait(list(self._deliveries), timeout=within)

    # --- watching ----------------------------------------------------------------------

    async def refresh(self) -> None:
        """With the fakes apart, fetch what they recorded since the last refresh (else a no-op)."""
        if self._edge is not None:
            await self._edge.refresh()

    @property
    def fakes_pid(self) -> int | None:
        """The fakes' process (with `fakes_apart`), e.g. to read its CPU time."""
        return self._edge.pid if self._edge is not None else None

    def answered(self, question: Question) -> bool:
        return not self.unanswered([question])

    def unanswered(self, questions: Iterable[Question]) -> list[Question]:
        # One pass over the bot's messages: this is polled while the bots work, on the
        # same two cores.
        shown = {(m.text, m.thread_ts) for m in self.slack.messages.values()}
        return [q for q in questions if (q.answer, q.root_ts) not in shown]

    async def wait_answered(
        self, questions: Sequence[Question], *, within: float
    ) -> list[Question]:
        """Wait until every question's answer is shown; returns those still missing."""
        deadline = time.monotonic() + within
        await self.refresh()
        missing = self.unanswered(questions)
        while missing and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            await self.refresh()
            missing = self.unanswered(missing)
        return missing

    async def wait_until(self, predicate: Callable[[], bool], *, within: float) -> bool:
        """Poll `predicate` for up to `within` seconds; its last value."""
        for _ in range(max(1, round(within / 0.05))):
            await self.refresh()
            if predicate():
                return True
            await asyncio.sleep(0.05)
        await self.refresh()
        return predicate()

    async def quiet(self, seconds: float = 1.5, *, within: float = 20.0) -> None:
        """Wait until neither fake has been called for `seconds` (or `within` passed)."""
        deadline = time.monotonic() + within
        seen = (-1, -1)
        still_since = time.monotonic()
        while time.monotonic() < deadline:
            await self.refresh()
            now = (len(self.slack.calls), len(self.model.requests))
            if now != seen:
                seen, still_since = now, time.monotonic()
            elif time.monotonic() - still_since >= seconds:
                return
            await asyncio.sleep(0.05)

    def in_flight(self, process: BotProcess, answer_seconds: float) -> list[str]:
        """Questions this process is asking the model about right now."""
        now = time.monotonic()
        tokens = []
        for request in self.model.chat_requests:
            if self.process_of(request) != process.index:
                continue
            token = question_of(request)
            if now - request.received_at < answer_seconds and not any(
                m.text == f"Answer to {token}." for m in self.slack.messages.values()
            ):
                tokens.append(token)
        return tokens

    # --- judging -----------------------------------------------------------------------

    def model_calls(self) -> Counter[str]:
        return Counter(question_of(r) for r in self.model.chat_requests)

    def problems(
        self,
        questions: Sequence[Question],
        *,
        calls_per_question: int | None = 1,
        ack_limit: float | None = SLACK_ACK_LIMIT,
    ) -> list[str]:
        """Every way the run broke "exactly once, in order, nothing lost", one line each
        (empty when it held). `calls_per_question=None`: a question may reach the model
        more than once (its first process was killed mid-answer)."""
        problems: list[str] = []
        tokens = {q.token for q in questions}
        shown: dict[str, list[PostedMessage]] = defaultdict(list)
        stray: list[PostedMessage] = []
        for message in self.slack.messages.values():
            match = _ANSWER.fullmatch(message.text)
            if match and match.group(1) in tokens:
                shown[match.group(1)].append(message)
            elif not match and message.channel == questions[0].channel:
                stray.append(message)

        missing = [q.token for q in questions if not shown[q.token]]
        twice = {t: len(m) for t, m in shown.items() if len(m) > 1}
        wrong_thread = [
            q.token for q in questions if any(m.thread_ts != q.root_ts for m in shown[q.token])
        ]
        _add(problems, missing, f"of {len(questions)} questions were never answered")
        _add(
            problems,
            [f"{t} ×{n}" for t, n in sorted(twice.items())],
            "questions were answered more than once (separate Slack messages)",
        )
        _add(problems, wrong_thread, "answers landed outside their thread")
        _add(
            problems,
            [f"{m.ts}: {m.text[:40]!r}" for m in stray],
            "bot messages are left showing something other than an answer (stuck placeholder or partial text)",
        )

        calls = self.model_calls()
        if calls_per_question is not None:
            _add(
                problems,
                [f"{t} ×{calls[t]}" for t in sorted(tokens) if calls[t] > calls_per_question],
                f"questions reached the model more than {calls_per_question} time(s) "
                "(an answer generated again)",
            )

        early, lacking = self.follow_up_order(questions)
        follow_ups = sum(1 for q in questions if q.index)
        _add(
            problems,
            early,
            f"of {follow_ups} follow-ups reached the model before the answer to the previous "
            "message of their thread was final (order lost)",
        )
        _add(
            problems,
            lacking,
            f"of {follow_ups} follow-ups were sent to the model without the answer to the "
            "previous message of their thread",
        )

        acks = [a.seconds for a in self.acks if a.status == 200]
        if ack_limit is not None and acks and percentile(acks, 0.99) > ack_limit:
            problems.append(
                f"Slack acknowledgement p99 {percentile(acks, 0.99) * 1000:.0f} ms is past "
                f"Slack's {ack_limit:.0f} s limit (p50 {percentile(acks, 0.5) * 1000:.0f} ms, "
                f"{len(acks)} acks)"
            )

        for process in self.processes:
            if "never retrieved" in process.log():
                problems.append(
                    f"process {process.index} logged 'Task exception was never retrieved'"
                )
        return problems

    def context(self, questions: Sequence[Question]) -> str:
        """A line to print under problems: what to look at next."""
        return (
            f"(Slack acks: {self.ack_summary()}; model calls: {len(self.model.chat_requests)} "
            f"for {len(questions)} questions; random seed {self.seed}; logs in {self.workdir})"
        )

    def follow_up_order(self, questions: Sequence[Question]) -> tuple[list[str], list[str]]:
        """Follow-ups that reached the model before the previous answer of their thread
        was final on screen (its last edit), and those whose prompt lacked that answer."""
        by_token: dict[str, list[RecordedRequest]] = defaultdict(list)
        for request in self.model.chat_requests:
            by_token[question_of(request)].append(request)
        finished = self._shown(last=True)
        early, lacking = [], []
        for question in questions:
            if question.index == 0:
                continue
            previous = f"q-{question.thread}-{question.index - 1}"
            requests = by_token[question.token]
            if any(not _holds_answer(r.body, f"Answer to {previous}.") for r in requests):
                lacking.append(question.token)
            shown_at = finished.get(previous)
            if requests and (shown_at is None or requests[0].received_at < shown_at):
                ahead = (
                    ""
                    if shown_at is None
                    else f" ({shown_at - requests[0].received_at:.2f} s early)"
                )
                early.append(f"{question.token}{ahead}")
        return early, lacking

    def _shown(self, *, last: bool) -> dict[str, float]:
        """When each answer was on screen in full (post or edit), test-process clock: the
        first time, or the last (the final edit, after which its turn may end)."""
        shown: dict[str, float] = {}
        for call in self.slack.calls:
            if call.method not in ("chat.postMessage", "chat.update"):
                continue
            match = _ANSWER.fullmatch(str(call.args.get("text", "")))
            if match and (last or match.group(1) not in shown):
                shown[match.group(1)] = call.at
        return shown

    def answered_at(self, question: Question) -> float | None:
        return self._shown(last=False).get(question.token)

    def ack_summary(self) -> str:
        acks = [a.seconds for a in self.acks if a.status == 200]
        return (
            f"{len(acks)} acks, p50 {percentile(acks, 0.5) * 1000:.0f} ms, "
            f"p99 {percentile(acks, 0.99) * 1000:.0f} ms, max {max(acks, default=0) * 1000:.0f} ms"
        )


def question_of(request: RecordedRequest) -> str:
    """The question token (q-<thread>-<k>) a model request asks about."""
    found = _QUESTION.search(request.last_user_text)
    return found.group(0) if found else "?"


def _holds_answer(body: Mapping[str, Any], answer: str) -> bool:
    for message in body.get("messages") or []:
        if message.get("role") == "assistant" and answer in str(message.get("content", "")):
            return True
    return False


def _add(problems: list[str], items: Sequence[str], what: str, shown: int = 8) -> None:
    if items:
        examples = ", ".join(items[:shown]) + (", …" if len(items) > shown else "")
        problems.append(f"{len(items)} {what}: {examples}")


def _host_port(url: str) -> tuple[str, int]:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return parsed.host or "127.0.0.1", parsed.port or 5432

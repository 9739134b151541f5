"""Exactly once and in order with several `botservice run` processes on one PostgreSQL
database (issue 8): redeliveries to random processes, kill -9 mid-answer, turns that
outlive the takeover time, and a database that goes away mid-turn.

Black-box: real processes and a real database; the fakes stand at the network edge
(tests/scale_out.py has the harness). Each test ends with one assertion listing
every broken promise, so a failure says all that went wrong at once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.db import PostgresServer
from tests.scale_out import Cluster, Question

TAKEOVER = {
    "BOTSERVICE_CONVERSATION__TURN_TAKEOVER_SECONDS": "3",
    "BOTSERVICE_CONVERSATION__TURN_HEARTBEAT_SECONDS": "1",
}


def expect_none(problems: list[str], cluster: Cluster, questions: list[Question]) -> None:
    """Fail with every problem on its own line (pytest's own diff of a list would cut them)."""
    if problems:
        pytest.fail("\n".join([*problems, cluster.context(questions)]), pytrace=False)


async def test_quick_threads_on_three_processes_are_answered_once_each_in_order(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    async with Cluster.running(postgres_server, tmp_path, processes=3) as cluster:
        questions = cluster.questions(threads=10, per_thread=5)

        await cluster.send(questions)
        await cluster.settle_deliveries()
        await cluster.wait_answered(questions, within=30)
        await cluster.quiet()

        expect_none(cluster.problems(questions), cluster, questions)


async def test_turns_of_a_killed_process_are_finished_by_the_others(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    answer_seconds, takeover, heartbeat = 2.0, 3.0, 1.0
    async with Cluster.running(
        postgres_server, tmp_path, processes=3, answer_seconds=answer_seconds, env=TAKEOVER
    ) as cluster:
        questions = cluster.questions(threads=6, per_thread=3)
        victim = cluster.processes[0]

        sending = asyncio.create_task(cluster.send(questions, first_to=victim.index))
        started = await cluster.wait_until(
            lambda: bool(cluster.in_flight(victim, answer_seconds)), within=20
        )
        assert started, "process 0 never started an answer"
        await asyncio.sleep(0.5)  # well into its answers: placeholders up, text streaming
        interrupted = set(cluster.in_flight(victim, answer_seconds))
        killed_at = victim.kill()
        left = cluster.unanswered(questions)
        await sending
        await cluster.settle_deliveries()

        # Its turns wait out the takeover time (plus a heartbeat to notice), then every
        # message still open in a thread is answered one after another.
        worst_thread = max(
            (sum(1 for q in left if q.thread == t) for t in {q.thread for q in questions}),
            default=0,
        )
        limit = takeover + 2 * heartbeat + worst_thread * answer_seconds + 5.0
        missing = await cluster.wait_answered(questions, within=limit + 5.0)
        await cluster.quiet(2.0)

        problems = cluster.problems(questions, calls_per_question=None)
        # Only a question whose answer the dead process was generating may be asked again.
        calls = cluster.model_calls()
        again = [
            f"{q.token} ×{calls[q.token]}"
            for q in questions
            if calls[q.token] > (2 if q.token in interrupted else 1)
        ]
        if again:
            problems.append(f"questions generated again without a death to excuse it: {again}")
        late = [
            f"{q.token} after {at - killed_at:.1f} s"
            for q in left
            if (at := cluster.answered_at(q)) is not None and at - killed_at > limit
        ]
        if late or missing:
            problems.append(
                f"{len(left)} questions were open when process 0 was killed; not all were "
                f"answered within {limit:.0f} s of the kill (takeover {takeover:.0f} s): "
                f"late {late}, never {[q.token for q in missing]}"
            )
        expect_none(problems, cluster, questions)


async def test_an_answer_slower_than_the_takeover_time_is_generated_once(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    answer_seconds = 8.0  # longer than the takeover time: only heartbeats keep the turn
    async with Cluster.running(
        postgres_server, tmp_path, processes=2, answer_seconds=answer_seconds, env=TAKEOVER
    ) as cluster:
        questions = cluster.questions(threads=2, per_thread=2)

        await cluster.send(questions)
        await cluster.settle_deliveries()
        await cluster.wait_answered(questions, within=2 * answer_seconds + 15)
        await cluster.quiet(4.0)  # past another takeover time: a late second answer shows

        expect_none(cluster.problems(questions), cluster, questions)


async def test_a_database_outage_mid_answer_loses_nothing_and_generates_nothing_again(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    answer_seconds, outage = 4.0, 6.0
    async with Cluster.running(
        postgres_server,
        tmp_path,
        processes=2,
        answer_seconds=answer_seconds,
        database_via_proxy=True,
    ) as cluster:
        assert cluster.proxy is not None
        questions = cluster.questions(threads=4, per_thread=2)
        first = [q for q in questions if q.index == 0]
        follow_ups = [q for q in questions if q.index == 1]

        await cluster.send(first, copies=(1, 2))
        await cluster.wait_until(lambda: len(cluster.model.chat_requests) >= len(first), within=15)
        await asyncio.sleep(1.0)  # the answers are streaming into Slack

        await cluster.proxy.cut()
        cut_at = time.monotonic()
        # Slack keeps sending: these fail until the database is back, and are redelivered.
        sending = asyncio.create_task(cluster.send(follow_ups, within=60))
        during = await _readiness_until(cluster, cut_at + outage)
        await cluster.proxy.restore()
        after = await _readiness_until(cluster, time.monotonic() + 10, stop_when_all=200)

        await sending
        await cluster.settle_deliveries()
        await cluster.wait_answered(questions, within=2 * answer_seconds + 10)
        await cluster.quiet(3.0)

        # Acknowledgements may be slow or fail while the database is away: Slack redelivers.
        problems = cluster.problems(questions, ack_limit=None)
        for process in cluster.processes:
            seen = during[process.index]
            if 503 not in seen:
                problems.append(
                    f"process {process.index}: /readyz never said 503 during the {outage:.0f} s "
                    f"database outage (saw {sorted(set(seen), key=str)})"
                )
            if after[process.index][-1:] != [200]:
                problems.append(
                    f"process {process.index}: /readyz not 200 within 10 s of the database "
                    f"returning (saw {after[process.index][-5:]})"
                )
        expect_none(problems, cluster, questions)


async def _readiness_until(
    cluster: Cluster, until: float, *, stop_when_all: int | None = None
) -> dict[int, list[int | None]]:
    """Poll every live process's /readyz until `until`; the statuses seen, per process."""
    seen: dict[int, list[int | None]] = {p.index: [] for p in cluster.live()}
    while time.monotonic() < until:
        for process in cluster.live():
            seen[process.index].append(await cluster.readyz(process))
        if stop_when_all is not None and all(s[-1:] == [stop_when_all] for s in seen.values()):
            break
        await asyncio.sleep(0.25)
    return seen

"""Background work: a failure is logged once, with its stack, and never left unretrieved."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from botservice.core.background import BackgroundTasks


async def test_a_failing_task_is_logged_once_and_its_exception_retrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = BackgroundTasks()
    loop_complaints: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(
        lambda loop, context: loop_complaints.append(context)
    )

    async def fails() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="botservice.core.background"):
        task = tasks.spawn(fails(), name="doomed")
        await asyncio.wait({task})  # waits without retrieving the exception
        await asyncio.sleep(0)
    del task
    gc.collect()
    await asyncio.sleep(0)

    failures = [r for r in caplog.records if r.name == "botservice.core.background"]
    assert [r.getMessage() for r in failures] == ["background task doomed failed"]
    assert failures[0].exc_info is not None
    assert loop_complaints == []
    assert len(tasks) == 0


async def test_cancel_all_stops_every_task_quietly(caplog: pytest.LogCaptureFixture) -> None:
    tasks = BackgroundTasks()
    for number in range(3):
        tasks.spawn(asyncio.sleep(60), name=f"sleeper-{number}")
    with caplog.at_level(logging.DEBUG, logger="botservice.core.background"):
        await tasks.cancel_all()
    assert len(tasks) == 0
    assert caplog.records == []

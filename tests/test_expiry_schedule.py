"""The purge job on its schedule: it runs at start, claims its period, and a shutdown
in the middle of it is a quiet stop, not an error with a stack in the log."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest

from botservice.app.expiry import purge_period, start_expiry_scheduler, start_expiry_soon
from botservice.core.settings import StorageSettings
from botservice.storage.repository import SqlStore
from tests.db import incoming


async def test_a_shutdown_during_a_purge_logs_no_error(
    sqlite_store: SqlStore, caplog: pytest.LogCaptureFixture
) -> None:
    await sqlite_store.change_setting(
        "test", "W1", "C1", field="retention_days", value=0, changed_by="U1"
    )
    for number in range(150):
        turn = await sqlite_store.accept(incoming(f"k{number}"), text="hi", tokens=1)
        assert turn is not None
        await sqlite_store.store_answer(
            turn.turn_id, text="re", tokens=1, usage=None, status="complete", model="m"
        )

    caplog.set_level(logging.INFO)
    # One row a transaction: a purge long enough to be interrupted.
    scheduler = start_expiry_scheduler(sqlite_store, StorageSettings(purge_batch_size=1))
    running: list[asyncio.Task[object]] = []
    try:
        for _ in range(50):
            await asyncio.sleep(0.001)
            running = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if running:
                break
        assert running, "the purge should start at once"
    finally:
        scheduler.shutdown(wait=False)
    for task in running:  # what asyncio.run does to what is left at exit
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    assert any("stopped by shutdown" in r.getMessage() for r in caplog.records)


def test_every_process_names_the_same_period() -> None:
    start = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)
    assert purge_period(start, 60) == purge_period(start.replace(minute=59), 60)
    assert purge_period(start, 60) != purge_period(start.replace(hour=15), 60)


async def test_the_first_purge_waits_for_the_start_delay(sqlite_store: SqlStore) -> None:
    await sqlite_store.change_setting(
        "test", "W1", "C1", field="retention_days", value=0, changed_by="U1"
    )
    turn = await sqlite_store.accept(incoming("old"), text="hi", tokens=1)
    assert turn is not None
    await sqlite_store.store_answer(
        turn.turn_id, text="re", tokens=1, usage=None, status="complete", model="m"
    )
    stop = start_expiry_soon(sqlite_store, StorageSettings(), delay=0.2)
    try:
        await asyncio.sleep(0.05)
        assert await sqlite_store.message_text(turn.user_message_id) is not None
        for _ in range(300):
            if await sqlite_store.message_text(turn.user_message_id) is None:
                break
            await asyncio.sleep(0.01)
        assert await sqlite_store.message_text(turn.user_message_id) is None
    finally:
        stop()


async def test_stopping_before_the_delay_calls_the_purge_off(sqlite_store: SqlStore) -> None:
    await sqlite_store.change_setting(
        "test", "W1", "C1", field="retention_days", value=0, changed_by="U1"
    )
    turn = await sqlite_store.accept(incoming("old"), text="hi", tokens=1)
    assert turn is not None
    await sqlite_store.store_answer(
        turn.turn_id, text="re", tokens=1, usage=None, status="complete", model="m"
    )
    start_expiry_soon(sqlite_store, StorageSettings(), delay=0.05)()
    await asyncio.sleep(0.2)
    assert await sqlite_store.message_text(turn.user_message_id) is not None

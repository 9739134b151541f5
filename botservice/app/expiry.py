"""Scheduled expiry of stored data: the purge job and its schedule."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from botservice.core.ports import PurgeCounts, PurgeStore
from botservice.core.settings import StorageSettings
from botservice.core.telemetry import NO_TELEMETRY, Telemetry
from botservice.core.usage import UsageLedger

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

log = logging.getLogger(__name__)

REPLY_SECRETS_INTERVAL_SECONDS = 60
# The scheduler (and its first purge) starts this long after the bot: a starting bot
# answers its first message before it imports APScheduler and purges.
EXPIRY_START_DELAY_SECONDS = 1.0


async def purge_once(
    store: PurgeStore,
    settings: StorageSettings,
    *,
    now: datetime | None = None,
    claim_period: bool = True,
    dry_run: bool = False,
    telemetry: Telemetry = NO_TELEMETRY,
    usage: UsageLedger | None = None,
) -> PurgeCounts:
    """Delete what has expired. With `claim_period`, only the first process to run
    in this period does the work, since every process's scheduler fires the job."""
    now = now or datetime.now(UTC)
    if not dry_run:
        await forget_reply_secrets(store, settings, now=now)
    counts = await store.purge(
        now=now,
        default_retention_days=settings.retention_days,
        dedupe_days=settings.dedupe_days,
        batch_size=settings.purge_batch_size,
        period=purge_period(now, settings.purge_interval_minutes) if claim_period else None,
        dry_run=dry_run,
    )
    if not counts.claimed:
        log.info("purge: another process took this period")
        return counts
    if usage is not None and not dry_run:
        # Usage rows hold no text and outlive the messages (billing looks back a year).
        deleted = await usage.purge_usage(
            before=now - timedelta(days=settings.usage_retention_days),
            batch_size=settings.purge_batch_size,
        )
        counts = dataclasses.replace(counts, usage=deleted)
    if not dry_run:
        telemetry.purged("messages", counts.messages)
        telemetry.purged("conversations", counts.conversations)
        telemetry.purged("turns", counts.turns)
        telemetry.purged("usage", counts.usage)
    return counts


async def forget_reply_secrets(
    store: PurgeStore, settings: StorageSettings, *, now: datetime | None = None
) -> int:
    """Delete credentials kept to answer after a restart (Discord interaction tokens)
    once they have expired. Cheap and idempotent, so every process runs it."""
    return await store.forget_expired_reply_secrets(
        now=now or datetime.now(UTC), batch_size=settings.purge_batch_size
    )


def purge_period(now: datetime, interval_minutes: float) -> str:
    """The name of the schedule slot `now` falls in, the same in every process."""
    slot = math.floor(now.timestamp() / (interval_minutes * 60))
    return f"purge:{interval_minutes:g}m:{slot}"


def until_shutdown(job: Callable[..., Awaitable[object]]) -> Callable[..., Awaitable[None]]:
    """A scheduled job that a shutdown may interrupt without an error in the log.

    APScheduler logs a cancelled coroutine job as a failure with its stack. The
    jobs here are safe to stop anywhere (each purge batch is its own transaction,
    a resumed turn keeps its lease), so a shutdown is just a stop.
    """

    @functools.wraps(job)
    async def run(*args: object, **kwargs: object) -> None:
        try:
            await job(*args, **kwargs)
        except asyncio.CancelledError:
            log.info("%s stopped by shutdown", getattr(job, "__name__", "job"))

    return run


def start_expiry_scheduler(
    store: PurgeStore,
    settings: StorageSettings,
    *,
    telemetry: Telemetry = NO_TELEMETRY,
    usage: UsageLedger | None = None,
) -> AsyncIOScheduler:
    """Run the purge every `purge_interval_minutes` in the running event loop, first one at
    once, and delete expired reply secrets every minute."""
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    scheduler = AsyncIOScheduler(timezone=UTC)
    scheduler.add_job(
        until_shutdown(purge_once),
        "interval",
        args=(store, settings),
        kwargs={"telemetry": telemetry, "usage": usage},
        minutes=settings.purge_interval_minutes,
        next_run_time=datetime.now(UTC),
        id="purge",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=None,
    )
    # Every minute: an interaction token is valid for 15, and is not kept much longer.
    scheduler.add_job(
        until_shutdown(forget_reply_secrets),
        "interval",
        args=(store, settings),
        seconds=REPLY_SECRETS_INTERVAL_SECONDS,
        id="reply-secrets",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=None,
    )
    scheduler.start()
    return scheduler


def start_expiry_soon(
    store: PurgeStore,
    settings: StorageSettings,
    *,
    telemetry: Telemetry = NO_TELEMETRY,
    usage: UsageLedger | None = None,
    delay: float = EXPIRY_START_DELAY_SECONDS,
) -> Callable[[], None]:
    """`start_expiry_scheduler` `delay` seconds from now, on the running loop. Returns
    the function that stops it (or calls the start off, when it has not come yet)."""
    scheduler: AsyncIOScheduler | None = None

    def start() -> None:
        nonlocal scheduler
        scheduler = start_expiry_scheduler(store, settings, telemetry=telemetry, usage=usage)

    starting = asyncio.get_running_loop().call_later(delay, start)

    def stop() -> None:
        starting.cancel()
        if scheduler is not None:
            scheduler.shutdown(wait=False)

    return stop

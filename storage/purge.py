"""Purge: deleting what has expired (messages, empty conversations, dedupe markers,
reply secrets) in batches, once per period across processes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    Select,
    bindparam,
    case,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    tuple_,
    update,
)

from botservice.core.ports import (
    PurgeCounts,
)
from botservice.storage.base import (
    _UNFINISHED,
    StoreBase,
    _c,
    _m,
    _rows_of,
    _s,
    _t,
)
from botservice.storage.tables import (
    CONVERSATIONS,
    MESSAGES,
    PURGE_CLAIMS,
    TURNS,
    UTCDateTime,
)

log = logging.getLogger(__name__)

PURGE_JOB = "purge"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECRETS = '%"secrets":%'  # reply targets are written with json.dumps(separators=(",", ":"))


class SqlPurgeStore(StoreBase):
    """Expiry, in bounded batches (`botservice.core.ports.PurgeStore`)."""

    # --- expiry ------------------------------------------------------------------

    async def purge(
        self,
        *,
        now: datetime,
        default_retention_days: int,
        dedupe_days: int,
        batch_size: int,
        period: str | None = None,
        dry_run: bool = False,
    ) -> PurgeCounts:
        """Delete expired messages, then empty conversations, then old dedupe markers.

        Each batch (at most `batch_size` rows) is its own transaction and other
        work runs between batches, so replies never wait long on a purge. A dry
        run counts what would go and claims no period.
        """
        if now.tzinfo is None:
            raise ValueError("purge needs an aware datetime for `now`")
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        if period is not None and not dry_run and not await self._claim_period(period, now):
            log.info("purge for period %s already ran in another process", period)
            return PurgeCounts(claimed=False)
        cutoff = await self._conversation_cutoff(now, default_retention_days)
        messages = await self._purge_messages(now, cutoff, batch_size, dry_run)
        conversations = await self._purge_conversations(now, cutoff, batch_size, dry_run)
        turns = await self._purge_turns(now - timedelta(days=dedupe_days), batch_size, dry_run)
        if not dry_run:
            old_claims = delete(PURGE_CLAIMS).where(
                PURGE_CLAIMS.c.claimed_at < now - timedelta(days=max(dedupe_days, 7))
            )
            await self._write(lambda connection: connection.execute(old_claims).rowcount)
        log.info(
            "purge %s %d messages, %d conversations, %d dedupe markers",
            _verb(dry_run),
            messages,
            conversations,
            turns,
        )
        return PurgeCounts(messages=messages, conversations=conversations, turns=turns)

    async def forget_expired_reply_secrets(self, *, now: datetime, batch_size: int) -> int:
        # Few turns carry secrets and each loses them once, so a scan of the rows that
        # still mention them stays small; it walks ids so live ones are read once a run.
        candidates = (
            select(_t.id, _t.reply_target)
            .where(_t.id > bindparam("after_id", type_=Integer), _t.reply_target.like(_SECRETS))
            .order_by(_t.id)
            .limit(batch_size)
        )
        rewrite = (
            update(TURNS)
            .where(_t.id == bindparam("b_turn_id"))
            .values(reply_target=bindparam("b_reply_target"))
        )
        deadline = now.timestamp()

        def work(after_id: int) -> Callable[[Connection], tuple[int, int]]:
            def batch(connection: Connection) -> tuple[int, int]:
                rows = connection.execute(candidates, {"after_id": after_id}).all()
                expired = []
                for turn_id, raw in rows:
                    target = json.loads(raw)
                    if isinstance(target, dict) and _expired(target, deadline):
                        del target["secrets"]
                        expired.append(
                            {
                                "b_turn_id": turn_id,
                                "b_reply_target": json.dumps(target, separators=(",", ":")),
                            }
                        )
                if expired:
                    connection.execute(rewrite, expired)
                last = rows[-1][0] if len(rows) == batch_size else -1
                return len(expired), last

            return batch

        total, after = 0, 0
        while after >= 0:
            forgotten, after = await self._write(work(after))
            total += forgotten
        if total:
            log.info("deleted the expired reply secrets of %d turns", total)
        return total

    async def _claim_period(self, period: str, now: datetime) -> bool:
        claim = (
            self._insert(PURGE_CLAIMS)
            .values(job=PURGE_JOB, period=period, claimed_at=now, claimed_by=self._claimed_by)
            .on_conflict_do_nothing(index_elements=[PURGE_CLAIMS.c.job, PURGE_CLAIMS.c.period])
            .returning(PURGE_CLAIMS.c.job)
        )

        def work(connection: Connection) -> bool:
            return connection.execute(claim).scalar_one_or_none() is not None

        return await self._write(work)

    async def _conversation_cutoff(self, now: datetime, default_retention_days: int) -> Any:
        """SQL for the moment before which a conversation's messages have expired.

        Retention comes from the conversation's channel row, else its workspace
        row (channel ''), else the default. The distinct retention values are
        few, so each becomes one CASE branch with its cutoff computed here: that
        keeps date arithmetic out of SQL, where SQLite and PostgreSQL differ.
        """
        distinct = select(_s.retention_days).where(_s.retention_days.is_not(None)).distinct()
        days = set(
            await self._read(lambda connection: connection.execute(distinct).scalars().all())
        )
        days.add(default_retention_days)

        def retention_at(channel: Any) -> Any:
            return (
                select(_s.retention_days)
                .where(_s.platform == _c.platform, _s.workspace == _c.workspace)
                .where(_s.channel == channel)
                .scalar_subquery()
            )

        retention = func.coalesce(
            retention_at(_c.channel), retention_at(""), default_retention_days
        )
        # A retention value set after the values were read matches no branch and
        # waits for the next run instead of being guessed.
        return case(
            *(
                (retention == value, literal(now - timedelta(days=value), UTCDateTime()))
                for value in sorted(days)
                if value >= 0
            ),
            else_=literal(_EPOCH, UTCDateTime()),
        )

    async def _purge_messages(
        self, now: datetime, cutoff: Any, batch_size: int, dry_run: bool
    ) -> int:
        pending_question = exists().where(_t.user_message_id == _m.id, _t.status.in_(_UNFINISHED))
        after = bindparam("after_created_at", type_=UTCDateTime())
        after_id = bindparam("after_id", type_=Integer)
        candidates = (
            select(_m.id, _m.created_at)
            .join(CONVERSATIONS, _c.id == _m.conversation_id)
            .where(
                # Bounds the index range; the exact cutoff is per conversation.
                _m.created_at < now,
                # Walk (created_at, id) forwards so rows kept by a longer retention
                # are read once per purge, not once per batch.
                tuple_(_m.created_at, _m.id) > tuple_(after, after_id),
                _m.created_at < cutoff,
                ~pending_question,
            )
            .order_by(_m.created_at, _m.id)
            .limit(batch_size)
        )
        deletion = (
            delete(MESSAGES)
            .where(_m.id.in_(candidates.with_only_columns(_m.id).scalar_subquery()))
            .returning(_m.id, _m.created_at)
        )
        position: dict[str, Any] = {"after_created_at": _EPOCH, "after_id": 0}
        total = 0
        run = self._read if dry_run else self._write
        statement = candidates if dry_run else deletion
        while True:
            rows = await run(_rows_of(statement, position))
            total += len(rows)
            log.debug("purge %s %d messages in one batch", _verb(dry_run), len(rows))
            if len(rows) < batch_size:
                if total and not dry_run:
                    self._message_cache.clear()
                return total
            last = max(rows, key=lambda row: (row[1], row[0]))
            position = {"after_created_at": last[1], "after_id": last[0]}
            await asyncio.sleep(0)

    async def _purge_conversations(
        self, now: datetime, cutoff: Any, batch_size: int, dry_run: bool
    ) -> int:
        if dry_run:
            # Nothing was deleted, so count the conversations that would be empty.
            no_messages = ~exists().where(
                _m.conversation_id == _c.id,
                or_(
                    _m.created_at >= cutoff,
                    exists().where(_t.user_message_id == _m.id, _t.status.in_(_UNFINISHED)),
                ),
            )
        else:
            no_messages = ~exists().where(_m.conversation_id == _c.id)
        empty = (
            no_messages,
            ~exists().where(_t.conversation_id == _c.id, _t.status.in_(_UNFINISHED)),
            # A conversation created after `now` has its first message on its way in.
            # One that gets a message while it is being deleted makes that accept
            # fail on the foreign key and start over (see `accept`).
            _c.created_at < now,
        )
        after_id = bindparam("after_id", type_=Integer)
        candidates = select(_c.id).where(_c.id > after_id, *empty).order_by(_c.id).limit(batch_size)
        deletion = (
            delete(CONVERSATIONS)
            .where(_c.id.in_(candidates.scalar_subquery()), *empty)
            .returning(_c.id)
        )
        return await self._purge_by_id("conversations", candidates, deletion, dry_run, batch_size)

    async def _purge_turns(self, cutoff: datetime, batch_size: int, dry_run: bool) -> int:
        after_id = bindparam("after_id", type_=Integer)
        candidates = (
            select(_t.id)
            .where(_t.id > after_id, _t.status.not_in(_UNFINISHED), _t.created_at < cutoff)
            .order_by(_t.id)
            .limit(batch_size)
        )
        deletion = delete(TURNS).where(_t.id.in_(candidates.scalar_subquery())).returning(_t.id)
        return await self._purge_by_id("dedupe markers", candidates, deletion, dry_run, batch_size)

    async def _purge_by_id(
        self, what: str, candidates: Select[Any], deletion: Any, dry_run: bool, batch_size: int
    ) -> int:
        after_id = 0
        total = 0
        run = self._read if dry_run else self._write
        statement = candidates if dry_run else deletion
        while True:
            ids = [row[0] for row in await run(_rows_of(statement, {"after_id": after_id}))]
            total += len(ids)
            log.debug("purge %s %d %s in one batch", _verb(dry_run), len(ids), what)
            if len(ids) < batch_size:
                return total
            after_id = max(ids)
            await asyncio.sleep(0)


def _expired(target: dict[str, Any], deadline: float) -> bool:
    if "secrets" not in target:
        return False
    try:
        return float(target.get("expires_at", 0)) <= deadline
    except (TypeError, ValueError):
        return True  # no readable expiry: not worth keeping a credential for


def _verb(dry_run: bool) -> str:
    return "would remove" if dry_run else "removed"

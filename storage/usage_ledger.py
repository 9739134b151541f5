"""The usage ledger (`botservice.core.usage.UsageLedger`) over the service's database.

It shares the `SqlStore`'s connections and, on SQLite, its single writer thread, so a
usage row never fights an answer for SQLite's write lock.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, literal, select, update

from botservice.core.usage import UsageGrouping, UsageLedger, UsageRecord, UsageRow, UsageTotals
from botservice.storage.repository import SqlStore
from botservice.storage.tables import USAGE
from botservice.storage.usage_rows import write_usage

_u = USAGE.c

_SUMS = (
    func.count(_u.id),
    func.coalesce(func.sum(_u.prompt_tokens), 0),
    func.coalesce(func.sum(_u.completion_tokens), 0),
    func.coalesce(func.sum(_u.cached_tokens), 0),
    func.coalesce(func.sum(_u.reasoning_tokens), 0),
    func.coalesce(func.sum(_u.cost), 0.0),
)


class SqlUsage(UsageLedger):
    def __init__(self, store: SqlStore) -> None:
        self._store = store

    async def record_usage(self, record: UsageRecord) -> None:
        def work(connection: Connection) -> None:
            write_usage(connection, record)

        await self._store._write_one(work)

    async def usage_totals(
        self,
        *,
        platform: str,
        since: datetime,
        user_id: str | None = None,
        workspace: str | None = None,
        channel: str | None = None,
    ) -> UsageTotals:
        statement = select(*_SUMS).where(_u.platform == platform, _u.created_at >= since)
        if user_id is not None:
            statement = statement.where(_u.user_id == user_id)
        if workspace is not None:
            statement = statement.where(_u.workspace == workspace)
        if channel is not None:
            statement = statement.where(_u.channel == channel)

        def work(connection: Connection) -> Any:
            return connection.execute(statement).one()

        return _totals(await self._store._read(work))

    async def usage_report(self, *, since: datetime, by: UsageGrouping) -> list[UsageRow]:
        key: Any
        if by == "user":
            key = _u.platform + literal(":") + _u.user_id
        elif by == "channel":
            key = _u.platform + literal(":") + _u.workspace + literal("/") + _u.channel
        else:
            key = _u.model
        statement = (
            select(key.label("key"), *_SUMS)
            .where(_u.created_at >= since)
            .group_by(key)
            .order_by(func.sum(_u.cost).desc(), func.sum(_u.prompt_tokens).desc(), key)
        )

        def work(connection: Connection) -> list[Any]:
            return list(connection.execute(statement))

        rows = await self._store._read(work)
        return [UsageRow(key=str(row[0]), totals=_totals(row[1:])) for row in rows]

    async def forget_usage_of(self, platform: str, user_id: str) -> int:
        statement = (
            update(USAGE).where(_u.platform == platform, _u.user_id == user_id).values(user_id="")
        )

        def work(connection: Connection) -> int:
            return int(connection.execute(statement).rowcount)

        return await self._store._write(work)

    async def purge_usage(self, *, before: datetime, batch_size: int) -> int:
        total = 0
        while True:
            batch = select(_u.id).where(_u.created_at < before).order_by(_u.id).limit(batch_size)
            statement = delete(USAGE).where(_u.id.in_(batch.scalar_subquery()))

            def work(connection: Connection, statement: Any = statement) -> int:
                return int(connection.execute(statement).rowcount)

            deleted = await self._store._write(work)
            total += deleted
            if deleted < batch_size:
                return total


def _totals(row: Any) -> UsageTotals:
    return UsageTotals(
        calls=int(row[0]),
        prompt_tokens=int(row[1]),
        completion_tokens=int(row[2]),
        cached_tokens=int(row[3]),
        reasoning_tokens=int(row[4]),
        cost=float(row[5]),
    )

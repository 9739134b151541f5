"""A usage ledger row as the `usage` table takes it: written on its own
(`usage_ledger.SqlUsage.record_usage`) or with the answer it paid for
(`turns.SqlTurnStore.store_answer`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert

from botservice.core.ports import UsageRecord
from botservice.storage.tables import USAGE, utcnow

_INSERT_USAGE = insert(USAGE)
# The columns `usage_values` fills, in its order.
USAGE_FIELDS = (
    "turn_id",
    "platform",
    "workspace",
    "channel",
    "user_id",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost",
    "estimated",
    "created_at",
)


def usage_values(record: UsageRecord) -> dict[str, Any]:
    return {
        "turn_id": record.turn_id,
        "platform": record.platform,
        "workspace": record.workspace,
        "channel": record.channel,
        "user_id": record.user_id,
        "model": record.model,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cached_tokens": record.cached_tokens,
        "reasoning_tokens": record.reasoning_tokens,
        "cost": record.cost,
        "estimated": record.estimated,
        "created_at": utcnow(),
    }


def write_usage(connection: Connection, record: UsageRecord) -> None:
    connection.execute(_INSERT_USAGE, usage_values(record))

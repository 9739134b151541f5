"""`SqlStore`: the core's `Store` port over SQLAlchemy Core (SQLite or PostgreSQL).

Each port of `botservice.core.ports` has its part in a module of its own, all over
one `StoreBase` (one engine, one way of running work); `SqlStore` is their sum.

- `turns`: accepting a message, claiming and finishing its turn (the hot path)
- `history`: the messages of a conversation
- `channel_settings`: a channel's settings and their audit trail
- `usage`: tokens spent (daily budgets)
- `lookups`: what adapters look up before acknowledging an event
- `forgetting`: forget-me, deleted platform messages, uninstalled workspaces
- `purge`: expiry in batches
- `tool_rounds`: a turn's tool calls and the confirmations they wait for
- `message_search`: a channel's messages by their words (the built-in tools)
- `voice_opt_outs`: members who said `/voice ignore-me`
"""

from __future__ import annotations

from botservice.storage.base import ACCEPT_POOL_SIZE, MESSAGE_CACHE_SIZE, StoreBase
from botservice.storage.channel_settings import SqlChannelSettingsStore
from botservice.storage.feedback import FeedbackQueries
from botservice.storage.forgetting import FORGOTTEN_USER, SqlForgetting
from botservice.storage.history import SqlHistoryStore
from botservice.storage.lookups import SqlLookups
from botservice.storage.message_search import SqlMessageSearch
from botservice.storage.purge import PURGE_JOB, SqlPurgeStore
from botservice.storage.tool_rounds import ToolRoundQueries
from botservice.storage.turns import SqlTurnStore
from botservice.storage.usage import SqlUsageStore
from botservice.storage.voice_opt_outs import SqlVoiceOptOuts

__all__ = [
    "ACCEPT_POOL_SIZE",
    "FORGOTTEN_USER",
    "MESSAGE_CACHE_SIZE",
    "PURGE_JOB",
    "SqlStore",
    "StoreBase",
]


class SqlStore(
    SqlTurnStore,
    SqlHistoryStore,
    SqlChannelSettingsStore,
    SqlUsageStore,
    SqlLookups,
    SqlForgetting,
    SqlPurgeStore,
    FeedbackQueries,
    ToolRoundQueries,
    SqlMessageSearch,
    SqlVoiceOptOuts,
):
    """The `Store` port (botservice/core/ports.py) over SQLAlchemy.

    Build it with `await SqlStore.open(database_url)` (checks the connection,
    applies migrations) or `SqlStore(create_engine(url))` over a migrated
    database. Close it with `aclose()`.
    """

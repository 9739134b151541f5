"""The store on a SQLite file, answering before SQLAlchemy is imported.

A turn's statements run through the sqlite3 module (`sqlite_hot`), and so do a start's
sweep and the tool rounds of a history: the first answer needs nothing else. The rest
of the store (commands, the purge, tools, reports, forget-me: `SqlStore`, over
SQLAlchemy) costs about a third of a second to import on a small machine, as much as
everything else a console start does (bench/bench_cold_start.py). So a start on a
SQLite file whose schema is current opens `SqliteFileStore`: the turn's methods are
its own, and the first time anything else is asked of it, it builds the `SqlStore`
over the same worker and hot path (one connection on the loop, one set of caches) and
hands the question to it. `import_rest_soon` imports SQLAlchemy on a thread a second
after start, so that first time rarely waits for the import.

Imports no SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sqlite3
from collections.abc import Callable, Collection
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botservice.core.events import ConversationKey, IncomingMessage
from botservice.core.ports import (
    AcceptedTurn,
    ChannelSettings,
    Claim,
    MessageStatus,
    PendingTurn,
    StoredMessage,
    StoredToolCall,
    Usage,
    UsageRecord,
)
from botservice.storage.revisions import head_revision
from botservice.storage.sqlite_worker import SqliteFileParts

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from botservice.core.usage import UsageLedger
    from botservice.storage.repository import SqlStore

log = logging.getLogger(__name__)

# What the full store needs imported; `import_rest_soon` imports them off the loop.
_REST = (
    "botservice.storage.engine",
    "botservice.storage.repository",
    "botservice.storage.usage_ledger",
)
IMPORT_REST_DELAY_SECONDS = 1.0


def sqlite_file_path(database_url: str) -> str | None:
    """The file a plain SQLite URL names (`sqlite:///bot.db`, `sqlite+aiosqlite:////srv/bot.db`),
    as SQLAlchemy reads it; None for anything else (PostgreSQL, memory, a query string,
    escapes), which opens through SQLAlchemy as before."""
    scheme, separator, rest = database_url.strip().partition("://")
    if not separator or scheme.lower() not in ("sqlite", "sqlite+aiosqlite"):
        return None
    if not rest.startswith("/") or any(c in rest for c in "?%#"):
        return None
    path = rest[1:]
    if path in ("", ":memory:") or path.startswith("file:"):
        return None
    return path


def current_revision(path: str) -> str | None:
    """The file's schema revision (`alembic_version`), read without creating the file;
    None when there is no file, no revision, or it cannot be read."""
    try:
        connection = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error:
        return None
    finally:
        connection.close()
    return str(rows[0][0]) if len(rows) == 1 else None


class SqliteFileStore:
    """`SqlStore` on a SQLite file, with the SQLAlchemy part built on first use.

    Open it with `SqliteFileStore.open`, which says None when the file needs SQLAlchemy
    to open (it does not exist yet, its schema is behind, or it cannot be read: the
    SQLAlchemy path then migrates it, or says what is wrong).
    """

    # Class-level defaults: `__getattr__` must never be asked for these.
    _rest: SqlStore | None = None
    shared = False  # SQLite is the one-process store (README)
    pool_size = 1  # the loop's one connection

    def __init__(self, database_url: str, path: str, *, concurrency: int | None) -> None:
        self._database_url = database_url
        self._concurrency = concurrency
        self._parts = SqliteFileParts.open(path, self._thread_engine)
        self._hot = self._parts.hot
        # Told when messages are forgotten: only the rest of the store forgets any, so
        # they are handed to it once it is built.
        self._forgetting: list[Callable[[], None]] = []

    @classmethod
    def open(cls, database_url: str, *, concurrency: int | None = None) -> SqliteFileStore | None:
        path = sqlite_file_path(database_url)
        if path is None or not Path(path).parent.is_dir():
            return None
        head = head_revision()
        if head is None or current_revision(path) != head:
            return None
        return cls(database_url, path, concurrency=concurrency)

    # --- the rest of the store ----------------------------------------------------------

    def rest(self) -> SqlStore:
        """The full store over this one's worker and hot path, built on first use."""
        if self._rest is None:
            from botservice.storage.engine import create_engine
            from botservice.storage.repository import SqlStore

            self._rest = SqlStore(
                create_engine(self._database_url),
                concurrency=self._concurrency,
                sqlite_parts=self._parts,
            )
            for listener in self._forgetting:
                self._rest.on_forgetting(listener)
        return self._rest

    def __getattr__(self, name: str) -> Any:
        # Anything but the turn's path: commands, the purge, tools, lookups, the engine.
        return getattr(self.rest(), name)

    def on_forgetting(self, listener: Callable[[], None]) -> None:
        if self._rest is not None:
            self._rest.on_forgetting(listener)
        else:
            self._forgetting.append(listener)

    def usage_ledger(self) -> UsageLedger:
        """The usage ledger over this store, built with the rest on first use."""
        return _LedgerOnFirstUse(self)

    def import_rest_soon(self, delay: float = IMPORT_REST_DELAY_SECONDS) -> asyncio.Task[None]:
        """Import what the rest of the store needs on a thread `delay` seconds from now
        (after the first answer, off the loop); cancel the task to call it off."""

        async def later() -> None:
            await asyncio.sleep(delay)
            for module in _REST:
                await asyncio.to_thread(importlib.import_module, module)

        return asyncio.create_task(later(), name="botservice-import-store")

    def _thread_engine(self) -> Engine:
        # The worker's SQLAlchemy engine: only the full store's work uses it, so the full
        # store exists by the time the worker asks for it.
        from botservice.storage.engine import sqlite_thread_engine

        return sqlite_thread_engine(self.rest().engine)

    async def aclose(self) -> None:
        if self._rest is not None:
            await self._rest.aclose()  # it owns the worker and hot path now
            return
        self._hot.close()
        await self._parts.worker.aclose()

    async def open_accept_connections(self) -> None:
        """Nothing to open: SQLite accepts on the loop's connection."""

    async def leave_loop(self) -> None:
        """Nothing to close: SQLite is only used from its home loop."""

    async def ping(self) -> bool:
        return await self._hot.ping()

    async def was_taken(self, platform: str, message_key: str) -> bool:
        return await self._hot.was_taken(platform, message_key)

    # --- the turn's path: what SqlStore does on a SQLite file ---------------------------

    async def accept(
        self,
        message: IncomingMessage,
        *,
        text: str,
        tokens: int,
        claim: Claim | None = None,
        spoken: bool = False,
    ) -> AcceptedTurn | None:
        return await self._hot.accept(message, text=text, tokens=tokens, claim=claim, spoken=spoken)

    async def claim_next_turn(
        self,
        conversation_id: int,
        *,
        holder: str,
        alive_until: datetime,
        key: ConversationKey | None = None,
    ) -> PendingTurn | None:
        claim = Claim(holder=holder, alive_until=alive_until)
        return await self._hot.claim_next_turn(conversation_id, claim, key)

    async def renew_claims(
        self, holder: str, turn_ids: Collection[int], *, alive_until: datetime
    ) -> int:
        if not turn_ids:
            return 0
        return await self._hot.renew_claims(holder, turn_ids, alive_until=alive_until)

    async def set_reply_ref(self, turn_id: int, reply_ref: str) -> None:
        await self._hot.set_reply_ref(turn_id, reply_ref)

    async def store_answer(
        self,
        turn_id: int,
        *,
        holder: str | None = None,
        text: str,
        tokens: int,
        usage: Usage | None,
        status: MessageStatus,
        model: str,
        reply_ref: str | None = None,
        ledger: UsageRecord | None = None,
    ) -> int | None:
        saved, _ = await self._hot.store_answer(
            turn_id,
            holder=holder,
            text=text,
            tokens=tokens,
            usage=usage,
            status=status,
            model=model,
            reply_ref=reply_ref,
            ledger=ledger,
        )
        return saved

    async def store_answer_and_claim_next(
        self,
        turn_id: int,
        *,
        claim: Claim,
        conversation_id: int,
        key: ConversationKey,
        text: str,
        tokens: int,
        usage: Usage | None,
        status: MessageStatus,
        model: str,
        reply_ref: str | None = None,
        ledger: UsageRecord | None = None,
    ) -> tuple[int | None, PendingTurn | None]:
        return await self._hot.store_answer(
            turn_id,
            holder=claim.holder,
            text=text,
            tokens=tokens,
            usage=usage,
            status=status,
            model=model,
            reply_ref=reply_ref,
            ledger=ledger,
            claim_next=(claim, conversation_id, key),
        )

    async def fail_turn(self, turn_id: int, *, holder: str | None = None) -> bool:
        return await self._hot.fail_turn(turn_id, holder=holder)

    async def release_claims(self, holder: str | None = None) -> list[int]:
        return await self._hot.release_claims(holder)

    async def release_stale_turns(self, *, now: datetime) -> list[int]:
        return await self._hot.release_stale_turns(now=now)

    async def waiting_conversations(self, *, accepted_before: datetime) -> list[int]:
        return await self._hot.waiting_conversations(accepted_before=accepted_before)

    async def channel_settings(
        self, platform: str, workspace: str, channel: str, *, for_message: int | None = None
    ) -> ChannelSettings:
        return await self._hot.channel_settings(
            platform, workspace, channel, for_message=for_message
        )

    async def history(
        self, conversation_id: int, *, up_to_message_id: int, limit: int
    ) -> list[StoredMessage]:
        if limit <= 0:
            return []
        return await self._hot.history(
            conversation_id, up_to_message_id=up_to_message_id, limit=limit
        )

    async def tool_calls_for(self, user_message_ids: Collection[int]) -> list[StoredToolCall]:
        if not user_message_ids:
            return []
        return await self._hot.tool_calls_for(user_message_ids)


class _LedgerOnFirstUse:
    """`SqlUsage` over a `SqliteFileStore`, built (SQLAlchemy imported) on first use."""

    _ledger: UsageLedger | None = None

    def __init__(self, store: SqliteFileStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        if self._ledger is None:
            from botservice.storage.usage_ledger import SqlUsage

            self._ledger = SqlUsage(self._store.rest())
        return getattr(self._ledger, name)

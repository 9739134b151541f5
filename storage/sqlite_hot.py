"""The hot path on a SQLite file: a turn's statements run on the event loop itself.

In WAL mode with synchronous=NORMAL a short statement costs microseconds, less than a
hop to a worker thread and back (and the loop and the database threads fighting over
the GIL). So accepting, claiming, the settings and history reads, storing the answer
(and claiming the next turn) and the heartbeat run here, through the sqlite3 module on
one connection of the loop's, from the SQL compiled once into `compiled.py`.

Never blocking the loop for long: the loop's connection waits for no lock
(busy_timeout 0). When another connection holds the write lock (another process such
as `botservice forget` or the purge, or this process's own worker thread), the same
work is run again on the worker's writing thread, which waits for the lock with the
full timeout. A write transaction begins with BEGIN IMMEDIATE there and here, so a
read-then-write transaction never finds that another connection wrote in between.
The loop's connection never checkpoints the log either: the worker does, every few
hundred commits, truncating it; a write that finds the lock held by that checkpoint
waits for it and then runs on the loop after all (run on the worker, its commit would
look like another connection's, and drop what is kept in memory, below).

Kept in memory (one process): a channel's settings and each active conversation's
newest messages. `PRAGMA data_version` tells when any other connection committed
(another process, or this one's worker writing a deletion, a reset, a forget-me);
then both are dropped and read again, so nothing stale is ever answered from.
Imports no SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from botservice.core.errors import StoreUnavailable
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
from botservice.storage import hot_rows
from botservice.storage.compiled import SQLITE, Statement

log = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], T]

# SQLITE_BUSY and its extended codes (SQLITE_BUSY_RECOVERY, _SNAPSHOT, _TIMEOUT).
_BUSY = 5
# The loop's commits between two checkpoints by the worker. Each one truncates the
# log and holds writers off while it runs (a few milliseconds of copying and fsync):
# the turns writing meanwhile wait for it, not the loop. A few tens of megabytes of
# log at most between two (tests/test_hot_path.py).
CHECKPOINT_EVERY = 128
# The loop's commits a checkpoint may wait for the lock before writes wait for it.
CHECKPOINT_PATIENCE = 32
# How many messages the windows of all conversations keep together.
WINDOW_MESSAGES = 20_000
# A window keeps this many messages beyond the history limit, so a few turns' new
# messages fit before it is trimmed.
WINDOW_SLACK = 32


def sqlite_time(value: datetime) -> str:
    """How SQLAlchemy's SQLite DATETIME stores a value (tables.UTCDateTime: naive UTC)."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


def _args(statement: Statement, values: dict[str, Any]) -> list[Any]:
    args = []
    for param in statement.params:
        if param.__class__ is str:
            value = values[param]
            if value.__class__ is datetime:
                value = sqlite_time(value)
            args.append(value)
        else:
            args.append(param[0])
    return args


def _run(db: sqlite3.Connection, name: str, values: dict[str, Any]) -> sqlite3.Cursor:
    statement = SQLITE[name]
    return db.execute(statement.sql, _args(statement, values))


def _busy(error: sqlite3.OperationalError) -> bool:
    return getattr(error, "sqlite_errorcode", 0) & 0xFF == _BUSY


@dataclass
class _Window:
    """A conversation's newest messages, ascending: every message after `lower` (all of
    them since the last reset when `lower <= reset`)."""

    reset: int
    lower: int
    keep: int
    messages: list[StoredMessage]
    # The usual shape, answered with a slice: every answer right after its question
    # (window order is id order) and none answering a question from before the reset.
    plain: bool = False

    def __post_init__(self) -> None:
        self.plain = all(
            _follows(earlier, later, self.reset)
            for earlier, later in zip([None, *self.messages], self.messages, strict=False)
        )

    def append(self, message: StoredMessage) -> None:
        last = self.messages[-1] if self.messages else None
        self.plain = self.plain and _follows(last, message, self.reset)
        self.messages.append(message)


def _follows(earlier: StoredMessage | None, later: StoredMessage, reset: int) -> bool:
    """Whether `later` keeps a plain window plain."""
    answers = later.reply_to_id
    if answers is None:
        return True
    return answers > reset and (earlier is None or answers >= (earlier.reply_to_id or earlier.id))


class SqliteHotPath:
    def __init__(
        self,
        path: str,
        *,
        on_thread: Callable[[Work[Any]], Awaitable[Any]],
        checkpoint: Callable[[Callable[[], None]], None],
    ) -> None:
        # `on_thread(work)` runs `work` in a BEGIN IMMEDIATE transaction on the worker's
        # writing thread, waiting for the lock; `checkpoint(done)` asks it for a
        # checkpoint, and it calls `done()` (on its thread) when that is over.
        self._on_thread = on_thread
        self._checkpoint = checkpoint
        self._commits = 0
        # Set while the worker checkpoints (one at a time); done when it is over.
        self._checkpoint_over: asyncio.Future[None] | None = None
        self._checkpoint_asked = 0  # `_commits` when it was asked for
        self._path = path
        self._connection: sqlite3.Connection | None = None
        # Closed with its store: from then on work is a mistake (as on the closed
        # worker), not an outage to retry, and nothing opens the file again.
        self._closed = False
        # The loop's connection serves the thread that first used it (the event loop's);
        # any other thread goes to the worker.
        self._owner: int | None = None
        self._version: int | None = None
        self._settings: dict[tuple[str, str, str], ChannelSettings] = {}
        self._windows: OrderedDict[int, _Window] = OrderedDict()
        self._window_messages = 0

    def close(self) -> None:
        self._closed = True
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _on_loop(self) -> sqlite3.Connection | None:
        """The loop's connection when called from its thread (opened on first use)."""
        if self._closed:
            raise RuntimeError("the store is closed")
        if self._owner is None:
            self._owner = threading.get_ident()
        elif self._owner != threading.get_ident():
            return None
        if self._connection is None:
            try:
                connection = sqlite3.connect(
                    self._path, isolation_level=None, check_same_thread=False
                )
                # WAL is the file's own mode, set by the engine's connections (it persists).
                for pragma in (
                    "busy_timeout = 0",
                    "foreign_keys = ON",
                    "synchronous = NORMAL",
                    "wal_autocheckpoint = 0",
                ):
                    connection.execute(f"PRAGMA {pragma}").fetchall()
            except sqlite3.OperationalError as error:
                raise StoreUnavailable() from error
            self._connection = connection
        return self._connection

    # --- running work ------------------------------------------------------------

    async def _write(self, work: Work[T]) -> T:
        """`work` in one write transaction: on the loop unless the lock is taken."""
        db = self._on_loop()
        if db is not None:
            # The worker's checkpoint waits for the write lock. Between turns it finds
            # it free; under a steady load it lost the race to the loop's writes for
            # seconds while the log grew: after a while, writes let it go first.
            while (
                self._checkpoint_over is not None
                and self._commits - self._checkpoint_asked >= CHECKPOINT_PATIENCE
            ):
                await asyncio.shield(self._checkpoint_over)
        while db is not None:
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    result = work(db)
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as error:
                if not _busy(error):
                    raise StoreUnavailable() from error
            else:
                self._committed()
                return result
            if self._checkpoint_over is None:
                break
            # The lock is our own checkpoint's: wait for it (the loop serves others
            # meanwhile) and write here, not on the worker, whose commit would look
            # like another connection's and drop everything kept in memory.
            await asyncio.shield(self._checkpoint_over)
        try:
            result = await self._on_thread(work)
        except sqlite3.OperationalError as error:
            raise StoreUnavailable() from error
        return result

    async def _read(self, work: Work[T]) -> T:
        """`work`, which only reads (each statement its own snapshot unless it begins a
        transaction of its own), on the loop unless a lock is in the way."""
        db = self._on_loop()
        if db is not None:
            try:
                return work(db)
            except sqlite3.OperationalError as error:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if not _busy(error):
                    raise StoreUnavailable() from error
        try:
            result = await self._on_thread(work)
        except sqlite3.OperationalError as error:
            raise StoreUnavailable() from error
        return result

    def _committed(self) -> None:
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY == 0 and self._checkpoint_over is None:
            loop = asyncio.get_running_loop()
            over = self._checkpoint_over = loop.create_future()
            self._checkpoint_asked = self._commits

            def checkpointed() -> None:  # on the worker's thread
                with contextlib.suppress(RuntimeError):  # the loop is closed already
                    loop.call_soon_threadsafe(self._checkpointed, over)

            self._checkpoint(checkpointed)

    def _checkpointed(self, over: asyncio.Future[None]) -> None:
        if self._checkpoint_over is over:
            self._checkpoint_over = None
        if not over.done():
            over.set_result(None)

    def _current(self) -> bool:
        """Drop what is kept in memory if another connection committed since it was
        read. False when called off the loop's thread: nothing kept may be used there."""
        db = self._on_loop()
        if db is None:
            return False
        try:
            (version,) = db.execute("PRAGMA data_version").fetchone()
        except sqlite3.OperationalError as error:
            raise StoreUnavailable() from error
        if version != self._version:
            self.forget()
            self._version = version
        return True

    def forget(self) -> None:
        """Drop what is kept in memory: at once when the store forgets messages (the
        next read would find the database changed, but the text would stay here until
        then)."""
        self._settings.clear()
        self._windows.clear()
        self._window_messages = 0
        self._version = None

    # --- turns ---------------------------------------------------------------------

    async def accept(
        self,
        message: IncomingMessage,
        *,
        text: str,
        tokens: int,
        claim: Claim | None,
        spoken: bool = False,
    ) -> AcceptedTurn | None:
        now = hot_rows.utcnow()
        key = message.conversation
        turn = hot_rows.turn_values(message, now, spoken=spoken)
        where = hot_rows.key_values(key)
        conversation = {**where, "created_at": now, "updated_at": now, "trim_noticed": False}
        stored = hot_rows.user_message_values(message, text=text, tokens=tokens, now=now)

        def work(db: sqlite3.Connection) -> tuple[int, int, int, PendingTurn | None] | None:
            # The turn (the dedupe claim) first: a duplicate delivery costs one statement.
            row = _run(db, "insert_turn", turn).fetchone()
            if row is None:
                return None
            turn_id = row[0]
            # The conversation row is only read (or created once), never updated here.
            row = _run(db, "conversation_id", where).fetchone()
            if row is None:
                row = _run(db, "create_conversation", conversation).fetchone()
            if row is None:  # created by another process just now
                row = _run(db, "conversation_id", where).fetchone()
            conversation_id = row[0]
            (message_id,) = _run(
                db, "insert_user_message", {**stored, "conversation_id": conversation_id}
            ).fetchone()
            _run(
                db,
                "link_turn",
                {
                    "b_turn_id": turn_id,
                    "b_conversation_id": conversation_id,
                    "b_message_id": message_id,
                },
            )
            # One writer at a time: claiming in the same transaction cannot race.
            claimed = _claim_in(db, conversation_id, claim, key) if claim is not None else None
            return turn_id, conversation_id, message_id, claimed

        try:
            done = await self._write(work)
        except sqlite3.IntegrityError:
            # The purge deleted the (empty) conversation between our read and our
            # insert: nothing was written, so taking the message again is safe.
            done = await self._write(work)
        if done is None:
            return None
        turn_id, conversation_id, message_id, claimed = done
        self._add_to_window(
            conversation_id,
            StoredMessage(
                id=message_id,
                role="user",
                author_id=stored["author_id"],
                author_name=stored["author_name"],
                text=stored["text"],
                tokens=tokens,
                created_at=now,
            ),
        )
        return AcceptedTurn(
            turn_id=turn_id,
            conversation_id=conversation_id,
            user_message_id=message_id,
            claimed=claimed,
        )

    async def claim_next_turn(
        self, conversation_id: int, claim: Claim, key: ConversationKey | None
    ) -> PendingTurn | None:
        try:
            return await self._write(lambda db: _claim_in(db, conversation_id, claim, key))
        except sqlite3.IntegrityError:
            return None  # another process claimed a turn of this conversation first

    async def renew_claims(
        self, holder: str, turn_ids: Collection[int], *, alive_until: datetime
    ) -> int:
        statement = SQLITE["renew_claim"]
        rows = [
            _args(
                statement, {"b_holder": holder, "b_turn_id": turn_id, "b_alive_until": alive_until}
            )
            for turn_id in turn_ids
        ]
        return await self._write(lambda db: db.executemany(statement.sql, rows).rowcount)

    async def set_reply_ref(self, turn_id: int, reply_ref: str) -> None:
        values = {"b_turn_id": turn_id, "b_reply_ref": reply_ref}
        await self._write(lambda db: _run(db, "set_reply_ref", values))

    async def fail_turn(self, turn_id: int, *, holder: str | None) -> bool:
        name = "finish_turn" if holder is None else "finish_held_turn"
        values = hot_rows.finish_values(turn_id, holder, None, status="failed")
        return await self._write(lambda db: len(_run(db, name, values).fetchall()) == 1)

    # --- a start's sweep ---------------------------------------------------------------

    async def release_claims(self, holder: str | None) -> list[int]:
        name, values = (
            ("release_all", {}) if holder is None else ("release_held", {"b_holder": holder})
        )
        rows = await self._write(lambda db: _run(db, name, values).fetchall())
        return sorted({row[0] for row in rows})

    async def release_stale_turns(self, *, now: datetime) -> list[int]:
        rows = await self._write(lambda db: _run(db, "release_stale", {"b_now": now}).fetchall())
        return hot_rows.log_released(sorted({row[0] for row in rows}))

    async def waiting_conversations(self, *, accepted_before: datetime) -> list[int]:
        values = {"b_before": accepted_before}
        rows = await self._read(lambda db: _run(db, "waiting_conversations", values).fetchall())
        return [row[0] for row in rows]

    async def ping(self) -> bool:
        try:
            await self._read(lambda db: db.execute("SELECT 1").fetchall())
        except StoreUnavailable:
            return False
        return True

    async def store_answer(
        self,
        turn_id: int,
        *,
        holder: str | None,
        text: str,
        tokens: int,
        usage: Usage | None,
        status: MessageStatus,
        model: str,
        reply_ref: str | None,
        ledger: UsageRecord | None,
        claim_next: tuple[Claim, int, ConversationKey] | None = None,
    ) -> tuple[int | None, PendingTurn | None]:
        """Finish the turn with its answer (and its usage row), then, with `claim_next`
        (the claim, conversation id and key), claim the conversation's next turn: one
        transaction."""
        answer = hot_rows.answer_values(text, tokens, usage, status, model)
        finish = hot_rows.finish_values(turn_id, holder, reply_ref)
        name = "finish_turn" if holder is None else "finish_held_turn"

        def work(
            db: sqlite3.Connection,
        ) -> tuple[int | None, int | None, int | None, PendingTurn | None]:
            saved: tuple[int | None, int | None, int | None] = (None, None, None)
            row = _run(db, name, finish).fetchone()
            # None: taken over by another process, finished already, or its conversation
            # was deleted meanwhile (the workspace was forgotten).
            if row is not None and row[0] is not None:
                conversation_id, question_id = row
                (message_id,) = _run(
                    db,
                    "insert_answer",
                    {**answer, "conversation_id": conversation_id, "reply_to_id": question_id},
                ).fetchone()
                if ledger is not None:
                    _run(db, "insert_usage", hot_rows.usage_values(ledger))
                saved = (message_id, conversation_id, question_id)
            claimed = None
            if claim_next is not None:
                claim, next_conversation, key = claim_next
                claimed = _claim_in(db, next_conversation, claim, key)
            return (*saved, claimed)

        message_id, conversation_id, question_id, claimed = await self._write(work)
        if message_id is not None and conversation_id is not None:
            self._add_to_window(
                conversation_id,
                StoredMessage(
                    id=message_id,
                    role="assistant",
                    author_id="",
                    author_name="",
                    text=answer["text"],
                    tokens=tokens,
                    reply_to_id=question_id,
                    status=status,
                    created_at=answer["created_at"],
                ),
            )
        return message_id, claimed

    # --- reads ---------------------------------------------------------------------

    async def channel_settings(
        self, platform: str, workspace: str, channel: str, *, for_message: int | None = None
    ) -> ChannelSettings:
        # `for_message` changes nothing here: kept in memory, they cost no round trip.
        kept_here = self._current()
        key = (platform, workspace, channel)
        if kept_here and (kept := self._settings.get(key)) is not None:
            return kept
        values = {"platform": platform, "workspace": workspace, "channel": channel}
        rows = await self._read(lambda db: _run(db, "channel_settings", values).fetchall())
        found = hot_rows.merged_settings(rows, channel)
        if kept_here and self._version is not None:
            self._settings[key] = found
        return found

    async def was_taken(self, platform: str, message_key: str) -> bool:
        values = {"platform": platform, "message_key": message_key}
        rows = await self._read(lambda db: _run(db, "message_taken", values).fetchall())
        return bool(rows)

    async def tool_calls_for(self, user_message_ids: Collection[int]) -> list[StoredToolCall]:
        values = {"ids_json": json.dumps(list(user_message_ids))}
        rows = await self._read(lambda db: _run(db, "tool_calls_for", values).fetchall())
        return [hot_rows.tool_call(row) for row in rows]

    async def history(
        self, conversation_id: int, *, up_to_message_id: int, limit: int
    ) -> list[StoredMessage]:
        kept_here = self._current()
        window = self._windows.get(conversation_id) if kept_here else None
        if window is None and kept_here and self._version is not None:
            commits = self._commits
            window = await self._read(lambda db: self._load_window(db, conversation_id, limit))
            # Loaded on the worker (the loop's connection met a lock) while this
            # connection stored a message: that message may be missing. Used, not kept.
            if self._commits == commits and self._version is not None:
                self._keep_window(conversation_id, window)
        if window is not None:
            self._windows.move_to_end(conversation_id)
            found = _from_window(window, up_to_message_id, limit)
            if found is not None:
                return found
        # Older than the window reaches (or nothing kept): as the database says.
        values = {"conversation_id": conversation_id, "up_to": up_to_message_id, "limit": limit}
        rows = await self._read(lambda db: _run(db, "history_window", values).fetchall())
        return hot_rows.window_order(
            [hot_rows.stored_message(row, parse_time(row[8])) for row in rows]
        )

    def _load_window(self, db: sqlite3.Connection, conversation_id: int, limit: int) -> _Window:
        keep = limit + WINDOW_SLACK
        values = {"conversation_id": conversation_id, "limit": keep}
        # One snapshot for both reads (data_version was read before it began); on the
        # worker, the transaction it runs work in.
        own = not db.in_transaction
        if own:
            db.execute("BEGIN")
        try:
            row = _run(db, "reset_after", values).fetchone()
            rows = _run(db, "recent_messages", values).fetchall()
        finally:
            if own:
                db.execute("COMMIT")
        reset = (row[0] if row is not None else None) or 0
        messages = [hot_rows.stored_message(row, parse_time(row[8])) for row in reversed(rows)]
        lower = reset if len(messages) < keep else messages[0].id - 1
        return _Window(reset=reset, lower=lower, keep=keep, messages=messages)

    def _keep_window(self, conversation_id: int, window: _Window) -> None:
        old = self._windows.pop(conversation_id, None)
        if old is not None:
            self._window_messages -= len(old.messages)
        self._windows[conversation_id] = window
        self._window_messages += len(window.messages)
        while self._window_messages > WINDOW_MESSAGES and len(self._windows) > 1:
            _, dropped = self._windows.popitem(last=False)
            self._window_messages -= len(dropped.messages)

    def _add_to_window(self, conversation_id: int, message: StoredMessage) -> None:
        """A message this connection stored: its id is above every id stored before it.
        (Stored off the loop's thread, on the worker: another connection's commit, which
        `_current` notices.)"""
        if self._owner != threading.get_ident():
            return
        window = self._windows.get(conversation_id)
        if window is None:
            return
        if window.messages and window.messages[-1].id >= message.id:
            # Stored on the worker, and the window read again since (it holds it).
            return
        window.append(message)
        self._window_messages += 1
        if len(window.messages) > window.keep + WINDOW_SLACK:
            dropped = len(window.messages) - window.keep
            window.lower = window.messages[dropped - 1].id
            del window.messages[:dropped]
            self._window_messages -= dropped


def _from_window(window: _Window, up_to: int, limit: int) -> list[StoredMessage] | None:
    """The history statement's answer from a window (storage/history.py says what it
    selects), or None when the window may not reach back far enough."""
    messages = window.messages
    if window.plain and messages and messages[-1].id <= up_to:
        if len(messages) >= limit:
            return messages[-limit:]
        if window.lower <= window.reset:
            return messages[:]
    reset = window.reset
    picked: list[StoredMessage] = []
    for message in reversed(window.messages):
        if message.id <= reset:
            break
        answers = message.reply_to_id
        if (answers if answers is not None else message.id) <= reset:
            continue
        if message.id <= up_to or (answers is not None and answers <= up_to):
            picked.append(message)
            if len(picked) == limit:
                break
    if len(picked) < limit and window.lower > reset:
        return None
    picked.reverse()
    return hot_rows.window_order(picked)


def _claim_in(
    db: sqlite3.Connection, conversation_id: int, claim: Claim, key: ConversationKey | None
) -> PendingTurn | None:
    values = {
        "b_conversation_id": conversation_id,
        "b_holder": claim.holder,
        "b_alive_until": claim.alive_until,
    }
    row = _run(db, "claim_next", values).fetchone()
    if row is None:
        return None
    # A conversation's key never changes, so it may be read after the claim.
    found = key or ConversationKey(
        *_run(db, "conversation_key", {"conversation_id": conversation_id}).fetchone()
    )
    created_at = parse_time(row[6])
    assert created_at is not None
    return hot_rows.pending_turn(row, found, created_at)

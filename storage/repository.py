"""`SqlStore`: the core's `Store` port over SQLAlchemy Core (SQLite or PostgreSQL).

Every operation is one plain function of a SQLAlchemy `Connection` run as one
transaction: on a SQLite file by `SqliteWorker` (worker threads, one round trip
per transaction); on PostgreSQL, or SQLite in memory, through the async engine
with `AsyncConnection.run_sync`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Collection, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, get_args

from sqlalchemy import (
    Connection,
    Integer,
    Select,
    String,
    bindparam,
    case,
    delete,
    exists,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from botservice.core.errors import StoreUnavailable
from botservice.core.events import Attachment, ConversationKey, IncomingMessage
from botservice.core.ports import (
    AcceptedTurn,
    ChannelSettings,
    Claim,
    ForgetCounts,
    MessageStatus,
    PendingTurn,
    PurgeCounts,
    SettingChange,
    SettingField,
    StoredMessage,
    Usage,
)
from botservice.storage.engine import (
    SQLITE_SINGLE_READ_OPTION,
    SQLITE_WRITE_OPTION,
    check_connection,
    create_engine,
    is_sqlite,
    sibling_engine,
    sqlite_thread_engine,
)
from botservice.storage.feedback import FeedbackQueries, forget_feedback
from botservice.storage.migrate import upgrade
from botservice.storage.sqlite_worker import SqliteWorker
from botservice.storage.tables import (
    CHANNEL_SETTINGS,
    CONVERSATIONS,
    MESSAGES,
    PURGE_CLAIMS,
    SETTING_CHANGES,
    TURNS,
    UTCDateTime,
    utcnow,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
_SETTING_FIELDS: tuple[SettingField, ...] = get_args(SettingField)
PURGE_JOB = "purge"
# Who changed a setting, once that person asked to be forgotten.
FORGOTTEN_USER = "(forgotten)"
MESSAGE_CACHE_SIZE = 20_000
ACCEPT_POOL_SIZE = 12
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECRETS = '%"secrets":%'  # reply targets are written with json.dumps(separators=(",", ":"))

_c = CONVERSATIONS.c
_m = MESSAGES.c
_t = TURNS.c
_s = CHANNEL_SETTINGS.c
_a = SETTING_CHANGES.c

# Columns of a StoredMessage, in the order _stored_message reads them.
_MESSAGE_COLUMNS = (
    _m.id,
    _m.role,
    _m.author_id,
    _m.author_name,
    _m.text,
    _m.tokens,
    _m.reply_to_id,
    _m.status,
    _m.created_at,
)


def _history_statement() -> Select[Any]:
    reset = func.coalesce(
        select(_c.reset_after_message_id)
        .where(_c.id == bindparam("conversation_id"))
        .scalar_subquery(),
        0,
    )
    up_to = bindparam("up_to", type_=Integer)
    return (
        select(_m.id, _m.reply_to_id)
        .where(
            _m.conversation_id == bindparam("conversation_id"),
            # `id > reset` lets the (conversation_id, id) index bound the scan; the
            # coalesce also drops an answer, stored after a reset, to a question before it.
            _m.id > reset,
            func.coalesce(_m.reply_to_id, _m.id) > reset,
            or_(_m.id <= up_to, _m.reply_to_id <= up_to),
        )
        .order_by(_m.id.desc())
        .limit(bindparam("limit", type_=Integer))
    )


# Hot statements are built once, so SQLAlchemy reuses their compiled form.
_HISTORY_IDS = _history_statement()
_MESSAGES_BY_IDS = select(*_MESSAGE_COLUMNS).where(_m.id.in_(bindparam("ids", expanding=True)))
_CHANNEL_SETTINGS = select(_s.channel, *(_s[field] for field in _SETTING_FIELDS)).where(
    _s.platform == bindparam("platform"),
    _s.workspace == bindparam("workspace"),
    or_(_s.channel == bindparam("channel"), _s.channel == ""),
)
_MESSAGE_BY_ID = select(*_MESSAGE_COLUMNS).where(_m.id == bindparam("message_id"))
_AUDIO_BY_ID = select(_m.audio).where(_m.id == bindparam("message_id"))
_HEARD = (
    update(MESSAGES)
    .where(_m.id == bindparam("b_message_id"))
    .values(text=bindparam("b_text"), tokens=bindparam("b_tokens"), audio=None)
)
_INSERT_MESSAGE = MESSAGES.insert().returning(_m.id)
_LINK_TURN = (
    update(TURNS)
    .where(_t.id == bindparam("b_turn_id"))
    .values(
        conversation_id=bindparam("b_conversation_id"),
        user_message_id=bindparam("b_message_id"),
    )
)
_UNFINISHED = ("pending", "running")
_PENDING = literal_column("'pending'", String())
_RUNNING = literal_column("'running'", String())
# The same as `status IN _UNFINISHED`, written so the hot statements keep one compiled
# form (an IN list is an expanding parameter, rendered again on every execution).
_T_UNFINISHED = or_(_t.status == "pending", _t.status == "running")
_HOLDER = bindparam("b_holder", type_=String())
_NOW = bindparam("b_now", type_=UTCDateTime())
_ALIVE_UNTIL = bindparam("b_alive_until", type_=UTCDateTime())
# Finishing needs the claim: a holder whose turn was reset to pending (it was cut
# off, not dead) may still finish it, but not once another process claimed it.
_FINISH_HELD_TURN = (
    update(TURNS)
    .where(_t.id == bindparam("b_turn_id"), _t.claimed_by == _HOLDER, _T_UNFINISHED)
    .values(
        status=bindparam("b_status"),
        finished_at=_NOW,
        alive_until=null(),
        reply_ref=func.coalesce(bindparam("b_reply_ref"), _t.reply_ref),
    )
    .returning(_t.conversation_id, _t.user_message_id)
)
_FINISH_TURN = (
    update(TURNS)
    .where(_t.id == bindparam("b_turn_id"), _T_UNFINISHED)
    .values(
        status=bindparam("b_status"),
        finished_at=_NOW,
        alive_until=null(),
        reply_ref=func.coalesce(bindparam("b_reply_ref"), _t.reply_ref),
    )
    .returning(_t.conversation_id, _t.user_message_id)
)


def _claim_statement() -> Any:
    """Claim the oldest pending turn of a conversation, unless one of it is running.

    The NOT EXISTS keeps the common case free of errors; the partial unique index
    `uq_turns_one_running` is what makes two simultaneous claims (two processes)
    impossible: the second fails instead of running beside the first. The statuses
    are SQL literals, not parameters, so both lookups can use the partial indexes
    (`ix_turns_pending`, `uq_turns_one_running`) whose conditions they match.
    """
    conversation_id = bindparam("b_conversation_id", type_=Integer)
    running = TURNS.alias("running")
    oldest_pending = (
        select(_t.id)
        .where(_t.conversation_id == conversation_id, _t.status == _PENDING)
        .order_by(_t.id)
        .limit(1)
        .scalar_subquery()
    )
    return (
        update(TURNS)
        .where(
            _t.id == oldest_pending,
            _t.status == _PENDING,
            ~exists().where(
                running.c.conversation_id == conversation_id, running.c.status == _RUNNING
            ),
        )
        .values(status=_RUNNING, claimed_by=_HOLDER, alive_until=_ALIVE_UNTIL, claims=_t.claims + 1)
        .returning(*_PENDING_COLUMNS)
    )


_PENDING_COLUMNS = (
    _t.id,
    _t.conversation_id,
    _t.user_message_id,
    _t.platform,
    _t.reply_target,
    _t.reply_ref,
    _t.created_at,
    _t.user_id,
    _t.is_channel_admin,
    _t.claims,
)
_SET_REPLY_REF = (
    update(TURNS).where(_t.id == bindparam("b_turn_id")).values(reply_ref=bindparam("b_reply_ref"))
)
_CONVERSATION_KEY = select(_c.platform, _c.workspace, _c.channel, _c.thread).where(
    _c.id == bindparam("conversation_id")
)
_CONVERSATION_ID = select(_c.id).where(
    _c.platform == bindparam("platform"),
    _c.workspace == bindparam("workspace"),
    _c.channel == bindparam("channel"),
    _c.thread == bindparam("thread"),
)
_RENEW_CLAIMS = (
    update(TURNS)
    .where(
        _t.id.in_(bindparam("b_turn_ids", expanding=True)),
        _t.claimed_by == _HOLDER,
        _t.status == "running",
    )
    .values(alive_until=_ALIVE_UNTIL)
)
_RELEASE_STALE = (
    update(TURNS)
    .where(_t.status == "running", _t.alive_until < _NOW)
    .values(status="pending", alive_until=None)
    .returning(_t.conversation_id)
)


def _answer_statement(finish: Any) -> Any:
    """Finish a turn and store its answer in one statement (PostgreSQL): the answer is
    inserted only for a turn the finish matched, in the same atomic step."""
    finished = finish.cte("finished")
    columns = (
        "conversation_id",
        "reply_to_id",
        "role",
        "author_id",
        "author_name",
        "text",
        "platform_message_id",
        "tokens",
        "prompt_tokens",
        "completion_tokens",
        "model",
        "status",
        "created_at",
    )
    answer = select(
        finished.c.conversation_id,
        finished.c.user_message_id,
        # Prefixed: an UPDATE would take parameters named like its columns as SET values.
        *(bindparam(f"a_{name}", type_=MESSAGES.c[name].type) for name in columns[2:]),
    ).where(finished.c.conversation_id.is_not(None))
    return (
        MESSAGES.insert()
        .from_select(list(columns), answer)
        .returning(_m.id)
        .add_cte(finished, nest_here=True)
    )


_TURN_FIELDS = (
    "platform",
    "message_key",
    "user_id",
    "is_channel_admin",
    "status",
    "reply_target",
    "claims",
    "created_at",
)
_MESSAGE_FIELDS = (
    "role",
    "author_id",
    "author_name",
    "text",
    "platform_message_id",
    "tokens",
    "status",
    "audio",
    "created_at",
)


def _pg_accept_statement() -> Any:
    """Accept a message in one statement (PostgreSQL), for a conversation that exists.

    The message id is drawn from its sequence first, so the turn (the dedupe claim)
    can be inserted pointing at it; the message is inserted only if the turn was,
    so a duplicate delivery writes nothing. Foreign keys are checked at the end of
    the statement, when both rows are there. Returns one row: the conversation id
    (None: no such conversation yet), then the turn and message ids (None: a
    duplicate).
    """
    conversation = (
        select(_c.id)
        .where(
            _c.platform == bindparam("k_platform"),
            _c.workspace == bindparam("k_workspace"),
            _c.channel == bindparam("k_channel"),
            _c.thread == bindparam("k_thread"),
        )
        .scalar_subquery()
    )
    message_id = func.nextval(func.pg_get_serial_sequence("messages", "id"))
    ids = select(conversation.label("conversation_id"), message_id.label("message_id")).cte("ids")
    turn_row = select(
        *(bindparam(f"t_{name}", type_=TURNS.c[name].type) for name in _TURN_FIELDS),
        ids.c.conversation_id,
        ids.c.message_id,
    ).where(ids.c.conversation_id.is_not(None))
    turn = (
        postgresql.insert(TURNS)
        .from_select([*_TURN_FIELDS, "conversation_id", "user_message_id"], turn_row)
        .on_conflict_do_nothing(index_elements=[_t.platform, _t.message_key])
        .returning(_t.id, _t.conversation_id, _t.user_message_id)
        .cte("turn")
    )
    message_row = select(
        turn.c.user_message_id,
        turn.c.conversation_id,
        *(bindparam(f"m_{name}", type_=MESSAGES.c[name].type) for name in _MESSAGE_FIELDS),
    )
    message = (
        MESSAGES.insert()
        .from_select(["id", "conversation_id", *_MESSAGE_FIELDS], message_row)
        .returning(_m.id)
        .cte("message")
    )
    return (
        select(ids.c.conversation_id, turn.c.id, message.c.id)
        .select_from(ids)
        .outerjoin(turn, true())
        .outerjoin(message, true())
    )


_CLAIM_NEXT = _claim_statement()
_HELD_ANSWER = _answer_statement(_FINISH_HELD_TURN)
_PING = text("SELECT 1")


def _stored_message(row: Any) -> StoredMessage:
    return StoredMessage(
        id=row[0],
        role=row[1],
        author_id=row[2],
        author_name=row[3],
        text=row[4],
        tokens=row[5],
        reply_to_id=row[6],
        status=row[7],
        created_at=row[8],
    )


class _MessageCache:
    """Recently read messages by id, shared by the read threads.

    A stored message changes only once, when the audio it came with is heard
    (`heard` drops it from here), before any history includes it; its id is
    never handed out again, so a cached copy is never wrong. History asks the
    database which ids belong in the window and builds objects only for ids it
    has not seen. A deleted message is simply never asked for again; deletions
    in this process also empty the cache so no forgotten text lingers in memory.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._messages: dict[int, StoredMessage] = {}
        self._lock = threading.Lock()

    def get_many(self, ids: list[int]) -> dict[int, StoredMessage]:
        with self._lock:
            return {id_: self._messages[id_] for id_ in ids if id_ in self._messages}

    def add(self, messages: list[StoredMessage]) -> None:
        with self._lock:
            for message in messages:
                self._messages[message.id] = message
            excess = len(self._messages) - self._capacity
            if excess > 0:
                # Oldest insertions go first (dicts keep insertion order).
                for id_ in list(itertools.islice(self._messages, excess)):
                    del self._messages[id_]

    def discard(self, message_id: int) -> None:
        with self._lock:
            self._messages.pop(message_id, None)

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()


def _clean_text(text: str) -> str:
    # PostgreSQL text cannot hold NUL; nobody means to send one.
    return text.replace("\x00", "") if "\x00" in text else text


class SqlStore(FeedbackQueries):
    """The `Store` port (botservice/core/ports.py) over SQLAlchemy.

    Build it with `await SqlStore.open(database_url)` (checks the connection,
    applies migrations) or `SqlStore(create_engine(url))` over a migrated
    database. Close it with `aclose()`.
    """

    def __init__(self, engine: AsyncEngine, *, owns_engine: bool = True) -> None:
        self._engine = engine
        self._owns_engine = owns_engine
        self._claimed_by = f"{socket.gethostname()}:{os.getpid()}"
        self._message_cache = _MessageCache(MESSAGE_CACHE_SIZE)
        sqlite_database = is_sqlite(engine)
        self._shared = not sqlite_database
        # Every turn reads its channel's settings; they change only through this
        # store, so with SQLite (one process) they are kept in memory and dropped
        # on every change. With a shared database another process may change them.
        self._settings_cache: dict[tuple[str, str, str], ChannelSettings] = {}
        self._insert: Callable[..., Any] = sqlite.insert if sqlite_database else postgresql.insert
        self._claim = (
            self._insert(TURNS)
            .on_conflict_do_nothing(index_elements=[_t.platform, _t.message_key])
            .returning(_t.id)
        )
        self._pg_accept = _pg_accept_statement() if not sqlite_database else None
        self._create_conversation = (
            self._insert(CONVERSATIONS)
            .on_conflict_do_nothing(
                index_elements=[_c.platform, _c.workspace, _c.channel, _c.thread]
            )
            .returning(_c.id)
        )

        write_options = {SQLITE_WRITE_OPTION: True}
        read_options: dict[str, Any] = {SQLITE_SINGLE_READ_OPTION: True}
        if not sqlite_database:
            # A read, or a write of one statement, is atomic on its own: no BEGIN and
            # COMMIT/ROLLBACK round trips around it.
            read_options = {"isolation_level": "AUTOCOMMIT"}
        self._async_writer = engine.execution_options(**write_options)
        self._async_reader = engine.execution_options(**read_options)
        # SQLite has one writer at a time; queueing here is cheaper than SQLite's
        # busy-wait sleeps when two connections of this process collide. An
        # in-memory database is a single shared connection: reads queue too.
        self._async_write_lock: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if sqlite_database else contextlib.nullcontext()
        )
        self._async_read_lock: contextlib.AbstractAsyncContextManager[Any] = (
            self._async_write_lock if sqlite_database else contextlib.nullcontext()
        )
        # The platform waits for `accept` before it gets its acknowledgement (Slack
        # redelivers after 3 s): accepting has a few connections of its own, so it
        # never queues behind the statements of answers being written.
        self._accept_engine = (
            None
            if sqlite_database
            else sibling_engine(engine, pool_size=ACCEPT_POOL_SIZE).execution_options(
                isolation_level="AUTOCOMMIT"
            )
        )
        thread_engine = sqlite_thread_engine(engine)
        self._worker = SqliteWorker(thread_engine) if thread_engine is not None else None

    @classmethod
    async def open(cls, database_url: str, *, migrate: bool = True) -> SqlStore:
        """Connect (ConfigError if unreachable) and migrate to head unless told not to."""
        engine = create_engine(database_url)
        try:
            await check_connection(engine)
            if migrate:
                await upgrade(engine)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    @property
    def shared(self) -> bool:
        # SQLite is the one-process store; PostgreSQL is the shared one (README).
        return self._shared

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def aclose(self) -> None:
        if self._worker is not None:
            await self._worker.aclose()
        if self._accept_engine is not None:
            await self._accept_engine.dispose()
        if self._owns_engine:
            await self._engine.dispose()

    # --- running work -------------------------------------------------------------

    async def _write(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in one write transaction."""
        with _unavailable_as_store_error():
            if self._worker is not None:
                return await self._worker.write(work)
            async with self._async_write_lock, self._async_writer.begin() as connection:
                return await connection.run_sync(work)

    async def _write_one(self, work: Callable[[Connection], T]) -> T:
        """Run `work`, which executes a single write statement: atomic by itself, so on
        PostgreSQL it runs without BEGIN and COMMIT (one round trip instead of three)."""
        if not self._shared:
            return await self._write(work)  # SQLite: its single writer already
        with _unavailable_as_store_error():
            async with self._async_reader.connect() as connection:
                return await connection.run_sync(work)

    async def _accept_one(self, work: Callable[[Connection], T]) -> T:
        """`_write_one` on the accepting connections (PostgreSQL)."""
        assert self._accept_engine is not None
        with _unavailable_as_store_error():
            async with self._accept_engine.connect() as connection:
                return await connection.run_sync(work)

    async def _read(self, work: Callable[[Connection], T]) -> T:
        """Run `work`, which only reads, outside an explicit transaction on SQLite.

        Each statement sees its own snapshot there; `work` must not need two
        statements to agree.
        """
        with _unavailable_as_store_error():
            if self._worker is not None:
                return await self._worker.read(work)
            async with self._async_read_lock, self._async_reader.connect() as connection:
                return await connection.run_sync(work)

    # --- turns -----------------------------------------------------------------

    async def accept(
        self, message: IncomingMessage, *, text: str, tokens: int, claim: Claim | None = None
    ) -> AcceptedTurn | None:
        now = utcnow()
        conversation_key = message.conversation
        turn_values = {
            "platform": message.platform,
            "message_key": message.message_key,
            "user_id": message.user_id,
            "is_channel_admin": message.is_channel_admin,
            "status": "pending",
            "reply_target": json.dumps(message.reply_target, separators=(",", ":")),
            "claims": 0,
            "created_at": now,
        }
        key = {
            "platform": message.platform,
            "workspace": message.workspace,
            "channel": message.channel,
            "thread": message.thread,
        }
        conversation_values = {**key, "created_at": now, "updated_at": now, "trim_noticed": False}
        message_values = {
            "role": "user",
            "author_id": message.user_id,
            "author_name": message.user_name,
            "text": _clean_text(text),
            "platform_message_id": message.platform_message_id,
            "tokens": tokens,
            "status": "complete",
            "audio": _audio_json(message.attachments),
            "created_at": now,
        }

        if self._shared:
            accepted = await self._accept_in_one_statement(
                key, conversation_values, turn_values, message_values
            )
            # The claim is left to the caller's next step: on PostgreSQL it is a round
            # trip of its own, and the platform is waiting for this one to acknowledge.
            return accepted

        def work(connection: Connection) -> AcceptedTurn | None:
            # The claim comes first, so a duplicate delivery (Slack sends most
            # mentions twice) costs one statement and leaves nothing to undo.
            turn_id = connection.execute(self._claim, turn_values).scalar_one_or_none()
            if turn_id is None:
                return None
            # The conversation row is only read (or created once): updating it on
            # every message would make concurrent messages of one thread queue on
            # its row lock. Its last activity is its newest message.
            conversation_id = connection.execute(_CONVERSATION_ID, key).scalar_one_or_none()
            if conversation_id is None:
                conversation_id = connection.execute(
                    self._create_conversation, conversation_values
                ).scalar_one_or_none()
            if conversation_id is None:  # created by another process just now
                conversation_id = connection.execute(_CONVERSATION_ID, key).scalar_one()
            message_id = connection.execute(
                _INSERT_MESSAGE, {**message_values, "conversation_id": conversation_id}
            ).scalar_one()
            connection.execute(
                _LINK_TURN,
                {
                    "b_turn_id": turn_id,
                    "b_conversation_id": conversation_id,
                    "b_message_id": message_id,
                },
            )
            # SQLite: one process writes at a time, so claiming here cannot race.
            claimed = (
                _claim_in(connection, conversation_id, claim, conversation_key)
                if claim is not None
                else None
            )
            return AcceptedTurn(
                turn_id=turn_id,
                conversation_id=conversation_id,
                user_message_id=message_id,
                claimed=claimed,
            )

        try:
            return await self._write(work)
        except IntegrityError:
            # The purge deleted the (empty) conversation between our read and our
            # insert: nothing was written, so taking the message again is safe.
            return await self._write(work)

    async def _accept_in_one_statement(
        self,
        key: dict[str, Any],
        conversation_values: dict[str, Any],
        turn_values: dict[str, Any],
        message_values: dict[str, Any],
    ) -> AcceptedTurn | None:
        """PostgreSQL: one round trip for a message in a known conversation, three for
        the first message of a new one."""
        parameters = {
            **{f"k_{name}": value for name, value in key.items()},
            **{f"t_{name}": value for name, value in turn_values.items()},
            **{f"m_{name}": value for name, value in message_values.items()},
        }
        statement = self._pg_accept
        assert statement is not None

        def accept(connection: Connection) -> Any:
            return connection.execute(statement, parameters).one()

        def create_conversation(connection: Connection) -> None:
            connection.execute(self._create_conversation, conversation_values)

        for attempt in range(3):
            try:
                conversation_id, turn_id, message_id = await self._accept_one(accept)
            except IntegrityError:
                # The purge deleted the (empty) conversation as the message came in;
                # nothing was written, so taking it again is safe.
                if attempt == 2:
                    raise
                continue
            if conversation_id is None:
                await self._accept_one(create_conversation)
                continue
            if turn_id is None:
                return None  # a duplicate delivery
            return AcceptedTurn(
                turn_id=turn_id, conversation_id=conversation_id, user_message_id=message_id
            )
        raise LookupError("the conversation of an incoming message could not be created")

    async def claim_next_turn(
        self,
        conversation_id: int,
        *,
        holder: str,
        alive_until: datetime,
        key: ConversationKey | None = None,
    ) -> PendingTurn | None:
        claim = Claim(holder=holder, alive_until=alive_until)

        def work(connection: Connection) -> PendingTurn | None:
            return _claim_in(connection, conversation_id, claim, key)

        try:
            return await self._write_one(work)
        except IntegrityError:
            return None  # another process claimed a turn of this conversation first

    async def renew_claims(
        self, holder: str, turn_ids: Collection[int], *, alive_until: datetime
    ) -> int:
        if not turn_ids:
            return 0
        parameters = {
            "b_holder": holder,
            "b_turn_ids": list(turn_ids),
            "b_alive_until": alive_until,
        }
        return await self._write_one(
            lambda connection: connection.execute(_RENEW_CLAIMS, parameters).rowcount
        )

    async def release_stale_turns(self, *, now: datetime) -> list[int]:
        def work(connection: Connection) -> list[int]:
            return sorted({row[0] for row in connection.execute(_RELEASE_STALE, {"b_now": now})})

        released = await self._write_one(work)
        if released:
            log.warning(
                "took back the turns of %d conversations whose process stopped answering",
                len(released),
            )
        return released

    async def release_claims(self, holder: str | None = None) -> list[int]:
        statement = update(TURNS).where(_t.status == "running")
        if holder is not None:
            statement = statement.where(_t.claimed_by == holder)
        statement = statement.values(status="pending", alive_until=None).returning(
            _t.conversation_id
        )

        def work(connection: Connection) -> list[int]:
            return sorted({row[0] for row in connection.execute(statement)})

        return await self._write_one(work)

    async def waiting_conversations(self, *, accepted_before: datetime) -> list[int]:
        running = TURNS.alias("running")
        statement = (
            select(_t.conversation_id)
            .where(
                _t.status == "pending",
                _t.created_at < accepted_before,
                _t.conversation_id.is_not(None),
                ~exists().where(
                    running.c.conversation_id == _t.conversation_id,
                    running.c.status == _RUNNING,
                ),
            )
            .group_by(_t.conversation_id)
            .order_by(func.min(_t.id))
        )
        rows = await self._read(lambda connection: connection.execute(statement).all())
        return [row[0] for row in rows]

    async def claim_key(self, platform: str, message_key: str) -> bool:
        now = utcnow()
        values = {
            "platform": platform,
            "message_key": message_key,
            "user_id": "",
            "is_channel_admin": False,
            "status": "command",
            "reply_target": "{}",
            "claims": 0,
            "created_at": now,
            "finished_at": now,
        }

        def work(connection: Connection) -> bool:
            return connection.execute(self._claim, values).scalar_one_or_none() is not None

        return await self._write_one(work)

    async def set_reply_ref(self, turn_id: int, reply_ref: str) -> None:
        def work(connection: Connection) -> None:
            connection.execute(_SET_REPLY_REF, {"b_turn_id": turn_id, "b_reply_ref": reply_ref})

        await self._write_one(work)

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
    ) -> int | None:
        answer = _answer_values(text, tokens, usage, status, model)
        finish = _finish_values(turn_id, holder, reply_ref)
        statement = _FINISH_TURN if holder is None else _FINISH_HELD_TURN
        if self._shared:
            pg_answer = _answer_statement(statement)
            return await self._write_one(
                lambda connection: _store_answer_in_one(connection, pg_answer, finish, answer)
            )
        return await self._write(
            lambda connection: _store_answer_in(connection, statement, finish, answer)
        )

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
    ) -> tuple[int | None, PendingTurn | None]:
        answer = _answer_values(text, tokens, usage, status, model)
        finish = _finish_values(turn_id, claim.holder, reply_ref)
        if self._shared:
            # Two statements: a claim in the same statement as the finish would not
            # see the finished turn as no longer running.
            message_id = await self._write_one(
                lambda connection: _store_answer_in_one(connection, _HELD_ANSWER, finish, answer)
            )
            claimed = await self.claim_next_turn(
                conversation_id, holder=claim.holder, alive_until=claim.alive_until, key=key
            )
            return message_id, claimed

        def work(connection: Connection) -> tuple[int | None, PendingTurn | None]:
            message_id = _store_answer_in(connection, _FINISH_HELD_TURN, finish, answer)
            return message_id, _claim_in(connection, conversation_id, claim, key)

        return await self._write(work)

    async def fail_turn(self, turn_id: int, *, holder: str | None = None) -> bool:
        now = utcnow()
        statement = _FINISH_TURN if holder is None else _FINISH_HELD_TURN
        parameters = {
            "b_turn_id": turn_id,
            "b_holder": holder,
            "b_status": "failed",
            "b_now": now,
            "b_reply_ref": None,
        }

        def work(connection: Connection) -> bool:
            return connection.execute(statement, parameters).rowcount == 1

        return await self._write_one(work)

    async def pending_turns(self) -> list[PendingTurn]:
        statement = (
            select(*_PENDING_COLUMNS, _c.platform, _c.workspace, _c.channel, _c.thread)
            .join(CONVERSATIONS, _c.id == _t.conversation_id)
            .where(_t.status.in_(_UNFINISHED), _t.user_message_id.is_not(None))
            .order_by(_t.id)
        )
        rows = await self._read(lambda connection: connection.execute(statement).all())
        return [_pending_turn(row, ConversationKey(*row[-4:])) for row in rows]

    async def ping(self) -> bool:
        try:
            await self._read(lambda connection: connection.execute(_PING).scalar())
        except StoreUnavailable:
            return False
        return True

    # --- messages --------------------------------------------------------------

    async def history(
        self, conversation_id: int, *, up_to_message_id: int, limit: int
    ) -> list[StoredMessage]:
        if limit <= 0:
            return []
        parameters = {
            "conversation_id": conversation_id,
            "up_to": up_to_message_id,
            "limit": limit,
        }

        cache = self._message_cache

        def work(connection: Connection) -> list[StoredMessage]:
            window = list(connection.execute(_HISTORY_IDS, parameters))
            # Oldest first, each answer right after the question it answers, even
            # when it was stored after a later question.
            window.sort(key=lambda row: (row[1] or row[0], row[0]))
            ids = [row[0] for row in window]
            known = cache.get_many(ids)
            missing = [id_ for id_ in ids if id_ not in known]
            if missing:
                fresh = [
                    _stored_message(row)
                    for row in connection.execute(_MESSAGES_BY_IDS, {"ids": missing})
                ]
                cache.add(fresh)
                known.update((message.id, message) for message in fresh)
            # A message deleted between the two queries is left out.
            return [known[id_] for id_ in ids if id_ in known]

        return await self._read(work)

    async def message_text(self, message_id: int) -> StoredMessage | None:
        def work(connection: Connection) -> StoredMessage | None:
            row = connection.execute(_MESSAGE_BY_ID, {"message_id": message_id}).one_or_none()
            return None if row is None else _stored_message(row)

        return await self._read(work)

    async def unheard_audio(self, message_id: int) -> tuple[Attachment, ...]:
        def work(connection: Connection) -> str | None:
            value: str | None = connection.execute(
                _AUDIO_BY_ID, {"message_id": message_id}
            ).scalar_one_or_none()
            return value

        stored = await self._read(work)
        if not stored:
            return ()
        return tuple(
            Attachment(
                name=item["name"],
                content_type=item["content_type"],
                url=item["url"],
                size=item["size"],
            )
            for item in json.loads(stored)
        )

    async def heard(self, message_id: int, *, text: str, tokens: int) -> None:
        def work(connection: Connection) -> None:
            connection.execute(
                _HEARD,
                {"b_message_id": message_id, "b_text": _clean_text(text), "b_tokens": tokens},
            )

        await self._write(work)
        self._message_cache.discard(message_id)

    async def reset_conversation(self, key: ConversationKey) -> None:
        latest = select(func.max(_m.id)).where(_m.conversation_id == _c.id).scalar_subquery()
        statement = (
            update(CONVERSATIONS)
            .where(*_key_filter(key))
            .values(
                reset_after_message_id=func.coalesce(latest, _c.reset_after_message_id),
                trim_noticed=False,
                updated_at=utcnow(),
            )
        )

        def work(connection: Connection) -> None:
            connection.execute(statement)

        await self._write(work)

    async def mark_trim_noticed(self, conversation_id: int) -> bool:
        statement = (
            update(CONVERSATIONS)
            .where(_c.id == conversation_id, _c.trim_noticed.is_(False))
            .values(trim_noticed=True)
        )

        def work(connection: Connection) -> bool:
            return connection.execute(statement).rowcount == 1

        return await self._write(work)

    async def delete_conversation_messages(self, conversation_id: int) -> int:
        now = utcnow()

        def work(connection: Connection) -> int:
            # A turn whose question is gone cannot be resumed.
            connection.execute(
                update(TURNS)
                .where(_t.conversation_id == conversation_id, _t.status == "pending")
                .values(status="failed", finished_at=now)
            )
            return connection.execute(
                delete(MESSAGES).where(_m.conversation_id == conversation_id)
            ).rowcount

        deleted = await self._write(work)
        self._message_cache.clear()
        return deleted

    async def forget_user(self, platform: str, user_id: str) -> ForgetCounts:
        """Delete the user's own messages on `platform` (every conversation) and every
        answer to them, which may repeat what they said.

        Settings they changed stay in force, as the channel relies on them; the
        settings rows and audit rows no longer name them, nor do dedupe markers.
        """
        authored = (
            select(_m.id)
            .join(CONVERSATIONS, _c.id == _m.conversation_id)
            .where(_m.author_id == user_id, _m.role == "user", _c.platform == platform)
        )
        answers = select(_m.id).where(_m.role == "assistant", _m.reply_to_id.in_(authored))
        now = utcnow()

        def work(connection: Connection) -> ForgetCounts:
            connection.execute(
                # One being answered right now too: its answer is then not saved.
                update(TURNS)
                .where(_t.status.in_(_UNFINISHED), _t.user_message_id.in_(authored))
                .values(status="failed", finished_at=now, alive_until=None)
            )
            # Answers first: they are found through the questions.
            answered = connection.execute(delete(MESSAGES).where(_m.id.in_(answers))).rowcount
            messages = connection.execute(delete(MESSAGES).where(_m.id.in_(authored))).rowcount
            connection.execute(forget_feedback(platform, user_id))
            # Where to answer (a DM channel, an interaction token) is theirs too.
            connection.execute(
                update(TURNS)
                .where(_t.platform == platform, _t.user_id == user_id)
                .values(
                    user_id="",
                    reply_target=case((_t.status.in_(_UNFINISHED), _t.reply_target), else_="{}"),
                )
            )
            connection.execute(
                update(CHANNEL_SETTINGS)
                .where(_s.platform == platform, _s.updated_by == user_id)
                .values(updated_by=FORGOTTEN_USER)
            )
            settings = connection.execute(
                update(SETTING_CHANGES)
                .where(_a.platform == platform, _a.changed_by == user_id)
                .values(changed_by=FORGOTTEN_USER)
            ).rowcount
            return ForgetCounts(messages=messages, answers=answered, settings=settings)

        counts = await self._write(work)
        self._message_cache.clear()
        self._settings_cache.clear()
        log.info(
            "forgot a user on %s: %d messages, %d answers, %d setting changes made anonymous",
            platform,
            counts.messages,
            counts.answers,
            counts.settings,
        )
        return counts

    async def tokens_used_by_user(self, platform: str, user_id: str, *, since: datetime) -> int:
        question = MESSAGES.alias("question")
        statement = (
            select(_spent(question.c.tokens))
            .select_from(MESSAGES)
            .join(question, question.c.id == _m.reply_to_id)
            .join(CONVERSATIONS, _c.id == _m.conversation_id)
            .where(
                _m.role == "assistant",
                _m.created_at >= since,
                question.c.author_id == user_id,
                _c.platform == platform,
            )
        )
        return await self._read(lambda connection: int(connection.execute(statement).scalar_one()))

    async def tokens_used_in_channel(
        self, platform: str, workspace: str, channel: str, *, since: datetime
    ) -> int:
        question = MESSAGES.alias("question")
        statement = (
            select(_spent(question.c.tokens))
            .select_from(MESSAGES)
            .outerjoin(question, question.c.id == _m.reply_to_id)
            .join(CONVERSATIONS, _c.id == _m.conversation_id)
            .where(
                _m.role == "assistant",
                _m.created_at >= since,
                _c.platform == platform,
                _c.workspace == workspace,
                _c.channel == channel,
            )
        )
        return await self._read(lambda connection: int(connection.execute(statement).scalar_one()))

    async def has_conversation(self, key: ConversationKey) -> bool:
        parameters = {
            "platform": key.platform,
            "workspace": key.workspace,
            "channel": key.channel,
            "thread": key.thread,
        }

        def work(connection: Connection) -> bool:
            return connection.execute(_CONVERSATION_ID, parameters).first() is not None

        # Adapters ask this before acknowledging an event: on the accepting connections.
        if self._accept_engine is not None:
            return await self._accept_one(work)
        return await self._read(work)

    async def thread_of_message(
        self, platform: str, workspace: str, channel: str, platform_message_id: str
    ) -> str | None:
        """The thread of the conversation holding a message, found by its platform id:
        a person's message, or an answer (the turn's reply reference)."""
        in_channel = (_c.platform == platform, _c.workspace == workspace, _c.channel == channel)
        by_message = (
            select(_c.thread)
            .join(MESSAGES, _m.conversation_id == _c.id)
            .where(_m.platform_message_id == platform_message_id, *in_channel)
            .limit(1)
        )
        by_answer = (
            select(_c.thread)
            .join(TURNS, _t.conversation_id == _c.id)
            .where(_t.reply_ref == platform_message_id, *in_channel)
            .limit(1)
        )

        def work(connection: Connection) -> str | None:
            for statement in (by_message, by_answer):
                row = connection.execute(statement).first()
                if row is not None:
                    return str(row.thread)
            return None

        return await self._read(work)

    async def delete_platform_message(
        self, platform: str, workspace: str, channel: str, platform_message_id: str
    ) -> int:
        """Delete a person's message that they deleted on the platform."""
        doomed = (
            select(_m.id)
            .join(CONVERSATIONS, _c.id == _m.conversation_id)
            .where(
                _m.platform_message_id == platform_message_id,
                _m.role == "user",
                _c.platform == platform,
                _c.workspace == workspace,
                _c.channel == channel,
            )
        )
        now = utcnow()

        def work(connection: Connection) -> int:
            connection.execute(
                update(TURNS)
                .where(_t.status == "pending", _t.user_message_id.in_(doomed))
                .values(status="failed", finished_at=now)
            )
            return connection.execute(delete(MESSAGES).where(_m.id.in_(doomed))).rowcount

        deleted = await self._write(work)
        if deleted:
            self._message_cache.clear()
        return deleted

    async def forget_workspace(self, platform: str, workspace: str) -> int:
        """Delete everything stored about a workspace (the app was uninstalled).

        Returns how many conversations went; their messages go with them. Dedupe
        markers stay until they expire, so a late redelivery is still no answer.
        """
        conversations = select(_c.id).where(_c.platform == platform, _c.workspace == workspace)
        now = utcnow()

        def work(connection: Connection) -> int:
            connection.execute(
                update(TURNS)
                .where(_t.status == "pending", _t.conversation_id.in_(conversations))
                .values(status="failed", finished_at=now)
            )
            connection.execute(delete(MESSAGES).where(_m.conversation_id.in_(conversations)))
            gone = connection.execute(
                delete(CONVERSATIONS).where(_c.platform == platform, _c.workspace == workspace)
            ).rowcount
            connection.execute(
                delete(CHANNEL_SETTINGS).where(_s.platform == platform, _s.workspace == workspace)
            )
            connection.execute(
                delete(SETTING_CHANGES).where(_a.platform == platform, _a.workspace == workspace)
            )
            return gone

        gone = await self._write(work)
        self._message_cache.clear()
        self._settings_cache.clear()
        log.info("forgot workspace %s on %s: %d conversations", workspace, platform, gone)
        return gone

    # --- channel settings ----------------------------------------------------------

    async def channel_settings(
        self, platform: str, workspace: str, channel: str
    ) -> ChannelSettings:
        key = (platform, workspace, channel)
        if (cached := self._settings_cache.get(key)) is not None:
            return cached
        parameters = {"platform": platform, "workspace": workspace, "channel": channel}
        rows = await self._read(_rows_of(_CHANNEL_SETTINGS, parameters))
        # The channel's own row first, the workspace row ('') after it.
        rows.sort(key=lambda row: row[0] != channel)
        values: dict[str, Any] = dict.fromkeys(_SETTING_FIELDS)
        for row in rows:
            for index, field in enumerate(_SETTING_FIELDS, start=1):
                if values[field] is None:
                    values[field] = row[index]
        found = ChannelSettings(**values)
        if not self._shared:
            self._settings_cache[key] = found
        return found

    async def change_setting(
        self,
        platform: str,
        workspace: str,
        channel: str,
        *,
        field: SettingField,
        value: str | int | None,
        changed_by: str,
    ) -> None:
        if field not in _SETTING_FIELDS:
            raise ValueError(f"unknown channel setting {field!r}")
        stored = _setting_value(field, value)
        now = utcnow()
        where = (_s.platform == platform, _s.workspace == workspace, _s.channel == channel)
        upsert = self._insert(CHANNEL_SETTINGS).values(
            platform=platform,
            workspace=workspace,
            channel=channel,
            updated_by=changed_by,
            updated_at=now,
            **{field: stored},
        )
        upsert = upsert.on_conflict_do_update(
            index_elements=[_s.platform, _s.workspace, _s.channel],
            set_={field: stored, "updated_by": changed_by, "updated_at": now},
        )

        def work(connection: Connection) -> None:
            old = connection.execute(
                select(CHANNEL_SETTINGS.c[field]).where(*where)
            ).scalar_one_or_none()
            connection.execute(upsert)
            connection.execute(
                SETTING_CHANGES.insert().values(
                    platform=platform,
                    workspace=workspace,
                    channel=channel,
                    field=field,
                    old_value=None if old is None else str(old),
                    new_value=None if stored is None else str(stored),
                    changed_by=changed_by,
                    changed_at=now,
                )
            )

        try:
            await self._write(work)
        finally:
            self._settings_cache.clear()

    async def setting_changes(
        self, platform: str, workspace: str, channel: str
    ) -> list[SettingChange]:
        statement = (
            select(_a.field, _a.old_value, _a.new_value, _a.changed_by, _a.changed_at)
            .where(_a.platform == platform, _a.workspace == workspace, _a.channel == channel)
            .order_by(_a.id)
        )
        rows = await self._read(lambda connection: connection.execute(statement).all())
        return [
            SettingChange(
                field=row[0], old=row[1], new=row[2], changed_by=row[3], changed_at=row[4]
            )
            for row in rows
        ]

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


@contextlib.contextmanager
def _unavailable_as_store_error() -> Iterator[None]:
    """Connection failures become `StoreUnavailable`, which callers may retry; errors
    in the statements themselves (integrity, programming) pass through unchanged."""
    try:
        yield
    except (OperationalError, InterfaceError) as error:
        raise StoreUnavailable() from error
    except DBAPIError as error:
        if error.connection_invalidated:
            raise StoreUnavailable() from error
        raise
    except (OSError, TimeoutError) as error:
        raise StoreUnavailable() from error


def _claim_in(
    connection: Connection, conversation_id: int, claim: Claim, key: ConversationKey | None
) -> PendingTurn | None:
    parameters = {
        "b_conversation_id": conversation_id,
        "b_holder": claim.holder,
        "b_alive_until": claim.alive_until,
    }
    row = connection.execute(_CLAIM_NEXT, parameters).one_or_none()
    if row is None:
        return None
    # A conversation's key never changes, so it may be read after the claim.
    found = key or ConversationKey(
        *connection.execute(_CONVERSATION_KEY, {"conversation_id": conversation_id}).one()
    )
    return _pending_turn(row, found)


def _answer_values(
    text: str, tokens: int, usage: Usage | None, status: MessageStatus, model: str
) -> dict[str, Any]:
    return {
        "role": "assistant",
        "author_id": "",
        "author_name": "",
        "text": _clean_text(text),
        "platform_message_id": "",
        "tokens": tokens,
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
        "model": model,
        "status": status,
        "created_at": utcnow(),
    }


def _finish_values(turn_id: int, holder: str | None, reply_ref: str | None) -> dict[str, Any]:
    return {
        "b_turn_id": turn_id,
        "b_holder": holder,
        "b_status": "answered",
        "b_now": utcnow(),
        "b_reply_ref": reply_ref,
    }


def _store_answer_in(
    connection: Connection, finish_statement: Any, finish: dict[str, Any], answer: dict[str, Any]
) -> int | None:
    turn = connection.execute(finish_statement, finish).one_or_none()
    if turn is None or turn.conversation_id is None:
        # Taken over by another process, finished already, or its conversation was
        # deleted meanwhile (the workspace was forgotten).
        return None
    message_id: int = connection.execute(
        _INSERT_MESSAGE,
        {**answer, "conversation_id": turn.conversation_id, "reply_to_id": turn.user_message_id},
    ).scalar_one()
    return message_id


def _store_answer_in_one(
    connection: Connection, statement: Any, finish: dict[str, Any], answer: dict[str, Any]
) -> int | None:
    """PostgreSQL: the finish and the answer's insert as one statement."""
    # Prefixed: an UPDATE would take parameters named like its columns as SET values.
    prefixed = {f"a_{name}": value for name, value in answer.items()}
    row = connection.execute(statement, {**finish, **prefixed}).one_or_none()
    return None if row is None else int(row[0])


def _pending_turn(row: Any, conversation: ConversationKey) -> PendingTurn:
    return PendingTurn(
        turn_id=row[0],
        conversation_id=row[1],
        user_message_id=row[2],
        platform=row[3],
        conversation=conversation,
        reply_target=json.loads(row[4]) if row[4] else {},
        reply_ref=row[5],
        created_at=row[6],
        user_id=row[7],
        is_channel_admin=bool(row[8]),
        claims=row[9],
    )


def _expired(target: dict[str, Any], deadline: float) -> bool:
    if "secrets" not in target:
        return False
    try:
        return float(target.get("expires_at", 0)) <= deadline
    except (TypeError, ValueError):
        return True  # no readable expiry: not worth keeping a credential for


def _spent(question_tokens: Any) -> Any:
    """Tokens an answer cost: the provider's usage, else the local counts of the answer and
    its question (endpoints like Ollama may report no usage)."""
    reported = _m.prompt_tokens + _m.completion_tokens
    counted = _m.tokens + func.coalesce(question_tokens, 0)
    return func.coalesce(func.sum(func.coalesce(reported, counted)), 0)


def _audio_json(attachments: tuple[Attachment, ...]) -> str | None:
    audio = [
        {"name": a.name, "content_type": a.content_type, "url": a.url, "size": a.size}
        for a in attachments
        if a.is_audio
    ]
    return json.dumps(audio, separators=(",", ":")) if audio else None


def _verb(dry_run: bool) -> str:
    return "would remove" if dry_run else "removed"


def _rows_of(statement: Any, parameters: dict[str, Any]) -> Callable[[Connection], list[Any]]:
    def work(connection: Connection) -> list[Any]:
        return list(connection.execute(statement, parameters))

    return work


def _key_filter(key: ConversationKey) -> tuple[Any, ...]:
    return (
        _c.platform == key.platform,
        _c.workspace == key.workspace,
        _c.channel == key.channel,
        _c.thread == key.thread,
    )


def _setting_value(field: SettingField, value: str | int | None) -> str | int | None:
    if value is None:
        return None
    if field == "retention_days":
        days = int(value)
        if days < 0:
            raise ValueError("retention_days cannot be negative")
        return days
    return str(value)

"""Tool rounds and confirmations (`botservice.core.ports.ToolRoundStore`), mixed into
`SqlStore`.

`tool_calls` keeps each call of a turn's tool rounds with its result, under the
turn's question: the foreign key to `messages` cascades, so the calls expire with
the question, go with it on forget-me, and a follow-up's prompt finds them by the
messages its history holds. `tool_confirmations` keeps the Approve / Deny a call
waits for (migration 0006): its decision is also written to the settings audit
trail (`setting_changes`, field `tool_call`), naming who decided what and when.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    false,
    select,
    update,
)

from botservice.core.ports import StoredConfirmation, StoredToolCall
from botservice.core.tools import Decision
from botservice.storage import hot_rows
from botservice.storage.tables import (
    CONVERSATIONS,
    MESSAGES,
    SETTING_CHANGES,
    TURNS,
    UTCDateTime,
    metadata,
    utcnow,
)

if TYPE_CHECKING:
    from botservice.storage.postgres_hot import PostgresHotPath
    from botservice.storage.sqlite_hot import SqliteHotPath

T = TypeVar("T")

# In the tables' shared metadata, so the migrations are checked against it too.
TOOL_CALLS = Table(
    "tool_calls",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("turn_id", Integer, nullable=False),
    Column(
        "user_message_id",
        Integer,
        ForeignKey(MESSAGES.c.id, ondelete="CASCADE"),
        nullable=False,
    ),
    Column("round", Integer, nullable=False),
    Column("position", Integer, nullable=False),
    Column("call_id", String, nullable=False),
    Column("name", String, nullable=False),
    Column("arguments", Text, nullable=False),
    Column("status", String, nullable=False),  # 'requested' | 'started' | 'done'
    Column("result", Text, nullable=True),
    Column("is_error", Boolean, nullable=False, default=False, server_default="0"),
    Column("tokens", Integer, nullable=False, default=0, server_default="0"),
    Column("round_text", Text, nullable=False, default="", server_default=""),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("turn_id", "round", "position", name="uq_tool_calls_turn_round_position"),
    Index("ix_tool_calls_user_message_id", "user_message_id"),
    sqlite_autoincrement=True,
)
TOOL_CONFIRMATIONS = Table(
    "tool_confirmations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("turn_id", Integer, ForeignKey(TURNS.c.id, ondelete="CASCADE"), nullable=False),
    Column("round", Integer, nullable=False),
    Column("position", Integer, nullable=False),
    Column("tool", String, nullable=False),
    # sha256 of the arguments as the model sent them: the audit names what was
    # approved without keeping the arguments (which may quote the conversation).
    Column("arguments_hash", String, nullable=False),
    Column("platform", String, nullable=False),
    Column("asker_id", String, nullable=False),
    Column("status", String, nullable=False),  # 'pending' | 'approved' | 'denied' | 'timed_out'
    Column("decided_by", String, nullable=True),
    Column("decided_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    UniqueConstraint(
        "turn_id", "round", "position", name="uq_tool_confirmations_turn_round_position"
    ),
    Index("ix_tool_confirmations_asker_id", "asker_id"),
    sqlite_autoincrement=True,
)
_k, _q, _t, _c = TOOL_CALLS.c, TOOL_CONFIRMATIONS.c, TURNS.c, CONVERSATIONS.c

_CALL_COLUMNS = (
    _k.user_message_id,
    _k.round,
    _k.position,
    _k.call_id,
    _k.name,
    _k.arguments,
    _k.status,
    _k.result,
    _k.is_error,
    _k.tokens,
    _k.round_text,
)
_CALLS_OF_TURN = (
    select(*_CALL_COLUMNS).where(_k.turn_id == bindparam("turn_id")).order_by(_k.round, _k.position)
)
_CALLS_FOR_MESSAGES = (
    select(*_CALL_COLUMNS)
    .where(_k.user_message_id.in_(bindparam("ids", expanding=True)))
    .order_by(_k.user_message_id, _k.round, _k.position)
)
# The conversation of a turn that stores a tool round has rounds from now on (see
# `has_tool_rounds`); written in the round's transaction, only the first time.
_FLAG_TOOL_ROUNDS = (
    update(CONVERSATIONS)
    .where(
        CONVERSATIONS.c.id
        == select(TURNS.c.conversation_id)
        .where(TURNS.c.id == bindparam("turn_id"))
        .scalar_subquery(),
        CONVERSATIONS.c.has_tool_rounds == false(),
    )
    .values(has_tool_rounds=True)
)
_STORE_RESULT = (
    update(TOOL_CALLS)
    .where(
        _k.turn_id == bindparam("b_turn_id"),
        _k.round == bindparam("b_round"),
        _k.position == bindparam("b_position"),
    )
    .values(
        status="done",
        result=bindparam("b_result"),
        is_error=bindparam("b_is_error"),
        tokens=bindparam("b_tokens"),
    )
)
_CONFIRMATION_COLUMNS = (
    _q.id,
    _q.turn_id,
    _q.round,
    _q.position,
    _q.tool,
    _q.arguments_hash,
    _q.platform,
    _q.asker_id,
    _q.status,
    _q.expires_at,
    _q.decided_by,
    _q.decided_at,
)
# A turn in one of these is answered by a worker (now, or once resumed after a restart),
# which reads the decision of its question.
_WAITING_TURN = ("pending", "running")
_CONFIRMATION_BY_ID = select(*_CONFIRMATION_COLUMNS).where(_q.id == bindparam("confirmation_id"))
_CONFIRMATION_OF_CALL = select(*_CONFIRMATION_COLUMNS).where(
    _q.turn_id == bindparam("turn_id"),
    _q.round == bindparam("round"),
    _q.position == bindparam("position"),
)


_call = hot_rows.tool_call


def _confirmation(row: Any) -> StoredConfirmation:
    return StoredConfirmation(
        id=row[0],
        turn_id=row[1],
        round=row[2],
        position=row[3],
        tool=row[4],
        arguments_hash=row[5],
        platform=row[6],
        asker_id=row[7],
        status=row[8],
        expires_at=row[9],
        decided_by=row[10],
        decided_at=row[11],
    )


def forget_confirmations(platform: str, user_id: str, forgotten: str) -> list[Any]:
    """What forget-me does to confirmations: they no longer name the person (the
    decisions stay, as the actions they allowed happened)."""
    return [
        update(TOOL_CONFIRMATIONS)
        .where(_q.platform == platform, _q.asker_id == user_id)
        .values(asker_id=forgotten),
        update(TOOL_CONFIRMATIONS)
        .where(_q.platform == platform, _q.decided_by == user_id)
        .values(decided_by=forgotten),
    ]


class ToolRoundQueries:
    """Needs the store's `_write`, `_read`, dialect-specific `_insert` and, on a SQLite
    file, its hot path."""

    if TYPE_CHECKING:
        _insert: Callable[..., Any]
        _hot: SqliteHotPath | PostgresHotPath | None

        async def _write(self, work: Callable[[Connection], T]) -> T: ...

        async def _read(self, work: Callable[[Connection], T]) -> T: ...

    async def store_tool_round(self, turn_id: int, calls: Sequence[StoredToolCall]) -> None:
        if not calls:
            return
        now = utcnow()
        rows = [
            {
                "turn_id": turn_id,
                "user_message_id": call.user_message_id,
                "round": call.round,
                "position": call.position,
                "call_id": call.call_id,
                "name": call.name,
                "arguments": _clean(call.arguments),
                "status": call.status,
                "result": None if call.result is None else _clean(call.result),
                "is_error": call.is_error,
                "tokens": call.tokens,
                "round_text": _clean(call.round_text),
                "created_at": now,
            }
            for call in calls
        ]
        insert = (
            self._insert(TOOL_CALLS)
            .values(rows)
            .on_conflict_do_nothing(index_elements=[_k.turn_id, _k.round, _k.position])
        )

        def work(connection: Connection) -> None:
            connection.execute(insert)
            connection.execute(_FLAG_TOOL_ROUNDS, {"turn_id": turn_id})

        await self._write(work)

    async def start_tool_call(self, turn_id: int, *, round: int, position: int) -> None:
        statement = (
            update(TOOL_CALLS)
            .where(
                _k.turn_id == turn_id,
                _k.round == round,
                _k.position == position,
                _k.status == "requested",
            )
            .values(status="started")
        )
        await self._write(lambda connection: connection.execute(statement))

    async def store_tool_results(self, turn_id: int, calls: Sequence[StoredToolCall]) -> None:
        if not calls:
            return
        rows = [
            {
                "b_turn_id": turn_id,
                "b_round": call.round,
                "b_position": call.position,
                "b_result": None if call.result is None else _clean(call.result),
                "b_is_error": call.is_error,
                "b_tokens": call.tokens,
            }
            for call in calls
        ]

        def work(connection: Connection) -> None:
            connection.execute(_STORE_RESULT, rows)

        await self._write(work)

    async def tool_calls(self, turn_id: int) -> list[StoredToolCall]:
        def work(connection: Connection) -> list[StoredToolCall]:
            return [_call(row) for row in connection.execute(_CALLS_OF_TURN, {"turn_id": turn_id})]

        return await self._read(work)

    async def tool_calls_for(self, user_message_ids: Collection[int]) -> list[StoredToolCall]:
        if not user_message_ids:
            return []
        if self._hot is not None:
            return await self._hot.tool_calls_for(user_message_ids)
        ids = list(user_message_ids)

        def work(connection: Connection) -> list[StoredToolCall]:
            return [_call(row) for row in connection.execute(_CALLS_FOR_MESSAGES, {"ids": ids})]

        return await self._read(work)

    async def open_confirmation(
        self,
        turn_id: int,
        *,
        round: int,
        position: int,
        tool: str,
        arguments_hash: str,
        platform: str,
        asker_id: str,
        expires_at: datetime,
    ) -> tuple[StoredConfirmation, bool]:
        where = {"turn_id": turn_id, "round": round, "position": position}
        insert = (
            self._insert(TOOL_CONFIRMATIONS)
            .values(
                turn_id=turn_id,
                round=round,
                position=position,
                tool=tool,
                arguments_hash=arguments_hash,
                platform=platform,
                asker_id=asker_id,
                status="pending",
                created_at=utcnow(),
                expires_at=expires_at,
            )
            .on_conflict_do_nothing(index_elements=[_q.turn_id, _q.round, _q.position])
            .returning(_q.id)
        )

        def work(connection: Connection) -> tuple[StoredConfirmation, bool]:
            created = connection.execute(insert).first() is not None
            row = connection.execute(_CONFIRMATION_OF_CALL, where).one()
            return _confirmation(row), created

        return await self._write(work)

    async def confirmation(self, confirmation_id: int) -> StoredConfirmation | None:
        def work(connection: Connection) -> StoredConfirmation | None:
            row = connection.execute(
                _CONFIRMATION_BY_ID, {"confirmation_id": confirmation_id}
            ).first()
            return None if row is None else _confirmation(row)

        return await self._read(work)

    async def decide_confirmation(
        self,
        confirmation_id: int,
        *,
        platform: str,
        user_id: str,
        approve: bool,
        now: datetime,
        asker_waits: bool = False,
    ) -> Decision:
        where_is = (
            select(_c.workspace, _c.channel)
            .select_from(TOOL_CONFIRMATIONS)
            .join(TURNS, _t.id == _q.turn_id)
            .join(CONVERSATIONS, _c.id == _t.conversation_id)
            .where(_q.id == confirmation_id)
        )
        status: Decision = "approved" if approve else "denied"

        def work(connection: Connection) -> Decision:
            row = connection.execute(
                _CONFIRMATION_BY_ID, {"confirmation_id": confirmation_id}
            ).first()
            if row is None:
                return "unknown"
            found = _confirmation(row)
            if found.platform != platform:
                return "unknown"
            if found.status == "pending" and not asker_waits:
                turn_status = connection.execute(
                    select(_t.status).where(_t.id == found.turn_id)
                ).scalar_one_or_none()
                if turn_status not in _WAITING_TURN:
                    # No worker will ever take this turn up again (a realtime session's
                    # spoken turn, or a finished one): nobody would act on the answer.
                    connection.execute(
                        update(TOOL_CONFIRMATIONS)
                        .where(_q.id == confirmation_id, _q.status == "pending")
                        .values(status="timed_out", decided_at=now)
                    )
                    return "expired"
            if found.asker_id != user_id:
                return "not_asker"
            if found.status != "pending":
                return "already_decided"
            pending = (_q.id == confirmation_id, _q.status == "pending")
            if now >= found.expires_at:
                connection.execute(
                    update(TOOL_CONFIRMATIONS).where(*pending).values(status="timed_out")
                )
                return "already_decided"
            decided = connection.execute(
                update(TOOL_CONFIRMATIONS)
                .where(*pending)
                .values(status=status, decided_by=user_id, decided_at=now)
            ).rowcount
            if decided != 1:
                return "already_decided"  # another process decided it a moment ago
            place = connection.execute(where_is).first()
            connection.execute(
                SETTING_CHANGES.insert().values(
                    platform=platform,
                    workspace=place[0] if place else "",
                    channel=place[1] if place else "",
                    field="tool_call",
                    old_value=None,
                    new_value=f"{status} {found.tool} sha256:{found.arguments_hash}",
                    changed_by=user_id,
                    changed_at=now,
                )
            )
            return status

        return await self._write(work)

    async def expire_confirmation(
        self, confirmation_id: int, *, now: datetime
    ) -> StoredConfirmation | None:
        expire = (
            update(TOOL_CONFIRMATIONS)
            .where(_q.id == confirmation_id, _q.status == "pending")
            .values(status="timed_out", decided_at=now)
        )

        def work(connection: Connection) -> StoredConfirmation | None:
            connection.execute(expire)
            row = connection.execute(
                _CONFIRMATION_BY_ID, {"confirmation_id": confirmation_id}
            ).first()
            return None if row is None else _confirmation(row)

        return await self._write(work)


def _clean(text: str) -> str:
    # PostgreSQL text cannot hold NUL; a tool may well return one.
    return text.replace("\x00", "") if "\x00" in text else text

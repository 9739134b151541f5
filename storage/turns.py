"""Turns: accepting a message, claiming its turn, the heartbeat, storing the answer.

The PostgreSQL and SQLite paths differ on purpose (round trips on one, a single
writer on the other); see each method.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    String,
    bindparam,
    case,
    exists,
    false,
    func,
    literal_column,
    null,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from botservice.core.events import ConversationKey, IncomingMessage
from botservice.core.ports import (
    AcceptedTurn,
    Claim,
    MessageStatus,
    ModelResponseRef,
    PendingTurn,
    Usage,
    UsageRecord,
)
from botservice.storage import hot_rows
from botservice.storage.base import (
    _CONVERSATION_ID,
    _INSERT_MESSAGE,
    _PENDING,
    _RUNNING,
    _UNFINISHED,
    StoreBase,
    _c,
    _m,
    _rows_of,
    _t,
)
from botservice.storage.sqlite_worker import SqliteFileParts
from botservice.storage.tables import (
    CONVERSATIONS,
    MESSAGES,
    TURNS,
    USAGE,
    UTCDateTime,
    utcnow,
)
from botservice.storage.usage_rows import USAGE_FIELDS, write_usage

log = logging.getLogger(__name__)

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
# A turn a realtime voice session answers (status 'spoken' from its acceptance, so no
# worker ever claims it) is finished once its answer has been heard.
_FINISH_SPOKEN_TURN = (
    update(TURNS)
    .where(_t.id == bindparam("b_turn_id"), _t.status == "spoken")
    .values(status=bindparam("b_status"), finished_at=_NOW)
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
    # Whether the message still has audio to hear: a process answering a turn it did
    # not accept asks for the clips only then (a round trip saved on nearly every turn).
    select(_m.audio.is_not(None))
    .where(_m.id == _t.user_message_id)
    .correlate_except(MESSAGES)
    .scalar_subquery()
    .label("has_audio"),
)
_SET_REPLY_REF = (
    update(TURNS).where(_t.id == bindparam("b_turn_id")).values(reply_ref=bindparam("b_reply_ref"))
)
_CONVERSATION_KEY = select(_c.platform, _c.workspace, _c.channel, _c.thread).where(
    _c.id == bindparam("conversation_id")
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
# At start (every holder: a process alone on its SQLite file), at stop (its own).
_RELEASE_ALL = (
    update(TURNS)
    .where(_t.status == "running")
    .values(status="pending", alive_until=None)
    .returning(_t.conversation_id)
)
_RELEASE_HELD = (
    update(TURNS)
    .where(_t.status == "running", _t.claimed_by == _HOLDER)
    .values(status="pending", alive_until=None)
    .returning(_t.conversation_id)
)


def _waiting_statement() -> Any:
    """Conversations with a pending turn accepted before `b_before` and none running,
    the one whose turn waits longest first."""
    running = TURNS.alias("running")
    return (
        select(_t.conversation_id)
        .where(
            _t.status == _PENDING,
            _t.created_at < bindparam("b_before", type_=UTCDateTime()),
            _t.conversation_id.is_not(None),
            ~exists().where(
                running.c.conversation_id == _t.conversation_id,
                running.c.status == _RUNNING,
            ),
        )
        .group_by(_t.conversation_id)
        .order_by(func.min(_t.id))
    )


_WAITING_CONVERSATIONS = _waiting_statement()


# The columns an answer fills, in the order the hot paths write them.
ANSWER_COLUMNS = (
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


def _answer_statement(finish: Any, *, with_usage: bool = False) -> Any:
    """Finish a turn and store its answer in one statement (PostgreSQL): the answer is
    inserted only for a turn the finish matched, in the same atomic step. `with_usage`:
    the call's usage row too (parameters `u_*`), only when the answer was inserted:
    one statement, so one commit and one WAL flush for the whole answer."""
    finished = finish.cte("finished")
    columns = ANSWER_COLUMNS
    answer = select(
        finished.c.conversation_id,
        finished.c.user_message_id,
        # Prefixed: an UPDATE would take parameters named like its columns as SET values.
        *(bindparam(f"a_{name}", type_=MESSAGES.c[name].type) for name in columns[2:]),
    ).where(finished.c.conversation_id.is_not(None))
    # The question's id too: the hot path keeps the answer in its message cache.
    insert_answer = (
        MESSAGES.insert().from_select(list(columns), answer).returning(_m.id, _m.reply_to_id)
    )
    if not with_usage:
        return insert_answer.add_cte(finished, nest_here=True)
    # Data-modifying CTEs must sit at the top level: finished, saved, recorded.
    saved = insert_answer.cte("saved")
    usage_row = select(
        *(bindparam(f"u_{name}", type_=USAGE.c[name].type) for name in USAGE_FIELDS)
    ).select_from(saved)
    recorded = USAGE.insert().from_select(list(USAGE_FIELDS), usage_row).cte("recorded")
    return select(saved.c.id, saved.c.reply_to_id).add_cte(recorded)


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
_KEY_FIELDS = ("platform", "workspace", "channel", "thread")
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


def _pg_accept_statement(*, claiming: bool = False) -> Any:
    """Accept a message in one statement (PostgreSQL), creating its conversation first
    when it is new.

    The message id is drawn from its sequence first, so the turn (the dedupe claim)
    can be inserted pointing at it; the message is inserted only if the turn was,
    so a duplicate delivery writes nothing. Foreign keys are checked at the end of
    the statement, when the rows are there. Returns one row: the conversation id
    (None: another process created the conversation at the same moment, committed
    after this statement began; taking the message again finds it), then the turn
    and message ids (None: a duplicate), then the turn's status.

    The conversation is created in the same statement, not one of its own: every
    thread's first message used to take three round trips and two commits (accept,
    create, accept again), and those are the acknowledgements a burst of new
    threads waits longest for.

    `claiming`: the turn is inserted already claimed (running, held by `b_holder`
    until `b_alive_until`) when no turn of the conversation is pending or running,
    the case where the claim would take exactly this turn; else it is pending, as
    without. That saves the claim's own statement (and its commit) on nearly every
    turn. Two processes doing so at once for one conversation cannot both succeed:
    `uq_turns_one_running` fails the second statement whole (nothing written), and
    its caller accepts again without claiming.
    """
    key = {name: bindparam(f"k_{name}", type_=String()) for name in _KEY_FIELDS}
    found = select(_c.id).where(*(_c[name] == key[name] for name in _KEY_FIELDS))
    created_at = bindparam("t_created_at", type_=TURNS.c.created_at.type)
    created = (
        postgresql.insert(CONVERSATIONS)
        .from_select(
            [*_KEY_FIELDS, "created_at", "updated_at", "trim_noticed"],
            select(*key.values(), created_at, created_at, false()).where(~exists(found)),
        )
        .on_conflict_do_nothing(index_elements=[_c[name] for name in _KEY_FIELDS])
        .returning(_c.id)
        .cte("created")
    )
    conversation = func.coalesce(found.scalar_subquery(), select(created.c.id).scalar_subquery())
    message_id = func.nextval(func.pg_get_serial_sequence("messages", "id"))
    ids = select(conversation.label("conversation_id"), message_id.label("message_id")).cte("ids")
    fields: list[Any] = [bindparam(f"t_{name}", type_=TURNS.c[name].type) for name in _TURN_FIELDS]
    columns = list(_TURN_FIELDS)
    source: Any = ids
    if claiming:
        # The statuses as literals, one lookup each, so each can use its partial
        # index (`ix_turns_pending`, `uq_turns_one_running`).
        others = TURNS.alias("others")
        free = ~exists().where(
            others.c.conversation_id == ids.c.conversation_id, others.c.status == _PENDING
        ) & ~exists().where(
            others.c.conversation_id == ids.c.conversation_id, others.c.status == _RUNNING
        )
        source = select(ids.c.conversation_id, ids.c.message_id, free.label("free")).cte(
            "claimable"
        )
        fields[_TURN_FIELDS.index("status")] = case((source.c.free, _RUNNING), else_=_PENDING)
        fields[_TURN_FIELDS.index("claims")] = case(
            (source.c.free, literal_column("1", Integer())), else_=literal_column("0", Integer())
        )
        fields += [case((source.c.free, _HOLDER)), case((source.c.free, _ALIVE_UNTIL))]
        columns += ["claimed_by", "alive_until"]
    turn_row = select(*fields, source.c.conversation_id, source.c.message_id).where(
        source.c.conversation_id.is_not(None)
    )
    turn = (
        postgresql.insert(TURNS)
        .from_select([*columns, "conversation_id", "user_message_id"], turn_row)
        .on_conflict_do_nothing(index_elements=[_t.platform, _t.message_key])
        .returning(_t.id, _t.conversation_id, _t.user_message_id, _t.status)
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
        select(ids.c.conversation_id, turn.c.id, message.c.id, turn.c.status)
        .select_from(ids)
        .outerjoin(turn, true())
        .outerjoin(message, true())
    )


_LINK_TURN = (
    update(TURNS)
    .where(_t.id == bindparam("b_turn_id"))
    .values(
        conversation_id=bindparam("b_conversation_id"),
        user_message_id=bindparam("b_message_id"),
    )
)
_CLAIM_NEXT = _claim_statement()


class SqlTurnStore(StoreBase):
    """Accepting messages and answering their turns (`botservice.core.ports.TurnStore`)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        owns_engine: bool = True,
        concurrency: int | None = None,
        sqlite_parts: SqliteFileParts | None = None,
    ) -> None:
        super().__init__(
            engine, owns_engine=owns_engine, concurrency=concurrency, sqlite_parts=sqlite_parts
        )
        self._claim = (
            self._insert(TURNS)
            .on_conflict_do_nothing(index_elements=[_t.platform, _t.message_key])
            .returning(_t.id)
        )
        self._create_conversation = (
            self._insert(CONVERSATIONS)
            .on_conflict_do_nothing(
                index_elements=[_c.platform, _c.workspace, _c.channel, _c.thread]
            )
            .returning(_c.id)
        )

    # --- turns -----------------------------------------------------------------

    async def accept(
        self,
        message: IncomingMessage,
        *,
        text: str,
        tokens: int,
        claim: Claim | None = None,
        spoken: bool = False,
    ) -> AcceptedTurn | None:
        if self._sqlite_hot is not None:
            return await self._sqlite_hot.accept(
                message, text=text, tokens=tokens, claim=claim, spoken=spoken
            )
        if self._pg_hot is not None:
            return await self._pg_hot.accept(
                message, text=text, tokens=tokens, claim=claim, spoken=spoken
            )
        # Here only for SQLite in memory (a file or PostgreSQL take the hot paths above).
        now = utcnow()
        conversation_key = message.conversation
        turn_values = hot_rows.turn_values(message, now, spoken=spoken)
        key = hot_rows.key_values(conversation_key)
        conversation_values = {**key, "created_at": now, "updated_at": now, "trim_noticed": False}
        message_values = hot_rows.user_message_values(message, text=text, tokens=tokens, now=now)

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

    async def claim_next_turn(
        self,
        conversation_id: int,
        *,
        holder: str,
        alive_until: datetime,
        key: ConversationKey | None = None,
    ) -> PendingTurn | None:
        claim = Claim(holder=holder, alive_until=alive_until)
        if self._hot is not None:
            return await self._hot.claim_next_turn(conversation_id, claim, key)

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
        if self._hot is not None:
            return await self._hot.renew_claims(holder, turn_ids, alive_until=alive_until)
        parameters = {
            "b_holder": holder,
            "b_turn_ids": list(turn_ids),
            "b_alive_until": alive_until,
        }
        return await self._write_one(
            lambda connection: connection.execute(_RENEW_CLAIMS, parameters).rowcount
        )

    async def release_stale_turns(self, *, now: datetime) -> list[int]:
        if self._sqlite_hot is not None:
            return await self._sqlite_hot.release_stale_turns(now=now)

        def work(connection: Connection) -> list[int]:
            return sorted({row[0] for row in connection.execute(_RELEASE_STALE, {"b_now": now})})

        return hot_rows.log_released(await self._write_one(work))

    async def release_claims(self, holder: str | None = None) -> list[int]:
        if self._sqlite_hot is not None:
            return await self._sqlite_hot.release_claims(holder)
        statement = _RELEASE_ALL if holder is None else _RELEASE_HELD

        def work(connection: Connection) -> list[int]:
            return sorted({row[0] for row in connection.execute(statement, {"b_holder": holder})})

        return await self._write_one(work)

    async def waiting_conversations(self, *, accepted_before: datetime) -> list[int]:
        if self._sqlite_hot is not None:
            return await self._sqlite_hot.waiting_conversations(accepted_before=accepted_before)
        rows = await self._read(_rows_of(_WAITING_CONVERSATIONS, {"b_before": accepted_before}))
        return [row[0] for row in rows]

    async def remember_model_response(self, turn_id: int, response_id: str, *, round: int) -> None:
        values = {"model_response_id": response_id, "model_response_round": round}

        def work(connection: Connection) -> None:
            connection.execute(update(TURNS).where(_t.id == turn_id).values(**values))

        await self._write_one(work)

    async def model_response(self, turn_id: int) -> ModelResponseRef | None:
        statement = select(_t.model_response_id, _t.model_response_round).where(_t.id == turn_id)
        row = await self._read(lambda connection: connection.execute(statement).first())
        if row is None or row[0] is None:
            return None
        return ModelResponseRef(response_id=row[0], round=row[1] or 0)

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
        if self._hot is not None:
            return await self._hot.set_reply_ref(turn_id, reply_ref)

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
        ledger: UsageRecord | None = None,
    ) -> int | None:
        if self._hot is not None:
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
        answer = hot_rows.answer_values(text, tokens, usage, status, model)
        finish = hot_rows.finish_values(turn_id, holder, reply_ref)
        statement = _FINISH_TURN if holder is None else _FINISH_HELD_TURN
        return await self._write(
            lambda connection: _with_ledger(
                connection, _store_answer_in(connection, statement, finish, answer), ledger
            )
        )

    async def store_spoken_answer(
        self,
        turn_id: int,
        *,
        text: str,
        tokens: int,
        status: MessageStatus,
        model: str,
        usage: Usage | None = None,
    ) -> int | None:
        # Off the hot path (a realtime voice answer, a few a minute): on a SQLite file
        # the worker's commit tells the loop's connection to read its windows again.
        answer = hot_rows.answer_values(text, tokens, usage, status, model)
        finish = hot_rows.finish_values(turn_id, None, None)
        return await self._write(
            lambda connection: _store_answer_in(connection, _FINISH_SPOKEN_TURN, finish, answer)
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
        ledger: UsageRecord | None = None,
    ) -> tuple[int | None, PendingTurn | None]:
        if self._hot is not None:
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
        answer = hot_rows.answer_values(text, tokens, usage, status, model)
        finish = hot_rows.finish_values(turn_id, claim.holder, reply_ref)

        def work(connection: Connection) -> tuple[int | None, PendingTurn | None]:
            message_id = _store_answer_in(connection, _FINISH_HELD_TURN, finish, answer)
            _with_ledger(connection, message_id, ledger)
            return message_id, _claim_in(connection, conversation_id, claim, key)

        return await self._write(work)

    async def fail_turn(self, turn_id: int, *, holder: str | None = None) -> bool:
        if self._hot is not None:
            return await self._hot.fail_turn(turn_id, holder=holder)
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
        return [hot_rows.pending_turn(row, ConversationKey(*row[-4:]), row[6]) for row in rows]


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
    return hot_rows.pending_turn(row, found, row[6])


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


def _with_ledger(
    connection: Connection, message_id: int | None, ledger: UsageRecord | None
) -> int | None:
    """Write the call's usage row when its answer was saved (SQLite: in the answer's
    transaction; PostgreSQL writes it in the answer's statement). An answer not saved
    (taken over) leaves no row: the process answering the turn records its own call."""
    if ledger is not None and message_id is not None:
        write_usage(connection, ledger)
    return message_id

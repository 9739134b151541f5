"""The hot path's statements as SQLAlchemy Core, for `compile_statements` to compile.

A turn runs these through the drivers directly (`sqlite_hot`, `postgres_hot`), from the
SQL text compiled once into `compiled.py`: no statement is built or compiled per call,
and the turn path imports no SQLAlchemy. Most are the very objects the SQLAlchemy paths
of `turns`, `history` and `channel_settings` execute; the rest are defined here.

Each entry: the statement, the columns an INSERT fills (its `column_keys`; None for
other statements) and the dialects it is compiled for.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import Integer, any_, bindparam, case, cast, func, or_, select, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import aggregate_order_by

from botservice.storage.base import _INSERT_MESSAGE, _MESSAGE_COLUMNS, _RUNNING, _c, _m, _t
from botservice.storage.channel_settings import _CHANNEL_SETTINGS
from botservice.storage.history import _history_statement, conversation_rows
from botservice.storage.tables import CONVERSATIONS, MESSAGES, TURNS, USAGE
from botservice.storage.tool_rounds import _CALL_COLUMNS, TOOL_CALLS
from botservice.storage.turns import (
    _ALIVE_UNTIL,
    _CLAIM_NEXT,
    _CONVERSATION_KEY,
    _FINISH_HELD_TURN,
    _FINISH_TURN,
    _HOLDER,
    _LINK_TURN,
    _RELEASE_ALL,
    _RELEASE_HELD,
    _RELEASE_STALE,
    _SET_REPLY_REF,
    _WAITING_CONVERSATIONS,
    ANSWER_COLUMNS,
    _answer_statement,
    _pg_accept_statement,
)
from botservice.storage.usage_rows import USAGE_FIELDS

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
BOTH = (SQLITE, POSTGRESQL)


class HotStatement(NamedTuple):
    statement: Any
    column_keys: tuple[str, ...] | None
    dialects: tuple[str, ...]


# The columns `accept` and the answer write, in the order the hot paths fill them.
TURN_COLUMNS = (
    "platform",
    "message_key",
    "user_id",
    "is_channel_admin",
    "status",
    "reply_target",
    "claims",
    "created_at",
)
CONVERSATION_COLUMNS = (
    "platform",
    "workspace",
    "channel",
    "thread",
    "created_at",
    "updated_at",
    "trim_noticed",
)
USER_MESSAGE_COLUMNS = (
    "conversation_id",
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


def _insert_turn(dialect: Any) -> Any:
    return (
        dialect.insert(TURNS)
        .on_conflict_do_nothing(index_elements=[_t.platform, _t.message_key])
        .returning(_t.id)
    )


def _create_conversation(dialect: Any) -> Any:
    return (
        dialect.insert(CONVERSATIONS)
        .on_conflict_do_nothing(index_elements=[_c.platform, _c.workspace, _c.channel, _c.thread])
        .returning(_c.id)
    )


# Arrays of ids cross the wire as oid[], cast to and from int[] in the statement:
# asyncpg has a codec of its own for oid[] (Python ints), but for int[] it asks the
# catalog on each new connection (the jit setting read, set and restored around a
# recursive type query: four round trips and milliseconds of the database's CPU per
# connection). Row ids are positive 32-bit integers, which oid holds.
def _id_array(name: str) -> Any:
    """A parameter: a list of ids."""
    return cast(bindparam(name, type_=postgresql.ARRAY(postgresql.OID)), postgresql.ARRAY(Integer))


def _as_oids(ids: Any) -> Any:
    """A result column: an int[] of ids."""
    return cast(ids, postgresql.ARRAY(postgresql.OID))


# The history window with the messages themselves (one statement; the SQLAlchemy path
# reads ids, then the messages it has not cached).
_HISTORY_WINDOW = _history_statement(*_MESSAGE_COLUMNS)
# SQLite keeps a conversation's recent messages in memory (see sqlite_hot): its newest
# messages after the last reset, read again when another connection wrote.
_RECENT_MESSAGES = (
    select(*_MESSAGE_COLUMNS)
    .where(
        _m.conversation_id == bindparam("conversation_id"),
        _m.id
        > func.coalesce(
            select(_c.reset_after_message_id)
            .where(_c.id == bindparam("conversation_id"))
            .scalar_subquery(),
            0,
        ),
    )
    .order_by(_m.id.desc())
    .limit(bindparam("limit", type_=Integer))
)
_RESET_AFTER = select(_c.reset_after_message_id).where(_c.id == bindparam("conversation_id"))
# One turn per statement (SQLite runs it with executemany); PostgreSQL takes the ids as
# one array.
_RENEW_CLAIM = (
    update(TURNS)
    .where(_t.id == bindparam("b_turn_id"), _t.claimed_by == _HOLDER, _t.status == "running")
    .values(alive_until=_ALIVE_UNTIL)
)
_RENEW_CLAIMS_ARRAY = (
    update(TURNS)
    .where(
        _t.id == any_(_id_array("b_turn_ids")),
        _t.claimed_by == _HOLDER,
        _t.status == "running",
    )
    .values(alive_until=_ALIVE_UNTIL)
)
# The tool calls of the history window's questions (SQLite): the ids as one JSON array,
# so one compiled statement serves any number of them.
_CALLS_FOR_MESSAGES_JSON = (
    select(*_CALL_COLUMNS)
    .where(
        TOOL_CALLS.c.user_message_id.in_(
            select(func.json_each(bindparam("ids_json")).table_valued("value").c.value)
        )
    )
    .order_by(TOOL_CALLS.c.user_message_id, TOOL_CALLS.c.round, TOOL_CALLS.c.position)
)
# PostgreSQL takes them as one array.
_CALLS_FOR_MESSAGES_ARRAY = (
    select(*_CALL_COLUMNS)
    .where(TOOL_CALLS.c.user_message_id == any_(_id_array("ids")))
    .order_by(TOOL_CALLS.c.user_message_id, TOOL_CALLS.c.round, TOOL_CALLS.c.position)
)


def _window_ids(turn: Any, *, limit: str, up_to: Any = None) -> Any:
    """The history window of the turn in `turn` (a subquery or CTE with its
    `conversation_id`) as one array of ids in the window's order (oldest first, each
    answer right after the question it answers): `history_ids` inside a statement.
    From the id `from_id` up (the caller's bound, see `_history_statement`), the newest
    `limit` after the conversation's reset, and with `up_to` those up to that message."""
    reset = func.coalesce(
        select(_c.reset_after_message_id)
        .where(_c.id == turn.c.conversation_id)
        .correlate(turn)
        .scalar_subquery(),
        0,
    )
    bounds = () if up_to is None else (or_(_m.id <= up_to, _m.reply_to_id <= up_to),)
    rows, order = conversation_rows(turn.c.conversation_id, bindparam("from_id", type_=Integer))
    window = (
        select(_m.id, _m.reply_to_id)
        .where(
            *rows,
            _m.id > reset,
            func.coalesce(_m.reply_to_id, _m.id) > reset,
            *bounds,
        )
        .order_by(*order)
        .limit(bindparam(limit, type_=Integer))
        .correlate(turn)
        .subquery("turn_window")
    )
    ordered = aggregate_order_by(
        window.c.id, func.coalesce(window.c.reply_to_id, window.c.id), window.c.id
    )
    return select(_as_oids(func.array_agg(ordered))).correlate(turn).scalar_subquery()


def _reads_once(turn_reads: Any) -> Any:
    """A claimed turn's row with its reads (the window above all), as a subquery the
    settings rows are joined to after: read beside them, the window was read again for
    each (a channel with settings has two rows, its own and its workspace's). OFFSET 0
    keeps the planner from folding it into the join."""
    return turn_reads.offset(0).subquery("turn_reads")


def _has_tool_rounds(turn: Any) -> Any:
    """Whether the conversation of the turn in `turn` ever had a tool round: if not, the
    turn's `tool_calls_for` is answered without asking."""
    return (
        select(_c.has_tool_rounds)
        .where(_c.id == turn.c.conversation_id)
        .correlate(turn)
        .scalar_subquery()
        .label("has_tool_rounds")
    )


def _accept_claimed_reading() -> Any:
    """`accept_claimed`, and when it claims the turn, the turn's reads too: the
    channel's settings rows (`channel_settings`) and the history window's ids, in one
    statement and round trip.

    The reads see the statement's snapshot, before its own message: the window is the
    newest `window_limit` (the history limit less one) messages before it, and the
    caller adds the message. A turn claimed here had nothing of its conversation
    pending or running in that snapshot, so every earlier answer is in it."""
    accepted = _pg_accept_statement(claiming=True).subquery("accepted")
    window = _window_ids(accepted, limit="window_limit")
    reads = _reads_once(
        select(
            *accepted.c,
            case((accepted.c.status == _RUNNING, window)).label("window_ids"),
            _has_tool_rounds(accepted),
        )
    )
    settings = _CHANNEL_SETTINGS.subquery("turn_settings")
    return select(*reads.c, *settings.c).select_from(
        reads.outerjoin(settings, reads.c.status == _RUNNING)
    )


def _claim_next_reading() -> Any:
    """`claim_next`, and when it claims a turn, that turn's reads too: its question
    (the columns of a stored message: a process answering a turn another accepted has
    not seen it), the history window's ids up to it and the channel's settings rows,
    in one statement and round trip.

    One row per settings row (at least one) when a turn was claimed; none otherwise."""
    claimed = _CLAIM_NEXT.cte("claimed")
    window = _window_ids(claimed, limit="limit", up_to=claimed.c.user_message_id)
    question = MESSAGES.alias("question")
    reads = _reads_once(
        select(
            *claimed.c,
            *(
                question.c[column.key].label(f"question_{column.key}")
                for column in _MESSAGE_COLUMNS
            ),
            window.label("window_ids"),
            _has_tool_rounds(claimed),
        ).select_from(claimed.outerjoin(question, question.c.id == claimed.c.user_message_id))
    )
    settings = _CHANNEL_SETTINGS.subquery("turn_settings")
    return select(*reads.c, *settings.c).select_from(reads.outerjoin(settings, true()))


_MESSAGES_BY_ID_ARRAY = select(*_MESSAGE_COLUMNS).where(_m.id == any_(_id_array("ids")))

STATEMENTS: dict[str, dict[str, HotStatement]] = {
    SQLITE: {
        "insert_turn": HotStatement(_insert_turn(sqlite), TURN_COLUMNS, (SQLITE,)),
        "create_conversation": HotStatement(
            _create_conversation(sqlite), CONVERSATION_COLUMNS, (SQLITE,)
        ),
    },
    POSTGRESQL: {
        "insert_turn": HotStatement(_insert_turn(postgresql), TURN_COLUMNS, (POSTGRESQL,)),
        "create_conversation": HotStatement(
            _create_conversation(postgresql), CONVERSATION_COLUMNS, (POSTGRESQL,)
        ),
    },
}

_SHARED: dict[str, HotStatement] = {
    "conversation_id": HotStatement(
        select(_c.id).where(
            _c.platform == bindparam("platform"),
            _c.workspace == bindparam("workspace"),
            _c.channel == bindparam("channel"),
            _c.thread == bindparam("thread"),
        ),
        None,
        BOTH,
    ),
    "insert_user_message": HotStatement(_INSERT_MESSAGE, USER_MESSAGE_COLUMNS, BOTH),
    "insert_answer": HotStatement(_INSERT_MESSAGE, ANSWER_COLUMNS, BOTH),
    "link_turn": HotStatement(_LINK_TURN, None, BOTH),
    # A redelivery asks before it is read any further (adapters/slack/app.py).
    "message_taken": HotStatement(
        select(_t.id).where(
            _t.platform == bindparam("platform"), _t.message_key == bindparam("message_key")
        ),
        None,
        BOTH,
    ),
    "claim_next": HotStatement(_CLAIM_NEXT, None, BOTH),
    "conversation_key": HotStatement(_CONVERSATION_KEY, None, BOTH),
    "finish_held_turn": HotStatement(_FINISH_HELD_TURN, None, BOTH),
    "finish_turn": HotStatement(_FINISH_TURN, None, BOTH),
    "insert_usage": HotStatement(USAGE.insert(), USAGE_FIELDS, BOTH),
    "set_reply_ref": HotStatement(_SET_REPLY_REF, None, BOTH),
    "channel_settings": HotStatement(_CHANNEL_SETTINGS, None, BOTH),
    "history_window": HotStatement(_HISTORY_WINDOW, None, BOTH),
    "recent_messages": HotStatement(_RECENT_MESSAGES, None, (SQLITE,)),
    "history_ids": HotStatement(_history_statement(from_id=True), None, (POSTGRESQL,)),
    "reset_after": HotStatement(_RESET_AFTER, None, (SQLITE,)),
    "renew_claim": HotStatement(_RENEW_CLAIM, None, (SQLITE,)),
    # A start's sweep and the tool rounds of the history: on a SQLite file the first
    # answer needs no SQLAlchemy (botservice.storage.sqlite_file).
    "release_all": HotStatement(_RELEASE_ALL, None, (SQLITE,)),
    "release_held": HotStatement(_RELEASE_HELD, None, (SQLITE,)),
    "release_stale": HotStatement(_RELEASE_STALE, None, (SQLITE,)),
    "waiting_conversations": HotStatement(_WAITING_CONVERSATIONS, None, (SQLITE,)),
    "tool_calls_for": HotStatement(_CALLS_FOR_MESSAGES_JSON, None, (SQLITE,)),
    # Every turn asks it: through SQLAlchemy it kept a second pool of connections open
    # in each process beside the hot path's (issue 8's connection count).
    "tool_calls_for_array": HotStatement(_CALLS_FOR_MESSAGES_ARRAY, None, (POSTGRESQL,)),
    "renew_claims": HotStatement(_RENEW_CLAIMS_ARRAY, None, (POSTGRESQL,)),
    "messages_by_ids": HotStatement(_MESSAGES_BY_ID_ARRAY, None, (POSTGRESQL,)),
    "accept": HotStatement(_pg_accept_statement(), None, (POSTGRESQL,)),
    "accept_claimed": HotStatement(_pg_accept_statement(claiming=True), None, (POSTGRESQL,)),
    "accept_claimed_reading": HotStatement(_accept_claimed_reading(), None, (POSTGRESQL,)),
    "claim_next_reading": HotStatement(_claim_next_reading(), None, (POSTGRESQL,)),
    "answer": HotStatement(_answer_statement(_FINISH_TURN), None, (POSTGRESQL,)),
    "answer_with_usage": HotStatement(
        _answer_statement(_FINISH_TURN, with_usage=True), None, (POSTGRESQL,)
    ),
    "held_answer": HotStatement(_answer_statement(_FINISH_HELD_TURN), None, (POSTGRESQL,)),
    "held_answer_with_usage": HotStatement(
        _answer_statement(_FINISH_HELD_TURN, with_usage=True), None, (POSTGRESQL,)
    ),
}
for _name, _entry in _SHARED.items():
    for _dialect in _entry.dialects:
        STATEMENTS[_dialect][_name] = _entry

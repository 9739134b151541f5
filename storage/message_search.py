"""Searching a channel's stored messages, and paging through a conversation's older ones
(`botservice.core.message_search.MessageSearch`).

The index lives beside `messages` (migration 0007_message_search):
- SQLite: an FTS5 table over `messages.text` with external content (the text is not
  stored twice) kept in step by triggers on insert, update of the text, and delete;
  every deletion (forget-me, expiry, a deleted platform message, a cascade from a
  conversation) goes through `DELETE FROM messages`, so it leaves the index too.
- PostgreSQL: a GIN index on the expression `to_tsvector('simple', text)`. Nothing
  to keep in step: a deleted row is gone from the index with the row.

Both use language-neutral tokenizers (teams write in many languages) and match each
term as a word or the start of one, which covers most plural and verb forms without
a stemmer. Every search joins the hits back to `messages` and `conversations`, so
only existing messages of the asked channel are ever returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, column, func, literal_column, select, table, text

from botservice.core.message_search import ChannelRef, FoundMessage
from botservice.core.ports import StoredMessage
from botservice.storage.base import _MESSAGE_COLUMNS, StoreBase, _c, _m, _stored_message, _t
from botservice.storage.tables import CONVERSATIONS, MESSAGES

# The SQLite index and the tables FTS5 keeps for it (schema comparisons skip them).
FTS_TABLE = "messages_fts"
FTS_SHADOW_SUFFIXES = ("", "_data", "_idx", "_docsize", "_config", "_content")
# The PostgreSQL expression index.
PG_SEARCH_INDEX = "ix_messages_text_search"
# Must be the indexed expression exactly, or PostgreSQL will not use the index.
_PG_VECTOR = "to_tsvector('simple'::regconfig, messages.text)"

_FTS = table(FTS_TABLE, column("rowid"))


def is_search_index(name: str | None) -> bool:
    """Whether a table or index name belongs to the message search index."""
    if name is None:
        return False
    return name == PG_SEARCH_INDEX or name in {FTS_TABLE + s for s in FTS_SHADOW_SUFFIXES}


def _fts_query(terms: Sequence[str], *, match_all: bool) -> str:
    # Terms are letters and digits only (`search_terms`); quoting makes each a string
    # in FTS5's syntax whatever it spells (AND, OR, NEAR), and `*` a prefix match.
    joiner = " AND " if match_all else " OR "
    return joiner.join(f'"{term}"*' for term in terms)


def _pg_query(terms: Sequence[str], *, match_all: bool) -> str:
    joiner = " & " if match_all else " | "
    return joiner.join(f"{term}:*" for term in terms)


def _filters(
    channel: ChannelRef,
    message_id: Any,
    created_at: Any,
    since: datetime | None,
    exclude_turn_id: int | None,
) -> list[Any]:
    where: list[Any] = [
        _c.platform == channel.platform,
        _c.workspace == channel.workspace,
        _c.channel == channel.channel,
    ]
    if since is not None:
        where.append(created_at >= since)
    if exclude_turn_id is not None:
        question = select(_t.user_message_id).where(
            _t.id == exclude_turn_id, _t.user_message_id.is_not(None)
        )
        where.append(message_id.not_in(question))
    return where


def _sqlite_search(
    channel: ChannelRef, limit: int, since: datetime | None, exclude_turn_id: int | None
) -> Any:
    return (
        select(_m.id, _c.thread, _m.role, _m.author_name, _m.text, _m.created_at)
        .select_from(
            _FTS.join(MESSAGES, _m.id == _FTS.c.rowid).join(
                CONVERSATIONS, _c.id == _m.conversation_id
            )
        )
        .where(
            text(f"{FTS_TABLE} MATCH :query"),
            *_filters(channel, _m.id, _m.created_at, since, exclude_turn_id),
        )
        # bm25: lower is better.
        .order_by(func.bm25(literal_column(FTS_TABLE)), _m.id.desc())
        .limit(limit)
    )


def _pg_search(
    channel: ChannelRef, limit: int, since: datetime | None, exclude_turn_id: int | None
) -> Any:
    tsquery = "to_tsquery('simple'::regconfig, :query)"
    # The matches through the GIN index first (materialized, with every column the
    # answer needs), then the channel's among them, ranked. Left to itself the planner
    # may start from the channel's rows and recompute to_tsvector for each (tens of
    # microseconds a message), which it takes to be cheap; and a generic plan (asyncpg
    # prepares statements) may scan all messages to join them back.
    hits = (
        select(_m.id, _m.conversation_id, _m.role, _m.author_name, _m.text, _m.created_at)
        .where(text(f"{_PG_VECTOR} @@ {tsquery}"))
        .cte("hits")
        .prefix_with("MATERIALIZED")
    )
    found = hits.c
    return (
        select(found.id, _c.thread, found.role, found.author_name, found.text, found.created_at)
        .select_from(hits.join(CONVERSATIONS, _c.id == found.conversation_id))
        .where(*_filters(channel, found.id, found.created_at, since, exclude_turn_id))
        .order_by(
            text(f"ts_rank(to_tsvector('simple'::regconfig, hits.text), {tsquery}) DESC"),
            found.id.desc(),
        )
        .limit(limit)
    )


class SqlMessageSearch(StoreBase):
    """A channel's messages by their words; a conversation's older messages."""

    async def search_channel(
        self,
        channel: ChannelRef,
        terms: Sequence[str],
        *,
        match_all: bool,
        limit: int,
        since: datetime | None = None,
        exclude_turn_id: int | None = None,
    ) -> list[FoundMessage]:
        if not terms or limit <= 0:
            return []
        if self._shared:
            statement = _pg_search(channel, limit, since, exclude_turn_id)
            parameters = {"query": _pg_query(terms, match_all=match_all)}
        else:
            statement = _sqlite_search(channel, limit, since, exclude_turn_id)
            parameters = {"query": _fts_query(terms, match_all=match_all)}

        def work(connection: Connection) -> list[FoundMessage]:
            return [
                FoundMessage(
                    message_id=row[0],
                    thread=row[1],
                    role=row[2],
                    author_name=row[3],
                    text=row[4],
                    created_at=row[5],
                )
                for row in connection.execute(statement, parameters)
            ]

        return await self._read(work)

    async def earlier_messages(
        self, conversation_id: int, *, before_turn_id: int, after_message_id: int, limit: int
    ) -> list[StoredMessage]:
        if limit <= 0:
            return []
        question = (
            select(_t.user_message_id)
            .where(_t.id == before_turn_id, _t.conversation_id == conversation_id)
            .scalar_subquery()
        )
        reset = func.coalesce(
            select(_c.reset_after_message_id).where(_c.id == conversation_id).scalar_subquery(),
            0,
        )
        statement = (
            select(*_MESSAGE_COLUMNS)
            .where(
                _m.conversation_id == conversation_id,
                _m.id > after_message_id,
                _m.id > reset,
                # No question (forgotten, or another conversation's turn): nothing.
                _m.id < question,
            )
            .order_by(_m.id)
            .limit(limit)
        )

        def work(connection: Connection) -> list[StoredMessage]:
            return [_stored_message(row) for row in connection.execute(statement)]

        return await self._read(work)


__all__ = ["SqlMessageSearch", "is_search_index"]

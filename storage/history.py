"""History: the messages of a conversation, read for prompts, heard, reset, deleted."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    Select,
    bindparam,
    delete,
    func,
    literal_column,
    or_,
    select,
    tuple_,
    update,
)

from botservice.core.events import Attachment, ConversationKey
from botservice.core.ports import (
    StoredMessage,
)
from botservice.storage.base import (
    _MESSAGE_COLUMNS,
    StoreBase,
    _c,
    _clean_text,
    _key_filter,
    _m,
    _stored_message,
    _t,
)
from botservice.storage.tables import (
    CONVERSATIONS,
    MESSAGES,
    TURNS,
    utcnow,
)


def _history_statement(*columns: Any, from_id: bool = False) -> Select[Any]:
    """The window of a conversation's history: ids and what they answer (or `columns`).
    With `from_id` (PostgreSQL's hot path), only ids from the parameter `from_id` up
    (the caller's lower bound for a window it has seen), found through the
    (conversation_id, id) index whatever plan the database chose (`conversation_rows`)."""
    conversation_id = bindparam("conversation_id", type_=Integer)
    reset = func.coalesce(
        select(_c.reset_after_message_id).where(_c.id == conversation_id).scalar_subquery(),
        0,
    )
    up_to = bindparam("up_to", type_=Integer)
    if from_id:
        rows, order = conversation_rows(conversation_id, bindparam("from_id", type_=Integer))
    else:
        rows, order = (_m.conversation_id == conversation_id,), (_m.id.desc(),)
    return (
        select(*(columns or (_m.id, _m.reply_to_id)))
        .where(
            *rows,
            # `id > reset` lets the (conversation_id, id) index bound the scan; the
            # coalesce also drops an answer, stored after a reset, to a question before it.
            _m.id > reset,
            func.coalesce(_m.reply_to_id, _m.id) > reset,
            or_(_m.id <= up_to, _m.reply_to_id <= up_to),
        )
        .order_by(*order)
        .limit(bindparam("limit", type_=Integer))
    )


def conversation_rows(
    conversation_id: Any, from_id: Any
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The conditions and order, newest first, of a conversation's messages from the id
    `from_id` up, said so that only the (conversation_id, id) index can serve them.

    As `conversation_id = :c AND id >= :from ORDER BY id DESC`, PostgreSQL's generic plan
    for a prepared statement (which asyncpg's are, after five runs on a connection)
    may walk the primary key backwards from the newest message of any conversation,
    reading every message stored since the window's start: 9,900 rows and 2.9 ms for
    a window in a table where a busy conversation wrote 10,000 meanwhile. As a range of
    (conversation_id, id) rows, ordered by both, the primary key cannot give that
    order: 0.4 ms there, however busy the others."""
    row = tuple_(_m.conversation_id, _m.id)
    conditions = (
        row >= tuple_(conversation_id, from_id),
        row < tuple_(conversation_id + 1, literal_column("0", Integer())),
    )
    return conditions, (_m.conversation_id.desc(), _m.id.desc())


# Hot statements are built once, so SQLAlchemy reuses their compiled form.
_HISTORY_IDS = _history_statement()
_MESSAGES_BY_IDS = select(*_MESSAGE_COLUMNS).where(_m.id.in_(bindparam("ids", expanding=True)))
_MESSAGE_BY_ID = select(*_MESSAGE_COLUMNS).where(_m.id == bindparam("message_id"))
_AUDIO_BY_ID = select(_m.audio).where(_m.id == bindparam("message_id"))
_HEARD = (
    update(MESSAGES)
    .where(_m.id == bindparam("b_message_id"))
    .values(text=bindparam("b_text"), tokens=bindparam("b_tokens"), audio=None)
)


class SqlHistoryStore(StoreBase):
    """The messages of a conversation (`botservice.core.ports.HistoryStore`)."""

    # --- messages --------------------------------------------------------------

    async def history(
        self, conversation_id: int, *, up_to_message_id: int, limit: int
    ) -> list[StoredMessage]:
        if limit <= 0:
            return []
        if self._hot is not None:
            return await self._hot.history(
                conversation_id, up_to_message_id=up_to_message_id, limit=limit
            )
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

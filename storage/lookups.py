"""Lookups for the adapters: whether a conversation exists, which thread holds a message."""

from __future__ import annotations

from sqlalchemy import (
    Connection,
    select,
    update,
)

from botservice.core.events import ConversationKey
from botservice.storage.base import (
    _CONVERSATION_ID,
    StoreBase,
    _c,
    _m,
    _t,
)
from botservice.storage.tables import (
    MESSAGES,
    TURNS,
)


class SqlLookups(StoreBase):
    """What adapters look up (`botservice.core.ports.Lookups`, with the channel settings
    and the deletions in `SqlForgetting`)."""

    async def has_conversation(self, key: ConversationKey) -> bool:
        if self._pg_hot is not None:
            return await self._pg_hot.has_conversation(key)
        parameters = {
            "platform": key.platform,
            "workspace": key.workspace,
            "channel": key.channel,
            "thread": key.thread,
        }

        def work(connection: Connection) -> bool:
            return connection.execute(_CONVERSATION_ID, parameters).first() is not None

        return await self._read(work)

    async def was_taken(self, platform: str, message_key: str) -> bool:
        if self._hot is not None:
            return await self._hot.was_taken(platform, message_key)
        statement = select(_t.id).where(_t.platform == platform, _t.message_key == message_key)
        return await self._read(
            lambda connection: connection.execute(statement).first() is not None
        )

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

    async def mark_answer_unspoken(self, turn_id: int, text: str) -> bool:
        answered = select(_t.user_message_id).where(_t.id == turn_id).scalar_subquery()
        statement = (
            update(MESSAGES)
            .where(_m.role == "assistant", _m.reply_to_id == answered)
            .values(text=text, status="interrupted")
        )

        def work(connection: Connection) -> bool:
            return connection.execute(statement).rowcount > 0

        changed = await self._write(work)
        # The answer's text changed: a copy kept by id (PostgreSQL's history) would not.
        self._message_cache.clear()
        return changed

"""Token usage: what the model spent answering a person or a channel (daily budgets)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    func,
    select,
)

from botservice.storage.base import (
    StoreBase,
    _c,
    _m,
)
from botservice.storage.tables import (
    CONVERSATIONS,
    MESSAGES,
)


class SqlUsageStore(StoreBase):
    """Tokens spent, for the daily budgets (`botservice.core.ports.TokenUsage`)."""

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


def _spent(question_tokens: Any) -> Any:
    """Tokens an answer cost: the provider's usage, else the local counts of the answer and
    its question (endpoints like Ollama may report no usage)."""
    reported = _m.prompt_tokens + _m.completion_tokens
    counted = _m.tokens + func.coalesce(question_tokens, 0)
    return func.coalesce(func.sum(func.coalesce(reported, counted)), 0)

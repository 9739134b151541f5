"""Feedback queries (`botservice.core.feedback.FeedbackStore`), mixed into `SqlStore`.

The `feedback` table (migration 0004) keeps one row per person and answered
turn: a later click by the same person on the same answer replaces the verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    Column,
    Connection,
    Delete,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    UniqueConstraint,
    and_,
    case,
    delete,
    func,
    select,
)

from botservice.core.feedback import DownVote, FeedbackClick, FeedbackCount, FeedbackSummary
from botservice.storage.tables import (
    CONVERSATIONS,
    MESSAGES,
    TURNS,
    UTCDateTime,
    metadata,
    utcnow,
)

T = TypeVar("T")

# In the tables' shared metadata, so the migrations are checked against it too.
FEEDBACK = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("turn_id", Integer, ForeignKey(TURNS.c.id, ondelete="CASCADE"), nullable=False),
    Column("user_id", String, nullable=False),
    Column("verdict", String, nullable=False),  # 'up' | 'down'
    Column("answer_ref", String, nullable=False, default="", server_default=""),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("turn_id", "user_id", name="uq_feedback_turn_user"),
    Index("ix_feedback_created_at", "created_at"),
)
_f, _t, _c, _m = FEEDBACK.c, TURNS.c, CONVERSATIONS.c, MESSAGES.c


def forget_feedback(platform: str, user_id: str) -> Delete:
    """A person's clicks on `platform`: deleted with the rest by `forget_user`."""
    on_platform = select(_t.id).where(_t.platform == platform)
    return delete(FEEDBACK).where(_f.user_id == user_id, _f.turn_id.in_(on_platform))


class FeedbackQueries:
    """Needs the store's `_write`, `_read` and dialect-specific `_insert`."""

    if TYPE_CHECKING:
        _insert: Callable[..., Any]

        async def _write(self, work: Callable[[Connection], T]) -> T: ...

        async def _read(self, work: Callable[[Connection], T]) -> T: ...

    async def record_feedback(self, click: FeedbackClick) -> bool:
        # Only a turn answered in the workspace and channel the click came from.
        turn = (
            select(_t.id)
            .join(CONVERSATIONS, _c.id == _t.conversation_id)
            .where(
                _t.id == click.turn_id,
                _c.platform == click.platform,
                _c.workspace == click.workspace,
                _c.channel == click.channel,
            )
        )
        values = {
            "turn_id": click.turn_id,
            "user_id": click.user_id,
            "verdict": click.verdict,
            "answer_ref": click.answer_ref,
            "created_at": utcnow(),
        }
        upsert = self._insert(FEEDBACK).values(**values)
        upsert = upsert.on_conflict_do_update(
            index_elements=[_f.turn_id, _f.user_id],
            set_={
                "verdict": upsert.excluded.verdict,
                "answer_ref": upsert.excluded.answer_ref,
                "created_at": upsert.excluded.created_at,
            },
        )

        def work(connection: Connection) -> bool:
            if connection.execute(turn).first() is None:
                return False
            connection.execute(upsert)
            return True

        return await self._write(work)

    async def feedback_summary(self, since: datetime, *, latest: int = 10) -> FeedbackSummary:
        # The answer's model: the assistant message that replies to the turn's message.
        answer = and_(_m.reply_to_id == _t.user_message_id, _m.role == "assistant")
        model = func.coalesce(_m.model, "")
        counts = (
            select(
                _c.platform,
                _c.workspace,
                _c.channel,
                model.label("model"),
                func.sum(case((_f.verdict == "up", 1), else_=0)).label("up"),
                func.sum(case((_f.verdict == "down", 1), else_=0)).label("down"),
            )
            .select_from(FEEDBACK)
            .join(TURNS, _t.id == _f.turn_id)
            .join(CONVERSATIONS, _c.id == _t.conversation_id)
            .outerjoin(MESSAGES, answer)
            .where(_f.created_at >= since)
            .group_by(_c.platform, _c.workspace, _c.channel, model)
            .order_by(_c.platform, _c.workspace, _c.channel, model)
        )
        downs = (
            select(_f.turn_id, _c.platform, _c.channel, _f.answer_ref, _f.user_id, _f.created_at)
            .join(TURNS, _t.id == _f.turn_id)
            .join(CONVERSATIONS, _c.id == _t.conversation_id)
            .where(_f.created_at >= since, _f.verdict == "down")
            .order_by(_f.created_at.desc(), _f.id.desc())
            .limit(latest)
        )

        def work(connection: Connection) -> FeedbackSummary:
            return FeedbackSummary(
                counts=[
                    FeedbackCount(r.platform, r.workspace, r.channel, r.model, r.up, r.down)
                    for r in connection.execute(counts)
                ],
                latest_down=[
                    DownVote(
                        r.turn_id, r.platform, r.channel, r.answer_ref, r.user_id, r.created_at
                    )
                    for r in connection.execute(downs)
                ],
            )

        return await self._read(work)

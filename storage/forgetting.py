"""Forgetting: a person (forget-me), a deleted platform message, an uninstalled workspace."""

from __future__ import annotations

import logging

from sqlalchemy import (
    Connection,
    case,
    delete,
    select,
    update,
)

from botservice.core.ports import (
    ForgetCounts,
)
from botservice.storage.base import (
    _UNFINISHED,
    StoreBase,
    _a,
    _c,
    _m,
    _s,
    _t,
)
from botservice.storage.feedback import forget_feedback
from botservice.storage.tables import (
    CHANNEL_SETTINGS,
    CONVERSATIONS,
    MESSAGES,
    SETTING_CHANGES,
    TURNS,
    VOICE_OPT_OUTS,
    utcnow,
)
from botservice.storage.tool_rounds import forget_confirmations

log = logging.getLogger(__name__)

# Who changed a setting, once that person asked to be forgotten.
FORGOTTEN_USER = "(forgotten)"


class SqlForgetting(StoreBase):
    """Deleting what a person, a platform or a workspace asks to be forgotten."""

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
                # One being answered right now too (by a worker, or aloud by a realtime
                # voice session: 'spoken'): its answer is then not saved.
                update(TURNS)
                .where(_t.status.in_((*_UNFINISHED, "spoken")), _t.user_message_id.in_(authored))
                .values(status="failed", finished_at=now, alive_until=None)
            )
            # Answers first: they are found through the questions.
            answered = connection.execute(delete(MESSAGES).where(_m.id.in_(answers))).rowcount
            messages = connection.execute(delete(MESSAGES).where(_m.id.in_(authored))).rowcount
            connection.execute(forget_feedback(platform, user_id))
            # Their tool calls went with their messages (the foreign key cascades).
            for statement in forget_confirmations(platform, user_id, FORGOTTEN_USER):
                connection.execute(statement)
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
            # Their `/voice ignore-me` names them: it goes too (they are heard again).
            connection.execute(
                delete(VOICE_OPT_OUTS).where(
                    VOICE_OPT_OUTS.c.platform == platform, VOICE_OPT_OUTS.c.user_id == user_id
                )
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
            connection.execute(
                delete(VOICE_OPT_OUTS).where(
                    VOICE_OPT_OUTS.c.platform == platform, VOICE_OPT_OUTS.c.workspace == workspace
                )
            )
            return gone

        gone = await self._write(work)
        self._message_cache.clear()
        self._settings_cache.clear()
        log.info("forgot workspace %s on %s: %d conversations", workspace, platform, gone)
        return gone

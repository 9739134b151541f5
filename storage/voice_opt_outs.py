"""Members who opted out of being listened to in a server's voice channels."""

from __future__ import annotations

import logging

from sqlalchemy import Connection, delete, select

from botservice.storage.base import StoreBase
from botservice.storage.tables import VOICE_OPT_OUTS, utcnow

log = logging.getLogger(__name__)

_o = VOICE_OPT_OUTS.c


class SqlVoiceOptOuts(StoreBase):
    """`/voice ignore-me`, stored (`botservice.core.ports.Lookups.voice_opt_outs`)."""

    async def voice_opt_outs(self, platform: str, workspace: str) -> frozenset[str]:
        statement = select(_o.user_id).where(_o.platform == platform, _o.workspace == workspace)

        def work(connection: Connection) -> frozenset[str]:
            return frozenset(str(row[0]) for row in connection.execute(statement))

        return await self._read(work)

    async def set_voice_opt_out(
        self, platform: str, workspace: str, user_id: str, *, opted_out: bool
    ) -> None:
        where = (_o.platform == platform, _o.workspace == workspace, _o.user_id == user_id)

        def work(connection: Connection) -> None:
            if opted_out:
                connection.execute(
                    self._insert(VOICE_OPT_OUTS)
                    .values(
                        platform=platform, workspace=workspace, user_id=user_id, created_at=utcnow()
                    )
                    .on_conflict_do_nothing()
                )
            else:
                connection.execute(delete(VOICE_OPT_OUTS).where(*where))

        await self._write(work)

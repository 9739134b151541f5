"""Channel settings: the effective settings of a channel, changes, and their audit trail."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    or_,
    select,
)

from botservice.core.ports import (
    ChannelSettings,
    SettingChange,
    SettingField,
)
from botservice.core.voice_settings import VOICE_MODES
from botservice.storage.base import (
    _SETTING_FIELDS,
    StoreBase,
    _a,
    _rows_of,
    _s,
)
from botservice.storage.tables import (
    CHANNEL_SETTINGS,
    SETTING_CHANGES,
    utcnow,
)

_CHANNEL_SETTINGS = select(_s.channel, *(_s[field] for field in _SETTING_FIELDS)).where(
    _s.platform == bindparam("platform"),
    _s.workspace == bindparam("workspace"),
    or_(_s.channel == bindparam("channel"), _s.channel == ""),
)


class SqlChannelSettingsStore(StoreBase):
    """Channel settings and who changed them (`botservice.core.ports.ChannelSettingsStore`)."""

    # --- channel settings ----------------------------------------------------------

    async def channel_settings(
        self, platform: str, workspace: str, channel: str, *, for_message: int | None = None
    ) -> ChannelSettings:
        if self._hot is not None:
            return await self._hot.channel_settings(
                platform, workspace, channel, for_message=for_message
            )
        key = (platform, workspace, channel)
        if (cached := self._settings_cache.get(key)) is not None:
            return cached
        parameters = {"platform": platform, "workspace": workspace, "channel": channel}
        rows = await self._read(_rows_of(_CHANNEL_SETTINGS, parameters))
        # The channel's own row first, the workspace row ('') after it.
        rows.sort(key=lambda row: row[0] != channel)
        values: dict[str, Any] = dict.fromkeys(_SETTING_FIELDS)
        for row in rows:
            for index, field in enumerate(_SETTING_FIELDS, start=1):
                if values[field] is None:
                    values[field] = row[index]
        found = ChannelSettings(**values)
        if not self._shared:
            self._settings_cache[key] = found
        return found

    async def change_setting(
        self,
        platform: str,
        workspace: str,
        channel: str,
        *,
        field: SettingField,
        value: str | int | None,
        changed_by: str,
    ) -> None:
        if field not in _SETTING_FIELDS:
            raise ValueError(f"unknown channel setting {field!r}")
        stored = _setting_value(field, value)
        now = utcnow()
        where = (_s.platform == platform, _s.workspace == workspace, _s.channel == channel)
        upsert = self._insert(CHANNEL_SETTINGS).values(
            platform=platform,
            workspace=workspace,
            channel=channel,
            updated_by=changed_by,
            updated_at=now,
            **{field: stored},
        )
        upsert = upsert.on_conflict_do_update(
            index_elements=[_s.platform, _s.workspace, _s.channel],
            set_={field: stored, "updated_by": changed_by, "updated_at": now},
        )

        def work(connection: Connection) -> None:
            old = connection.execute(
                select(CHANNEL_SETTINGS.c[field]).where(*where)
            ).scalar_one_or_none()
            connection.execute(upsert)
            connection.execute(
                SETTING_CHANGES.insert().values(
                    platform=platform,
                    workspace=workspace,
                    channel=channel,
                    field=field,
                    old_value=_audited(old),
                    new_value=_audited(stored),
                    changed_by=changed_by,
                    changed_at=now,
                )
            )

        try:
            await self._write(work)
        finally:
            self._settings_cache.clear()

    async def setting_changes(
        self, platform: str, workspace: str, channel: str
    ) -> list[SettingChange]:
        statement = (
            select(_a.field, _a.old_value, _a.new_value, _a.changed_by, _a.changed_at)
            .where(_a.platform == platform, _a.workspace == workspace, _a.channel == channel)
            .order_by(_a.id)
        )
        rows = await self._read(lambda connection: connection.execute(statement).all())
        return [
            SettingChange(
                field=row[0], old=row[1], new=row[2], changed_by=row[3], changed_at=row[4]
            )
            for row in rows
        ]


def _setting_value(field: SettingField, value: str | int | None) -> str | int | None:
    if value is None:
        return None
    if field == "retention_days":
        days = int(value)
        if days < 0:
            raise ValueError("retention_days cannot be negative")
        return days
    if field == "background":
        if not isinstance(value, bool):
            raise ValueError("background is on (True), off (False) or the default (None)")
        return value
    if field == "voice_mode" and value not in VOICE_MODES:
        raise ValueError(f"voice_mode is one of {', '.join(VOICE_MODES)} or the default (None)")
    return str(value)


def _audited(value: object) -> str | None:
    """A setting's value as the audit trail keeps it: text, and on/off for switches."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)

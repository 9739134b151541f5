"""A server's voice mode as stored: on the workspace's row of the channel settings, so
every channel of the server reads it and another store on the same database too;
audited in `setting_changes`; anonymous after forget-me; gone with the workspace. On
SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from botservice.storage.forgetting import FORGOTTEN_USER
from botservice.storage.repository import SqlStore
from tests.db import StoreFactory

SERVER = ""  # the workspace row


async def choose(store: SqlStore, guild: str, mode: str | None, *, by: str = "alice") -> None:
    await store.change_setting(
        "discord", guild, SERVER, field="voice_mode", value=mode, changed_by=by
    )


async def test_a_server_s_mode_is_read_in_every_channel_and_by_another_store(
    store: SqlStore, make_store: StoreFactory
) -> None:
    await store.change_setting(
        "discord", "guild-1", "voice-1", field="speech_voice", value="nova", changed_by="alice"
    )
    await choose(store, "guild-1", "realtime")

    another_process = await make_store()

    assert (await another_process.channel_settings("discord", "guild-1", SERVER)).voice_mode == (
        "realtime"
    )
    in_a_channel = await another_process.channel_settings("discord", "guild-1", "voice-1")
    assert (in_a_channel.voice_mode, in_a_channel.speech_voice) == ("realtime", "nova")
    assert (await another_process.channel_settings("discord", "guild-2", SERVER)).voice_mode is None


async def test_every_change_is_audited_with_who_when_old_and_new(store: SqlStore) -> None:
    await choose(store, "guild-1", "realtime", by="alice")
    await choose(store, "guild-1", "pipeline", by="carol")
    await choose(store, "guild-1", None, by="alice")

    changes = await store.setting_changes("discord", "guild-1", SERVER)

    assert [(c.field, c.old, c.new, c.changed_by) for c in changes] == [
        ("voice_mode", None, "realtime", "alice"),
        ("voice_mode", "realtime", "pipeline", "carol"),
        ("voice_mode", "pipeline", None, "alice"),
    ]
    assert all(c.changed_at is not None for c in changes)
    assert (await store.channel_settings("discord", "guild-1", SERVER)).voice_mode is None


async def test_only_the_two_modes_are_stored(store: SqlStore) -> None:
    with pytest.raises(ValueError, match="voice_mode is one of pipeline, realtime"):
        await choose(store, "guild-1", "shouting")

    assert await store.setting_changes("discord", "guild-1", SERVER) == []


async def test_forget_me_keeps_the_mode_but_not_the_name(store: SqlStore) -> None:
    await choose(store, "guild-1", "realtime", by="alice")

    await store.forget_user("discord", "alice")

    assert (await store.channel_settings("discord", "guild-1", SERVER)).voice_mode == "realtime"
    [change] = await store.setting_changes("discord", "guild-1", SERVER)
    assert change.changed_by == FORGOTTEN_USER


async def test_an_uninstalled_workspace_loses_its_mode_and_its_history(store: SqlStore) -> None:
    await choose(store, "guild-1", "realtime")
    await choose(store, "guild-2", "realtime")

    await store.forget_workspace("discord", "guild-1")

    assert (await store.channel_settings("discord", "guild-1", SERVER)).voice_mode is None
    assert await store.setting_changes("discord", "guild-1", SERVER) == []
    assert (await store.channel_settings("discord", "guild-2", SERVER)).voice_mode == "realtime"

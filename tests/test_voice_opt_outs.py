"""Stored `/voice ignore-me`: per platform, server and member; read by any store on the
same database; withdrawn, forgotten with the person (forget-me) or the workspace."""

from __future__ import annotations

from botservice.storage.repository import SqlStore
from tests.db import StoreFactory


async def test_an_opt_out_is_read_by_another_store_on_the_same_database(
    store: SqlStore, make_store: StoreFactory
) -> None:
    await store.set_voice_opt_out("discord", "guild-1", "bob", opted_out=True)
    await store.set_voice_opt_out("discord", "guild-1", "bob", opted_out=True)  # twice: one

    another_process = await make_store()

    assert await another_process.voice_opt_outs("discord", "guild-1") == {"bob"}
    assert await another_process.voice_opt_outs("discord", "guild-2") == frozenset()
    assert await another_process.voice_opt_outs("slack", "guild-1") == frozenset()


async def test_withdrawing_an_opt_out(store: SqlStore) -> None:
    await store.set_voice_opt_out("discord", "guild-1", "bob", opted_out=True)
    await store.set_voice_opt_out("discord", "guild-1", "carol", opted_out=True)

    await store.set_voice_opt_out("discord", "guild-1", "bob", opted_out=False)
    await store.set_voice_opt_out("discord", "guild-1", "dave", opted_out=False)  # never was

    assert await store.voice_opt_outs("discord", "guild-1") == {"carol"}


async def test_forget_me_removes_the_person_s_opt_outs_in_every_server(store: SqlStore) -> None:
    for guild in ("guild-1", "guild-2"):
        await store.set_voice_opt_out("discord", guild, "bob", opted_out=True)
        await store.set_voice_opt_out("discord", guild, "carol", opted_out=True)

    await store.forget_user("discord", "bob")

    assert await store.voice_opt_outs("discord", "guild-1") == {"carol"}
    assert await store.voice_opt_outs("discord", "guild-2") == {"carol"}


async def test_an_uninstalled_workspace_loses_its_opt_outs(store: SqlStore) -> None:
    await store.set_voice_opt_out("discord", "guild-1", "bob", opted_out=True)
    await store.set_voice_opt_out("discord", "guild-2", "bob", opted_out=True)

    await store.forget_workspace("discord", "guild-1")

    assert await store.voice_opt_outs("discord", "guild-1") == frozenset()
    assert await store.voice_opt_outs("discord", "guild-2") == {"bob"}

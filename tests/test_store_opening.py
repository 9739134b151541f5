"""How a running bot opens its store (botservice/storage/opening.py): a current SQLite
file without SQLAlchemy, anything else through it, migrating SQLite as it goes."""

from __future__ import annotations

from pathlib import Path

import pytest

from botservice.core.errors import ConfigError
from botservice.storage.migrate import current_revision, head_revision, upgrade
from botservice.storage.opening import open_store
from botservice.storage.sqlite_file import SqliteFileStore, sqlite_file_path
from tests.db import incoming, sqlite_url


async def test_a_file_behind_the_migrations_is_brought_up_to_date_then_opened_quickly(
    tmp_path: Path,
) -> None:
    url = sqlite_url(tmp_path / "bot.db")
    await upgrade(url, revision="0010_voice_opt_outs")  # as an older release left it

    opened = await open_store(url, concurrency=4)
    try:
        assert not isinstance(opened.store, SqliteFileStore)
        assert await opened.store.accept(incoming("k1"), text="hello", tokens=1) is not None
    finally:
        await opened.store.aclose()
    assert await current_revision(url) == head_revision()

    again = await open_store(url, concurrency=4)
    try:
        assert isinstance(again.store, SqliteFileStore)
        # What the first opening stored is there: the same message is not taken twice.
        assert await again.store.accept(incoming("k1"), text="hello", tokens=1) is None
        assert again.importing_rest is not None
    finally:
        if again.importing_rest is not None:
            again.importing_rest.cancel()
        await again.store.aclose()


async def test_a_reader_told_of_forgetting_before_the_rest_is_built_is_told_after(
    tmp_path: Path,
) -> None:
    url = sqlite_url(tmp_path / "bot.db")
    await upgrade(url)
    store = SqliteFileStore.open(url)
    assert store is not None
    told: list[str] = []
    try:
        store.on_forgetting(lambda: told.append("forgotten"))
        await store.accept(incoming("k1"), text="hello", tokens=1)
        await store.forget_user("test", "U1")  # the rest of the store does this
        assert told == ["forgotten"]
    finally:
        await store.aclose()


async def test_a_first_start_creates_the_file(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "new.db")
    opened = await open_store(url, concurrency=4)
    await opened.store.aclose()
    assert (tmp_path / "new.db").exists()
    assert await current_revision(url) == head_revision()


async def test_a_folder_that_does_not_exist_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        await open_store(sqlite_url(tmp_path / "missing" / "bot.db"), concurrency=4)
    assert "does not exist" in str(error.value)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///bot.db", "bot.db"),
        ("sqlite+aiosqlite:////srv/bot.db", "/srv/bot.db"),
        ("SQLITE:///data/bot.db", "data/bot.db"),
        # Through SQLAlchemy, which knows these forms:
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("sqlite:///file:bot?mode=ro&uri=true", None),
        ("sqlite:///bot%20one.db", None),
        ("postgresql://bot@db/bot", None),
        ("not a url", None),
    ],
)
def test_which_urls_open_without_sqlalchemy(url: str, path: str | None) -> None:
    assert sqlite_file_path(url) == path

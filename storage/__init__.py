"""Storage: sqlmodel tables, the async engine, Alembic migrations and `SqlStore`.

engine = create_engine(database_url)   # also postgres:// and sqlite:/// URLs
await upgrade(engine)                  # or upgrade(database_url); ConfigError if unreachable
store = SqlStore(engine)               # or: store = await SqlStore.open(database_url)
...
await store.aclose()

The names below are imported on first use: the hot path's modules (`sqlite_hot`,
`postgres_hot`, `compiled`) import no SQLAlchemy, and importing them must not pull it
in through this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from botservice.storage.engine import check_connection, create_engine, normalize_url
    from botservice.storage.migrate import current_revision, upgrade
    from botservice.storage.repository import SqlStore

__all__ = [
    "SqlStore",
    "check_connection",
    "create_engine",
    "current_revision",
    "normalize_url",
    "upgrade",
]

_HOMES = {
    "SqlStore": "repository",
    "check_connection": "engine",
    "create_engine": "engine",
    "normalize_url": "engine",
    "current_revision": "migrate",
    "upgrade": "migrate",
}

if __name__ != "botservice.storage":
    # The folder is installed as `botservice.storage` (see pyproject.toml); imported
    # under its bare name it would be a second copy of every module.
    raise ImportError("import botservice.storage, not storage")


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)

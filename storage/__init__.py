"""Storage: sqlmodel tables, the async engine, Alembic migrations and `SqlStore`.

engine = create_engine(database_url)   # also postgres:// and sqlite:/// URLs
await upgrade(engine)                  # or upgrade(database_url); ConfigError if unreachable
store = SqlStore(engine)               # or: store = await SqlStore.open(database_url)
...
await store.aclose()
"""

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

if __name__ != "botservice.storage":
    # The folder is installed as `botservice.storage` (see pyproject.toml); imported
    # under its bare name it would be a second copy of every module.
    raise ImportError("import botservice.storage, not storage")

"""The newest migration's revision, read from the migration files without Alembic or
SQLAlchemy: a start compares it with the database's `alembic_version` and imports
either only when there is something to migrate (botservice.storage.migrate,
botservice.storage.sqlite_file)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

_REVISION_LINE = re.compile(r'^(down_revision|revision)\s*=\s*(None|"[^"]*")\s*(?:#.*)?$', re.M)


@cache
def head_revision() -> str | None:
    """The newest migration's revision, read from the files' `revision` and
    `down_revision` lines (tests/test_storage.py checks it against Alembic's own
    answer). None when the migrations do not form one line."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        lines = dict(_REVISION_LINE.findall(path.read_text(encoding="utf-8")))
        revision, parent = lines.get("revision"), lines.get("down_revision")
        if revision is None or revision == "None":
            continue
        revisions.add(revision.strip('"'))
        if parent and parent != "None":
            parents.add(parent.strip('"'))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None

"""Compile the hot path's statements (`hot_statements`) into `compiled.py`.

    python -m botservice.storage.compile_statements     # rewrites storage/compiled.py

tests/test_compiled_statements.py compiles them again and compares, so the generated
module cannot drift from the SQLAlchemy Core definitions it comes from.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.dialects.postgresql import asyncpg
from sqlalchemy.dialects.sqlite import pysqlite

from botservice.storage.hot_statements import POSTGRESQL, SQLITE, STATEMENTS, HotStatement

TARGET = Path(__file__).resolve().parent / "compiled.py"

_HEADER = '''"""The hot path's SQL, compiled from storage/hot_statements.py. Generated: do not edit.

Regenerate after changing a statement or a table it uses:

    python -m botservice.storage.compile_statements

(tests/test_compiled_statements.py fails while this file differs from what that writes.)
Each statement is its SQL text and, per placeholder in order, the name of the value it
takes or, in a one-element tuple, the constant SQLAlchemy bound there.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Statement(NamedTuple):
    sql: str
    params: tuple[str | tuple[Any], ...]

'''

_DIALECTS = {SQLITE: pysqlite.dialect(paramstyle="qmark"), POSTGRESQL: asyncpg.dialect()}


def compile_one(entry: HotStatement, dialect_name: str) -> tuple[str, tuple[Any, ...]]:
    dialect = _DIALECTS[dialect_name]
    compiled = entry.statement.compile(
        dialect=dialect,
        column_keys=list(entry.column_keys) if entry.column_keys is not None else None,
    )
    names = compiled.positiontup or []
    binds = compiled.binds
    params: list[Any] = []
    for name in names:
        bind = binds[name]
        if bind.required or bind.callable is not None:
            params.append(name)
        else:
            # A literal SQLAlchemy made a parameter (`claims + 1`, `LIMIT 1`).
            processor = bind.type._cached_bind_processor(dialect)
            value = bind.value
            params.append((processor(value) if processor else value,))
    return compiled.string, tuple(params)


def generate() -> str:
    parts = [_HEADER]
    for dialect_name, variable in ((SQLITE, "SQLITE"), (POSTGRESQL, "POSTGRESQL")):
        parts.append(f"{variable}: dict[str, Statement] = {{\n")
        for name, entry in sorted(STATEMENTS[dialect_name].items()):
            sql, params = compile_one(entry, dialect_name)
            parts.append(f"    {name!r}: Statement({sql!r}, {params!r}),\n")
        parts.append("}\n\n")
    return _formatted("".join(parts).rstrip("\n") + "\n")


def _formatted(source: str) -> str:
    """As `ruff format` leaves it, so the generated file passes the format check."""
    return subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--stdin-filename", str(TARGET), "-"],
        input=source,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def main() -> None:
    TARGET.write_text(generate(), encoding="utf-8")
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()

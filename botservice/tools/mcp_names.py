"""An MCP server's tool names as the model APIs accept them: `server__tool`, at most 64
characters of `[A-Za-z0-9_-]`, with the table back to the server's own names.

Deterministic for a given set of names, whatever order the server lists them in: names
that fit as they are keep their spelling and are placed first; a name that had to change
(other characters become `_`, a long one is cut) gets a short hash of the original
when the changed spelling is too long or already taken.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from botservice.core.tools import TOOL_NAME

SEPARATOR = "__"
MAX_NAME = 64
_OTHER = re.compile(r"[^A-Za-z0-9_-]")
_HASH_CHARS = 8


def map_tool_names(server: str, names: Iterable[str]) -> dict[str, str]:
    """{name offered to the model: the server's name of the tool} for `names`."""
    prefix = server + SEPARATOR
    unique = sorted(set(names))
    fitting = [name for name in unique if TOOL_NAME.match(prefix + name)]
    changed = [name for name in unique if not TOOL_NAME.match(prefix + name)]
    mapped: dict[str, str] = {prefix + name: name for name in fitting}
    for name in changed:
        plain = prefix + (_OTHER.sub("_", name) or "tool")
        if len(plain) <= MAX_NAME and plain not in mapped:
            mapped[plain] = name
            continue
        candidate = _hashed(prefix, name)
        attempt = 1
        while candidate in mapped:  # two hashes alike: practically never, still settled
            candidate = _hashed(prefix, f"{name}\x00{attempt}")
            attempt += 1
        mapped[candidate] = name
    return mapped


def _hashed(prefix: str, name: str) -> str:
    digest = hashlib.sha256(name.encode()).hexdigest()[:_HASH_CHARS]
    room = MAX_NAME - len(prefix) - len(digest) - 1
    return f"{prefix}{_OTHER.sub('_', name)[:room]}-{digest}"

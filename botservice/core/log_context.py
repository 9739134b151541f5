"""Which turn a log line belongs to, carried by a context variable.

The core sets it while it answers a turn; every line logged meanwhile, by the core,
the model client or an adapter's sink (and by tasks started from there, which copy
the context), is stamped with it by `botservice.app.logs`. Ids only, never text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TurnContext:
    turn_id: int
    conversation_id: int
    platform: str


current_turn: ContextVar[TurnContext | None] = ContextVar("botservice_turn", default=None)


@contextlib.contextmanager
def in_turn(turn_id: int, conversation_id: int, platform: str) -> Iterator[None]:
    token = current_turn.set(TurnContext(turn_id, conversation_id, platform))
    try:
        yield
    finally:
        current_turn.reset(token)

"""Which turn a log line belongs to, carried by a context variable.

The core sets it while it answers a turn; every line logged meanwhile, by the core,
the model client or an adapter's sink (and by tasks started from there, which copy
the context), is stamped with it by `botservice.app.logs`. Ids only, never text.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TurnContext:
    turn_id: int
    conversation_id: int
    platform: str


current_turn: ContextVar[TurnContext | None] = ContextVar("botservice_turn", default=None)


class in_turn:  # lower case: it reads as a function, like contextlib.suppress
    """Stamp the lines logged inside with the turn. A class rather than a
    `contextlib.contextmanager`, whose generator and wrapper cost more than the
    context variable itself on every turn."""

    __slots__ = ("_context", "_token")

    _token: Token[TurnContext | None]

    def __init__(self, turn_id: int, conversation_id: int, platform: str) -> None:
        self._context = TurnContext(turn_id, conversation_id, platform)

    def __enter__(self) -> None:
        self._token = current_turn.set(self._context)

    def __exit__(self, *exc_info: object) -> None:
        current_turn.reset(self._token)

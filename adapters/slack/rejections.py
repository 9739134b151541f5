"""Requests turned away at `/slack/events`, counted instead of logged one by one.

Anyone who can reach the endpoint can send junk; one log line per request would let
them flood the log. Each kind of rejection gets at most one WARNING a minute, with a
count and never the request's content.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import Enum

log = logging.getLogger(__name__)

WARN_EVERY_SECONDS = 60.0


class Rejection(Enum):
    """Why a request was turned away; the value names it in the log."""

    UNSIGNED = "unsigned"
    BAD_TIMESTAMP = "bad or stale timestamp"
    BAD_SIGNATURE = "bad signature"
    MALFORMED = "malformed body"

    @property
    def status(self) -> int:
        return 400 if self is Rejection.MALFORMED else 401


class RejectionLog:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._unreported: dict[Rejection, int] = {}
        self._last_warning: dict[Rejection, float] = {}

    def count(self, kind: Rejection) -> None:
        self._unreported[kind] = self._unreported.get(kind, 0) + 1
        now = self._clock()
        last = self._last_warning.get(kind)
        if last is not None and now - last < WARN_EVERY_SECONDS:
            return
        count = self._unreported.pop(kind)
        self._last_warning[kind] = now
        since = "" if last is None else f" in the last {now - last:.0f} s"
        log.warning(
            "refused %d request%s to /slack/events (%s)%s",
            count,
            "" if count == 1 else "s",
            kind.value,
            since,
        )

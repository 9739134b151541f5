"""The span port: where a turn begins and ends, for an optional tracer.

`botservice.app.tracing` implements it with OpenTelemetry when the `otel` extra is
installed and `OTEL_EXPORTER_OTLP_ENDPOINT` is set. The core only marks the turn; the
children (store operations, the model call, platform posts) are made by wrappers and
by the `Telemetry` port in the app, so the core names no tracing library.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Protocol


class Tracer(Protocol):
    def turn(
        self, platform: str, *, turn_id: int, conversation_id: int
    ) -> AbstractContextManager[None]:
        """Everything run inside belongs to this turn (its parent span)."""
        ...


class NoTracer:
    """A tracer that records nothing (the default)."""

    def turn(
        self, platform: str, *, turn_id: int, conversation_id: int
    ) -> AbstractContextManager[None]:
        return contextlib.nullcontext()


NO_TRACER: Tracer = NoTracer()

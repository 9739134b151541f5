"""What the service reports about itself while it runs: the observer port.

The core, the model client and the adapters call a `Telemetry` at the moments an
operator wants counted or timed; `botservice.app.metrics` implements it with
prometheus-client for `botservice run`. Everything else (`botservice chat`, tests,
benchmarks) gets `NO_TELEMETRY`, whose methods do nothing, so the core stays free of
any metrics library and costs nothing when nobody is watching.

Every argument that becomes a label is from a small, fixed set (platform, model,
outcome, an API method name, a status class): never a user, a channel or any text,
so the number of series cannot grow with the traffic.
"""

from __future__ import annotations

from typing import Literal, Protocol

from botservice.core import errors

# How a turn ended. "failed" comes with a reason (see `FAILURE_REASONS`).
TurnOutcome = Literal["answered", "failed", "interrupted", "taken_over"]

# The reasons a turn fails, the label values of `turn_finished(..., reason=...)`.
FAILURE_REASONS = (
    "rate_limited",
    "refused",
    "server_error",
    "timeout",
    "unreachable",
    "empty_answer",
    "stream_broken",
    "model_error",
    "busy",
    "quota",
    "unheard",
    "too_late",
    "no_sink",
    "unexpected",
)


class Telemetry(Protocol):
    """The observer port. Calls must be cheap and never raise: they run on the hot path."""

    # --- messages and turns ---

    def message_accepted(self, platform: str) -> None:
        """A new message was stored and waits for its answer."""
        ...

    def message_redelivered(self, platform: str) -> None:
        """A message already taken arrived again and was dropped."""
        ...

    def turn_started(self, platform: str, *, resumed: bool) -> None:
        """This process began answering a turn (`resumed`: after a stop or a takeover)."""
        ...

    def turn_finished(self, platform: str, outcome: TurnOutcome, reason: str = "") -> None: ...

    def first_text(self, platform: str, model: str, seconds: float) -> None:
        """Seconds from the message being stored to the model's first text."""
        ...

    def final_text(self, platform: str, model: str, seconds: float) -> None:
        """Seconds from the message being stored to the final text being shown."""
        ...

    # --- the model endpoint ---

    def model_request(self, model: str, status: str) -> None:
        """One HTTP attempt: `status` is "2xx", "4xx", "429", "5xx" or "transport"."""
        ...

    def model_retry(self, model: str, wait_seconds: float, *, rate_limited: bool) -> None:
        """An attempt failed and another follows after `wait_seconds`."""
        ...

    def tokens(
        self,
        model: str,
        *,
        prompt: int,
        completion: int,
        cached: int = 0,
        reasoning: int = 0,
    ) -> None: ...

    # --- platforms ---

    def platform_call(
        self, platform: str, method: str, status: str, *, seconds: float = 0.0
    ) -> None:
        """One platform API call (`chat.update`, `message.edit`...), "ok" or an error class,
        that took `seconds` (a trace shows it as a span of that length)."""
        ...

    def edit_budget(self, platform: str, in_use: float) -> None:
        """Share (0..1) of the busiest workspace's edit budget currently spent."""
        ...

    def edit_skipped(self, platform: str) -> None:
        """A streaming edit was skipped to keep the budget for final texts."""
        ...

    # --- upkeep ---

    def purged(self, kind: str, count: int) -> None:
        """Rows the expiry job deleted: "messages", "conversations", "turns", "usage"."""
        ...

    def voice_session(self, platform: str, delta: int) -> None:
        """A voice session opened (+1) or closed (-1)."""
        ...

    def spoken(self, platform: str, seconds: float) -> None:
        """Seconds of speech played into a voice channel."""
        ...


class NoTelemetry:
    """Telemetry that records nothing (the default)."""

    def message_accepted(self, platform: str) -> None:
        pass

    def message_redelivered(self, platform: str) -> None:
        pass

    def turn_started(self, platform: str, *, resumed: bool) -> None:
        pass

    def turn_finished(self, platform: str, outcome: TurnOutcome, reason: str = "") -> None:
        pass

    def first_text(self, platform: str, model: str, seconds: float) -> None:
        pass

    def final_text(self, platform: str, model: str, seconds: float) -> None:
        pass

    def model_request(self, model: str, status: str) -> None:
        pass

    def model_retry(self, model: str, wait_seconds: float, *, rate_limited: bool) -> None:
        pass

    def tokens(
        self,
        model: str,
        *,
        prompt: int,
        completion: int,
        cached: int = 0,
        reasoning: int = 0,
    ) -> None:
        pass

    def platform_call(
        self, platform: str, method: str, status: str, *, seconds: float = 0.0
    ) -> None:
        pass

    def edit_budget(self, platform: str, in_use: float) -> None:
        pass

    def edit_skipped(self, platform: str) -> None:
        pass

    def purged(self, kind: str, count: int) -> None:
        pass

    def voice_session(self, platform: str, delta: int) -> None:
        pass

    def spoken(self, platform: str, seconds: float) -> None:
        pass


NO_TELEMETRY: Telemetry = NoTelemetry()


def failure_reason(error: BaseException) -> str:
    """The label for a turn that failed with `error` (a `ModelError` subclass, mostly)."""
    for kind, reason in _REASON_BY_ERROR:
        if isinstance(error, kind):
            return reason
    return "unexpected"


_REASON_BY_ERROR: tuple[tuple[type[BaseException], str], ...] = (
    (errors.ModelRateLimited, "rate_limited"),
    (errors.ModelRefused, "refused"),
    (errors.ModelServerError, "server_error"),
    (errors.ModelTimeout, "timeout"),
    (errors.ModelUnreachable, "unreachable"),
    (errors.ModelEmptyAnswer, "empty_answer"),
    (errors.ModelStreamBroken, "stream_broken"),
    (errors.ModelError, "model_error"),
    (errors.TranscriptionError, "unheard"),
)

"""One root for every error botservice raises on purpose.

Each error that can reach a user carries `user_message`: one short sentence that
is safe to show (no secrets, no stack, no raw exception text).
"""

from __future__ import annotations


class BotServiceError(Exception):
    """Root of botservice's own errors."""

    user_message = "Something went wrong on my side; please try again."


class ConfigError(BotServiceError):
    """A setting is missing or wrong. The CLI prints it and exits with status 2."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


class StoreUnavailable(BotServiceError):
    """The database could not be reached (down, restarting, network cut). Worth
    trying again later; nothing was written."""

    user_message = "My database is unreachable right now; please try again in a minute."


class ModelError(BotServiceError):
    """The model endpoint could not give an answer."""

    user_message = "The model endpoint failed to answer; please try again."


class ModelRateLimited(ModelError):
    def __init__(self, retry_after: float | None) -> None:
        super().__init__(f"rate limited (retry after {retry_after})")
        self.retry_after = retry_after

    @property
    def user_message(self) -> str:  # type: ignore[override]
        if self.retry_after is None:
            return "The model endpoint is rate-limiting me; please try again in a minute."
        return (
            "The model endpoint is rate-limiting me; please try again in "
            f"{_describe_wait(self.retry_after)}."
        )


class ModelTimeout(ModelError):
    user_message = "The model took too long to answer; please try again."


class ModelUnreachable(ModelError):
    user_message = "I could not reach the model endpoint; please try again shortly."


class ModelRefused(ModelError):
    """The endpoint answered with a 4xx other than 429 (bad key, unknown model, too long...)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"refused with HTTP {status}: {reason}")
        self.status = status
        self.reason = reason

    @property
    def user_message(self) -> str:  # type: ignore[override]
        if self.status in (401, 403):
            return (
                "The model endpoint refused my credentials; an operator needs to check the API key."
            )
        if self.status == 404:
            return "The model endpoint does not know this model; ask a channel manager to pick another."
        if self.status == 400 and "context" in self.reason.lower():
            return "This conversation is too long for the model; start a new thread or reset it."
        return f"The model endpoint refused the request (HTTP {self.status})."


class ModelContextExceeded(ModelRefused):
    """The prompt did not fit the model's context window (HTTP 400 from OpenAI, vLLM,
    llama.cpp, or an `error` event saying so). `window` is the window the endpoint
    named, when it named one."""

    def __init__(self, status: int, reason: str, *, window: int | None = None) -> None:
        super().__init__(status, reason)
        self.window = window

    @property
    def user_message(self) -> str:  # type: ignore[override]
        return "This conversation is too long for the model; start a new thread or reset it."


class ModelServerError(ModelError):
    def __init__(self, status: int) -> None:
        super().__init__(f"server error HTTP {status}")
        self.status = status

    @property
    def user_message(self) -> str:  # type: ignore[override]
        return f"The model endpoint had an internal error (HTTP {self.status}); please try again."


class ModelStreamBroken(ModelError):
    """The stream ended before the model said it was done. The core says "cut off"
    only when some text was shown; with none it says the model returned no text."""

    user_message = "The model's answer was cut off midway."


class ModelEmptyAnswer(ModelError):
    """The endpoint finished (or ended its stream cleanly) without any text.

    `unfinished`: the stream ended without the model saying it was done, as
    llama.cpp-based servers answer a prompt over their window; a model that chose to
    say nothing finishes its stream.
    """

    user_message = "The model returned no text; please rephrase or try again."

    def __init__(self, reason: str, *, unfinished: bool = False) -> None:
        super().__init__(reason)
        self.unfinished = unfinished


class ModelAnswerIncomplete(ModelError):
    """The model stopped before finishing: it hit the answer length limit
    (`finish_reason: length`, `response.incomplete` with `max_output_tokens`) or a
    content filter. Raised after the text it did write."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"answer incomplete: {reason}")
        self.reason = reason

    @property
    def user_message(self) -> str:  # type: ignore[override]
        if self.reason == "content_filter":
            return "The model's answer was stopped by the endpoint's content filter."
        return "The model stopped before writing any text (it reached its length limit); please ask for something shorter."

    @property
    def marker(self) -> str:
        """What follows the text that was written, in the same sentence style."""
        if self.reason == "content_filter":
            return "stopped by the endpoint's content filter"
        return "it reached the answer length limit"


class TranscriptionError(BotServiceError):
    """An audio message could not be turned into text."""

    user_message = "I could not transcribe that audio; please try again or type your message."


def _describe_wait(seconds: float) -> str:
    if seconds < 90:
        whole = max(1, round(seconds))
        return f"{whole} second{'s' if whole != 1 else ''}"
    minutes = round(seconds / 60)
    return f"{minutes} minutes"

"""What every built-in tool shares: its spec's shape, reading arguments, showing times."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from botservice.core.tools import BUILTIN, ToolContext, ToolOutput, ToolSpec

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class BuiltinTool(Protocol):
    """One built-in tool: what the model is offered, and how a call runs."""

    @property
    def spec(self) -> ToolSpec: ...

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolOutput: ...


def builtin_spec(
    name: str, description: str, properties: Mapping[str, Any], *required: str
) -> ToolSpec:
    """A built-in tool's spec: read-only, not destructive, trusted (runs without asking)."""
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": dict(properties),
        "additionalProperties": False,
    }
    if required:
        parameters["required"] = list(required)
    return ToolSpec(
        name=name,
        description=description,
        parameters=parameters,
        source=BUILTIN,
        read_only=True,
        destructive=False,
        trusted=True,
    )


def whole_number(
    arguments: Mapping[str, Any], name: str, *, default: int, lowest: int, highest: int
) -> int | ToolOutput:
    """The integer argument `name`, held within [lowest, highest]; an error output for
    the model when it is not a whole number."""
    value = arguments.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        return ToolOutput(f"`{name}` must be a whole number (got {value!r}).", is_error=True)
    return max(lowest, min(highest, int(value)))


def shown_time(moment: datetime, timezone: ZoneInfo) -> str:
    """A stored moment as people read it, in the bot's timezone: 2026-11-30 14:02 CET."""
    local = moment.astimezone(timezone)
    return local.strftime("%Y-%m-%d %H:%M ") + (local.tzname() or str(timezone))


def speaker(role: str, author_name: str) -> str:
    """Who wrote a stored message, for the model: a person's name, or the bot (whose
    answers some platforms, the console among them, store without a name)."""
    if role != "assistant":
        return author_name
    return f"{author_name} (the bot)" if author_name else "the bot"


def shortened(text: str, limit: int) -> str:
    """`text` in at most `limit` characters, cut at a word with a marker when longer."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0] or text[: limit - 1]
    return cut + "…"

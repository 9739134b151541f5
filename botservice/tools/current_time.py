"""`current_time`: the date and time now, in a timezone the model names (IANA, such as
Europe/Paris) or the bot's configured one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from botservice.core.tools import ToolContext, ToolOutput, ToolSpec
from botservice.tools.kit import Clock, builtin_spec

NAME = "current_time"


class CurrentTime:
    def __init__(self, *, timezone: ZoneInfo, clock: Clock) -> None:
        self._timezone = timezone
        self._clock = clock
        self._spec = builtin_spec(
            NAME,
            "The current date, time and weekday. Without `timezone`, in the bot's "
            f"timezone ({timezone.key}).",
            {
                "timezone": {
                    "type": "string",
                    "description": "An IANA timezone name such as Europe/Paris or America/New_York.",
                }
            },
        )

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolOutput:
        name = arguments.get("timezone")
        timezone = self._timezone
        if name is not None and name != "":
            found = timezone_named(name)
            if found is None:
                return ToolOutput(
                    f"Unknown timezone {name!r}: use an IANA name such as Europe/Paris, "
                    "America/New_York or UTC.",
                    is_error=True,
                )
            timezone = found
        now = self._clock().astimezone(timezone)
        offset = now.strftime("%z")
        return ToolOutput(
            f"{now:%A, %Y-%m-%d %H:%M:%S} {now.tzname()} (UTC{offset[:3]}:{offset[3:]}, "
            f"{timezone.key}); ISO 8601: {now.isoformat(timespec='seconds')}"
        )


def timezone_named(name: object) -> ZoneInfo | None:
    """The IANA timezone `name`, or None when there is no such zone."""
    if not isinstance(name, str) or not name.strip() or len(name) > 64:
        return None
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        return None

"""The tools that ship with the bot, as one trusted `ToolSource` named "builtin".

Each tool is a small module of its own (`search_history`, `earlier_messages`,
`current_time`); every one only reads, and only inside the conversation's channel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

from botservice.core.message_search import MessageSearch
from botservice.core.ports import ChannelSettingsStore
from botservice.core.tools import BUILTIN, ToolContext, ToolOutput, ToolSpec
from botservice.tools.current_time import CurrentTime
from botservice.tools.earlier_messages import EarlierMessages
from botservice.tools.kit import BuiltinTool, Clock, utc_now
from botservice.tools.search_history import SearchHistory

if TYPE_CHECKING:
    from botservice.tools.fetch_url import FetchLimits


class BuiltinStore(MessageSearch, ChannelSettingsStore, Protocol):
    """What the built-in tools read: messages, and a channel's retention."""


class BuiltinTools:
    """The built-in tools as one `ToolSource`: trusted, every tool read-only."""

    name = BUILTIN
    trusted = True

    def __init__(self, tools: Sequence[BuiltinTool]) -> None:
        self._tools = {tool.spec.name: tool for tool in tools}
        self._specs = tuple(tool.spec for tool in tools)

    def tools(self) -> Sequence[ToolSpec]:
        return self._specs

    async def call(
        self, name: str, arguments: Mapping[str, Any], context: ToolContext
    ) -> ToolOutput:
        tool = self._tools.get(name)
        if tool is None:
            return ToolOutput(f"There is no built-in tool named {name!r}.", is_error=True)
        return await tool.run(arguments, context)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def builtin_tools(
    store: BuiltinStore,
    *,
    timezone: ZoneInfo,
    default_retention_days: int,
    clock: Clock = utc_now,
    fetch: FetchLimits | None = None,
) -> BuiltinTools:
    """The built-in source over `store`: search_history, earlier_messages, current_time,
    and with `fetch`, fetch_url."""
    tools: list[BuiltinTool] = [
        SearchHistory(
            store,
            timezone=timezone,
            default_retention_days=default_retention_days,
            clock=clock,
        ),
        EarlierMessages(store, timezone=timezone),
        CurrentTime(timezone=timezone, clock=clock),
    ]
    if fetch is not None:
        # Imported only when offered: BeautifulSoup costs start-up time.
        from botservice.tools.fetch_url import FetchUrl

        tools.append(FetchUrl(fetch))
    return BuiltinTools(tools)

"""`earlier_messages`: this conversation's older messages, page by page from the oldest,
for what was said before the messages the model was shown (the prompt keeps the most
recent ones that fit the model's context window, and drops the rest)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo

from botservice.core.message_search import MessageSearch
from botservice.core.tools import ToolContext, ToolOutput, ToolSpec
from botservice.tools.kit import builtin_spec, shortened, shown_time, speaker, whole_number

NAME = "earlier_messages"
MAX_PAGE = 25
DEFAULT_PAGE = 10
# One message's text in a page, and a whole page: well under the core's 16 KB cap on
# a result, so a page is never cut in the middle.
MESSAGE_CHARS = 2_000
PAGE_CHARS = 12_000

SPEC = builtin_spec(
    NAME,
    "Read this conversation's earlier messages, oldest first, a page at a time: what "
    "was said before the messages you were shown. Each message has a number; to read "
    "on, call again with `after` set to the last number of the previous page.",
    {
        "after": {
            "type": "integer",
            "minimum": 0,
            "description": "Return messages after this message number (0, the default: from the start).",
        },
        "limit": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_PAGE,
            "description": f"How many messages at most (default {DEFAULT_PAGE}).",
        },
    },
)


class EarlierMessages:
    def __init__(self, store: MessageSearch, *, timezone: ZoneInfo) -> None:
        self._store = store
        self._timezone = timezone

    @property
    def spec(self) -> ToolSpec:
        return SPEC

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolOutput:
        after = whole_number(arguments, "after", default=0, lowest=0, highest=2**62)
        if isinstance(after, ToolOutput):
            return after
        limit = whole_number(arguments, "limit", default=DEFAULT_PAGE, lowest=1, highest=MAX_PAGE)
        if isinstance(limit, ToolOutput):
            return limit
        # One more than asked: whether another page follows.
        messages = await self._store.earlier_messages(
            context.conversation_id,
            before_turn_id=context.turn_id,
            after_message_id=after,
            limit=limit + 1,
        )
        if not messages:
            if after:
                return ToolOutput(f"No messages of this conversation after number {after}.")
            return ToolOutput("This conversation has no earlier messages.")
        lines: list[str] = []
        size = 0
        shown = 0
        for message in messages[:limit]:
            who = speaker(message.role, message.author_name)
            when = shown_time(message.created_at, self._timezone) if message.created_at else "?"
            line = f"#{message.id} · {when} · {who}: {shortened(message.text, MESSAGE_CHARS)}"
            if lines and size + len(line) > PAGE_CHARS:
                break
            lines.append(line)
            size += len(line) + 1
            shown += 1
        more = shown < len(messages)
        last = messages[shown - 1].id
        lines.append(
            f"More: call {NAME} with after={last}."
            if more
            else "That is every earlier message of this conversation."
        )
        return ToolOutput("\n".join(lines))

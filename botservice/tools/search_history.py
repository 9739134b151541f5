"""`search_history`: full-text search of this channel's stored messages.

Only the channel of the conversation asking (same platform, workspace and channel),
never another one's; only messages still within the channel's retention (expired
ones may wait for the next purge, and are left out here meanwhile); ranked, at most
`MAX_HITS` hits, each with who, when and a snippet around the words.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from botservice.core.message_search import (
    ChannelRef,
    FoundMessage,
    MessageSearch,
    search_terms,
)
from botservice.core.ports import ChannelSettingsStore
from botservice.core.tools import ToolContext, ToolOutput, ToolSpec
from botservice.tools.kit import Clock, builtin_spec, shown_time, speaker, whole_number

NAME = "search_history"
MAX_HITS = 10
DEFAULT_HITS = 5
SNIPPET_CHARS = 240

SPEC = builtin_spec(
    NAME,
    "Search the stored messages of this channel (all its conversations, the bot's "
    "answers included) by words. Returns the best matches with who wrote them, when, "
    "and a snippet. Use it when someone refers to something said earlier in the channel.",
    {
        "query": {"type": "string", "description": "Words to look for, e.g. 'deploy billing'."},
        "limit": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_HITS,
            "description": f"How many messages at most (default {DEFAULT_HITS}).",
        },
    },
    "query",
)


class _Store(MessageSearch, ChannelSettingsStore, Protocol): ...


class SearchHistory:
    def __init__(
        self,
        store: _Store,
        *,
        timezone: ZoneInfo,
        default_retention_days: int,
        clock: Clock,
    ) -> None:
        self._store = store
        self._timezone = timezone
        self._default_retention_days = default_retention_days
        self._clock = clock

    @property
    def spec(self) -> ToolSpec:
        return SPEC

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolOutput:
        query = arguments.get("query")
        if not isinstance(query, str) or not (terms := search_terms(query)):
            return ToolOutput(
                "Give `query`: one or more words to search this channel's messages for.",
                is_error=True,
            )
        limit = whole_number(arguments, "limit", default=DEFAULT_HITS, lowest=1, highest=MAX_HITS)
        if isinstance(limit, ToolOutput):
            return limit
        key = context.conversation
        channel = ChannelRef(key.platform, key.workspace, key.channel)
        settings = await self._store.channel_settings(key.platform, key.workspace, key.channel)
        retention = settings.retention_days
        if retention is None:
            retention = self._default_retention_days
        since = self._clock() - timedelta(days=retention)
        options: dict[str, Any] = {
            "limit": limit,
            "since": since,
            "exclude_turn_id": context.turn_id,
        }
        hits = await self._store.search_channel(channel, terms, match_all=True, **options)
        partial = False
        if not hits and len(terms) > 1:
            hits = await self._store.search_channel(channel, terms, match_all=False, **options)
            partial = bool(hits)
        if not hits:
            return ToolOutput(f"No stored message of this channel matches {query!r}.")
        return ToolOutput(self._listing(query, terms, hits, key.thread, partial=partial))

    def _listing(
        self,
        query: str,
        terms: Sequence[str],
        hits: Sequence[FoundMessage],
        thread: str,
        *,
        partial: bool,
    ) -> str:
        count = f"{len(hits)} message{'s' if len(hits) != 1 else ''}"
        head = (
            f"No message has all the words of {query!r}; {count} with some of them, best first:"
            if partial
            else f"{count} of this channel match {query!r}, best first:"
        )
        lines = [head]
        for number, hit in enumerate(hits, start=1):
            who = speaker(hit.role, hit.author_name)
            where = "this conversation" if hit.thread == thread else f"thread {hit.thread or '-'}"
            lines.append(
                f"{number}. {shown_time(hit.created_at, self._timezone)} · {who} · {where}: "
                f"{snippet(hit.text, terms)}"
            )
        return "\n".join(lines)


def snippet(text: str, terms: Sequence[str], width: int = SNIPPET_CHARS) -> str:
    """The part of `text` around the first of the `terms` (as a word start), about
    `width` characters, with … where it was cut."""
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    pattern = re.compile(
        r"(?<![^\W_])(?:" + "|".join(re.escape(term) for term in terms) + ")", re.IGNORECASE
    )
    match = pattern.search(flat)
    start = 0 if match is None else max(0, match.start() - width // 3)
    end = min(len(flat), start + width)
    piece = flat[start:end]
    # Whole words only at the cuts.
    if start > 0:
        piece = "…" + (piece.split(" ", 1)[1] if " " in piece else piece)
    if end < len(flat):
        piece = (piece.rsplit(" ", 1)[0] if " " in piece else piece) + "…"
    return piece

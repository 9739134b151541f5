"""What the built-in tools read from storage: a channel's messages by their words, and
a conversation's older messages page by page.

Both stay inside one channel (platform, workspace, channel): the storage behind this
port never reads another channel's rows for them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from botservice.core.ports import Role, StoredMessage

# A word to search for: letters and digits. Everything else separates words, as the
# SQLite (unicode61) and PostgreSQL ('simple') tokenizers do, and never reaches a query
# as syntax.
_WORD = re.compile(r"[^\W_]+")
MAX_SEARCH_TERMS = 8


def search_terms(query: str) -> tuple[str, ...]:
    """The words of a search, lowercased, each once, at most `MAX_SEARCH_TERMS`."""
    terms: dict[str, None] = {}
    for word in _WORD.findall(query.lower()):
        terms.setdefault(word, None)
        if len(terms) == MAX_SEARCH_TERMS:
            break
    return tuple(terms)


@dataclass(frozen=True, slots=True)
class ChannelRef:
    platform: str
    workspace: str
    channel: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FoundMessage:
    """A stored message that matched a search, best first."""

    message_id: int
    # The conversation's thread (platform id; "" for a flat channel conversation).
    thread: str
    role: Role
    author_name: str
    text: str
    created_at: datetime


class MessageSearch(Protocol):
    """Full-text search of a channel's stored messages, and paging through a
    conversation's older ones (storage/message_search.py)."""

    async def search_channel(
        self,
        channel: ChannelRef,
        terms: Sequence[str],
        *,
        match_all: bool,
        limit: int,
        since: datetime | None = None,
        exclude_turn_id: int | None = None,
    ) -> list[FoundMessage]:
        """Messages of `channel` containing the `terms` (each a word or the start of
        one): every term with `match_all`, else any, ranked best first. Only messages
        created at or after `since`; never the question of turn `exclude_turn_id` (the
        one being answered, which would match itself)."""
        ...

    async def earlier_messages(
        self, conversation_id: int, *, before_turn_id: int, after_message_id: int, limit: int
    ) -> list[StoredMessage]:
        """The conversation's messages older than the question of turn
        `before_turn_id` and newer than `after_message_id`, oldest first, at most
        `limit`; none from before a reset of the conversation."""
        ...

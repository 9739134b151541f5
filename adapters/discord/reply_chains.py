"""Which conversation a reply chain belongs to, without reading the chain back from Discord.

A mention in a channel starts a conversation whose thread id is the mention's message
id (the root). Every message of the chain (the person's and the bot's answers) maps to
that root, so a reply to any of them continues the same conversation with no REST call.

The index lives in memory and is bounded. Each guild is served by one shard, hence by one
process, so processes never need each other's index. After a restart a reply to an old
answer is "cold": see `DiscordMessages.place_reply`.
"""

from __future__ import annotations

from typing import NamedTuple

from cachetools import LRUCache


class ChainEntry(NamedTuple):
    root: str
    by_bot: bool


class ReplyChains:
    def __init__(self, capacity: int = 100_000) -> None:
        # Least recently used first out: a chain someone is still replying to stays.
        self._roots: LRUCache[int, ChainEntry] = LRUCache(capacity)

    def entry(self, message_id: int) -> ChainEntry | None:
        return self._roots.get(message_id)  # a hit counts as a use

    def root_of(self, message_id: int) -> str | None:
        found = self.entry(message_id)
        return found.root if found else None

    def remember(self, message_id: int, root: str, *, by_bot: bool = False) -> None:
        self._roots[message_id] = ChainEntry(root, by_bot)

    def __len__(self) -> int:
        return len(self._roots)

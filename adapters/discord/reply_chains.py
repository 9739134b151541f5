"""Which conversation a reply chain belongs to, without reading the chain back from Discord.

A mention in a channel starts a conversation whose thread id is the mention's message
id (the root). Every message of the chain (the person's and the bot's answers) maps to
that root, so a reply to any of them continues the same conversation with no REST call.

The index lives in memory and is bounded. Each guild is served by one shard, hence by one
process, so processes never need each other's index. After a restart a reply to an old
answer is "cold": see `DiscordMessages.place_reply`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple


class ChainEntry(NamedTuple):
    root: str
    by_bot: bool


class ReplyChains:
    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._roots: OrderedDict[int, ChainEntry] = OrderedDict()

    def entry(self, message_id: int) -> ChainEntry | None:
        found = self._roots.get(message_id)
        if found is not None:
            self._roots.move_to_end(message_id)
        return found

    def root_of(self, message_id: int) -> str | None:
        found = self.entry(message_id)
        return found.root if found else None

    def remember(self, message_id: int, root: str, *, by_bot: bool = False) -> None:
        self._roots[message_id] = ChainEntry(root, by_bot)
        self._roots.move_to_end(message_id)
        while len(self._roots) > self._capacity:
            self._roots.popitem(last=False)

    def __len__(self) -> int:
        return len(self._roots)

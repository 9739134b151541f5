"""Which channel each person is looking at, as the agent view reports it.

Slack sends `app_context_changed` (agent view) or `assistant_thread_context_changed`
(assistant view) when the channel beside the open app changes, so a request like
"summarize this channel" can name the channel. Kept in memory, bounded: it is a hint
that the next event replaces, not something to keep across restarts. Whoever acts on it
must still check the bot is in that channel.
"""

from __future__ import annotations

from cachetools import LRUCache


class ChannelsInView:
    def __init__(self, capacity: int = 10_000) -> None:
        self._channels: LRUCache[tuple[str, str], str] = LRUCache(capacity)

    def record(self, team: str, user: str, channel: str | None) -> None:
        if channel is None:
            self._channels.pop((team, user), None)
        else:
            self._channels[(team, user)] = channel

    def channel_of(self, team: str, user: str) -> str | None:
        """The channel `user` of `team` last looked at with the app open, if any."""
        return self._channels.get((team, user))

    def forget_workspace(self, team: str) -> None:
        for key in [key for key in self._channels if key[0] == team]:
            del self._channels[key]

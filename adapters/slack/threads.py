"""Which threads the bot takes part in, and the one read of a thread it joins late."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from botservice.adapters.slack.events import BotIdentity, MessageDraft, thread_context
from botservice.adapters.slack.users import UserDirectory
from botservice.core.events import ContextMessage, ConversationKey

log = logging.getLogger(__name__)

# What the model gets of a thread read late, at most (characters).
CONTEXT_BUDGET_CHARS = 8000
# One page; a thread longer than this is summarized by its newest messages anyway.
REPLIES_PAGE = 200


@dataclass(slots=True)
class KnownThreads:
    """Threads this process has taken a message in, most recent last (bounded)."""

    max_entries: int = 100_000
    # Adding counts as a use, asking whether a thread is known does not (`in` leaves
    # the order alone).
    _keys: LRUCache[ConversationKey, None] = field(init=False)

    def __post_init__(self) -> None:
        self._keys = LRUCache(self.max_entries)

    def add(self, key: ConversationKey) -> None:
        self._keys[key] = None

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def forget_workspace(self, workspace: str) -> None:
        for key in [key for key in self._keys if key.workspace == workspace]:
            del self._keys[key]


async def read_thread_once(
    client: AsyncWebClient,
    draft: MessageDraft,
    *,
    bot: BotIdentity,
    users: UserDirectory,
    placeholder: str,
) -> tuple[ContextMessage, ...]:
    """One `conversations.replies` call for a thread the bot is first mentioned in."""
    assert draft.thread_ts is not None
    try:
        response = await client.conversations_replies(
            channel=draft.channel, ts=draft.thread_ts, limit=REPLIES_PAGE
        )
    except SlackApiError as error:
        code = error.response.get("error") if error.response is not None else "unknown"
        log.warning("conversations.replies failed: %s; answering without the thread", code)
        return ()
    data: Mapping[str, Any] = response.data if isinstance(response.data, dict) else {}
    messages = data.get("messages") or []
    # Names only from the cache: a users.info call per author would cost more
    # than the name is worth.
    names = {
        str(m.get("user")): user.name
        for m in messages
        if isinstance(m, Mapping)
        and m.get("user")
        and (user := users.cached(draft.team, str(m.get("user")))) is not None
    }
    return thread_context(
        [m for m in messages if isinstance(m, Mapping)],
        before_ts=draft.ts,
        bot=bot,
        names=names,
        max_chars=CONTEXT_BUDGET_CHARS,
        placeholder=placeholder,
    )

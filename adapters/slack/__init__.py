"""Slack: mentions, thread follow-ups, DMs and assistant threads, answered through the core."""

from __future__ import annotations

from typing import TYPE_CHECKING

from botservice.core.conversation import ConversationCore
from botservice.core.ports import Adapter, Lookups
from botservice.core.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


def create_adapter(
    settings: Settings,
    core: ConversationCore,
    lookups: Lookups,
    *,
    database: AsyncEngine | None = None,
) -> Adapter:
    """Build the Slack adapter. Raises `ConfigError` when the credentials do not fit together.

    `lookups` is the store's port for adapters. `database` is the bot's migrated
    database; multi-workspace installs (OAuth) keep their installations there and
    need it.
    """
    from botservice.adapters.slack.app import SlackAdapter

    return SlackAdapter(settings, core, lookups, database=database)


__all__ = ["create_adapter"]

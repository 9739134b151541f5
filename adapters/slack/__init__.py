"""Slack: mentions, thread follow-ups, DMs and assistant threads, answered through the core."""

from __future__ import annotations

from botservice.core.conversation import ConversationCore
from botservice.core.ports import Adapter, Lookups
from botservice.core.settings import Settings


def create_adapter(settings: Settings, core: ConversationCore, lookups: Lookups) -> Adapter:
    """Build the Slack adapter; `lookups` is the store's port for adapters. Raises `ConfigError` when the credentials do not fit together."""
    from botservice.adapters.slack.app import SlackAdapter

    return SlackAdapter(settings, core, lookups)


__all__ = ["create_adapter"]

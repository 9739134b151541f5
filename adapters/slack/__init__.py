"""Slack: mentions, thread follow-ups, DMs and assistant threads, answered through the core."""

from __future__ import annotations

from botservice.core.conversation import ConversationCore
from botservice.core.ports import Adapter
from botservice.core.settings import Settings


def create_adapter(settings: Settings, core: ConversationCore) -> Adapter:
    """Build the Slack adapter. Raises `ConfigError` when the credentials do not fit together."""
    from botservice.adapters.slack.app import SlackAdapter

    return SlackAdapter(settings, core)


__all__ = ["create_adapter"]

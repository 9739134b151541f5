"""Who manages a channel: one policy, fed by the facts each adapter knows.

Adapters know their platform's facts (a Slack workspace admin, a Discord member
with Manage Channels, a direct message) and hand them to `ChannelPolicy.manages`
when they build an `IncomingMessage` (its `is_channel_admin`). The core asks the
same policy whether a message's sender may change the channel's settings. The
rules live here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from botservice.core.events import IncomingMessage

# Who holds the channel-manager right, in words a refused person understands.
# Plain words only: the core knows platforms by name, never by SDK.
CHANNEL_MANAGERS = {
    "slack": "workspace admins and owners",
    "discord": "members with the Manage Channels permission",
    "console": "the console user",
}

# Platforms where the person in a direct message with the bot manages it: on Discord
# they are its only member. Slack's direct messages stay with workspace admins.
MEMBERS_MANAGE_DIRECT_MESSAGES = frozenset({"discord"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagerFacts:
    """What an adapter knows about a person in a channel that bears on managing it.

    Each platform fills in what it has; the rest stays False.
    """

    platform: str
    user_id: str
    # A direct message between the person and the bot.
    direct: bool = False
    # Slack: a workspace admin, owner or primary owner (`users.info`).
    workspace_admin: bool = False
    # Discord: the Manage Channels permission in this channel.
    manage_channels: bool = False
    # Discord: the server's owner (who holds every permission anyway).
    guild_owner: bool = False
    # Discord: an owner of the bot's application, or a member of its team.
    bot_owner: bool = False


class ChannelPolicy:
    """Decides who may change a channel's settings (instructions, model, retention, speech).

    `admin_user_ids` are the operator's configured bot admins (`access.admin_user_ids`):
    they manage every channel on every platform.
    """

    def __init__(self, admin_user_ids: Iterable[str] = ()) -> None:
        self._admins = frozenset(admin_user_ids)

    def is_bot_admin(self, user_id: str) -> bool:
        return user_id in self._admins

    def manages(self, facts: ManagerFacts) -> bool:
        """Whether the person the facts describe manages the channel."""
        return (
            self.is_bot_admin(facts.user_id)
            or facts.workspace_admin
            or facts.manage_channels
            or facts.guild_owner
            or facts.bot_owner
            or (facts.direct and facts.platform in MEMBERS_MANAGE_DIRECT_MESSAGES)
        )

    def may_manage(self, message: IncomingMessage) -> bool:
        """Whether the sender may change the channel's settings: the adapter asked
        `manages` when it built the message; a configured bot admin always may."""
        return message.is_channel_admin or self.is_bot_admin(message.user_id)

    def may_choose_model(self, message: IncomingMessage) -> bool:
        """Everyone manages their own direct messages, but the model stays with the bot's
        admins there: the operator pays for it."""
        return not message.is_direct or self.is_bot_admin(message.user_id)

    @staticmethod
    def managers(platform: str) -> str:
        """Who may change a channel's settings on `platform`, in words."""
        managers = CHANNEL_MANAGERS.get(platform, "channel managers")
        return f"{managers}, or people the operator listed as bot admins"

"""Pure pieces of the translation from Discord to the core."""

from __future__ import annotations

from botservice.adapters.discord import events
from botservice.adapters.discord.reply_chains import ReplyChains
from botservice.core.channel_policy import ChannelPolicy


def test_the_bot_mention_is_stripped_from_the_question() -> None:
    assert events.strip_mention("<@42> what is <@7>?", 42) == "what is <@7>?"
    assert events.strip_mention("hey <@!42>", 42) == "hey"


def test_thread_names_come_from_the_prompt_and_fit_discord() -> None:
    assert events.thread_name("  Plan a\npicnic  ") == "Plan a picnic"
    long = events.thread_name("word " * 60)
    assert len(long) <= 100 and long.endswith("…") and not long.endswith(" …")
    assert events.thread_name("   ") == "Conversation"


def test_channel_admins_are_managers_owners_listed_ids_and_dm_users() -> None:
    def admin(**overrides: object) -> bool:
        values: dict[str, object] = {
            "manage_channels": False,
            "user_id": 5,
            "owner_ids": {1},
            "admin_user_ids": ("9",),
        }
        values.update(overrides)
        policy = ChannelPolicy(values.pop("admin_user_ids"))  # type: ignore[arg-type]
        return policy.manages(events.manager_facts(**values))  # type: ignore[arg-type]

    assert not admin()
    assert admin(manage_channels=True)
    assert admin(user_id=1)
    assert admin(user_id=9)
    assert admin(in_dm=True)


def test_reply_chains_forget_the_oldest_first() -> None:
    chains = ReplyChains(capacity=2)
    chains.remember(1, "root-a")
    chains.remember(2, "root-a", by_bot=True)
    chains.remember(3, "root-b")
    assert chains.root_of(1) is None
    assert chains.entry(2) == ("root-a", True)
    assert len(chains) == 2

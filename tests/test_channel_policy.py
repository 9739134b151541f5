"""Who manages a channel: the rules of `ChannelPolicy`, fed the facts each adapter knows."""

from __future__ import annotations

from botservice.core.channel_policy import ChannelPolicy, ManagerFacts
from tests.chat_kit import Chat

POLICY = ChannelPolicy(admin_user_ids=("UBOSS", "42"))


def test_a_slack_workspace_admin_or_owner_manages_a_channel_and_a_member_does_not() -> None:
    assert POLICY.manages(ManagerFacts(platform="slack", user_id="UADMIN", workspace_admin=True))
    assert not POLICY.manages(ManagerFacts(platform="slack", user_id="UMEMBER"))


def test_on_slack_a_direct_message_stays_with_workspace_admins() -> None:
    assert not POLICY.manages(ManagerFacts(platform="slack", user_id="UMEMBER", direct=True))
    assert POLICY.manages(
        ManagerFacts(platform="slack", user_id="UADMIN", direct=True, workspace_admin=True)
    )


def test_on_discord_manage_channels_the_server_owner_or_the_bots_owner_manage() -> None:
    member = ManagerFacts(platform="discord", user_id="5")
    assert not POLICY.manages(member)
    assert POLICY.manages(ManagerFacts(platform="discord", user_id="5", manage_channels=True))
    assert POLICY.manages(ManagerFacts(platform="discord", user_id="5", guild_owner=True))
    assert POLICY.manages(ManagerFacts(platform="discord", user_id="5", bot_owner=True))


def test_on_discord_the_person_in_a_direct_message_manages_it() -> None:
    assert POLICY.manages(ManagerFacts(platform="discord", user_id="5", direct=True))


def test_configured_bot_admins_manage_every_channel_on_every_platform() -> None:
    for platform in ("slack", "discord", "console", "test"):
        assert POLICY.manages(ManagerFacts(platform=platform, user_id="UBOSS"))
    assert POLICY.manages(ManagerFacts(platform="discord", user_id="42"))
    assert not ChannelPolicy().manages(ManagerFacts(platform="slack", user_id="UBOSS"))


def test_the_core_lets_a_manager_or_a_bot_admin_change_settings() -> None:
    chat = Chat()
    assert POLICY.may_manage(chat.message("set", admin=True))
    assert POLICY.may_manage(chat.message("set", user="UBOSS"))
    assert not POLICY.may_manage(chat.message("set", user="U1"))


def test_in_direct_messages_only_bot_admins_choose_the_model() -> None:
    chat = Chat()
    # Managing one's own direct messages does not extend to the operator's model bill.
    assert not POLICY.may_choose_model(chat.message("model", admin=True, direct=True))
    assert POLICY.may_choose_model(chat.message("model", user="UBOSS", direct=True))
    assert POLICY.may_choose_model(chat.message("model", admin=True))


def test_a_refusal_names_who_manages_on_that_platform() -> None:
    assert POLICY.managers("slack").startswith("workspace admins and owners")
    assert POLICY.managers("discord").startswith("members with the Manage Channels permission")
    assert POLICY.managers("test") == (
        "channel managers, or people the operator listed as bot admins"
    )

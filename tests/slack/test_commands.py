"""The slash command: channel settings, ephemeral answers, and who may change what."""

from __future__ import annotations

from tests.fakes.model_server import FakeModelServer
from tests.slack.harness import SlackHarness, slack_settings


async def test_non_admin_is_refused_and_admin_accepted_and_next_answer_follows(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    refused = await bot.command("instructions set Answer like a pirate.", user="UALICE")
    assert refused["response_type"] == "ephemeral"
    assert "workspace admins and owners" in refused["text"]

    accepted = await bot.command("instructions set Answer like a pirate.", user="UADMIN")
    assert accepted["response_type"] == "ephemeral"
    assert "updated" in accepted["text"].lower()

    shown = await bot.command("instructions show", user="UALICE")
    assert "Answer like a pirate." in shown["text"]

    await bot.event(bot.mention("ahoy?"))
    await bot.settle()
    system = fake_model.chat_requests[-1].body["messages"][0]
    assert system["role"] in ("system", "developer")
    assert "Answer like a pirate." in system["content"]
    # Command answers ride on the acknowledgement: nothing is posted in the channel.
    assert bot.slack.count("chat.postEphemeral") == 0
    assert [m.text for m in bot.slack.messages.values() if m.thread_ts is None] == []


async def test_listed_admin_user_ids_may_change_settings(
    bot: SlackHarness,
) -> None:
    # UBOB is no workspace admin; the operator lists him in config instead.
    settings = slack_settings(
        model_url=bot.settings.model.base_url,
        slack_url=bot.slack.base_url,
        database_url=bot.settings.database_url,
        extra={"BOTSERVICE_ACCESS__ADMIN_USER_IDS": "UBOB"},
    )
    other = await SlackHarness.start(bot.slack, settings, bot.store)
    try:
        answer = await other.command("model set gpt-4o", user="UBOB")
        assert "now uses the model gpt-4o" in answer["text"]
        refused = await other.command("model set gpt-4o", user="UALICE")
        assert "Only" in refused["text"]
    finally:
        await other.close()


async def test_help_and_unknown_commands_answer_privately(bot: SlackHarness) -> None:
    for text in ("", "help", "frobnicate now"):
        answer = await bot.command(text)
        assert answer["response_type"] == "ephemeral"
        assert "instructions show" in answer["text"]


async def test_admin_flag_comes_from_a_cached_users_info(bot: SlackHarness) -> None:
    await bot.command("instructions show", user="UADMIN")
    await bot.command("retention set 7", user="UADMIN")
    await bot.event(bot.mention("hi", user="UADMIN"))
    await bot.settle()
    assert [c.args.get("user") for c in bot.slack.calls_to("users.info")] == ["UADMIN"]


async def test_in_a_direct_message_only_bot_admins_choose_the_model(bot: SlackHarness) -> None:
    # UADMIN is a workspace admin: enough in a channel, not for the operator's key in a DM.
    refused = await bot.command("model set gpt-4o", user="UADMIN", channel="D0DIRECT")
    assert "In direct messages only the bot's admins can change the model" in refused["text"]
    shown = await bot.command("model show", user="UADMIN", channel="D0DIRECT")
    assert "(the default)" in shown["text"]

    in_channel = await bot.command("model set gpt-4o", user="UADMIN")
    assert "now uses the model gpt-4o" in in_channel["text"]

"""The pure translation table against recorded Slack payloads."""

from __future__ import annotations

import pytest

from botservice.adapters.slack.events import (
    AssistantThreadStarted,
    BotIdentity,
    Converse,
    DeleteMessage,
    Ignore,
    ReplyTarget,
    SlackUser,
    WorkspaceGone,
    build_incoming,
    delivered_message_key,
    plain_text,
    slash_command,
    thread_context,
    translate_event,
    user_from_info,
)
from tests.slack.harness import payload

BOT = BotIdentity(user_id="UBOT0001", bot_id="BBOT0001")


def test_mention_becomes_a_message_keyed_by_channel_and_ts() -> None:
    action = translate_event(payload("app_mention"), BOT)
    assert isinstance(action, Converse) and not action.only_in_known_thread
    message = build_incoming(
        action.draft, user=SlackUser("UALICE", "Alice"), is_channel_admin=False
    )
    assert message.platform == "slack"
    assert message.conversation == ("slack", "T0001", "C0GENERAL", "1767000000.000100")
    assert message.message_key == "C0GENERAL:1767000000.000100"
    assert message.text == "what is the capital of France?"
    assert message.user_name == "Alice"
    assert ReplyTarget.from_dict(message.reply_target) == ReplyTarget(
        team="T0001", channel="C0GENERAL", thread_ts="1767000000.000100", user="UALICE"
    )


def test_the_message_twin_of_a_mention_shares_the_key_but_is_left_to_app_mention() -> None:
    assert isinstance(translate_event(payload("message_channels"), BOT), Ignore)


def test_a_delivery_names_the_message_it_carries_as_its_translation_would() -> None:
    # Read before any translation, to acknowledge a repeat from memory: it must name
    # exactly the key the message is stored under.
    for name in ("app_mention", "message_channels", "message_thread_reply", "message_im"):
        body = payload(name)
        action = translate_event(body, BOT)
        assert delivered_message_key(body) == f"{body['event']['channel']}:{body['event']['ts']}"
        if isinstance(action, Converse):
            assert delivered_message_key(body) == action.draft.message_key
    edited = payload("message_thread_reply")
    edited["event"]["subtype"] = "message_changed"
    assert delivered_message_key(edited) is None
    assert delivered_message_key({"event": {"type": "reaction_added", "ts": "1.2"}}) is None
    assert delivered_message_key({"type": "url_verification"}) is None


def test_thread_reply_only_counts_in_known_threads() -> None:
    action = translate_event(payload("message_thread_reply"), BOT)
    assert isinstance(action, Converse) and action.only_in_known_thread
    assert action.draft.thread == "1767000000.000100"


def test_direct_messages_top_level_share_one_conversation_and_threads_are_their_own() -> None:
    action = translate_event(payload("message_im"), BOT)
    assert isinstance(action, Converse)
    assert action.draft.thread == "" and action.draft.reply_target().thread_ts is None
    assistant = translate_event(payload("message_im_assistant_thread"), BOT)
    assert isinstance(assistant, Converse)
    assert assistant.draft.thread == "1767000400.000700"
    assert assistant.draft.reply_target().assistant


@pytest.mark.parametrize(
    "name", ["message_bot", "message_changed", "reaction_added", "url_verification"]
)
def test_ignored_payloads(name: str) -> None:
    assert isinstance(translate_event(payload(name), BOT), Ignore)


def test_own_messages_are_ignored_even_without_bot_id() -> None:
    data = payload("message_im")
    data["event"]["user"] = "UBOT0001"
    assert isinstance(translate_event(data, BOT), Ignore)


def test_deletion_uninstall_revocation_and_assistant_start() -> None:
    assert translate_event(payload("message_deleted"), BOT) == DeleteMessage(
        "T0001", "C0GENERAL", "1767000100.000200"
    )
    assert translate_event(payload("app_uninstalled"), BOT) == WorkspaceGone("T0001", None, True)
    assert translate_event(payload("tokens_revoked"), BOT) == WorkspaceGone("T0001", None, False)
    assert translate_event(payload("assistant_thread_started"), BOT) == AssistantThreadStarted(
        "T0001", "D0BOBDM", "1767000400.000700", "UBOB"
    )


def test_files_are_listed_with_their_types() -> None:
    action = translate_event(payload("app_mention_with_image"), BOT)
    assert isinstance(action, Converse)
    assert [(f.name, f.mimetype) for f in action.draft.files] == [
        ("cat.png", "image/png"),
        ("report.pdf", "application/pdf"),
    ]


def test_slack_markup_to_plain_text() -> None:
    text = "<@UBOT0001> ask <@U2|bob> in <#C1|general> about <https://x.y|this> &amp; <!here> <mailto:a@b.c|a@b.c>"
    assert plain_text(text, bot_user_id="UBOT0001") == (
        "ask @bob in #general about this (https://x.y) & @here a@b.c (mailto:a@b.c)"
    )


def test_users_info_gives_name_and_admin_right() -> None:
    response = {
        "ok": True,
        "user": {
            "id": "U1",
            "name": "ada",
            "is_admin": False,
            "is_owner": True,
            "profile": {"display_name": "", "real_name": "Ada L."},
        },
    }
    assert user_from_info("U1", response) == SlackUser("U1", "Ada L.", True)
    assert user_from_info("U2", {"ok": False}) == SlackUser("U2", "U2", False)


def test_thread_context_leaves_out_placeholders_and_later_messages() -> None:
    replies = [
        {"user": "UBOB", "text": "first", "ts": "1.000001"},
        {"user": "UBOT0001", "bot_id": "BBOT0001", "text": "_Thinking…_", "ts": "2.000001"},
        {"bot_id": "BX", "username": "ci", "text": "build red", "ts": "3.000001"},
        {"user": "UALICE", "text": "<@UBOT0001> why?", "ts": "4.000001"},
        {"user": "UALICE", "text": "later", "ts": "5.000001"},
    ]
    context = thread_context(
        replies,
        before_ts="4.000001",
        bot=BOT,
        names={"UBOB": "Bob"},
        max_chars=1000,
        placeholder="_Thinking…_",
    )
    assert [(c.author_name, c.text, c.from_bot) for c in context] == [
        ("Bob", "first", False),
        ("ci", "build red", True),
    ]
    assert len(thread_context(replies, before_ts="9", bot=BOT, names={}, max_chars=20)) == 1


def test_slash_command_payload() -> None:
    command = slash_command(payload("slash_command"))
    assert command is not None
    message = command.message(is_channel_admin=True)
    assert message.message_key.startswith("command:")
    assert (message.channel, message.user_id, message.text) == (
        "C0GENERAL",
        "UALICE",
        "instructions show",
    )
    assert slash_command({"channel_id": "C1"}) is None

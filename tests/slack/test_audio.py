"""Slack audio clips: downloaded with the bot token, transcribed by the fake model server's
`/audio/transcriptions`, and answered with the transcript shown above the reply."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from botservice.adapters.slack.events import (
    BotIdentity,
    Converse,
    SlackUser,
    build_incoming,
    translate_event,
)
from botservice.core.events import Attachment
from tests.fakes.model_server import FakeModelServer
from tests.fakes.slack_api import BOT_USER_ID, FakeSlackApi, PostedMessage
from tests.slack.harness import SlackHarness

DM = "D0BOBDM"


def audio_clip(bot: SlackHarness, data: bytes, *, size: int | None = None) -> dict[str, Any]:
    """A DM carrying an audio clip recorded in Slack, as Slack delivers it."""
    event_body = bot.direct("")
    event = event_body["event"]
    event["subtype"] = "file_share"
    event["files"] = [
        {
            "id": "F0AUDIO1",
            "name": "audio_message.webm",
            "title": "Audio clip",
            "mimetype": "audio/webm",
            "filetype": "webm",
            "subtype": "slack_audio",
            "media_display_type": "audio",
            "mode": "hosted",
            "size": len(data) if size is None else size,
            "url_private": bot.slack.add_file("audio_message.webm", "audio/webm", data),
            "url_private_download": bot.slack.add_file("audio_message.webm", "audio/webm", data),
        }
    ]
    return event_body


async def answer_in(slack: FakeSlackApi, channel: str, part: str, seconds: float = 10) -> str:
    """The text of the bot's message in the DM once it contains `part`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        posted: list[PostedMessage] = slack.thread(channel, None)
        for message in posted:
            if part in message.text:
                return message.text
        await asyncio.sleep(0.02)
    shown = [m.text for m in slack.thread(channel, None)]
    raise AssertionError(f"no answer with {part!r}: {shown}")


async def test_an_audio_clip_is_transcribed_and_answered(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    fake_model.transcript = "Remind me what a mutex is."

    status, _ = await bot.event(audio_clip(bot, b"\x1aE\xdf\xa3 webm audio"))
    assert status == 200

    text = await answer_in(bot.slack, DM, "You said:")
    await bot.settle()
    assert text == (
        "> \N{MICROPHONE} \N{LEFT DOUBLE QUOTATION MARK}Remind me what a mutex is."
        "\N{RIGHT DOUBLE QUOTATION MARK}\nYou said: Remind me what a mutex is."
    )
    assert bot.slack.file_downloads == [("audio_message.webm", "Bearer xoxb-test-token")]
    [transcription] = [r for r in fake_model.requests if r.path.endswith("/audio/transcriptions")]
    assert transcription.body["model"] == "whisper-1"
    assert fake_model.chat_requests[-1].last_user_text == "Remind me what a mutex is."


async def test_an_audio_clip_too_large_to_transcribe_gets_one_sentence(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    await bot.event(audio_clip(bot, b"tiny", size=40 * 1024 * 1024))

    text = await answer_in(bot.slack, DM, "That audio is too long")
    assert "the limit is 25.0 MB" in text
    assert bot.slack.file_downloads == []
    assert fake_model.requests == []


async def test_a_quickly_heard_clip_is_stored_before_slack_is_acknowledged(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    fake_model.transcript = "Store me before the ack."
    clip = audio_clip(bot, b"\x1aE\xdf\xa3 webm audio")

    status, _ = await bot.event(clip)

    assert status == 200
    key = f"{DM}:{clip['event']['ts']}"
    assert await bot.store.claim_key("slack", key) is False, "not stored when Slack got its 200"
    await answer_in(bot.slack, DM, "You said:")
    await bot.settle()


async def test_a_slowly_heard_clip_is_stored_before_slack_is_acknowledged(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    fake_model.transcript = "Take your time."
    fake_model.transcription_delay = 2.5  # most of the three seconds Slack waits
    clip = audio_clip(bot, b"\x1aE\xdf\xa3 webm audio")

    started = time.monotonic()
    status, _ = await bot.event(clip)

    assert status == 200
    assert time.monotonic() - started < 2.5, "Slack waited for the transcription"
    key = f"{DM}:{clip['event']['ts']}"
    assert await bot.store.claim_key("slack", key) is False, "not stored when Slack got its 200"
    text = await answer_in(bot.slack, DM, "You said:")
    await bot.settle()
    assert text.endswith("\nYou said: Take your time.")


async def test_a_clip_left_unheard_by_a_crash_is_heard_when_its_turn_resumes(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    # What a crash mid-transcription leaves: the clip stored by name and URL, its turn pending.
    fake_model.transcript = "Did you get my clip?"
    action = translate_event(audio_clip(bot, b"\x1aE\xdf\xa3 webm audio"), BotIdentity(BOT_USER_ID))
    assert isinstance(action, Converse)
    [ref] = action.draft.files
    clip = Attachment(name=ref.name, content_type=ref.mimetype, url=ref.url, size=ref.size)
    message = build_incoming(
        action.draft, user=SlackUser("UBOB", "Bob"), is_channel_admin=False, attachments=(clip,)
    )
    assert await bot.store.accept(
        message, text="[Attached: audio_message.webm (audio/webm)]", tokens=5
    )

    assert await bot.core.resume_pending(bot.adapter.sink_for) == 1
    text = await answer_in(bot.slack, DM, "You said:")
    await bot.settle()

    assert text == (
        "> \N{MICROPHONE} \N{LEFT DOUBLE QUOTATION MARK}Did you get my clip?"
        "\N{RIGHT DOUBLE QUOTATION MARK}\nYou said: Did you get my clip?"
    )
    assert bot.slack.file_downloads == [("audio_message.webm", "Bearer xoxb-test-token")]
    assert fake_model.chat_requests[-1].last_user_text == "Did you get my clip?"
    assert await bot.store.pending_turns() == []

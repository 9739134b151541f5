"""Slack audio clips: downloaded with the bot token, transcribed by the fake model server's
`/audio/transcriptions`, and answered with the transcript shown above the reply."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.fakes.model_server import FakeModelServer
from tests.fakes.slack_api import FakeSlackApi, PostedMessage
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

"""An image the model made, posted into the answer's thread with files.uploadV2 (real
slack_sdk against the fake Web API: an upload URL, the bytes, then completing it in
the channel and thread)."""

from __future__ import annotations

from datetime import UTC, datetime

from botservice.core.events import ConversationKey
from botservice.core.ports import GeneratedFile, PendingTurn, abilities_of
from tests.fakes.slack_api import FakeSlackApi, UploadedFile
from tests.slack.harness import CHANNEL, TEAM, SlackHarness

THREAD = "1767100001.000100"
PICTURE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


async def test_a_generated_image_is_uploaded_into_the_thread(
    bot: SlackHarness, slack_api: FakeSlackApi
) -> None:
    turn = PendingTurn(
        turn_id=1,
        conversation_id=1,
        user_message_id=1,
        platform="slack",
        conversation=ConversationKey("slack", TEAM, CHANNEL, THREAD),
        reply_target={"team": TEAM, "channel": CHANNEL, "thread_ts": THREAD, "user": "UALICE"},
        reply_ref=None,
        created_at=datetime.now(UTC),
    )
    sink = bot.adapter.sink_for(turn)
    assert sink is not None
    post_file = abilities_of(sink).post_file
    assert post_file is not None, "a Slack answer can post files"

    await post_file(GeneratedFile(name="image-1.png", data=PICTURE, content_type="image/png"))

    assert slack_api.uploads == [
        UploadedFile(
            file_id=slack_api.uploads[0].file_id,
            filename="image-1.png",
            title="image-1.png",
            data=PICTURE,
            channel=CHANNEL,
            thread_ts=THREAD,
        )
    ]
    [asked] = slack_api.calls_to("files.getUploadURLExternal")
    assert asked.args["length"] == str(len(PICTURE))

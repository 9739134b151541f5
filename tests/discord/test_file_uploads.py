"""An image the model made, posted below the answer as an attachment (real discord.py
against the fake Discord API: a multipart message with the file, served by the fake CDN)."""

from __future__ import annotations

from datetime import UTC, datetime

import aiohttp

from botservice.core.events import ConversationKey
from botservice.core.ports import GeneratedFile, PendingTurn, abilities_of
from tests.discord.conftest import Guild

PICTURE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


async def test_a_generated_image_is_posted_as_an_attachment_in_the_channel(guild: Guild) -> None:
    server = guild.server
    asked = await server.send_message("Draw a lighthouse", author=server.alice)
    turn = PendingTurn(
        turn_id=1,
        conversation_id=1,
        user_message_id=1,
        platform="discord",
        conversation=ConversationKey("discord", server.guild_id, server.channel_id, asked["id"]),
        reply_target={"kind": "message", "channel_id": server.channel_id, "reply_to": asked["id"]},
        reply_ref=None,
        created_at=datetime.now(UTC),
    )
    sink = guild.adapter.sink_for(turn)
    assert sink is not None
    post_file = abilities_of(sink).post_file
    assert post_file is not None, "a Discord answer can post files"

    await post_file(GeneratedFile(name="image-1.png", data=PICTURE, content_type="image/png"))

    [posted] = server.bot_messages(server.channel_id)
    [attachment] = posted["attachments"]
    assert attachment["filename"] == "image-1.png"
    assert attachment["size"] == len(PICTURE)
    async with aiohttp.ClientSession() as session, session.get(attachment["url"]) as response:
        assert await response.read() == PICTURE
    assert posted["content"] == ""

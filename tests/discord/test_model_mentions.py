"""Discord answers never ping: every message the bot writes says so to Discord, even
when the model was steered into writing mentions."""

from __future__ import annotations

from tests.discord.conftest import Guild, option
from tests.fakes.model_server import Reply

HOSTILE = "@everyone @here look <@1234567890> and <@&987654321>, <#55555>"


async def test_a_steered_answer_allows_no_mentions(guild: Guild) -> None:
    server = guild.server
    guild.model.script(Reply(HOSTILE, chunk_size=8), Reply(HOSTILE))
    asked = await server.send_message("Ping everyone.", mention_bot=True)
    await guild.reply_to(asked)
    interaction = await server.send_command("ask", [option("prompt", "Ping everyone.")])
    await guild.original_response(interaction)

    writes = [c for c in server.calls if c.is_message_write or "/webhooks/" in c.path]
    with_content = [c for c in writes if isinstance(c.json, dict) and c.json.get("content")]
    assert any(HOSTILE in c.json["content"] for c in with_content)
    for call in with_content:
        allowed = call.json.get("allowed_mentions")
        assert allowed is not None, f"{call.method} {call.path} allows Discord's default"
        assert allowed.get("parse") == [], call.json
        assert not allowed.get("users") and not allowed.get("roles")
        assert not allowed.get("replied_user")

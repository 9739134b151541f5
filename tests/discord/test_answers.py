"""How answers appear: streamed by edits, split at 2,000 characters, failures in one sentence."""

from __future__ import annotations

import asyncio
import time

from tests.discord.conftest import Guild, option
from tests.fakes.model_server import Refuse, Reply


def _long_answer() -> str:
    prose = " ".join(f"word{n}" for n in range(300))  # about 2,400 characters
    code = "\n".join(f"    print({n})  # line {n}" for n in range(60))  # about 1,600
    return f"{prose}\n\n```python\n{code}\n```\n\nThat is all."


async def test_a_long_answer_is_split_without_cutting_the_code_block(guild: Guild) -> None:
    server = guild.server
    answer = _long_answer()
    guild.model.script(Reply(answer, chunk_size=400))
    asked = await server.send_message("Write a lot.", mention_bot=True)
    await guild.reply_to(asked)

    parts = [m["content"] for m in server.bot_messages(server.channel_id)]
    assert len(parts) >= 2
    assert all(len(part) <= 2000 for part in parts)
    assert all(part.count("```") % 2 == 0 for part in parts)
    code_part = next(part for part in parts if "```python" in part)
    assert "print(0)" in code_part and "print(59)" in code_part
    assert parts[-1].endswith("That is all.")


async def test_a_long_ask_answer_continues_in_follow_ups(guild: Guild) -> None:
    server = guild.server
    guild.model.script(Reply(_long_answer(), chunk_size=4000))
    interaction = await server.send_command("ask", [option("prompt", "Write a lot.")])
    original = await guild.original_response(interaction)

    followups = await server.wait_until(lambda: server.followups(interaction), what="follow-ups")
    parts = [original["content"]] + [m["content"] for m in followups]
    assert all(len(part) <= 2000 for part in parts)
    assert parts[-1].endswith("That is all.")


async def test_streaming_edits_show_text_at_once_then_the_final_text(guild: Guild) -> None:
    server = guild.server
    guild.model.script(
        Reply("one two three four five six", chunk_size=4, delay_between_chunks=0.03)
    )
    asked = await server.send_message("Count.", mention_bot=True)
    reply = await guild.reply_to(asked)

    edits = [c for c in server.calls_to("PATCH", "/messages/") if reply["id"] in c.path]
    shown = [c.json["content"] for c in edits]
    assert len(shown) >= 2  # streamed: more than the final edit
    assert not shown[0].startswith("\N{HOURGLASS WITH FLOWING SAND}")
    assert shown[-1] == "one two three four five six"
    assert reply["content"] == "one two three four five six"


async def test_each_reply_streams_at_its_own_pace(guild: Guild) -> None:
    """No process-wide edit timer: two channels both show their first text at once."""
    server = guild.server
    answers = [Reply("a " * 40, chunk_size=2, delay_between_chunks=0.01) for _ in range(2)]
    guild.model.script(*answers)
    started = time.monotonic()
    first = await server.send_message("one", mention_bot=True)
    second = await server.send_message("two", mention_bot=True, channel_id=server.second_channel_id)
    await asyncio.gather(guild.reply_to(first), guild.reply_to(second))

    first_text_at: dict[str, float] = {}
    for call in server.calls_to("PATCH", "/messages/"):
        channel = call.path.split("/")[2]
        first_text_at.setdefault(channel, call.at - started)
    assert set(first_text_at) == {server.channel_id, server.second_channel_id}
    assert max(first_text_at.values()) < 0.5


async def test_a_model_failure_is_shown_as_one_sentence(guild: Guild) -> None:
    server = guild.server
    guild.model.script(Refuse(status=401, message="bad key"))
    asked = await server.send_message("Hello?", mention_bot=True)
    reply = await guild.reply_to(asked)
    assert reply["content"] == (
        "The model endpoint refused my credentials; an operator needs to check the API key."
    )

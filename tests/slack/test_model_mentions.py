"""An answer steered into mentioning people (by the asker, or by a quoted thread) is
shown as text: no `@channel`, no user or group ping, no link to a non-web target."""

from __future__ import annotations

import re

from tests.fakes.model_server import FakeModelServer, Reply
from tests.slack.harness import CHANNEL, SlackHarness

HOSTILE = (
    "Alert [everyone](!channel) and [the admin](@U0ADMIN), see [#ops](#C0OPS), "
    "ping [oncall](!subteam^S0ONCALL|@oncall), <!here> <!everyone> <@U0ADMIN> "
    "and [docs](https://example.com/a?b=1)."
)


async def test_a_steered_answer_mentions_nobody(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    fake_model.script(Reply(HOSTILE, chunk_size=12))
    mention = bot.mention("Please alert everyone.")
    await bot.event(mention)
    await bot.settle()

    [answer] = bot.slack.thread(CHANNEL, mention["event"]["ts"])
    # Every text Slack was given for this answer, streamed edits included.
    shown = [
        str(call.args.get("text", ""))
        for call in bot.slack.calls
        if call.method in ("chat.postMessage", "chat.update")
    ]
    assert answer.text in shown
    for text in shown:
        links = re.findall(r"<([^>]*)>", text)
        assert all(link.startswith("https://") for link in links), text
    assert "&lt;!here&gt; &lt;!everyone&gt; &lt;@U0ADMIN&gt;" in answer.text
    assert "everyone (!channel)" in answer.text
    assert "<https://example.com/a?b=1&amp;|docs>" not in answer.text
    assert "<https://example.com/a?b=1|docs>" in answer.text

"""The 👍 / 👎 buttons under a final answer.

They are discord.py dynamic items: the custom id carries the verdict and the turn
(`botservice_feedback:up:42`), so a click is understood from the id alone, after a
restart too, and nothing is kept per message. A click becomes the client event
`feedback_click` (see `feedback.DiscordFeedback`).
"""

from __future__ import annotations

import re
from typing import Any

import discord

FEEDBACK_PREFIX = "botservice_feedback"
_EMOJI = {"up": "\N{THUMBS UP SIGN}", "down": "\N{THUMBS DOWN SIGN}"}


class FeedbackButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=FEEDBACK_PREFIX + r":(?P<verdict>up|down):(?P<turn>[0-9]{1,18})",
):
    def __init__(self, verdict: str, turn_tag: str) -> None:
        super().__init__(
            discord.ui.Button(
                style=discord.ButtonStyle.secondary,
                emoji=_EMOJI[verdict],
                custom_id=f"{FEEDBACK_PREFIX}:{verdict}:{turn_tag}",
            )
        )
        self.verdict = verdict
        self.turn_tag = turn_tag

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[discord.Client],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> FeedbackButton:
        return cls(match["verdict"], match["turn"])

    async def callback(self, interaction: discord.Interaction[discord.Client]) -> None:
        # Handled by the adapter (`BotClient.on_feedback_click`), not by this item.
        interaction.client.dispatch("feedback_click", interaction, self.verdict, self.turn_tag)


def feedback_view(turn_tag: str) -> discord.ui.View | None:
    """The buttons for the answer of turn `turn_tag`; None for a tag that names no turn."""
    if not turn_tag.isdigit() or len(turn_tag) > 18:
        return None
    view = discord.ui.View(timeout=None)
    for verdict in ("up", "down"):
        view.add_item(FeedbackButton(verdict, turn_tag))
    return view

"""A click on an answer's 👍 / 👎 buttons: stored through the same `record_feedback` as
Slack's clicks, acknowledged with a message only the clicker sees."""

from __future__ import annotations

import logging
from typing import Any

import discord

from botservice.adapters.discord import events
from botservice.adapters.discord.context import DiscordContext
from botservice.adapters.discord.interactions import defer_response
from botservice.core.feedback import FeedbackClick, parse_verdict

log = logging.getLogger(__name__)

THANKS = {
    "up": "Thanks for the 👍, noted.",
    "down": "Thanks for the 👎, noted: it helps make the answers better.",
}
GONE = "I no longer have that answer, so that click was not kept."
FAILED = "I could not keep that click just now; please try again."


class DiscordFeedback:
    def __init__(self, context: DiscordContext) -> None:
        self._context = context

    async def on_click(
        self, interaction: discord.Interaction[Any], verdict: str, turn_tag: str
    ) -> None:
        parsed = parse_verdict(f"{verdict}:{turn_tag}")
        if parsed is None:
            return
        if not await defer_response(interaction, ephemeral=True):
            return
        kept_verdict, turn_id = parsed
        place = events.place_of_interaction(interaction)
        message = interaction.message
        click = FeedbackClick(
            turn_id=turn_id,
            platform=events.PLATFORM,
            workspace=place.workspace,
            channel=place.channel,
            user_id=str(interaction.user.id),
            verdict=kept_verdict,
            answer_ref=str(message.id) if message is not None else "",
        )
        try:
            kept = await self._context.core.record_feedback(click)
        except Exception:
            # The one boundary for clicks: log with the stack, tell the person one sentence.
            log.exception("could not keep a Discord feedback click on turn %s", turn_id)
            await interaction.edit_original_response(content=FAILED)
            return
        if not kept:
            log.info("a Discord feedback click on turn %s named no answer it has", turn_id)
        await interaction.edit_original_response(content=THANKS[kept_verdict] if kept else GONE)

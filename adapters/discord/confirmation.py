"""A click on Approve or Deny under a tool call's question: decided by the core, shown
in the question's message (approved, denied, already decided) or told only to the
clicker (not theirs to decide, expired). A question nobody waits for any more (its
realtime voice session ended, or the process that asked restarted) is told to the
clicker as expired and loses its buttons; nothing runs."""

from __future__ import annotations

import logging
from typing import Any

import discord

from botservice.adapters.discord import events
from botservice.adapters.discord.confirmation_buttons import decided_text, mention, parse_custom_id
from botservice.adapters.discord.context import DiscordContext
from botservice.adapters.discord.interactions import defer_response
from botservice.adapters.discord.sink import NO_MENTIONS

log = logging.getLogger(__name__)

ONLY_ASKER = "Only {asker} can approve this."
EXPIRED = "This request has expired."
ALREADY_DECIDED = "This request was already decided or has timed out."
# The question's last line once a click found nobody waiting for its answer.
EXPIRED_OUTCOME = "\N{HOURGLASS} Expired before an answer: not run."
FAILED = "I could not record that click just now; please try again."


class DiscordConfirmations:
    def __init__(self, context: DiscordContext) -> None:
        self._context = context

    async def on_click(self, interaction: discord.Interaction[Any], custom_id: str) -> None:
        choice = parse_custom_id(custom_id)
        if choice is None:
            log.info("a Discord Approve/Deny click that names no confirmation was ignored")
            await _tell_only_them(interaction, EXPIRED, deferred=False)
            return
        # A deferred update: the clicked message is the one the outcome edits, and
        # Discord's three seconds never wait for the database.
        if not await defer_response(interaction, ephemeral=False, thinking=False):
            return
        clicker = str(interaction.user.id)
        try:
            decision = await self._context.core.decide_tool_call(
                choice.confirmation_id,
                platform=events.PLATFORM,
                user_id=clicker,
                approve=choice.approve,
            )
        except Exception:
            # The one boundary for these clicks: the stack to the log, one sentence to
            # the person; the buttons stay, so they can click again.
            log.exception("could not decide Discord confirmation %s", choice.confirmation_id)
            await _tell_only_them(interaction, FAILED, deferred=True)
            return
        if decision == "not_asker":
            asker = mention(choice.asker_id) or "the person who asked"
            await _tell_only_them(interaction, ONLY_ASKER.format(asker=asker), deferred=True)
            return
        if decision == "unknown":
            await _tell_only_them(interaction, EXPIRED, deferred=True)
            return
        if decision == "expired":
            await _tell_only_them(interaction, EXPIRED, deferred=True)
            await self._show(interaction, choice.confirmation_id, EXPIRED_OUTCOME)
            return
        outcome = {
            "approved": f"\N{WHITE HEAVY CHECK MARK} Approved by <@{clicker}>",
            "denied": f"\N{NO ENTRY SIGN} Denied by <@{clicker}>",
        }.get(decision, ALREADY_DECIDED)
        await self._show(interaction, choice.confirmation_id, outcome)

    async def _show(
        self, interaction: discord.Interaction[Any], confirmation_id: int, outcome: str
    ) -> None:
        """The question's buttons go and its last line says `outcome`."""
        shown = interaction.message.content if interaction.message is not None else ""
        try:
            await interaction.edit_original_response(
                content=decided_text(shown, outcome), view=None, allowed_mentions=NO_MENTIONS
            )
        except discord.HTTPException as error:
            # The decision is recorded either way; only its display is lost.
            log.warning(
                "could not show the outcome of Discord confirmation %s (%s)",
                confirmation_id,
                error.status,
            )


async def _tell_only_them(
    interaction: discord.Interaction[Any], text: str, *, deferred: bool
) -> None:
    try:
        if deferred:
            await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
        else:
            await interaction.response.send_message(
                text, ephemeral=True, allowed_mentions=NO_MENTIONS
            )
    except discord.HTTPException as error:
        log.warning("could not answer a Discord Approve/Deny click (%s)", error.status)

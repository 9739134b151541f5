"""Approve / Deny before a tool call runs, on Discord: the question and its buttons.

The buttons are discord.py dynamic items, like the feedback buttons: the custom id
carries the choice, the confirmation id and the asker (`botservice_tool:approve:42:1234`),
nothing secret, so a click is understood from the id alone, after a restart too. A click
becomes the client event `confirmation_click` (see `confirmation.DiscordConfirmations`);
whether it counts is the core's to decide (`ConversationCore.decide_tool_call`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import discord

from botservice.core.tools import ConfirmationRequest

CONFIRM_PREFIX = "botservice_tool"
# The line under the question; what comes before it is kept when the message is edited
# to say what was decided.
RULE_MARK = "-# "
_SNOWFLAKE = re.compile(r"^[0-9]{1,20}$")
_CUSTOM_ID = re.compile(
    CONFIRM_PREFIX
    + r":(?P<choice>approve|deny):(?P<confirmation>[0-9]{1,18}):(?P<asker>[0-9]{1,20})"
)


@dataclass(frozen=True, slots=True)
class ConfirmationChoice:
    """What a button's custom id says: which confirmation, which answer, whose to give."""

    confirmation_id: int
    approve: bool
    asker_id: str


def parse_custom_id(custom_id: str) -> ConfirmationChoice | None:
    """The choice a confirmation button's custom id names; None for a forged or junk id."""
    match = _CUSTOM_ID.fullmatch(custom_id)
    if match is None:
        return None
    return ConfirmationChoice(
        confirmation_id=int(match["confirmation"]),
        approve=match["choice"] == "approve",
        asker_id=match["asker"],
    )


class ConfirmationButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    # Loose on purpose: every id under the prefix reaches the adapter, which answers a
    # malformed one instead of leaving the click to fail silently.
    template=CONFIRM_PREFIX + r":.{0,90}",
):
    def __init__(self, custom_id: str, *, label: str = "", approve: bool = True) -> None:
        super().__init__(
            discord.ui.Button(
                style=discord.ButtonStyle.success if approve else discord.ButtonStyle.danger,
                label=label or ("Approve" if approve else "Deny"),
                custom_id=custom_id,
            )
        )
        self.custom_id_text = custom_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[discord.Client],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> ConfirmationButton:
        return cls(match.string)

    async def callback(self, interaction: discord.Interaction[discord.Client]) -> None:
        # Handled by the adapter (`BotClient.on_confirmation_click`), not by this item.
        interaction.client.dispatch("confirmation_click", interaction, self.custom_id_text)


def confirmation_view(request: ConfirmationRequest) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for choice in ("approve", "deny"):
        custom_id = f"{CONFIRM_PREFIX}:{choice}:{request.confirmation_id}:{request.asker_id}"
        view.add_item(ConfirmationButton(custom_id, approve=choice == "approve"))
    return view


def prompt_text(request: ConfirmationRequest) -> str:
    asker = mention(request.asker_id) or discord.utils.escape_markdown(request.asker_name)
    return (
        f"**May I run {code_span(request.tool)}?** {asker} asked for something that needs it.\n"
        f"Arguments: {code_span(request.arguments or '{}')}\n"
        f"{RULE_MARK}Only {asker} can approve this. No answer within "
        f"{_duration(request.timeout_seconds)} counts as Deny."
    )


def decided_text(shown: str, outcome: str) -> str:
    """The question as shown, its rule line replaced by `outcome`."""
    lines = shown.split("\n")
    kept = [line for line in lines if not line.startswith(RULE_MARK)]
    if len(kept) == len(lines):
        # Not our question's shape (edited elsewhere?): the outcome alone.
        return outcome
    return "\n".join([*kept, outcome])


def mention(user_id: str | None) -> str | None:
    return f"<@{user_id}>" if user_id and _SNOWFLAKE.match(user_id) else None


def code_span(text: str) -> str:
    """`text` as inline code that nothing in it can end early."""
    # A backtick would close the span and a line break would spill out of it: both are
    # replaced by look-alikes (Discord has no escape inside code).
    flat = " ".join(text.replace("`", "\u02cb").split())
    return f"`{flat}`" if flat else "` `"


def _duration(seconds: float) -> str:
    whole = round(seconds)
    if whole >= 120 and whole % 60 == 0:
        return f"{whole // 60} minutes"
    return f"{whole} seconds" if whole != 1 else "1 second"

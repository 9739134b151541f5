"""Where a slash command becomes an answer: /ask, /chat and the platform-neutral commands.

Every interaction is deferred first, before any database work, so Discord's three
seconds are never at the mercy of a slow store; the answer then arrives as edits of the
deferred response and follow-ups.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import discord
from discord import app_commands

from botservice.adapters.discord import events
from botservice.adapters.discord.context import DiscordContext
from botservice.adapters.discord.messages import DiscordMessages
from botservice.adapters.discord.sink import NO_MENTIONS, InteractionReplySink
from botservice.core.errors import BotServiceError
from botservice.core.events import Command
from botservice.core.ports import ReplySink

log = logging.getLogger(__name__)

THREAD_PERMISSION_SENTENCE = (
    "I cannot start a thread here: I need the Create Public Threads and Send Messages in "
    "Threads permissions in this channel."
)
FAILED_SENTENCE = "Something went wrong on my side; please try again."
STALE_COMMAND_SENTENCE = (
    "This command is not available any more; an admin can run `botservice discord sync-commands`"
)


class DiscordInteractions:
    def __init__(self, context: DiscordContext, messages: DiscordMessages) -> None:
        self._context = context
        self._messages = messages

    # --- /ask ---------------------------------------------------------------------

    async def ask(
        self,
        interaction: discord.Interaction,
        prompt: str,
        private: bool,
        *,
        wrap: Callable[[ReplySink], Awaitable[ReplySink]] | None = None,
    ) -> None:
        """`wrap` replaces how the answer is shown (`/voice ask` speaks it instead)."""
        if not await defer_response(interaction, ephemeral=private):
            return
        place = events.place_of_interaction(interaction)
        chains = self._context.chains

        def remember(message_id: int) -> None:
            chains.remember(message_id, place.thread, by_bot=True)

        sink: ReplySink = InteractionReplySink.for_interaction(
            interaction, ephemeral=private, on_posted=remember
        )
        if wrap is not None:
            sink = await wrap(sink)
        elif not private:
            # A private answer is never spoken aloud.
            sink = await self._context.spoken(
                sink,
                guild_id=interaction.guild_id,
                user=interaction.user,
                channel_id=interaction.channel_id,
                place=place,
            )
        incoming = events.incoming_from_interaction(
            interaction,
            place=place,
            text=prompt,
            admin=self._admin(interaction),
            reply_target=events.interaction_reply_target(interaction, ephemeral=private),
        )
        await self._context.core.submit(incoming, sink)

    # --- /chat ---------------------------------------------------------------------

    async def chat(self, interaction: discord.Interaction, prompt: str) -> None:
        if not await defer_response(interaction, ephemeral=False):
            return
        channel = interaction.channel
        if not isinstance(channel, discord.TextChannel):
            await interaction.edit_original_response(
                content="/chat starts a thread, which works in text channels; use /ask here."
            )
            return
        opening = events.quoted(f"**{interaction.user.display_name}**", prompt).rstrip()
        try:
            original = await interaction.edit_original_response(
                content=opening[:2000], allowed_mentions=NO_MENTIONS
            )
            thread = await original.create_thread(name=events.thread_name(prompt))
        except discord.Forbidden:
            await interaction.followup.send(THREAD_PERMISSION_SENTENCE, ephemeral=True)
            return
        place = events.place_of(thread, interaction.guild_id)
        sink = await self._context.spoken(
            self._messages.sink(thread.id, reply_to=None, thread=place.thread),
            guild_id=interaction.guild_id,
            user=interaction.user,
            channel_id=thread.id,
            place=place,
        )
        incoming = events.incoming_from_interaction(
            interaction,
            place=place,
            text=prompt,
            admin=self._admin(interaction),
            reply_target={"kind": "message", "channel_id": str(thread.id)},
        )
        await self._context.core.submit(incoming, sink)

    # --- /instructions, /model, /retention, /reset, /forget-me, /help --------------------

    async def command(self, interaction: discord.Interaction, command: Command) -> None:
        if not await defer_response(interaction, ephemeral=True):
            return
        sink = InteractionReplySink.for_interaction(interaction, ephemeral=True)
        incoming = events.incoming_from_interaction(
            interaction,
            place=events.place_of_interaction(interaction),
            text=_command_text(command),
            admin=self._admin(interaction),
            reply_target=events.interaction_reply_target(interaction, ephemeral=True),
        )
        await self._context.core.run_command(incoming, command, sink)

    # --- shared ---------------------------------------------------------------------------

    def _admin(self, interaction: discord.Interaction) -> bool:
        guild = interaction.guild
        return self._context.core.policy.manages(
            events.manager_facts(
                manage_channels=interaction.permissions.manage_channels,
                user_id=interaction.user.id,
                owner_ids=self._context.owner_ids,
                in_dm=interaction.guild_id is None,
                guild_owner_id=guild.owner_id if guild is not None else None,
            )
        )


async def defer_response(
    interaction: discord.Interaction, *, ephemeral: bool, thinking: bool = True
) -> bool:
    """Acknowledge at once. False when Discord says it was already acknowledged (the same
    interaction delivered twice, e.g. replayed after a resume): someone else answers it.
    A button's click deferred without `thinking` is a deferred update of its message."""
    try:
        await interaction.response.defer(ephemeral=ephemeral, thinking=thinking)
    except discord.InteractionResponded:
        return True
    except discord.HTTPException as error:
        if error.code == 40060:
            log.debug(
                "interaction %s was already acknowledged; not answering again", interaction.id
            )
            return False
        raise
    return True


def _command_text(command: Command) -> str:
    return " ".join(part for part in (command.name, command.action, command.argument) if part)


async def on_tree_error(
    interaction: discord.Interaction, error: app_commands.AppCommandError
) -> None:
    """The one boundary for slash commands: log with the stack, tell the user one sentence."""
    cause = error.original if isinstance(error, app_commands.CommandInvokeError) else error
    if isinstance(cause, app_commands.CommandNotFound | app_commands.CommandSignatureMismatch):
        # Discord still offers a command this version no longer has (renamed or removed
        # since the last sync): nothing failed here, the registration is out of date.
        sentence = STALE_COMMAND_SENTENCE
        log.warning(
            "Discord sent /%s, which this version does not have; run "
            "`botservice discord sync-commands`",
            _stale_name(cause),
        )
    elif isinstance(cause, discord.Forbidden):
        sentence = (
            "I am missing a permission in this channel (I need View Channel, Send Messages "
            "and Read Message History)."
        )
        log.warning(
            "missing permission for /%s in channel %s",
            interaction.command.name if interaction.command else "?",
            interaction.channel_id,
            exc_info=True,
        )
    elif isinstance(cause, BotServiceError):
        sentence = cause.user_message
        log.error(
            "/%s failed", interaction.command.name if interaction.command else "?", exc_info=cause
        )
    else:
        sentence = FAILED_SENTENCE
        log.error(
            "/%s failed", interaction.command.name if interaction.command else "?", exc_info=cause
        )
    try:
        if interaction.response.is_done():
            await interaction.followup.send(sentence, ephemeral=True)
        else:
            await interaction.response.send_message(sentence, ephemeral=True)
    except discord.HTTPException:
        log.warning("could not tell the user about a failed command", exc_info=True)


def _stale_name(error: app_commands.AppCommandError) -> str:
    if isinstance(error, app_commands.CommandNotFound):
        return " ".join((*error.parents, error.name))
    if isinstance(error, app_commands.CommandSignatureMismatch):
        return error.command.qualified_name
    return "?"

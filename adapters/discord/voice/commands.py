"""The `/voice` command group: join, leave, stop, ask, listen, ignore-me, mode.

Added to the command tree through its `extensions` seam, so the tree served at run time
and the one `sync-commands` sends always agree.
"""

from __future__ import annotations

from typing import Protocol

import discord
from discord import app_commands

from botservice.adapters.discord.commands import MAX_PROMPT, TreeExtension


class VoiceHandlers(Protocol):
    async def join(self, interaction: discord.Interaction) -> None: ...

    async def leave(self, interaction: discord.Interaction) -> None: ...

    async def stop(self, interaction: discord.Interaction) -> None: ...

    async def ask(self, interaction: discord.Interaction, prompt: str) -> None: ...

    async def listen(self, interaction: discord.Interaction) -> None: ...

    async def ignore_me(self, interaction: discord.Interaction) -> None: ...

    async def mode(self, interaction: discord.Interaction, value: str | None) -> None: ...


# `/voice mode`'s choices: the two modes, or back to the bot's configured one.
MODE_CHOICES = ("pipeline", "realtime", "default")


def voice_extension(handlers: VoiceHandlers) -> TreeExtension:
    def extend(tree: app_commands.CommandTree[discord.Client]) -> None:
        group = app_commands.Group(
            name="voice",
            description="The assistant in a voice channel: it speaks its answers there",
            guild_only=True,
        )

        @group.command(name="join", description="Bring the assistant into your voice channel")
        async def join(interaction: discord.Interaction) -> None:
            await handlers.join(interaction)

        @group.command(name="leave", description="Send the assistant out of the voice channel")
        async def leave(interaction: discord.Interaction) -> None:
            await handlers.leave(interaction)

        @group.command(name="stop", description="Stop the answer being spoken")
        async def stop(interaction: discord.Interaction) -> None:
            await handlers.stop(interaction)

        @group.command(name="ask", description="Ask the assistant; it answers aloud only")
        @app_commands.describe(prompt="What to ask")
        async def ask(
            interaction: discord.Interaction, prompt: app_commands.Range[str, 1, MAX_PROMPT]
        ) -> None:
            await handlers.ask(interaction, prompt)

        @group.command(
            name="listen",
            description="Let the assistant hear this voice channel and answer aloud (managers)",
        )
        async def listen(interaction: discord.Interaction) -> None:
            await handlers.listen(interaction)

        @group.command(
            name="ignore-me", description="The assistant does not listen to you (again: undo)"
        )
        async def ignore_me(interaction: discord.Interaction) -> None:
            await handlers.ignore_me(interaction)

        @group.command(
            name="mode",
            description="How the assistant answers in this server's voice channels (managers)",
        )
        @app_commands.describe(
            value="pipeline, realtime, or default (the bot's own); leave out to see which applies"
        )
        @app_commands.choices(
            value=[app_commands.Choice(name=choice, value=choice) for choice in MODE_CHOICES]
        )
        async def mode(
            interaction: discord.Interaction, value: app_commands.Choice[str] | None = None
        ) -> None:
            await handlers.mode(interaction, value.value if value is not None else None)

        tree.add_command(group)

    return extend


class NoVoiceHandlers:
    """For building the tree only (sync-commands): nothing is ever invoked."""

    async def join(self, interaction: discord.Interaction) -> None:
        raise RuntimeError("command tree built for syncing only")

    async def leave(self, interaction: discord.Interaction) -> None:
        raise RuntimeError("command tree built for syncing only")

    async def stop(self, interaction: discord.Interaction) -> None:
        raise RuntimeError("command tree built for syncing only")

    async def ask(self, interaction: discord.Interaction, prompt: str) -> None:
        raise RuntimeError("command tree built for syncing only")

    async def listen(self, interaction: discord.Interaction) -> None:
        raise RuntimeError("command tree built for syncing only")

    async def ignore_me(self, interaction: discord.Interaction) -> None:
        raise RuntimeError("command tree built for syncing only")

    async def mode(self, interaction: discord.Interaction, value: str | None) -> None:
        raise RuntimeError("command tree built for syncing only")

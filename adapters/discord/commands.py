"""The slash-command tree: what members see in Discord's command picker.

The same tree is served at run time and sent by `botservice discord sync-commands`; it is
never synced on start (that gets bots rate-limited). Other features add their commands
through `extensions` (voice adds `/voice join|leave|stop|ask` this way), so run time and
sync always agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import discord
from discord import app_commands

from botservice.core.events import Command

MAX_PROMPT = 4000


class CommandHandlers(Protocol):
    async def ask(self, interaction: discord.Interaction, prompt: str, private: bool) -> None: ...

    async def chat(self, interaction: discord.Interaction, prompt: str) -> None: ...

    async def command(self, interaction: discord.Interaction, command: Command) -> None: ...


TreeExtension = Callable[[app_commands.CommandTree[discord.Client]], None]


def build_command_tree(
    client: discord.Client,
    handlers: CommandHandlers,
    extensions: Sequence[TreeExtension] = (),
) -> app_commands.CommandTree[discord.Client]:
    tree: app_commands.CommandTree[discord.Client] = app_commands.CommandTree(client)

    @tree.command(name="ask", description="Ask the assistant; the answer stays in this channel.")
    @app_commands.describe(prompt="What to ask", private="Only you see the question and the answer")
    # Also a user-installed command (integration_types [0, 1]): usable in DMs, group DMs
    # and servers the bot is not in (contexts [0, 1, 2]), answered through the
    # interaction itself, which needs no membership.
    @app_commands.allowed_installs(guilds=True, users=True)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    async def ask(
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, MAX_PROMPT],
        private: bool = False,
    ) -> None:
        await handlers.ask(interaction, prompt, private)

    @tree.command(name="chat", description="Start a thread with the assistant; reply there freely.")
    @app_commands.describe(prompt="How to start the conversation")
    @app_commands.guild_only()
    async def chat(
        interaction: discord.Interaction, prompt: app_commands.Range[str, 1, MAX_PROMPT]
    ) -> None:
        await handlers.chat(interaction, prompt)

    instructions = app_commands.Group(
        name="instructions", description="The instructions the assistant follows in this channel"
    )

    @instructions.command(name="show", description="Show this channel's instructions")
    async def instructions_show(interaction: discord.Interaction) -> None:
        await handlers.command(interaction, Command("instructions", "show"))

    @instructions.command(
        name="set", description="Set this channel's instructions (Manage Channels)"
    )
    @app_commands.describe(text="The new instructions")
    async def instructions_set(
        interaction: discord.Interaction, text: app_commands.Range[str, 1, MAX_PROMPT]
    ) -> None:
        await handlers.command(interaction, Command("instructions", "set", text))

    @instructions.command(
        name="clear", description="Back to the default instructions (Manage Channels)"
    )
    async def instructions_clear(interaction: discord.Interaction) -> None:
        await handlers.command(interaction, Command("instructions", "clear"))

    model = app_commands.Group(name="model", description="The chat model this channel uses")

    @model.command(name="show", description="Show this channel's model")
    async def model_show(interaction: discord.Interaction) -> None:
        await handlers.command(interaction, Command("model", "show"))

    @model.command(name="set", description="Choose this channel's model (Manage Channels)")
    @app_commands.describe(name="Model name, as the endpoint knows it")
    async def model_set(
        interaction: discord.Interaction, name: app_commands.Range[str, 1, 200]
    ) -> None:
        await handlers.command(interaction, Command("model", "set", name))

    speech = app_commands.Group(
        name="speech", description="How answers are spoken in this channel's voice chats"
    )

    @speech.command(name="show", description="Show this channel's voice and speech model")
    async def speech_show(interaction: discord.Interaction) -> None:
        await handlers.command(interaction, Command("speech", "show"))

    @speech.command(
        name="set", description="Choose this channel's voice or speech model (Manage Channels)"
    )
    @app_commands.describe(
        voice="Voice name, as the speech endpoint knows it (espeak-ng: e.g. en-gb)",
        model="Speech model, as the speech endpoint knows it",
    )
    async def speech_set(
        interaction: discord.Interaction,
        voice: app_commands.Range[str, 1, 64] | None = None,
        model: app_commands.Range[str, 1, 128] | None = None,
    ) -> None:
        chosen = (("voice", voice), ("model", model))
        argument = " ".join(f"{word} {value}" for word, value in chosen if value is not None)
        await handlers.command(interaction, Command("speech", "set", argument))

    @speech.command(
        name="clear", description="Back to the default voice and speech model (Manage Channels)"
    )
    async def speech_clear(interaction: discord.Interaction) -> None:
        await handlers.command(interaction, Command("speech", "clear"))

    tools = app_commands.Group(name="tools", description="The tools the assistant may use here")

    @tools.command(name="show", description="Which tools are available, on here, and ask first")
    async def tools_show(interaction: discord.Interaction) -> None:
        await handlers.command(interaction, Command("tools", "show"))

    @tools.command(name="enable", description="Let the assistant use tools here (Manage Channels)")
    @app_commands.describe(name="A tool name, or a pattern such as jira__*")
    async def tools_enable(
        interaction: discord.Interaction, name: app_commands.Range[str, 1, 64]
    ) -> None:
        await handlers.command(interaction, Command("tools", "enable", name))

    @tools.command(name="disable", description="Stop tools here (Manage Channels)")
    @app_commands.describe(name="A tool name, or a pattern such as jira__*")
    async def tools_disable(
        interaction: discord.Interaction, name: app_commands.Range[str, 1, 64]
    ) -> None:
        await handlers.command(interaction, Command("tools", "disable", name))

    @tree.command(
        name="retention",
        description="Show, or set (Manage Channels), how many days this channel's messages are kept",
    )
    @app_commands.describe(days="Keep messages this many days (0 = do not keep); omit to show")
    async def retention(
        interaction: discord.Interaction, days: app_commands.Range[int, 0, 3650] | None = None
    ) -> None:
        if days is None:
            await handlers.command(interaction, Command("retention", "show"))
        else:
            await handlers.command(interaction, Command("retention", "set", str(days)))

    @tree.command(name="reset", description="Start this conversation afresh (nothing is deleted)")
    async def reset(interaction: discord.Interaction) -> None:
        await handlers.command(interaction, Command("reset"))

    @tree.command(
        name="usage", description="Your tokens and cost today and this month (and the channel's)"
    )
    async def usage(interaction: discord.Interaction) -> None:
        await handlers.command(interaction, Command("usage"))

    @tree.command(
        name="forget-me", description="Delete every message of yours and the answers to them"
    )
    async def forget_me(interaction: discord.Interaction) -> None:
        await handlers.command(interaction, Command("forget-me"))

    @tree.command(name="help", description="What the assistant can do here")
    async def help_(interaction: discord.Interaction) -> None:
        await handlers.command(interaction, Command("help"))

    tree.add_command(instructions)
    tree.add_command(model)
    tree.add_command(speech)
    tree.add_command(tools)
    for extend in extensions:
        extend(tree)
    return tree


class NoHandlers:
    """For building the tree only (sync-commands): nothing is ever invoked."""

    async def ask(self, interaction: discord.Interaction, prompt: str, private: bool) -> None:
        raise RuntimeError("command tree built for syncing only")

    async def chat(self, interaction: discord.Interaction, prompt: str) -> None:
        raise RuntimeError("command tree built for syncing only")

    async def command(self, interaction: discord.Interaction, command: Command) -> None:
        raise RuntimeError("command tree built for syncing only")

"""`botservice discord sync-commands [--guild ID]`: register the slash-command tree.

Run once after installing or upgrading, not on every start. A guild sync shows up at
once (good for trying things out); a global sync can take up to an hour to reach every
client.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiohttp
import discord

from botservice.adapters.discord.client import configure_endpoints
from botservice.adapters.discord.commands import NoHandlers, TreeExtension, build_command_tree
from botservice.adapters.discord.voice.commands import NoVoiceHandlers, voice_extension
from botservice.core.errors import ConfigError
from botservice.core.redact import redact_url
from botservice.core.settings import Settings


async def sync_commands(
    settings: Settings,
    guild_id: int | None,
    *,
    extensions: Sequence[TreeExtension] = (),
    voice: bool = True,
) -> list[str]:
    """Send the command tree to Discord (for one guild, or globally). Returns the names synced.
    `voice` adds the `/voice` group, as the running adapter does by default."""
    token = settings.discord.token
    if token is None:
        raise ConfigError("DISCORD_TOKEN", "is not set; syncing commands needs the bot token")
    configure_endpoints(settings.discord)
    client = discord.Client(intents=discord.Intents.none())
    if voice:
        extensions = (voice_extension(NoVoiceHandlers()), *extensions)
    tree = build_command_tree(client, NoHandlers(), extensions)
    try:
        try:
            await client.login(token.get_secret_value())
        except discord.LoginFailure:
            raise ConfigError("DISCORD_TOKEN", "Discord rejected the bot token") from None
        except (aiohttp.ClientError, OSError):
            raise ConfigError(
                "DISCORD_API_URL", f"cannot reach {redact_url(settings.discord.api_url)}"
            ) from None
        guild = discord.Object(id=guild_id) if guild_id is not None else None
        if guild is not None:
            tree.copy_global_to(guild=guild)
        try:
            synced = await tree.sync(guild=guild)
        except discord.Forbidden:
            raise ConfigError(
                "--guild",
                f"the bot cannot register commands in guild {guild_id}; invite it there with "
                "the applications.commands scope",
            ) from None
    finally:
        await client.close()
    return [command.name for command in synced]

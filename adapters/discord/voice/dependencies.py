"""What voice needs, as discord.py itself sees it: libopus loaded, PyNaCl and davey importable."""

from __future__ import annotations

import ctypes.util

import discord
import discord.opus
import discord.voice_client
import discord.voice_state

from botservice.core.voice_settings import VoiceSettings
from botservice.voice.dependencies import VoiceCheck, check_voice_dependencies


def load_opus() -> bool:
    """Load libopus into discord.py if it is not loaded yet; False if it cannot be found."""
    if discord.opus.is_loaded():
        return True
    name = ctypes.util.find_library("opus")
    if name is None:
        return False
    try:
        discord.opus.load_opus(name)
    except OSError:
        return False
    return discord.opus.is_loaded()


def check_discord_voice(voice: VoiceSettings | None = None) -> VoiceCheck:
    """The voice check with discord.py's own view of libopus, PyNaCl and davey.

    Call it once at start-up (log `summary()` if not `ok`) and again when asked
    to join a voice channel (answer with `summary()` if not `ok`).
    """
    return check_voice_dependencies(
        voice,
        opus_loaded=load_opus(),
        nacl=discord.voice_client.has_nacl,
        davey=discord.voice_state.has_dave,
    )

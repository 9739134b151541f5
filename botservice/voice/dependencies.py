"""Which of the programs and libraries voice needs are missing, and how to install each.

Without them the bot still runs its text features; this report is what it says
once at start-up and in answer to a request to join a voice channel. The checks
only look (PATH, the dynamic linker, importable modules); nothing is loaded.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import shutil
from dataclasses import dataclass

from botservice.core.voice_settings import VoiceSettings

APT_FFMPEG = "apt-get install ffmpeg"
APT_OPUS = "apt-get install libopus0"
APT_ESPEAK = "apt-get install espeak-ng"
PIP_VOICE = "pip install 'discord.py[voice]'"


@dataclass(frozen=True, slots=True)
class VoicePiece:
    name: str
    present: bool
    install: str
    needed_for: str


@dataclass(frozen=True, slots=True)
class VoiceCheck:
    pieces: tuple[VoicePiece, ...]

    @property
    def missing(self) -> tuple[VoicePiece, ...]:
        return tuple(piece for piece in self.pieces if not piece.present)

    @property
    def ok(self) -> bool:
        return not self.missing

    def summary(self) -> str:
        """One paragraph an operator (or a user asking for voice) can act on."""
        if self.ok:
            return "Voice is ready: " + ", ".join(piece.name for piece in self.pieces) + " found."
        commands: dict[str, list[str]] = {}
        for piece in self.missing:
            commands.setdefault(piece.install, []).append(piece.name)
        steps = "; ".join(f"{_join(names)}: `{command}`" for command, names in commands.items())
        names = _join([piece.name for piece in self.missing])
        verb = "is" if len(self.missing) == 1 else "are"
        return f"Voice is off because {names} {verb} missing. Install {steps}. Text replies work as usual."


def check_voice_dependencies(
    voice: VoiceSettings | None = None,
    *,
    opus_loaded: bool | None = None,
    nacl: bool | None = None,
    davey: bool | None = None,
) -> VoiceCheck:
    """Check ffmpeg, libopus, PyNaCl and davey, and espeak-ng when it is the speech engine.

    The Discord adapter passes what discord.py itself found (`opus_loaded`,
    `nacl`, `davey`); left None, they are looked up without importing discord.
    """
    voice = voice or VoiceSettings()
    pieces = [
        VoicePiece("ffmpeg", _executable(voice.ffmpeg_executable), APT_FFMPEG, "decoding speech"),
        VoicePiece(
            "libopus",
            opus_loaded if opus_loaded is not None else bool(ctypes.util.find_library("opus")),
            APT_OPUS,
            "encoding voice packets",
        ),
        VoicePiece(
            "PyNaCl",
            nacl if nacl is not None else _importable("nacl"),
            PIP_VOICE,
            "voice transport encryption",
        ),
        VoicePiece(
            "davey",
            davey if davey is not None else _importable("davey"),
            PIP_VOICE,
            "Discord's end-to-end voice encryption",
        ),
    ]
    if not voice.uses_endpoint:
        pieces.append(
            VoicePiece(
                "espeak-ng",
                _executable(voice.espeak_executable),
                APT_ESPEAK,
                "speaking without a speech endpoint",
            )
        )
    return VoiceCheck(tuple(pieces))


def _executable(name: str) -> bool:
    return shutil.which(name) is not None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]

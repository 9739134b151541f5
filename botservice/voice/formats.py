"""The audio files `botservice voice render` writes, by extension.

Apart from `render.py` so the command line can list them in `--help` without
importing the speech and audio machinery.
"""

from __future__ import annotations

# File extension -> (what it is, ffmpeg encoder arguments).
OUTPUT_FORMATS: dict[str, tuple[str, tuple[str, ...]]] = {
    ".wav": ("WAV, 16-bit PCM", ("-c:a", "pcm_s16le")),
    ".ogg": ("Opus in Ogg", ("-c:a", "libopus", "-b:a", "64k")),
    ".opus": ("Opus in Ogg", ("-c:a", "libopus", "-b:a", "64k")),
    ".mp3": ("MP3", ("-c:a", "libmp3lame", "-q:a", "4")),
    ".flac": ("FLAC, lossless", ("-c:a", "flac")),
}


def describe_formats() -> str:
    """`.wav (WAV, 16-bit PCM), .ogg (Opus in Ogg), …`, in the table's order."""
    return ", ".join(f"{suffix} ({name})" for suffix, (name, _) in OUTPUT_FORMATS.items())

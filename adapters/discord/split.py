"""Split an answer into Discord messages (2,000 characters each) without cutting code blocks.

A fenced code block moves whole to the next message when it fits in one; one that is
longer than a message is cut between lines, and each piece is closed and reopened
with the same fence (and language), so every message renders on its own.
"""

from __future__ import annotations

import re

DISCORD_LIMIT = 2000

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})(.*)$")


def split_message(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """Pieces of at most `limit` characters that join back to the text (modulo line breaks
    at the cuts and the fences added around cut code blocks)."""
    if len(text) <= limit:
        return [text]
    chunks: list[str] = []
    current = ""
    for unit in _units(text, limit):
        candidate = f"{current}\n{unit}" if current else unit
        if len(candidate) <= limit:
            current = candidate
            continue
        if current:
            chunks.append(current)
        current = unit
    if current:
        chunks.append(current)
    return [chunk for chunk in chunks if chunk.strip()] or [text[:limit]]


def _units(text: str, limit: int) -> list[str]:
    """Lines outside code blocks, and whole code blocks, each at most `limit` long."""
    units: list[str] = []
    block: list[str] | None = None
    fence = ""
    for line in text.split("\n"):
        match = _FENCE.match(line)
        if block is None:
            if match:
                block, fence = [line], match.group(1)
            else:
                units.extend(_cut_line(line, limit))
            continue
        block.append(line)
        if match and match.group(1).startswith(fence[0]) and len(match.group(1)) >= len(fence) \
                and not match.group(2).strip():
            units.extend(_cut_block(block, limit))
            block = None
    if block is not None:  # unterminated (a streaming answer mid-block)
        units.extend(_cut_block(block, limit, closed=False))
    return units


def _cut_line(line: str, limit: int) -> list[str]:
    pieces: list[str] = []
    while len(line) > limit:
        cut = line.rfind(" ", 0, limit + 1)
        if cut <= limit // 2:
            cut = limit
        pieces.append(line[:cut].rstrip())
        line = line[cut:].lstrip()
    pieces.append(line)
    return pieces


def _cut_block(lines: list[str], limit: int, *, closed: bool = True) -> list[str]:
    whole = "\n".join(lines)
    if len(whole) <= limit:
        return [whole]
    opening = lines[0].strip()
    fence = _FENCE.match(opening)
    closing = fence.group(1) if fence else "```"
    body = lines[1:-1] if closed else lines[1:]
    # Room for the body once the fences are added around it.
    room = limit - len(opening) - len(closing) - 2
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for raw in body:
        for line in _cut_line(raw, room) if len(raw) > room else [raw]:
            if current and size + len(line) + 1 > room:
                pieces.append("\n".join([opening, *current, closing]))
                current, size = [], 0
            current.append(line)
            size += len(line) + 1
    if current or not pieces:
        tail = [opening, *current] + ([closing] if closed else [])
        pieces.append("\n".join(tail))
    return pieces

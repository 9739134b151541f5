"""Split a long answer into messages of at most `limit` characters without cutting code.

Breaks fall between paragraphs where possible, then between lines, then between
words, and only then inside a word. A fenced code block (``` or ~~~) that fits in one
message is never cut: it moves whole to the next message. One longer than a message
is cut between lines, and every piece is closed and reopened with the block's own
opening line (fence and language), so each message renders on its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# Any indentation: models put fences inside list items.
_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
_WORD = re.compile(r"(\s*)(\S+)")


@dataclass(frozen=True, slots=True)
class _Block:
    text: str
    separator: str  # the line breaks that stood before it
    fence: str | None = None  # the fence characters, for a code block
    closed: bool = True


def split_message(text: str, limit: int) -> list[str]:
    """Non-blank pieces of at most `limit` characters that carry all of `text`.

    Whitespace at a cut is dropped, and the fences that close and reopen a cut code
    block are added; nothing else changes. An unterminated block (an answer still
    streaming) keeps its last piece open. Blank text gives no pieces.
    """
    if limit < 1:
        raise ValueError(f"limit must be positive, not {limit}")
    if not text.strip():
        return []
    if len(text) <= limit:
        return [text]
    parts = [part for block in _blocks(text) for part in _fit(block, limit)]
    return [piece for _, piece in _pack(parts, limit) if piece.strip()]


def _blocks(text: str) -> list[_Block]:
    """Paragraphs and code blocks, each with the line breaks before it."""
    blocks: list[_Block] = []
    lines: list[str] = []
    fence: str | None = None
    separator = ""

    def flush(*, closed: bool = True) -> None:
        nonlocal separator
        if lines:
            blocks.append(_Block("\n".join(lines), separator, fence, closed))
            lines.clear()
            separator = "\n"

    for line in text.split("\n"):
        if fence is not None:
            lines.append(line)
            if _closes(line, fence):
                flush()
                fence = None
        elif opening := _opening_fence(line):
            flush()
            fence = opening
            lines.append(line)
        elif line.strip():
            lines.append(line)
        else:
            flush()
            separator += "\n" if blocks else ""
    flush(closed=fence is None)
    return blocks


def _opening_fence(line: str) -> str | None:
    match = _FENCE.match(line)
    if match is None or (match.group(2)[0] == "`" and "`" in match.group(3)):
        return None  # a backtick info string cannot hold a backtick: "```x```" is inline code
    return match.group(2)


def _closes(line: str, fence: str) -> bool:
    match = _FENCE.match(line)
    return (
        match is not None
        and match.group(2)[0] == fence[0]
        and len(match.group(2)) >= len(fence)
        and not match.group(3).strip()
    )


def _fit(block: _Block, limit: int) -> list[tuple[str, str]]:
    """The block as (separator, piece) pairs no longer than `limit`."""
    if len(block.text) <= limit:
        return [(block.separator, block.text)]
    lines = block.text.split("\n")
    pieces: list[tuple[str, str]] = []
    if block.fence is not None:
        pieces = _split_code(lines, block.fence, limit, closed=block.closed)
    # Prose, or a code block whose fences alone would fill a message (a tiny limit).
    pieces = pieces or _split_lines(lines, limit)
    return [(block.separator, pieces[0][1]), *pieces[1:]]


def _split_code(lines: list[str], fence: str, limit: int, *, closed: bool) -> list[tuple[str, str]]:
    opening = lines[0]
    if closed:
        body, closing = lines[1:-1], lines[-1]
    else:
        body, closing = lines[1:], opening[: len(opening) - len(opening.lstrip())] + fence
    room = limit - len(opening) - len(closing) - 2
    if room < 1:
        return []
    pieces = [
        (separator, f"{opening}\n{part}\n{closing}")
        for separator, part in _split_lines(body, room)
        if part.strip()
    ]
    if not pieces:
        return []
    if not closed:
        last_separator, last = pieces[-1]
        pieces[-1] = (last_separator, last.removesuffix(f"\n{closing}"))
    return pieces


def _split_lines(lines: list[str], limit: int) -> list[tuple[str, str]]:
    # Each line is wrapped into runs first, so a long line starts a new piece rather
    # than filling the end of the previous one: a line break is the better cut.
    return _pack([run for line in lines for run in _wrap(line, limit)], limit)


def _wrap(line: str, limit: int) -> list[tuple[str, str]]:
    """The line as runs of words no longer than `limit`, the first after a line break."""
    if len(line) <= limit:
        return [("\n", line)]
    words = [(match.group(1), match.group(2)) for match in _WORD.finditer(line)]
    if not words:
        return [("\n", "")]  # only whitespace
    indent, first = words[0]
    words[0] = ("\n", indent + first)
    parts: list[tuple[str, str]] = []
    for separator, word in words:
        cuts = [word[i : i + limit] for i in range(0, len(word), limit)]
        parts.append((separator, cuts[0]))
        parts.extend(("", cut) for cut in cuts[1:])
    return _pack(parts, limit)


def _pack(parts: Iterable[tuple[str, str]], limit: int) -> list[tuple[str, str]]:
    """Greedily join (separator, part) pairs, each at most `limit` long, into pieces.

    Each piece comes with the separator that stood before its first part.
    """
    pieces: list[tuple[str, str]] = []
    for separator, part in parts:
        if pieces and len(pieces[-1][1]) + len(separator) + len(part) <= limit:
            pieces[-1] = (pieces[-1][0], pieces[-1][1] + separator + part)
        else:
            pieces.append((separator, part))
    return pieces

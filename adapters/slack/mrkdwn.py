"""Model Markdown to Slack mrkdwn, and splitting long answers at Slack's message limit.

Slack's mrkdwn is not Markdown: bold is `*x*`, italics `_x_`, strike `~x~`,
links `<url|text>`, no headings, and `&`, `<`, `>` must be escaped everywhere
(Slack renders the entities inside code too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Slack truncates `text` past 40,000 characters but renders long messages badly
# well before that; a few thousand characters per message reads best.
MESSAGE_LIMIT = 3900

_FENCE = re.compile(r"^\s*```")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+(?=\S)")
_RULE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")
_QUOTE = re.compile(r"^(\s*>\s?)+")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_IMAGE_OR_LINK = re.compile(r"!?\[([^\]\n]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_AUTOLINK = re.compile(r"<(https?://[^>\s]+)>")
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_ITALIC_STAR = re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])")
_ITALIC_UNDERSCORE = re.compile(r"(?<![\w_])_(?=[^\s_])(.+?)(?<=[^\s_])_(?![\w_])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
# Private-use characters cannot come from a model's Markdown in practice; they
# hold converted pieces out of the way of later substitutions.
_HOLD_OPEN, _HOLD_CLOSE = "\ue000", "\ue001"
_HELD = re.compile(_HOLD_OPEN + r"(\d+)" + _HOLD_CLOSE)


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def markdown_to_mrkdwn(markdown: str) -> str:
    """Convert CommonMark-ish model output to Slack mrkdwn."""
    out: list[str] = []
    code: list[str] | None = None
    for line in markdown.split("\n"):
        if _FENCE.match(line):
            if code is None:
                code = []
            else:
                out.append(_code_block(code))
                code = None
            continue
        if code is not None:
            code.append(line)
        else:
            out.append(_convert_line(line))
    if code is not None:  # an unclosed fence (a stream cut short) still renders as code
        out.append(_code_block(code))
    return "\n".join(out)


def _code_block(lines: list[str]) -> str:
    return "```\n" + escape("\n".join(lines)) + "\n```"


def _convert_line(line: str) -> str:
    if _RULE.match(line):
        return "──────────"
    quote = ""
    if match := _QUOTE.match(line):
        quote, line = "> ", line[match.end() :]
    if match := _HEADING.match(line):
        return quote + "*" + _strip_emphasis(_convert_inline(match.group(1))) + "*"
    bullet = ""
    if match := _BULLET.match(line):
        bullet, line = match.group(1) + "• ", line[match.end() :]
    return quote + bullet + _convert_inline(line)


def _strip_emphasis(text: str) -> str:
    # A heading is already bold; nested `*` would close it early.
    return text.replace("*", "")


def _convert_inline(text: str) -> str:
    held: list[str] = []

    def hold(value: str) -> str:
        held.append(value)
        return f"{_HOLD_OPEN}{len(held) - 1}{_HOLD_CLOSE}"

    text = _INLINE_CODE.sub(lambda m: hold("`" + escape(m.group(2)) + "`"), text)
    text = _IMAGE_OR_LINK.sub(lambda m: hold(_link(m.group(2), m.group(1))), text)
    text = _AUTOLINK.sub(lambda m: hold(_link(m.group(1), "")), text)
    text = escape(text)
    text = _BOLD.sub(lambda m: hold("*" + _convert_italics(m.group(2)) + "*"), text)
    text = _convert_italics(text)
    text = _STRIKE.sub(r"~\1~", text)
    while _HELD.search(text):
        text = _HELD.sub(lambda m: held[int(m.group(1))], text)
    return text


def _convert_italics(text: str) -> str:
    text = _ITALIC_STAR.sub(r"_\1_", text)
    return _ITALIC_UNDERSCORE.sub(r"_\1_", text)


def _link(url: str, label: str) -> str:
    url = url.replace("&", "&amp;").replace("|", "%7C").replace(">", "%3E").replace("<", "%3C")
    label = escape(label.replace("|", "¦"))
    return f"<{url}|{label}>" if label and label != url else f"<{url}>"


# --- splitting -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Unit:
    text: str
    separator: str  # what stood before it in the original text
    is_code: bool


def split_message(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Split mrkdwn into messages of at most `limit` characters.

    Breaks fall between paragraphs where possible, then between lines, then
    between words. A code block is never cut open: one that fits moves whole to
    the next message, one longer than a message is closed and reopened.
    """
    if len(text) <= limit:
        return [text]
    chunks: list[str] = []
    current = ""
    for unit in _units(text):
        for piece in _fit(unit, limit):
            joined = current + unit.separator + piece if current else piece
            if len(joined) <= limit:
                current = joined
            else:
                if current:
                    chunks.append(current)
                current = piece
    if current:
        chunks.append(current)
    return chunks


def _units(text: str) -> list[_Unit]:
    units: list[_Unit] = []
    lines = text.split("\n")
    separator = ""
    buffer: list[str] = []
    in_code = False

    def flush(is_code: bool) -> None:
        nonlocal separator, buffer
        if buffer:
            units.append(_Unit("\n".join(buffer), separator, is_code))
            separator = "\n"
            buffer = []

    for line in lines:
        if in_code:
            buffer.append(line)
            if line.rstrip().endswith("```") and len(buffer) > 1:
                flush(True)
                in_code = False
            continue
        if line.lstrip().startswith("```"):
            flush(False)
            buffer.append(line)
            single_line = line.strip() != "```" and line.rstrip().endswith("```")
            if single_line and line.count("```") >= 2:
                flush(True)
            else:
                in_code = True
            continue
        if not line.strip():
            flush(False)
            separator += "\n" if units else ""
            continue
        buffer.append(line)
    flush(in_code)
    return units


def _fit(unit: _Unit, limit: int) -> list[str]:
    if len(unit.text) <= limit:
        return [unit.text]
    if unit.is_code:
        return _split_code(unit.text, limit)
    return _split_prose(unit.text, limit)


def _split_code(block: str, limit: int) -> list[str]:
    lines = block.split("\n")
    opening = lines[0] if lines[0].strip() == "```" else "```"
    body = lines[1:-1] if lines[0].strip() == "```" else [lines[0].lstrip()[3:], *lines[1:-1]]
    closing = "```"
    room = limit - len(opening) - len(closing) - 2
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for line in body:
        for part in _hard_wrap(line, room):
            if current and size + len(part) + 1 > room:
                pieces.append("\n".join([opening, *current, closing]))
                current, size = [], 0
            current.append(part)
            size += len(part) + 1
    if current or not pieces:
        pieces.append("\n".join([opening, *current, closing]))
    return pieces


def _split_prose(paragraph: str, limit: int) -> list[str]:
    pieces: list[str] = []
    current = ""
    for line in paragraph.split("\n"):
        for part in _word_wrap(line, limit):
            joined = f"{current}\n{part}" if current else part
            if len(joined) <= limit:
                current = joined
            else:
                pieces.append(current)
                current = part
    if current:
        pieces.append(current)
    return pieces


def _word_wrap(line: str, limit: int) -> list[str]:
    if len(line) <= limit:
        return [line]
    parts: list[str] = []
    current = ""
    for word in line.split(" "):
        for fragment in _hard_wrap(word, limit):
            joined = f"{current} {fragment}" if current else fragment
            if len(joined) <= limit:
                current = joined
            else:
                parts.append(current)
                current = fragment
    if current:
        parts.append(current)
    return parts


def _hard_wrap(text: str, width: int) -> list[str]:
    if len(text) <= width:
        return [text]
    return [text[i : i + width] for i in range(0, len(text), width)]

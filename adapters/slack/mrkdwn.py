"""Model Markdown to Slack mrkdwn, and Slack's message limit.

Slack's mrkdwn is not Markdown: bold is `*x*`, italics `_x_`, strike `~x~`,
links `<url|text>`, no headings, and `&`, `<`, `>` must be escaped everywhere
(Slack renders the entities inside code too).

The model's output is steered by whoever writes to it, so it is never allowed to
mention anyone: Slack reads `<!channel>`, `<@U…>`, `<#C…>` and `<!subteam^…>` as
mentions, and a Markdown link `[x](!channel)` would become one. Only `http`, `https`
and `mailto` targets become links; everything else is shown as escaped text.
"""

from __future__ import annotations

import re

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
_NOT_HELD = str.maketrans({_HOLD_OPEN: None, _HOLD_CLOSE: None})
_LINK_SCHEMES = ("http://", "https://", "mailto:")


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def markdown_to_mrkdwn(markdown: str) -> str:
    """Convert CommonMark-ish model output to Slack mrkdwn."""
    out: list[str] = []
    code: list[str] | None = None
    # A model could be made to write the hold markers; they would index held pieces
    # that do not exist, or hold themselves forever.
    markdown = markdown.translate(_NOT_HELD)
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
    if not url.lower().startswith(_LINK_SCHEMES):
        return escape(f"{label} ({url})" if label and label != url else url)
    url = url.replace("&", "&amp;").replace("|", "%7C").replace(">", "%3E").replace("<", "%3C")
    label = escape(label.replace("|", "¦"))
    return f"<{url}|{label}>" if label and label != url else f"<{url}>"

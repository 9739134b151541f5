"""Cleaning of what people type, before it is stored or sent anywhere, and a
high estimate of its length in tokens (what the core budgets with when no exact
counter is given; `botservice.model.tokens` counts exactly)."""

from __future__ import annotations

import math
import re
import string
import unicodedata

# C0/C1 control characters except tab and newline: terminals and some model
# servers choke on them, and they carry no meaning in a chat message.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_text(text: str) -> str:
    """Drop control characters and unpaired surrogates; normalize newlines and Unicode form."""
    # Lone surrogates (from broken clients or JSON escapes) cannot be encoded as
    # UTF-8, so the database and the model endpoint would reject the message.
    text = text.encode("utf-8", "replace").decode("utf-8") if _has_surrogates(text) else text
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    return unicodedata.normalize("NFC", text).strip()


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# ASCII punctuation and the whitespace that tokenizers rarely merge.
_DROP_UNMERGED = str.maketrans("", "", string.punctuation + "\n\t")


def estimate_tokens(text: str) -> int:
    """A deliberate over-estimate, used when no tiktoken encoding is cached.

    Byte-level BPE tokenizers make at most one token per UTF-8 byte, so non-ASCII
    text is counted at exactly that bound (3-4x the real count for Cyrillic or CJK,
    but never under it). ASCII text, where tokens average ~4 characters, counts at
    2 characters a token plus half a token more per punctuation mark, tab or
    newline, which stays above cl100k_base and o200k_base counts for prose, code,
    JSON, URLs and Markdown.
    """
    ascii_chars = len(text) if text.isascii() else len(text.encode("ascii", "ignore"))
    other_bytes = 0 if ascii_chars == len(text) else len(text.encode()) - ascii_chars
    unmerged = len(text) - len(text.translate(_DROP_UNMERGED))
    return math.ceil((ascii_chars + unmerged) / 2) + other_bytes


def summary_line(text: str, limit: int = 80) -> str:
    """The first sentence of `text` (its first line), cut at a word within `limit`
    characters with an ellipsis: a tool's description in a listing."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    end = line.find(". ")
    if 0 < end < limit:
        return line[: end + 1]
    if len(line) <= limit:
        return line
    cut = line[: limit - 1].rsplit(" ", 1)[0] if " " in line[: limit - 1] else line[: limit - 1]
    return cut.rstrip(",;:") + "…"

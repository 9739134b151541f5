"""Cut a streaming answer into sentences to speak, each as soon as it is complete.

A sentence ends at `.`, `!`, `?` or `…` followed by white space, or at a line
break. Not every full stop ends one: abbreviations ("e.g.", "Dr."), initials,
decimals ("3.14"), URLs and list numbers ("1.") do not. A full stop at the very
end of the text so far might still become "3.14" or "e.g.", so it waits for the
next character (or for `flush`). Fenced code is not read aloud: the first block
of an answer is announced once as "(code omitted)", and the rest are skipped.
Markdown is reduced to what a listener needs (link texts, not URLs; no
asterisks or bullets).
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

CODE_NOTICE = "(code omitted)"

_TERMINATORS = ".!?…"
# After a terminator: more terminators, closing quotes and brackets, Markdown emphasis.
_CLOSERS = "\"'”’)]*_"
_FENCES = ("```", "~~~")
# Words that a full stop does not end, whatever follows.
_ABBREVIATIONS = frozenset(
    {
        "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "cf", "approx", "fig",
        "figs", "no", "nos", "vol", "ca", "al", "dept", "est", "min", "max", "sec",
        "eg", "ie", "resp", "incl", "e.g", "i.e", "a.m", "p.m", "u.s", "u.k", "ph.d",
    }
)  # fmt: skip
# Words that end a sentence only when a capital letter (or nothing) follows.
_AMBIGUOUS = frozenset(
    {"etc", "inc", "ltd", "co", "corp", "jan", "feb", "aug", "sept", "oct", "nov", "dec"}
)
_DOTTED = re.compile(r"^(?:[a-z]\.)+[a-z]$", re.IGNORECASE)  # u.s, e.g, i.e
_LIST_MARKER = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+")
_HEADING = re.compile(r"^\s*(?:#{1,6}|>+)\s*")
_IMAGE_OR_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
# A URL is read as its host; punctuation right after it is the sentence's, not the URL's.
_URL = re.compile(
    r"https?://(?:www\.)?([^\s/?#)\]>]+?)(?:[/?#][^\s)\]>]*?)?(?=[.,!?;:'\"]*(?:\s|$|[)\]>]))",
    re.IGNORECASE,
)
_EMPHASIS = re.compile(r"(\*\*|__|~~|\*|`)")
_HTML_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_SOFT_BREAK = re.compile(r"[,;:—–]\s")


class SentenceSplitter:
    """Incremental splitter for one answer.

    Give it text with `feed(delta)`, or the whole text so far with
    `update(text)` (what a reply sink receives; the unspoken tail may change
    between calls, e.g. a typing marker that goes away). Each call returns the
    sentences completed by it, cleaned for speech. `flush()` returns the rest
    once the answer has ended.
    """

    def __init__(self, *, max_chars: int = 300, code_notice: str = CODE_NOTICE) -> None:
        self.max_chars = max_chars
        self.code_notice = code_notice
        self._text = ""
        self._pos = 0  # everything before this offset has been returned (or skipped)
        self._fence: str | None = None  # the fence of the code block we are in
        self._said_code = False
        self._flushed = False

    @property
    def text(self) -> str:
        return self._text

    def feed(self, delta: str) -> list[str]:
        return self.update(self._text + delta)

    def update(self, text: str) -> list[str]:
        if self._flushed:
            return []
        if text[: self._pos] != self._text[: self._pos]:
            # Text already spoken was rewritten; it cannot be unsaid. Carry on after it.
            log.debug("spoken part of the answer changed; continuing after it")
        self._text = text
        self._pos = min(self._pos, len(text))
        return self._scan(final=False)

    def flush(self) -> list[str]:
        if self._flushed:
            return []
        sentences = self._scan(final=True)
        self._flushed = True
        return sentences

    def _scan(self, *, final: bool) -> list[str]:
        text = self._text
        out: list[str] = []
        while self._pos < len(text):
            if self._fence is not None:
                if not self._skip_code_line(final=final):
                    break
                continue
            at_line_start = self._pos == 0 or text[self._pos - 1] == "\n"
            if at_line_start:
                fence = self._fence_at(self._pos, final=final)
                if fence is None:
                    break  # the line might still become a fence: wait
                if fence:
                    self._fence = fence
                    self._skip_line()
                    if not self._said_code:
                        self._said_code = True
                        out.append(self.code_notice)
                    continue
            end = _sentence_end(text, self._pos, final=final)
            if end is None:
                end = self._forced_cut()
                if end is None:
                    break
            sentence = speakable(text[self._pos : end])
            self._pos = end
            if sentence:
                out.append(sentence)
        return out

    def _fence_at(self, start: int, *, final: bool) -> str | None:
        """The fence opening a line at `start`, "" if the line is no fence, None if unknown yet."""
        newline = self._text.find("\n", start)
        line = self._text[start:] if newline < 0 else self._text[start:newline]
        head = line.lstrip(" ")
        if len(line) - len(head) > 3:
            return ""
        for fence in _FENCES:
            if head.startswith(fence):
                # The info string ("```python") runs to the end of the line.
                return fence if newline >= 0 or final else None
            if newline < 0 and not final and fence.startswith(head):
                return None
        return ""

    def _skip_line(self) -> None:
        newline = self._text.find("\n", self._pos)
        self._pos = len(self._text) if newline < 0 else newline + 1

    def _skip_code_line(self, *, final: bool) -> bool:
        """Skip one line of a code block; False if no complete line is there yet."""
        newline = self._text.find("\n", self._pos)
        if newline < 0 and not final:
            return False
        line = self._text[self._pos :] if newline < 0 else self._text[self._pos : newline]
        assert self._fence is not None
        stripped = line.strip()
        if stripped.startswith(self._fence) and not stripped.strip(self._fence[0]):
            self._fence = None
        self._skip_line()
        return True

    def _forced_cut(self) -> int | None:
        """Cut a run-on sentence at a comma or space once it exceeds `max_chars`."""
        window = self._text[self._pos : self._pos + self.max_chars]
        if len(window) < self.max_chars:
            return None
        breaks = [match.end() for match in _SOFT_BREAK.finditer(window)]
        if breaks and breaks[-1] > self.max_chars // 3:
            return self._pos + breaks[-1]
        space = window.rfind(" ")
        return self._pos + (space + 1 if space > 0 else len(window))


def _sentence_end(text: str, start: int, *, final: bool) -> int | None:
    """Offset just after the sentence starting at `start`, or None if it is not complete yet."""
    n = len(text)
    i = start
    while i < n:
        char = text[i]
        if char == "\n":
            return i + 1
        if char not in _TERMINATORS:
            i += 1
            continue
        j = i + 1
        while j < n and text[j] in _TERMINATORS:
            j += 1
        while j < n and text[j] in _CLOSERS:
            j += 1
        if j >= n:
            return n if final else None
        if not text[j].isspace():  # 3.14, example.com, e.g.x
            i = j
            continue
        if char == "." and j == i + 1:
            verdict = _full_stop_verdict(text, start, i, j, final=final)
            if verdict is None:
                return None
            if not verdict:
                i = j
                continue
        return j
    return n if final and start < n else None


def _full_stop_verdict(text: str, start: int, dot: int, after: int, *, final: bool) -> bool | None:
    """Whether the full stop at `dot` ends a sentence; None if the next word decides and is unseen."""
    word_start = max(text.rfind(" ", start, dot), text.rfind("\n", start, dot)) + 1
    word = text[word_start:dot].lstrip("([\"'“‘*_").lower()
    before = text[start:dot].strip()
    if before.isdigit() and len(before) <= 3:
        return False  # "1. First item"
    if word in _ABBREVIATIONS or _DOTTED.match(word) or (len(word) == 1 and word.isalpha()):
        return False
    if word in _AMBIGUOUS:
        rest = text[after:].lstrip()
        if not rest:
            return True if final else None
        return not rest[0].islower()
    return True


def speakable(sentence: str) -> str:
    """A sentence as it should be spoken: no Markdown marks, link texts instead of URLs."""
    text = _HEADING.sub("", sentence)
    text = _LIST_MARKER.sub("", text)
    text = _IMAGE_OR_LINK.sub(r"\1", text)
    text = _URL.sub(r"\1", text)
    text = _HTML_TAG.sub("", text)
    text = _EMPHASIS.sub("", text)
    text = text.replace("|", " ")
    text = " ".join(text.split())
    if not any(char.isalnum() for char in text):
        return ""
    return text

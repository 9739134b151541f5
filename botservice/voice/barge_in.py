"""What a stored answer says when a listener talked over it (barge-in)."""

from __future__ import annotations

import re

UNSPOKEN_MARK = "_(Interrupted: the rest was not spoken aloud.)_"


def mark_unspoken(text: str, spoken_sentences: list[str]) -> str:
    """`text` with the part after what was spoken aloud marked as not spoken.

    Sentences are spoken as rendered for speech (markup dropped), so the cut is found by
    counting words rather than by matching characters."""
    spoken_words = sum(len(sentence.split()) for sentence in spoken_sentences)
    words = list(re.finditer(r"\S+", text))
    if spoken_words >= len(words):
        return text
    if spoken_words == 0:
        return f"{UNSPOKEN_MARK}\n{text}"
    cut = words[spoken_words - 1].end()
    return f"{text[:cut]}\n\n{UNSPOKEN_MARK}\n{text[cut:].lstrip()}"

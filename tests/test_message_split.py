"""Splitting long answers at a platform's message limit without cutting code blocks."""

from __future__ import annotations

import random
import re

import pytest

from botservice.core.message_split import split_message

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})(.*)$")


def test_short_text_is_one_message() -> None:
    assert split_message("hello", 100) == ["hello"]
    assert split_message("hello", 2000) == ["hello"]


def test_blank_text_is_no_message() -> None:
    assert split_message("", 100) == []
    assert split_message(" \n\n ", 2) == []


def test_paragraph_breaks_come_before_line_breaks() -> None:
    first = "one line\nanother line"
    second = "a third line\nand a fourth"
    chunks = split_message(f"{first}\n\n{second}", 30)
    assert chunks == [first, second]


def test_line_breaks_come_before_word_breaks() -> None:
    text = "a short line\n" + "word " * 20
    chunks = split_message(text, 40)
    assert chunks[0] == "a short line"
    assert all(len(c) <= 40 for c in chunks)


def test_split_prefers_paragraphs_and_keeps_code_whole() -> None:
    text = "intro paragraph\n\n" + "```\n" + "\n".join(["code line"] * 5) + "\n```\n\nafter"
    chunks = split_message(text, 70)
    assert all(len(c) <= 70 for c in chunks)
    code = "```\n" + "\n".join(["code line"] * 5) + "\n```"
    assert any(code in c for c in chunks), "the code block travels whole"
    assert all(c.count("```") % 2 == 0 for c in chunks)
    assert "".join(chunks).replace("\n", "") == text.replace("\n", "")


def test_a_code_block_that_fits_moves_whole_to_the_next_message() -> None:
    text = "a" * 1500 + "\n```\n" + "x = 1\n" * 100 + "```"
    parts = split_message(text, 2000)
    assert parts[0] == "a" * 1500
    assert parts[1] == "```\n" + "x = 1\n" * 100 + "```"


def test_oversized_code_block_is_closed_and_reopened() -> None:
    text = "```\n" + "\n".join(f"line {i}" for i in range(100)) + "\n```"
    chunks = split_message(text, 200)
    assert len(chunks) > 1
    for chunk in chunks:
        assert len(chunk) <= 200
        assert chunk.startswith("```\n") and chunk.endswith("\n```")


def test_oversized_code_block_keeps_its_language_in_every_piece() -> None:
    text = "```js\n" + "\n".join(f"console.log({n});" for n in range(400)) + "\n```"
    parts = split_message(text, 2000)
    assert len(parts) > 1
    assert all(len(p) <= 2000 and p.startswith("```js\n") and p.endswith("\n```") for p in parts)
    joined = "".join(parts)
    assert all(f"console.log({n});" in joined for n in range(400))


def test_tilde_fences_are_code_blocks_too() -> None:
    text = "intro\n\n~~~python\n" + "\n".join(f"x = {n}" for n in range(40)) + "\n~~~\n\nafter"
    parts = split_message(text, 100)
    code = [p for p in parts if "x = " in p]
    assert len(code) > 1
    assert all(p.startswith("~~~python\n") for p in code)
    assert all(p.endswith("\n~~~") for p in code[:-1])
    assert parts[0] == "intro" and parts[-1].endswith("x = 39\n~~~\n\nafter")


def test_an_unterminated_code_block_keeps_its_last_piece_open() -> None:
    # A streaming answer mid-block: earlier pieces close, the last one is still being written.
    text = "```py\n" + "\n".join(f"x = {n}" for n in range(40))
    parts = split_message(text, 100)
    assert all(p.startswith("```py\n") for p in parts)
    assert all(p.endswith("\n```") for p in parts[:-1])
    assert parts[-1].endswith("x = 39")


def test_inline_triple_backticks_are_not_a_fence() -> None:
    text = "use ```this``` inline\n\n" + "word " * 30
    parts = split_message(text, 60)
    assert parts[0] == "use ```this``` inline"


def test_a_long_line_is_cut_at_words() -> None:
    parts = split_message("word " * 1000, 2000)
    assert all(len(p) <= 2000 for p in parts)
    assert all(not p.startswith("ord") for p in parts)


def test_a_word_longer_than_the_limit_is_cut() -> None:
    chunks = split_message("x" * 250, 100)
    assert [len(c) for c in chunks] == [100, 100, 50]


def test_a_long_code_line_is_cut_inside_its_fences() -> None:
    text = "```\n" + "y" * 250 + "\n```"
    chunks = split_message(text, 100)
    assert all(len(c) <= 100 and c.startswith("```\n") and c.endswith("\n```") for c in chunks)
    assert "".join(c.removeprefix("```\n").removesuffix("\n```") for c in chunks) == "y" * 250


def test_a_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        split_message("text", 0)


# --- properties over generated answers -------------------------------------------------


def _word(rng: random.Random) -> str:
    if rng.random() < 0.02:
        return "z" * rng.randint(40, 400)  # a URL or a hash: longer than some limits
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 10)))
    return rng.choice([word, word, word, f"`{word}`", f"*{word}*", f"{word}."])


def _prose(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(1, 4)):
        lines.append(" ".join(_word(rng) for _ in range(rng.randint(1, 30))))
    return "\n".join(lines)


def _code(rng: random.Random) -> str:
    fence = rng.choice(["```", "```", "````", "~~~"])
    language = rng.choice(["", "", "python", "js", "c++"])
    body = []
    for _ in range(rng.randint(0, 40)):
        indent = " " * rng.choice([0, 0, 4, 8])
        words = " ".join(_word(rng) for _ in range(rng.randint(0, 8)))
        body.append(indent + words if words else "")
    return "\n".join([fence + language, *body, fence])


def _answer(rng: random.Random) -> tuple[str, list[str]]:
    blocks = [_code(rng) if rng.random() < 0.35 else _prose(rng) for _ in range(rng.randint(1, 8))]
    text = blocks[0]
    for block in blocks[1:]:
        text += rng.choice(["\n", "\n\n", "\n\n", "\n\n\n"]) + block
    return text, [block for block in blocks if block.startswith(("```", "~~~"))]


def _unclosed_fence(piece: str) -> str | None:
    fence: str | None = None
    for line in piece.split("\n"):
        match = _FENCE.match(line)
        if match is None:
            continue
        marker, rest = match.groups()
        if fence is None:
            fence = marker
        elif marker[0] == fence[0] and len(marker) >= len(fence) and not rest.strip():
            fence = None
    return fence


def _is_subsequence(needle: str, haystack: str) -> bool:
    remaining = iter(haystack)
    return all(char in remaining for char in needle)


def test_generated_answers_split_into_whole_balanced_pieces() -> None:
    rng = random.Random(20240531)
    for case in range(600):
        text, code_blocks = _answer(rng)
        limit = rng.choice([20, 35, 50, 80, 120, 200, 500, 2000])
        pieces = split_message(text, limit)
        context = f"case {case}, limit {limit}: {text!r}"

        assert pieces, context
        assert all(len(p) <= limit for p in pieces), context
        assert all(p.strip() for p in pieces), context
        assert all(_unclosed_fence(p) is None for p in pieces), context
        shown = "".join("".join(pieces).split())
        assert _is_subsequence("".join(text.split()), shown), context
        for block in code_blocks:
            if len(block) <= limit:
                assert any(block in p for p in pieces), f"{context}: cut {block!r}"

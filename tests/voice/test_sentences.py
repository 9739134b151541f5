"""Cutting a streaming answer into sentences to speak."""

from __future__ import annotations

import pytest

from botservice.voice.sentences import CODE_NOTICE, SentenceSplitter, speakable


def split_streamed(text: str, step: int = 1) -> list[str]:
    splitter = SentenceSplitter()
    sentences: list[str] = []
    for start in range(0, len(text), step):
        sentences += splitter.feed(text[start : start + step])
    return sentences + splitter.flush()


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello there. How are you?", ["Hello there.", "How are you?"]),
        ("Wow! Really?! Yes...", ["Wow!", "Really?!", "Yes..."]),
        ("Pi is about 3.14 today. Next.", ["Pi is about 3.14 today.", "Next."]),
        ("Use a fruit, e.g. an apple. Or not.", ["Use a fruit, e.g. an apple.", "Or not."]),
        ("That is, i.e. the same. Fine.", ["That is, i.e. the same.", "Fine."]),
        ("Dr. Smith met Mr. Jones. They talked.", ["Dr. Smith met Mr. Jones.", "They talked."]),
        ("J. R. R. Tolkien wrote it. True.", ["J. R. R. Tolkien wrote it.", "True."]),
        (
            "We sell apples, pears, etc. and more. Done.",
            ["We sell apples, pears, etc. and more.", "Done."],
        ),
        ("We sell apples etc. The end.", ["We sell apples etc.", "The end."]),
        ("Version 2.7.1 is out. Update now.", ["Version 2.7.1 is out.", "Update now."]),
        ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
        ("No full stop at the end", ["No full stop at the end"]),
        ("First line\nSecond line", ["First line", "Second line"]),
        ("Steps:\n1. Open it.\n2. Close it.\n", ["Steps:", "Open it.", "Close it."]),
        ("- one\n- two\n* three", ["one", "two", "three"]),
        ("## A heading\nBody text.", ["A heading", "Body text."]),
        ("It is **very** important. Yes.", ["It is very important.", "Yes."]),
        ("Call `run()` now. Ok.", ["Call run() now.", "Ok."]),
        ("\n\n   \n---\nReal text.", ["Real text."]),
    ],
)
def test_sentences(text: str, expected: list[str], step: int) -> None:
    assert split_streamed(text, step) == expected


def test_urls_are_read_as_their_host_and_do_not_split() -> None:
    text = "See https://docs.example.com/a.b?x=1. Or [the guide](https://x.io/g.html) today."
    assert split_streamed(text) == ["See docs.example.com.", "Or the guide today."]


def test_fenced_code_is_announced_once_and_not_read() -> None:
    text = (
        "Here is the code:\n"
        "```python\n"
        "print('Hello. World.')\n"
        "x = 3.14\n"
        "```\n"
        "And another:\n"
        "~~~\n"
        "rm -rf build. really\n"
        "~~~\n"
        "That is all."
    )
    for step in (1, 2, 5, len(text)):
        assert split_streamed(text, step) == [
            "Here is the code:",
            CODE_NOTICE,
            "And another:",
            "That is all.",
        ]


def test_an_unclosed_code_block_is_dropped_at_the_end() -> None:
    assert split_streamed("Look.\n```\nwhile True:\n    pass") == ["Look.", CODE_NOTICE]


def test_a_sentence_is_returned_as_soon_as_the_next_character_shows_it_ended() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Hello there.") == []  # might still be "Hello there.com"
    assert splitter.feed(" Ho") == ["Hello there."]
    assert splitter.feed("w are you? I") == ["How are you?"]
    assert splitter.flush() == ["I"]


def test_a_line_that_may_become_a_fence_waits() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Intro.\n``") == ["Intro."]
    assert splitter.feed("`sh\necho hi. there\n``") == [CODE_NOTICE]
    assert splitter.feed("`\nBye.") == []
    assert splitter.flush() == ["Bye."]


def test_a_run_on_sentence_is_cut_at_a_comma_once_too_long() -> None:
    splitter = SentenceSplitter(max_chars=60)
    clause = "this part keeps going without any full stop at all, "
    sentences = splitter.feed(clause * 4)
    assert sentences, "a long run-on must not wait for the end of the answer"
    assert all(len(sentence) <= 60 for sentence in sentences)
    rest = splitter.flush()
    assert " ".join(sentences + rest).replace(",", "") == " ".join(
        (clause * 4).replace(",", "").split()
    )


def test_whole_text_updates_with_a_changing_tail() -> None:
    # A reply sink gets the whole text so far; a typing marker at the end comes and goes.
    splitter = SentenceSplitter()
    assert splitter.update("Hello wor ▌") == []
    assert splitter.update("Hello world. How ▌") == ["Hello world."]
    assert splitter.update("Hello world. How are you? ▌") == ["How are you?"]
    assert splitter.update("Hello world. How are you? Fine.") == []
    assert splitter.flush() == ["Fine."]


def test_nothing_is_said_twice_when_the_same_text_comes_again() -> None:
    splitter = SentenceSplitter()
    assert splitter.update("One. Two. ") == ["One.", "Two."]
    assert splitter.update("One. Two. ") == []
    assert splitter.update("One. Two. Three.") == []
    assert splitter.flush() == ["Three."]
    assert splitter.flush() == []


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("> quoted text", "quoted text"),
        ("![a cat](https://x/cat.png) sleeps", "a cat sleeps"),
        ("| a | b |", "a b"),
        ("|---|---|", ""),
        ("<b>bold</b> move", "bold move"),
        ("~~old~~ new", "old new"),
    ],
)
def test_speakable(raw: str, spoken: str) -> None:
    assert speakable(raw) == spoken

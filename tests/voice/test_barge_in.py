"""What the stored answer says when a member talked over it."""

from __future__ import annotations

from botservice.voice.barge_in import UNSPOKEN_MARK, mark_unspoken

ANSWER = "It is **sunny** in Paris. Expect 24 degrees. Take a hat."


def test_the_words_after_the_last_sentence_spoken_are_marked() -> None:
    marked = mark_unspoken(ANSWER, ["It is sunny in Paris."])

    assert marked == f"It is **sunny** in Paris.\n\n{UNSPOKEN_MARK}\nExpect 24 degrees. Take a hat."


def test_an_answer_interrupted_in_its_first_sentence_is_marked_whole() -> None:
    assert mark_unspoken(ANSWER, []) == f"{UNSPOKEN_MARK}\n{ANSWER}"


def test_an_answer_spoken_to_the_end_is_unchanged() -> None:
    sentences = ["It is sunny in Paris.", "Expect 24 degrees.", "Take a hat."]

    assert mark_unspoken(ANSWER, sentences) == ANSWER

"""A conversation's prompt followed from its last window: always `build_prompt`'s own."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from botservice.core.events import Attachment
from botservice.core.ports import StoredMessage, StoredToolCall
from botservice.core.prompt import build_prompt
from botservice.core.prompt_windows import FOLLOWED_FROM, PromptWindows


class Thread:
    """A thread as the store keeps it, and its windows as the store reads them: the
    newest messages by id, each answer after the question it answers."""

    def __init__(self) -> None:
        self.messages: dict[int, StoredMessage] = {}
        self.next_id = 1
        self.questions: list[int] = []

    def ask(self, author: str, tokens: int) -> None:
        self._store("user", author, tokens, None)
        self.questions.append(self.next_id - 1)

    def answer(self, back: int, tokens: int) -> None:
        """Answer the question `back` questions before the last (0: the last)."""
        if self.questions:
            self._store("assistant", "bot", tokens, self.questions[-1 - back % len(self.questions)])

    def _store(self, role: Any, author: str, tokens: int, reply_to: int | None) -> None:
        id_ = self.next_id
        self.next_id += 1
        self.messages[id_] = StoredMessage(
            id_, role, author, author.title(), f"{role} {id_} from {author}", tokens, reply_to
        )

    def delete(self, pick: int) -> None:
        if self.messages:
            del self.messages[sorted(self.messages)[pick % len(self.messages)]]

    def read_again(self) -> None:
        """Every message as a new object with the same values (a cache emptied)."""
        self.messages = {id_: dataclasses.replace(m) for id_, m in self.messages.items()}

    def window(self, limit: int) -> list[StoredMessage]:
        newest = sorted(self.messages)[-limit:]
        found = [self.messages[id_] for id_ in newest]
        return sorted(found, key=lambda m: (m.reply_to_id or m.id, m.id))


steps = st.lists(
    st.one_of(
        st.tuples(st.just("ask"), st.sampled_from(["ada", "bo"]), st.integers(1, 40)),
        st.tuples(st.just("answer"), st.sampled_from([0, 0, 0, 1, 5]), st.integers(1, 40)),
        st.tuples(st.just("delete"), st.integers(0, 10_000), st.just(0)),
        st.tuples(st.just("read_again"), st.just(0), st.just(0)),
        st.tuples(st.just("turn"), st.sampled_from([40, 60, 200]), st.integers(0, 3)),
    ),
    min_size=1,
    max_size=160,
)

IMAGE = Attachment(name="cat.png", content_type="image/png", url="https://example.com/cat.png")


def arguments(history: list[StoredMessage], budget: int, extra: int) -> dict[str, Any]:
    """A turn's arguments; `extra` 1 adds an image, 2 an earlier question's tool round."""
    values: dict[str, Any] = {
        "instructions": "Be brief.",
        "instructions_role": "system",
        "instructions_tokens": 3,
        "history": history,
        "budget_tokens": budget,
    }
    if extra == 1:
        values["images"] = [dataclasses.replace(IMAGE, data=b"png")]
    questions = [m.id for m in history if m.role == "user"]
    if extra == 2 and questions:
        call = StoredToolCall(
            user_message_id=questions[0],
            round=0,
            position=0,
            call_id="c1",
            name="lookup",
            arguments="{}",
            status="done",
            result="found",
            tokens=7,
        )
        values["tool_calls"] = {questions[0]: [call]}
    return values


def front_orphans(history: list[StoredMessage]) -> int:
    questions = {m.id for m in history if m.role == "user"}
    lead = 0
    while lead < len(history) and history[lead].role == "assistant":
        if history[lead].reply_to_id in questions:
            break
        lead += 1
    return lead


@settings(max_examples=400, deadline=None)
@given(start=st.integers(0, 120), steps=steps)
def test_every_turns_prompt_is_build_prompts_own(start: int, steps: list[Any]) -> None:
    thread = Thread()
    for index in range(start):  # a long thread to begin with, answered in turn
        thread.ask("ada" if index % 7 else "bo", 10)
        thread.answer(0, 20)
    prompts = PromptWindows(conversations=2)
    for step, value, more in steps:
        if step == "turn":
            thread.ask("ada", 12)
            history = thread.window(value)
            # Budgets all of it fits in, and some it does not.
            for budget in (1_000_000, 2_000) if more == 3 else (1_000_000,):
                given_args = arguments(history, budget, more)
                before = prompts.prompts_from_windows
                prompt = prompts.build(7, **given_args)
                assert prompt == build_prompt(**given_args)
                # Given from the window exactly when the prompt is every message after
                # the front's orphans, as it is (none left out, none merged).
                whole = len(prompt.messages) - 1 == len(history) - front_orphans(history)
                expected = len(history) >= FOLLOWED_FROM and more in (0, 3) and whole
                assert prompts.prompts_from_windows - before == expected
            thread.answer(0, 25)
        elif step == "ask":
            thread.ask(value, more)
        elif step == "answer":
            thread.answer(value, more)
        elif step == "delete":
            thread.delete(value)
        else:
            thread.read_again()


def turns(thread: Thread, prompts: PromptWindows, count: int, limit: int, **asked: Any) -> None:
    """`count` turns of the thread, each prompt checked against `build_prompt`."""
    for _ in range(count):
        thread.ask(asked.get("author", "ada"), 10)
        history = thread.window(limit)
        assert prompts.build(1, **arguments(history, 1_000_000, 0)) == build_prompt(
            **arguments(history, 1_000_000, 0)
        )
        thread.answer(0, 20)


def long_thread(questions: int = 150) -> Thread:
    thread = Thread()
    for _ in range(questions):
        thread.ask("ada", 10)
        thread.answer(0, 20)
    return thread


def test_a_long_threads_turns_follow_its_window_and_walk_none() -> None:
    thread, prompts = long_thread(), PromptWindows()
    turns(thread, prompts, 3, 200)
    assert (prompts.windows_counted, prompts.prompts_from_windows) == (1, 3)


def test_a_window_starting_with_an_answer_is_followed_as_it_moves() -> None:
    # The newest 200 of a thread of questions and answers, ending with a question,
    # begin with an answer whose question is older: left out, as the window moves on.
    thread, prompts = long_thread(), PromptWindows()
    turns(thread, prompts, 4, 200)
    assert (prompts.windows_counted, prompts.prompts_from_windows) == (1, 4)
    thread.ask("ada", 10)
    assert front_orphans(thread.window(200)) == 1


def test_a_second_speaker_names_everyone_until_the_window_moves_past_them() -> None:
    thread, prompts = long_thread(), PromptWindows()
    turns(thread, prompts, 1, 40)
    turns(thread, prompts, 1, 40, author="bo")  # named from here
    turns(thread, prompts, 25, 40)  # and not once bo's question has left the window
    assert (prompts.windows_counted, prompts.prompts_from_windows) == (1, 27)


def test_a_question_left_unanswered_moves_the_front_by_one() -> None:
    thread, prompts = long_thread(), PromptWindows()
    turns(thread, prompts, 1, 40)  # the window begins with a question
    thread.ask("ada", 10)  # another message, not answered on its own
    turns(thread, prompts, 2, 40)  # begins with an answer whose question is gone
    thread.ask("ada", 10)
    turns(thread, prompts, 2, 40)  # with a question again
    assert (prompts.windows_counted, prompts.prompts_from_windows) == (1, 5)


def test_a_turn_answered_twice_is_walked_until_it_leaves_the_window() -> None:
    thread, prompts = long_thread(), PromptWindows()
    turns(thread, prompts, 1, 40)
    thread.answer(0, 20)  # the last question answered a second time
    turns(thread, prompts, 30, 40)
    # Walked while both answers were in the window (19 turns), not after.
    assert (prompts.windows_counted, prompts.prompts_from_windows) == (1, 1 + 30 - 19)


def test_an_answer_before_its_question_is_built_whole() -> None:
    thread = long_thread(20)
    history = thread.window(40)
    tangled = [history[-1], *history[:-1]]  # the last answer first
    thread.ask("ada", 10)
    prompts = PromptWindows()
    for window in (tangled, [*tangled, thread.window(1)[0]]):
        assert prompts.build(1, **arguments(window, 1_000_000, 0)) == build_prompt(
            **arguments(window, 1_000_000, 0)
        )
    assert prompts.prompts_from_windows == 0


def test_short_windows_are_built_whole_and_cleared_windows_forgotten() -> None:
    thread, prompts = long_thread(FOLLOWED_FROM), PromptWindows()
    turns(thread, prompts, 1, FOLLOWED_FROM - 1)
    assert len(prompts) == 0  # nothing kept for a short window
    turns(thread, prompts, 1, 200)
    assert len(prompts) == 1
    prompts.clear()
    assert len(prompts) == 0

"""Stored tool rounds in the prompt: in order after their question, budgeted with it."""

from __future__ import annotations

from botservice.core.ports import StoredMessage, StoredToolCall
from botservice.core.prompt import build_prompt


def call(message_id: int, round_: int, position: int, result: str, tokens: int) -> StoredToolCall:
    return StoredToolCall(
        user_message_id=message_id,
        round=round_,
        position=position,
        call_id=f"c{message_id}-{round_}-{position}",
        name="lookup",
        arguments='{"query": "q"}',
        status="done",
        result=result,
        tokens=tokens,
    )


HISTORY = [
    StoredMessage(1, "user", "U1", "Ada", "first question", 10),
    StoredMessage(2, "assistant", "bot", "bot", "first answer", 10, reply_to_id=1),
    StoredMessage(3, "user", "U1", "Ada", "second question", 10),
]


def test_rounds_follow_their_question_round_by_round() -> None:
    rounds = {1: [call(1, 0, 0, "a", 5), call(1, 0, 1, "b", 5), call(1, 1, 0, "c", 5)]}

    prompt = build_prompt(
        instructions="Be brief.",
        instructions_role="system",
        instructions_tokens=3,
        history=HISTORY,
        budget_tokens=10_000,
        tool_calls=rounds,
    )

    shape = [
        (m["role"], m.get("tool_call_id") or len(m.get("tool_calls") or []))
        for m in prompt.messages
    ]
    assert shape == [
        ("system", 0),
        ("user", 0),
        ("assistant", 2),
        ("tool", "c1-0-0"),
        ("tool", "c1-0-1"),
        ("assistant", 1),
        ("tool", "c1-1-0"),
        ("assistant", 0),
        ("user", 0),
    ]


def test_a_question_whose_rounds_do_not_fit_is_left_out_with_them() -> None:
    rounds = {1: [call(1, 0, 0, "x" * 4000, 1000)]}

    prompt = build_prompt(
        instructions="Be brief.",
        instructions_role="system",
        instructions_tokens=3,
        history=HISTORY,
        budget_tokens=200,
        tool_calls=rounds,
    )

    assert [m["content"] for m in prompt.messages] == [
        "Be brief.",
        "first answer",
        "second question",
    ]
    assert prompt.left_out == 1

"""The built-in tools as the core calls them (`BuiltinTools.call`), over a real store on
SQLite and PostgreSQL: what the model reads back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from botservice.core.ports import AcceptedTurn, Usage
from botservice.core.tools import TOOL_NAME, ToolContext, ToolOutput, ToolPolicy
from botservice.storage.repository import SqlStore
from botservice.tools.builtin import BuiltinTools, builtin_tools
from botservice.tools.search_history import snippet
from tests.db import incoming

PARIS = ZoneInfo("Europe/Paris")


class Clock:
    """The tools' idea of now; tests move it."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def tools_over(store: SqlStore, clock: Clock, *, retention_days: int = 30) -> BuiltinTools:
    return builtin_tools(store, timezone=PARIS, default_retention_days=retention_days, clock=clock)


async def say(store: SqlStore, key: str, words: str, **where: str) -> AcceptedTurn:
    turn = await store.accept(incoming(key, text=words, **where), text=words, tokens=1)  # type: ignore[arg-type]
    assert turn is not None
    return turn


async def reply(store: SqlStore, turn: AcceptedTurn, words: str) -> None:
    await store.store_answer(
        turn.turn_id,
        text=words,
        tokens=1,
        usage=Usage(prompt_tokens=1, completion_tokens=1),
        status="complete",
        model="m",
    )


def context_of(turn: AcceptedTurn, **where: str) -> ToolContext:
    return ToolContext(
        conversation=incoming("any", **where).conversation,
        conversation_id=turn.conversation_id,
        user_id="U1",
        turn_id=turn.turn_id,
    )


def test_the_built_in_tools_are_read_only_trusted_and_on_by_default() -> None:
    source = builtin_tools(
        None,  # type: ignore[arg-type]  # listing reads nothing
        timezone=PARIS,
        default_retention_days=30,
    )
    names = [spec.name for spec in source.tools()]
    assert names == ["search_history", "earlier_messages", "current_time"]
    assert source.name == "builtin" and source.trusted
    for spec in source.tools():
        assert TOOL_NAME.match(spec.name)
        assert spec.read_only and not spec.destructive and spec.trusted
        assert spec.runs_without_asking
        assert ToolPolicy().allows(spec)
        assert spec.parameters["type"] == "object"


# --- search_history ---------------------------------------------------------------


async def test_search_history_finds_who_said_what_when_in_this_channel_only(
    store: SqlStore,
) -> None:
    clock = Clock()
    tools = tools_over(store, clock)
    earlier = await say(store, "m1", "Should we move the standup to 10:30?", thread="T1")
    await reply(store, earlier, "Moving the standup to 10:30 works for everyone who answered.")
    await say(store, "elsewhere", "standup in the other channel", channel="C2")
    asking = await say(store, "m2", "When is the standup now?", thread="T2")

    result = await tools.call(
        "search_history", {"query": "standup"}, context_of(asking, thread="T2")
    )

    assert not result.is_error
    lines = result.text.splitlines()
    assert lines[0] == "2 messages of this channel match 'standup', best first:"
    assert len(lines) == 3
    assert "other channel" not in result.text
    # The question being answered is not a hit of its own search.
    assert "When is the standup now?" not in result.text
    assert any("· Ada · thread T1: Should we move the standup to 10:30?" in line for line in lines)
    assert any("· the bot · thread T1: Moving the standup" in line for line in lines)
    when = clock.now.astimezone(PARIS).strftime("%Y-%m-%d")
    assert all(f". {when} " in line for line in lines[1:])
    assert all(("CET" in line or "CEST" in line) for line in lines[1:])


async def test_search_history_falls_back_to_some_of_the_words_and_says_so(
    store: SqlStore,
) -> None:
    tools = tools_over(store, Clock())
    asking = await say(store, "m1", "anything about the budget?")
    await say(store, "m2", "the budget for Q3 is approved", thread="T2")

    result = await tools.call("search_history", {"query": "budget spreadsheet"}, context_of(asking))
    assert result.text.startswith(
        "No message has all the words of 'budget spreadsheet'; 1 message with some of them"
    )
    assert "the budget for Q3 is approved" in result.text

    nothing = await tools.call("search_history", {"query": "holidays"}, context_of(asking))
    assert nothing == ToolOutput("No stored message of this channel matches 'holidays'.")


async def test_search_history_leaves_out_what_the_channels_retention_expired(
    store: SqlStore,
) -> None:
    clock = Clock()
    tools = tools_over(store, clock)
    await say(store, "m1", "the wifi password is on the fridge")
    asking = await say(store, "m2", "where is the wifi password?", thread="T2")
    await store.change_setting("test", "W1", "C1", field="retention_days", value=1, changed_by="U1")
    found = await tools.call("search_history", {"query": "wifi"}, context_of(asking))
    assert "fridge" in found.text

    # Two days later the message has expired, even before the purge deletes it.
    clock.now += timedelta(days=2)
    gone = await tools.call("search_history", {"query": "wifi"}, context_of(asking))
    assert "fridge" not in gone.text


async def test_search_history_after_forget_me_finds_nothing_of_that_person(
    store: SqlStore,
) -> None:
    tools = tools_over(store, Clock())
    secret = await say(store, "m1", "my diagnosis is private", user_id="ada")
    await reply(store, secret, "sorry to hear about the diagnosis")
    asking = await say(store, "m2", "what was that diagnosis?", user_id="eve", thread="T2")

    await store.forget_user("test", "ada")

    result = await tools.call("search_history", {"query": "diagnosis"}, context_of(asking))
    assert result == ToolOutput("No stored message of this channel matches 'diagnosis'.")


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ({}, "Give `query`"),
        ({"query": "   "}, "Give `query`"),
        ({"query": "?!"}, "Give `query`"),
        ({"query": 42}, "Give `query`"),
        ({"query": "x", "limit": "five"}, "`limit` must be a whole number"),
        ({"query": "x", "limit": 2.5}, "`limit` must be a whole number"),
    ],
)
async def test_search_history_explains_bad_arguments_to_the_model(
    sqlite_store: SqlStore, arguments: dict[str, object], says: str
) -> None:
    tools = tools_over(sqlite_store, Clock())
    asking = await say(sqlite_store, "m1", "hello")
    result = await tools.call("search_history", arguments, context_of(asking))
    assert result.is_error
    assert result.text.startswith(says)


def test_a_snippet_shows_the_words_found_in_a_long_message() -> None:
    text = ("filler words " * 60) + "the rollback plan is in the runbook" + (" more text" * 60)
    shown = snippet(text, ("rollback",))
    assert "the rollback plan is in the runbook" in shown
    assert shown.startswith("…") and shown.endswith("…")
    assert len(shown) <= 242
    assert snippet("short text", ("x",)) == "short text"


# --- earlier_messages --------------------------------------------------------------


async def test_earlier_messages_pages_from_the_start_of_the_conversation(
    store: SqlStore,
) -> None:
    tools = tools_over(store, Clock())
    for index in range(3):
        turn = await say(store, f"m{index}", f"question {index}")
        await reply(store, turn, f"answer {index}")
    asking = await say(store, "now", "what did I ask first?")
    context = context_of(asking)

    first = await tools.call("earlier_messages", {"limit": 4}, context)
    lines = first.text.splitlines()
    assert [line.rsplit(": ", 1)[1] for line in lines[:4]] == [
        "question 0",
        "answer 0",
        "question 1",
        "answer 1",
    ]
    assert " · Ada: question 0" in lines[0]
    assert " · the bot: answer 0" in lines[1]
    last = int(lines[3].split(" ", 1)[0].removeprefix("#"))
    assert lines[4] == f"More: call earlier_messages with after={last}."

    rest = await tools.call("earlier_messages", {"after": last, "limit": 4}, context)
    assert [line.rsplit(": ", 1)[1] for line in rest.text.splitlines()[:2]] == [
        "question 2",
        "answer 2",
    ]
    assert rest.text.endswith("That is every earlier message of this conversation.")
    assert "what did I ask first?" not in first.text + rest.text

    past_the_end = await tools.call("earlier_messages", {"after": 10**9}, context)
    assert past_the_end.text == f"No messages of this conversation after number {10**9}."


async def test_earlier_messages_of_a_new_conversation_are_none(sqlite_store: SqlStore) -> None:
    tools = tools_over(sqlite_store, Clock())
    asking = await say(sqlite_store, "m1", "hi")
    result = await tools.call("earlier_messages", {}, context_of(asking))
    assert result == ToolOutput("This conversation has no earlier messages.")
    bad = await tools.call("earlier_messages", {"after": "x"}, context_of(asking))
    assert bad.is_error


# --- current_time ------------------------------------------------------------------


async def test_current_time_answers_in_the_bots_timezone_or_the_one_asked() -> None:
    clock = Clock()
    clock.now = datetime(2026, 7, 14, 10, 30, 5, tzinfo=UTC)
    tools = builtin_tools(
        None,  # type: ignore[arg-type]  # current_time reads no store
        timezone=PARIS,
        default_retention_days=30,
        clock=clock,
    )
    context = ToolContext(
        conversation=incoming("x").conversation, conversation_id=1, user_id="U1", turn_id=1
    )

    here = await tools.call("current_time", {}, context)
    assert here == ToolOutput(
        "Tuesday, 2026-07-14 12:30:05 CEST (UTC+02:00, Europe/Paris); "
        "ISO 8601: 2026-07-14T12:30:05+02:00"
    )
    tokyo = await tools.call("current_time", {"timezone": "Asia/Tokyo"}, context)
    assert tokyo.text.startswith("Tuesday, 2026-07-14 19:30:05 JST (UTC+09:00, Asia/Tokyo)")
    for wrong in ("Mars/Olympus", "../../etc/passwd", 7):
        refused = await tools.call("current_time", {"timezone": wrong}, context)
        assert refused.is_error
        assert "use an IANA name such as Europe/Paris" in refused.text
    unknown = await tools.call("no_such_tool", {}, context)
    assert unknown.is_error

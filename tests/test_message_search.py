"""Searching a channel's stored messages (the `search_history` tool's storage), on SQLite
and on PostgreSQL: only the asked channel, ranked, and nothing deleted ever found."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from botservice.core.message_search import ChannelRef, search_terms
from botservice.core.ports import AcceptedTurn, Usage
from botservice.storage.repository import SqlStore
from tests.db import incoming

HERE = ChannelRef("test", "W1", "C1")


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


async def found(
    store: SqlStore, query: str, channel: ChannelRef = HERE, **options: object
) -> list[str]:
    hits = await store.search_channel(
        channel,
        search_terms(query),
        match_all=True,
        limit=10,
        **options,  # type: ignore[arg-type]
    )
    return [hit.text for hit in hits]


async def test_a_search_finds_this_channels_messages_and_answers_by_word_and_word_start(
    store: SqlStore,
) -> None:
    turn = await say(store, "m1", "When do we deploy the billing service?", thread="T1")
    await reply(store, turn, "The billing deployment is planned for Friday.")
    await say(store, "m2", "Lunch at noon?", thread="T2")

    assert sorted(await found(store, "billing")) == [
        "The billing deployment is planned for Friday.",
        "When do we deploy the billing service?",
    ]
    # "deploy" is the start of "deployment" too; every word must match.
    assert sorted(await found(store, "deploy billing")) == [
        "The billing deployment is planned for Friday.",
        "When do we deploy the billing service?",
    ]
    assert await found(store, "deploy friday") == ["The billing deployment is planned for Friday."]
    assert await found(store, "lunch") == ["Lunch at noon?"]
    assert await found(store, "holiday") == []


async def test_a_search_never_returns_another_channels_workspaces_or_platforms_messages(
    store: SqlStore,
) -> None:
    await say(store, "here", "the secret roadmap for Q3")
    await say(store, "other-channel", "the secret roadmap of the other channel", channel="C2")
    await say(store, "other-workspace", "the secret roadmap next door", workspace="W2")
    await say(store, "other-platform", "the secret roadmap elsewhere", platform="other")

    assert await found(store, "secret roadmap") == ["the secret roadmap for Q3"]
    assert await found(store, "roadmap", ChannelRef("test", "W1", "C2")) == [
        "the secret roadmap of the other channel"
    ]


async def test_the_best_match_comes_first_and_the_number_of_hits_is_capped(store: SqlStore) -> None:
    for index in range(6):
        await say(store, f"filler{index}", f"a note about the release, number {index}")
    await say(store, "best", "release release release checklist for the release")

    hits = await store.search_channel(HERE, ("release",), match_all=True, limit=3)
    assert len(hits) == 3
    assert hits[0].text == "release release release checklist for the release"


async def test_any_word_may_match_when_asked(store: SqlStore) -> None:
    await say(store, "m1", "the invoice was paid")
    await say(store, "m2", "the contract was signed")

    hits = await store.search_channel(HERE, ("invoice", "contract"), match_all=False, limit=10)
    assert sorted(hit.text for hit in hits) == ["the contract was signed", "the invoice was paid"]


async def test_forgotten_deleted_and_expired_messages_vanish_from_search(store: SqlStore) -> None:
    forgotten = await say(store, "m1", "ada's salary question", user_id="ada")
    await reply(store, forgotten, "the salary bands are on the wiki")
    kept = await say(store, "m2", "grace's salary question", user_id="grace", thread="T2")
    await reply(store, kept, "noted")
    await say(store, "m3", "deleted salary remark", user_id="grace", thread="T3")
    assert len(await found(store, "salary")) == 4

    await store.forget_user("test", "ada")
    assert sorted(await found(store, "salary")) == [
        "deleted salary remark",
        "grace's salary question",
    ]

    await store.delete_platform_message("test", "W1", "C1", "pm-m3")
    assert await found(store, "salary") == ["grace's salary question"]

    counts = await store.purge(
        now=datetime.now(UTC) + timedelta(days=31),
        default_retention_days=30,
        dedupe_days=2,
        batch_size=100,
    )
    assert counts.messages == 2
    assert await found(store, "salary") == []


async def test_a_message_whose_words_changed_is_found_by_its_new_words_only(
    store: SqlStore,
) -> None:
    turn = await say(store, "m1", "[voice message]")
    await store.heard(turn.user_message_id, text="please book the meeting room", tokens=5)

    assert await found(store, "meeting room") == ["please book the meeting room"]
    assert await found(store, "voice") == []


async def test_the_question_being_answered_and_old_messages_can_be_left_out(
    store: SqlStore,
) -> None:
    earlier = await say(store, "m1", "the staging password rotation", thread="T1")
    asking = await say(store, "m2", "what about the staging password?", thread="T2")

    assert await found(store, "staging password", exclude_turn_id=asking.turn_id) == [
        "the staging password rotation"
    ]
    assert await found(store, "staging", since=datetime.now(UTC) + timedelta(minutes=1)) == []
    assert earlier.turn_id != asking.turn_id


async def test_search_syntax_in_a_query_is_only_words(store: SqlStore) -> None:
    await say(store, "m1", 'the "AND" operator OR near NEAR(x) costs 5*3')

    for query in ('"AND"', "OR near", "NEAR(x)", "5*3", "costs:*"):
        assert len(await found(store, query)) == 1, query
    # PostgreSQL's tsquery operators are plain separators too (and "y" is in no message).
    assert await found(store, "x & !y | z") == []
    assert search_terms('NEAR(x) "a" b*') == ("near", "x", "a", "b")
    assert search_terms("!!! ***") == ()
    assert await store.search_channel(HERE, (), match_all=True, limit=5) == []


async def test_postgresql_searches_through_its_expression_index(store: SqlStore) -> None:
    if store.engine.dialect.name != "postgresql":
        # SQLite searches the FTS5 table itself: there is no other way to match.
        plan = await _sqlite_plan(store)
        assert "messages_fts" in plan
        return
    async with store.engine.connect() as connection:
        await connection.execute(text("SET enable_seqscan = off"))
        rows = await connection.execute(
            text(
                "EXPLAIN SELECT id FROM messages WHERE to_tsvector('simple'::regconfig, "
                "messages.text) @@ to_tsquery('simple'::regconfig, 'deploy:*')"
            )
        )
        plan = "\n".join(row[0] for row in rows)
    assert "ix_messages_text_search" in plan


async def _sqlite_plan(store: SqlStore) -> str:
    async with store.engine.connect() as connection:
        rows = await connection.execute(
            text("EXPLAIN QUERY PLAN SELECT rowid FROM messages_fts WHERE messages_fts MATCH 'x'")
        )
        return "\n".join(str(row[-1]) for row in rows)


# --- a conversation's older messages ----------------------------------------------


async def test_earlier_messages_page_through_the_conversation_up_to_the_question(
    store: SqlStore,
) -> None:
    turns = []
    for index in range(5):
        turn = await say(store, f"m{index}", f"question {index}")
        await reply(store, turn, f"answer {index}")
        turns.append(turn)
    asking = await say(store, "now", "what did we say first?")
    elsewhere = await say(store, "other", "another thread's words", thread="T9")

    first = await store.earlier_messages(
        asking.conversation_id, before_turn_id=asking.turn_id, after_message_id=0, limit=4
    )
    assert [message.text for message in first] == [
        "question 0",
        "answer 0",
        "question 1",
        "answer 1",
    ]
    rest = await store.earlier_messages(
        asking.conversation_id,
        before_turn_id=asking.turn_id,
        after_message_id=first[-1].id,
        limit=100,
    )
    assert [message.text for message in rest][-1] == "answer 4"
    assert len(rest) == 6
    # Another conversation's turn names no question of this one: nothing.
    assert (
        await store.earlier_messages(
            asking.conversation_id, before_turn_id=elsewhere.turn_id, after_message_id=0, limit=9
        )
        == []
    )


async def test_earlier_messages_start_after_a_reset(store: SqlStore) -> None:
    await say(store, "m1", "before the reset")
    await store.reset_conversation(incoming("x").conversation)
    await say(store, "m2", "after the reset")
    asking = await say(store, "m3", "and now?")

    earlier = await store.earlier_messages(
        asking.conversation_id, before_turn_id=asking.turn_id, after_message_id=0, limit=10
    )
    assert [message.text for message in earlier] == ["after the reset"]

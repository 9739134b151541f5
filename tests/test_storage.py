"""SqlStore on SQLite and PostgreSQL: claims, history, settings, forgetting, migrations."""

from __future__ import annotations

import asyncio
import gc
import inspect
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect as inspect_database
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from botservice.core.errors import ConfigError, StoreUnavailable
from botservice.core.events import ConversationKey
from botservice.core.ports import (
    AcceptedTurn,
    ChannelSettings,
    Store,
    StoredMessage,
    StoredToolCall,
    Usage,
)
from botservice.storage.base import _unavailable_as_store_error
from botservice.storage.engine import check_connection, create_engine, normalize_url
from botservice.storage.message_search import is_search_index
from botservice.storage.migrate import alembic_config, current_revision, head_revision, upgrade
from botservice.storage.repository import SqlStore
from botservice.storage.tables import MESSAGES, TURNS, metadata
from tests.db import StoreFactory, incoming

KEY = ConversationKey("test", "W1", "C1", "T1")


async def ask(store: SqlStore, key: str, text: str = "hello", **fields: object) -> AcceptedTurn:
    turn = await store.accept(incoming(key, text=text, **fields), text=text, tokens=len(text))  # type: ignore[arg-type]
    assert turn is not None, f"{key} was not accepted"
    return turn


async def answer(store: SqlStore, turn: AcceptedTurn, text: str = "answer") -> int | None:
    return await store.store_answer(
        turn.turn_id,
        text=text,
        tokens=2,
        usage=Usage(prompt_tokens=10, completion_tokens=2),
        status="complete",
        model="m1",
    )


def texts(messages: list[StoredMessage]) -> list[str]:
    return [message.text for message in messages]


def test_sql_store_has_every_method_of_the_store_port_with_its_parameters() -> None:
    as_port: Store = SqlStore.__new__(SqlStore)  # mypy checks the structure
    for name, method in vars(Store).items():
        if callable(method) and not name.startswith("_"):
            port = inspect.signature(method).parameters
            ours = inspect.signature(getattr(as_port, name).__func__).parameters
            assert list(ours) == list(port), name


# --- claiming -------------------------------------------------------------------


async def test_a_message_is_accepted_once_even_after_a_restart(
    store: SqlStore, make_store: StoreFactory
) -> None:
    first = await ask(store, "m1")
    assert first.user_message_id > 0 and first.conversation_id > 0

    assert await store.accept(incoming("m1"), text="hello", tokens=1) is None
    restarted = await make_store()
    assert await restarted.accept(incoming("m1"), text="hello", tokens=1) is None
    # The same key on another platform is another message.
    assert await restarted.accept(incoming("m1", platform="other"), text="hi", tokens=1)

    history = await store.history(first.conversation_id, up_to_message_id=10**9, limit=50)
    assert texts(history) == ["hello"]


async def test_concurrent_deliveries_of_one_message_are_taken_once(
    store: SqlStore, make_store: StoreFactory
) -> None:
    other = await make_store()
    attempts = [
        (store if index % 2 else other).accept(incoming("dup", text="once"), text="once", tokens=1)
        for index in range(12)
    ]
    results = await asyncio.gather(*attempts)
    winners = [result for result in results if result is not None]
    assert len(winners) == 1
    history = await store.history(winners[0].conversation_id, up_to_message_id=10**9, limit=50)
    assert texts(history) == ["once"]


async def test_messages_arriving_at_once_in_a_new_thread_share_one_conversation(
    store: SqlStore, make_store: StoreFactory
) -> None:
    # Two processes take a new thread's first messages at the same moment: each
    # statement may find the conversation missing and create it; one conversation
    # is made, and every message is accepted into it, once.
    other = await make_store()
    thread = "T-new-at-once"
    results = await asyncio.gather(
        *(
            (store if index % 2 else other).accept(
                incoming(f"new-{index}", text=f"m{index}", thread=thread),
                text=f"m{index}",
                tokens=1,
            )
            for index in range(12)
        )
    )
    accepted = [result for result in results if result is not None]
    assert len(accepted) == 12
    assert len({turn.conversation_id for turn in accepted}) == 1
    history = await store.history(accepted[0].conversation_id, up_to_message_id=10**9, limit=50)
    assert sorted(texts(history)) == sorted(f"m{index}" for index in range(12))


async def test_commands_claim_keys_in_the_same_namespace(store: SqlStore) -> None:
    assert await store.claim_key("test", "cmd-1") is True
    assert await store.claim_key("test", "cmd-1") is False
    assert await store.accept(incoming("cmd-1"), text="x", tokens=1) is None
    assert await store.pending_turns() == []


async def test_messages_of_one_thread_share_a_conversation(store: SqlStore) -> None:
    first = await ask(store, "m1")
    second = await ask(store, "m2")
    elsewhere = await ask(store, "m3", thread="T2")
    assert first.conversation_id == second.conversation_id
    assert elsewhere.conversation_id != first.conversation_id
    assert second.user_message_id > first.user_message_id


# --- history ----------------------------------------------------------------------


async def test_an_answer_follows_its_question_even_when_stored_after_a_later_one(
    store: SqlStore,
) -> None:
    first = await ask(store, "m1", "first question")
    second = await ask(store, "m2", "second question")
    await answer(store, first, "first answer")

    # While the second turn is answered, its history shows the first exchange complete.
    history = await store.history(
        second.conversation_id, up_to_message_id=second.user_message_id, limit=50
    )
    assert texts(history) == ["first question", "first answer", "second question"]
    assert [message.role for message in history] == ["user", "assistant", "user"]
    assert history[1].reply_to_id == first.user_message_id

    await answer(store, second, "second answer")
    # The first turn's view never includes the later question or its answer.
    history = await store.history(
        first.conversation_id, up_to_message_id=first.user_message_id, limit=50
    )
    assert texts(history) == ["first question", "first answer"]


async def test_history_returns_the_newest_messages_oldest_first(store: SqlStore) -> None:
    turns = []
    for index in range(5):
        turn = await ask(store, f"m{index}", f"q{index}")
        await answer(store, turn, f"a{index}")
        turns.append(turn)
    last = await ask(store, "m5", "q5")

    history = await store.history(
        last.conversation_id, up_to_message_id=last.user_message_id, limit=4
    )
    assert texts(history) == ["a3", "q4", "a4", "q5"]
    assert all(message.created_at and message.created_at.tzinfo for message in history)
    assert (
        await store.history(last.conversation_id, up_to_message_id=last.user_message_id, limit=0)
        == []
    )


async def test_reset_starts_the_conversation_afresh(store: SqlStore) -> None:
    before = await ask(store, "m1", "old question")
    await store.reset_conversation(KEY)
    # An answer to a question from before the reset does not leak into the new start.
    await answer(store, before, "old answer")
    after = await ask(store, "m2", "new question")
    assert after.conversation_id == before.conversation_id

    history = await store.history(
        after.conversation_id, up_to_message_id=after.user_message_id, limit=50
    )
    assert texts(history) == ["new question"]
    # Nothing was deleted.
    old = await store.message_text(before.user_message_id)
    assert old is not None and old.text == "old question"


async def test_reset_of_an_unknown_conversation_is_harmless(store: SqlStore) -> None:
    await store.reset_conversation(ConversationKey("test", "W9", "C9", "T9"))


async def test_the_trim_notice_is_given_once_per_start(store: SqlStore) -> None:
    turn = await ask(store, "m1")
    assert await store.mark_trim_noticed(turn.conversation_id) is True
    assert await store.mark_trim_noticed(turn.conversation_id) is False
    await store.reset_conversation(KEY)
    assert await store.mark_trim_noticed(turn.conversation_id) is True


async def test_stored_answers_keep_usage_status_and_model(store: SqlStore) -> None:
    turn = await ask(store, "m1", "question")
    message_id = await store.store_answer(
        turn.turn_id,
        text="half an ans\x00wer",
        tokens=3,
        usage=None,
        status="interrupted",
        model="m2",
    )
    stored = await store.message_text(message_id)
    assert stored is not None
    assert (stored.role, stored.text, stored.tokens, stored.status, stored.reply_to_id) == (
        "assistant",
        "half an answer",
        3,
        "interrupted",
        turn.user_message_id,
    )
    assert await store.message_text(10**9) is None
    async with store.engine.connect() as connection:
        row = (
            await connection.execute(
                select(MESSAGES.c.model, MESSAGES.c.prompt_tokens).where(
                    MESSAGES.c.id == message_id
                )
            )
        ).one()
    assert tuple(row) == ("m2", None)


async def test_an_answer_to_an_unknown_or_finished_turn_is_refused(store: SqlStore) -> None:
    assert (
        await store.store_answer(
            10**9, text="x", tokens=1, usage=None, status="complete", model="m"
        )
        is None
    )
    turn = await ask(store, "m1", text="question")
    await answer(store, turn, "the one answer")
    assert await answer(store, turn, "a second answer") is None
    history = await store.history(turn.conversation_id, up_to_message_id=10**9, limit=50)
    assert [m.text for m in history] == ["question", "the one answer"]


async def test_delete_conversation_messages_counts_what_went(store: SqlStore) -> None:
    turn = await ask(store, "m1")
    await answer(store, turn)
    other = await ask(store, "m2", thread="T2")
    assert await store.delete_conversation_messages(turn.conversation_id) == 2
    assert await store.history(turn.conversation_id, up_to_message_id=10**9, limit=50) == []
    assert await store.history(other.conversation_id, up_to_message_id=10**9, limit=50) != []


# --- pending turns ------------------------------------------------------------------


async def test_pending_turns_are_listed_until_answered_or_failed(store: SqlStore) -> None:
    first = await ask(
        store,
        "m1",
        user_id="U7",
        is_channel_admin=True,
        reply_target={"channel": "C1", "ts": "1.5"},
    )
    second = await ask(store, "m2", thread="T2")
    await store.set_reply_ref(first.turn_id, "placeholder-1")

    pending = {turn.turn_id: turn for turn in await store.pending_turns()}
    assert set(pending) == {first.turn_id, second.turn_id}
    resumed = pending[first.turn_id]
    assert resumed.conversation == KEY
    assert resumed.platform == "test"
    assert resumed.user_message_id == first.user_message_id
    assert resumed.conversation_id == first.conversation_id
    assert resumed.reply_target == {"channel": "C1", "ts": "1.5"}
    assert resumed.reply_ref == "placeholder-1"
    assert resumed.user_id == "U7" and resumed.is_channel_admin is True
    assert resumed.created_at.tzinfo is not None
    assert pending[second.turn_id].reply_ref is None

    await answer(store, first)
    await store.fail_turn(second.turn_id)
    assert await store.pending_turns() == []


# --- channel settings ------------------------------------------------------------------


async def test_channel_settings_fall_back_to_the_workspace_field_by_field(store: SqlStore) -> None:
    assert await store.channel_settings("test", "W1", "C1") == ChannelSettings()
    await store.change_setting(
        "test", "W1", "", field="instructions", value="Be brief.", changed_by="U1"
    )
    await store.change_setting("test", "W1", "", field="retention_days", value=30, changed_by="U1")
    await store.change_setting("test", "W1", "C1", field="model", value="m2", changed_by="U2")
    await store.change_setting(
        "test", "W1", "C1", field="retention_days", value="7", changed_by="U2"
    )

    assert await store.channel_settings("test", "W1", "C1") == ChannelSettings(
        instructions="Be brief.", model="m2", retention_days=7
    )
    assert await store.channel_settings("test", "W1", "C2") == ChannelSettings(
        instructions="Be brief.", retention_days=30
    )
    assert await store.channel_settings("test", "W2", "C1") == ChannelSettings()
    assert await store.channel_settings("other", "W1", "C1") == ChannelSettings()

    # Clearing the channel's value uncovers the workspace's again.
    await store.change_setting(
        "test", "W1", "C1", field="retention_days", value=None, changed_by="U2"
    )
    assert (await store.channel_settings("test", "W1", "C1")).retention_days == 30


async def test_every_setting_change_is_recorded(store: SqlStore) -> None:
    before = datetime.now(UTC)
    await store.change_setting("test", "W1", "C1", field="instructions", value="A", changed_by="U1")
    await store.change_setting("test", "W1", "C1", field="instructions", value="B", changed_by="U2")
    await store.change_setting("test", "W1", "C1", field="retention_days", value=3, changed_by="U2")
    await store.change_setting(
        "test", "W1", "C1", field="instructions", value=None, changed_by="U1"
    )
    await store.change_setting("test", "W1", "C2", field="model", value="m", changed_by="U1")

    changes = await store.setting_changes("test", "W1", "C1")
    assert [(c.field, c.old, c.new, c.changed_by) for c in changes] == [
        ("instructions", None, "A", "U1"),
        ("instructions", "A", "B", "U2"),
        ("retention_days", None, "3", "U2"),
        ("instructions", "B", None, "U1"),
    ]
    assert all(change.changed_at >= before and change.changed_at.tzinfo for change in changes)


async def test_speech_settings_fall_back_to_the_workspace_and_are_audited(
    store: SqlStore,
) -> None:
    await store.change_setting(
        "test", "W1", "", field="speech_voice", value="en-gb", changed_by="U1"
    )
    await store.change_setting(
        "test", "W1", "C1", field="speech_model", value="gpt-4o-mini-tts", changed_by="U2"
    )
    await store.change_setting(
        "test", "W1", "C1", field="speech_voice", value="nova", changed_by="U2"
    )

    assert await store.channel_settings("test", "W1", "C1") == ChannelSettings(
        speech_model="gpt-4o-mini-tts", speech_voice="nova"
    )
    assert await store.channel_settings("test", "W1", "C2") == ChannelSettings(speech_voice="en-gb")
    await store.change_setting(
        "test", "W1", "C1", field="speech_voice", value=None, changed_by="U3"
    )
    assert (await store.channel_settings("test", "W1", "C1")).speech_voice == "en-gb"

    changes = await store.setting_changes("test", "W1", "C1")
    assert [(c.field, c.old, c.new, c.changed_by) for c in changes] == [
        ("speech_model", None, "gpt-4o-mini-tts", "U2"),
        ("speech_voice", None, "nova", "U2"),
        ("speech_voice", "nova", None, "U3"),
    ]


async def test_settings_refuse_nonsense(store: SqlStore) -> None:
    with pytest.raises(ValueError):
        await store.change_setting(
            "test", "W1", "C1", field="retention_days", value=-1, changed_by="U1"
        )
    with pytest.raises(ValueError):
        await store.change_setting(
            "test",
            "W1",
            "C1",
            field="colour",  # type: ignore[arg-type]
            value="red",
            changed_by="U1",
        )
    assert await store.setting_changes("test", "W1", "C1") == []


# --- forgetting ----------------------------------------------------------------------


async def test_forget_user_deletes_their_messages_and_the_answers_but_keeps_settings(
    store: SqlStore,
) -> None:
    mine = [
        await ask(store, "m1", "my name is Ada", user_id="U1"),
        await ask(store, "m2", "my other secret", user_id="U1", thread="T2"),
        await ask(store, "m3", "in another channel", user_id="U1", channel="C2"),
    ]
    await answer(store, mine[0], "Your name is Ada.")
    await answer(store, mine[2], "Noted, in C2.")
    theirs = await ask(store, "m4", "not mine", user_id="U2")
    await answer(store, theirs, "an answer to U2")
    elsewhere = await ask(store, "m5", "same id, other platform", user_id="U1", platform="other")
    await store.change_setting("test", "W1", "C1", field="instructions", value="x", changed_by="U1")
    await store.change_setting("test", "W1", "C2", field="model", value="m", changed_by="U2")
    await store.change_setting("test", "W1", "C2", field="instructions", value="y", changed_by="U1")

    counts = await store.forget_user("test", "U1")

    assert (counts.messages, counts.answers, counts.settings) == (3, 2, 2)
    for turn in mine:
        assert await store.message_text(turn.user_message_id) is None
    assert await store.message_text(elsewhere.user_message_id) is not None
    history = await store.history(mine[0].conversation_id, up_to_message_id=10**9, limit=50)
    assert texts(history) == ["not mine", "an answer to U2"]
    assert (
        texts(await store.history(mine[2].conversation_id, up_to_message_id=10**9, limit=50)) == []
    )
    # The channels keep what U1 set; the record of who set it no longer names U1.
    assert await store.channel_settings("test", "W1", "C1") == ChannelSettings(instructions="x")
    assert await store.channel_settings("test", "W1", "C2") == ChannelSettings(
        instructions="y", model="m"
    )
    changes = await store.setting_changes("test", "W1", "C2")
    assert [(c.field, c.changed_by) for c in changes] == [
        ("model", "U2"),
        ("instructions", "(forgotten)"),
    ]
    async with store.engine.connect() as connection:
        named = (
            await connection.execute(
                text("SELECT count(*) FROM channel_settings WHERE updated_by = 'U1'")
            )
        ).scalar_one()
        left = (
            await connection.execute(
                select(TURNS.c.id).where(TURNS.c.platform == "test", TURNS.c.user_id == "U1")
            )
        ).all()
    assert named == 0
    assert left == []
    # Their unanswered turns cannot be resumed without their messages.
    assert {turn.turn_id for turn in await store.pending_turns()} == {elsewhere.turn_id}
    assert await store.forget_user("test", "U1") == type(counts)()


async def test_forget_user_while_their_turn_is_answered_keeps_no_answer(store: SqlStore) -> None:
    asked = await ask(store, "m1", "my name is Ada", user_id="U1")
    later = datetime.now(UTC) + timedelta(minutes=1)
    claimed = await store.claim_next_turn(asked.conversation_id, holder="p1", alive_until=later)
    assert claimed is not None and claimed.turn_id == asked.turn_id

    await store.forget_user("test", "U1")
    saved = await store.store_answer(
        asked.turn_id,
        holder="p1",
        text="Your name is Ada.",
        tokens=5,
        usage=None,
        status="complete",
        model="m1",
    )

    assert saved is None
    assert await store.history(asked.conversation_id, up_to_message_id=10**9, limit=50) == []


# --- engine and migrations --------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@db.example:5432/bot", "postgresql+asyncpg://u:p@db.example:5432/bot"),
        ("postgresql://u@h/bot", "postgresql+asyncpg://u@h/bot"),
        ("postgresql+asyncpg://u@h/bot", "postgresql+asyncpg://u@h/bot"),
        ("sqlite:///bot.db", "sqlite+aiosqlite:///bot.db"),
        ("sqlite+aiosqlite:////var/bot.db", "sqlite+aiosqlite:////var/bot.db"),
    ],
)
def test_database_urls_are_normalized(given: str, expected: str) -> None:
    assert normalize_url(given) == expected


@pytest.mark.parametrize("url", ["mysql://u:secret@h/db", "not a url"])
def test_unsupported_database_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create_engine(url)
    assert caught.value.setting == "DATABASE_URL"
    assert "secret" not in str(caught.value)


async def test_an_unreachable_postgres_is_a_config_error_without_the_password() -> None:
    engine = create_engine("postgres://bot:hunter2@127.0.0.1:1/bot")
    try:
        with pytest.raises(ConfigError) as caught:
            await check_connection(engine)
    finally:
        await engine.dispose()
    assert caught.value.setting == "DATABASE_URL"
    assert "127.0.0.1:1" in caught.value.problem
    assert "hunter2" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_a_sqlite_file_in_a_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        await upgrade(f"sqlite:///{tmp_path}/missing/bot.db")
    assert "does not exist" in caught.value.problem


async def test_a_sqlite_file_that_cannot_be_opened_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "a-folder.db").mkdir()
    with pytest.raises(ConfigError) as caught:
        await SqlStore.open(f"sqlite:///{tmp_path}/a-folder.db")
    assert caught.value.setting == "DATABASE_URL"
    assert "a-folder.db" in caught.value.problem


async def test_sqlite_runs_in_wal_mode_with_foreign_keys(sqlite_store: SqlStore) -> None:
    async with sqlite_store.engine.connect() as connection:
        assert (await connection.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
        assert (await connection.execute(text("PRAGMA foreign_keys"))).scalar() == 1
        assert (await connection.execute(text("PRAGMA busy_timeout"))).scalar_one() >= 1000


async def test_upgrade_creates_the_tables_once(empty_database_url: str) -> None:
    assert await current_revision(empty_database_url) is None
    await upgrade(empty_database_url)
    assert await current_revision(empty_database_url) == head_revision()
    await upgrade(empty_database_url)  # a second run is a no-op
    assert await current_revision(empty_database_url) == head_revision()

    engine = create_engine(empty_database_url)
    try:
        async with engine.connect() as connection:
            tables = await connection.run_sync(
                lambda sync: set(inspect_database(sync).get_table_names())
            )
    finally:
        await engine.dispose()
    assert tables >= {
        "conversations",
        "messages",
        "turns",
        "channel_settings",
        "setting_changes",
        "purge_claims",
        "alembic_version",
    }


def test_the_head_read_from_the_files_is_alembics(tmp_path: Path) -> None:
    from alembic.script import ScriptDirectory

    assert head_revision() == ScriptDirectory.from_config(alembic_config()).get_current_head()


async def test_the_revision_read_without_alembic_is_alembics(database_url: str) -> None:
    await upgrade(database_url)
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            alembic_says = await connection.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    finally:
        await engine.dispose()
    assert await current_revision(database_url) == alembic_says == head_revision()


async def test_a_database_behind_the_head_is_upgraded(empty_database_url: str) -> None:
    await upgrade(empty_database_url, "0002")
    assert await current_revision(empty_database_url) == "0002"
    await upgrade(empty_database_url)
    assert await current_revision(empty_database_url) == head_revision()


async def test_the_migrations_build_exactly_the_declared_tables(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            differences = await connection.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(
                        sync,
                        # The message search index is the migration's own (FTS5 or an
                        # expression index), with no table class to declare it.
                        opts={"include_name": lambda name, *_: not is_search_index(name)},
                    ),
                    metadata,
                )
            )
    finally:
        await engine.dispose()
    assert differences == []


async def test_open_migrates_and_serves(empty_database_url: str) -> None:
    store = await SqlStore.open(empty_database_url)
    try:
        assert await store.accept(incoming("m1"), text="hi", tokens=1) is not None
    finally:
        await store.aclose()


async def test_an_in_memory_sqlite_store_works() -> None:
    store = await SqlStore.open("sqlite+aiosqlite://")
    try:
        turns = await asyncio.gather(*(ask(store, f"m{index}", f"q{index}") for index in range(5)))
        await asyncio.gather(*(answer(store, turn, f"a{turn.user_message_id}") for turn in turns))
        last = max(turns, key=lambda turn: turn.user_message_id)
        history = await store.history(
            last.conversation_id, up_to_message_id=last.user_message_id, limit=50
        )
        assert len(history) == 10
        assert [message.role for message in history] == ["user", "assistant"] * 5
        counts = await store.purge(
            now=datetime.now(UTC) + timedelta(days=31),
            default_retention_days=30,
            dedupe_days=2,
            batch_size=4,
        )
        assert (counts.messages, counts.conversations, counts.turns) == (10, 1, 5)
    finally:
        await store.aclose()


# --- what adapters look up by platform ids ------------------------------------------


async def test_a_message_taken_by_one_store_is_known_to_another(
    store: SqlStore, make_store: StoreFactory
) -> None:
    other = await make_store()  # another process on the same database
    assert not await other.was_taken("test", "k1")
    await ask(store, "k1")

    assert await other.was_taken("test", "k1")
    assert not await other.was_taken("test", "k2")
    assert not await other.was_taken("elsewhere", "k1")


async def test_conversations_and_answers_are_found_by_platform_ids(store: SqlStore) -> None:
    assert not await store.has_conversation(KEY)
    turn = await ask(store, "k1")
    await store.set_reply_ref(turn.turn_id, "answer-99")
    await answer(store, turn)

    assert await store.has_conversation(KEY)
    assert await store.thread_of_message("test", "W1", "C1", "pm-k1") == "T1"
    assert await store.thread_of_message("test", "W1", "C1", "answer-99") == "T1"
    assert await store.thread_of_message("test", "W1", "C2", "answer-99") is None
    assert await store.thread_of_message("test", "W1", "C1", "unknown") is None


async def test_a_message_deleted_on_the_platform_leaves_the_history(store: SqlStore) -> None:
    kept = await ask(store, "k1", "keep me")
    await answer(store, kept)
    doomed = await ask(store, "k2", "delete me")

    assert await store.delete_platform_message("test", "W1", "C1", "pm-k2") == 1
    assert await store.delete_platform_message("test", "W1", "C1", "pm-k2") == 0
    history = await store.history(
        kept.conversation_id, up_to_message_id=doomed.user_message_id, limit=10
    )
    assert texts(history) == ["keep me", "answer"]
    assert await store.pending_turns() == [], "a turn whose question is gone is not resumed"


async def test_readers_are_told_whenever_messages_are_forgotten_or_changed(
    store: SqlStore,
) -> None:
    told: list[str] = []
    doing = "nothing yet"
    store.on_forgetting(lambda: told.append(doing))

    async def does(what: str, work: Awaitable[object]) -> None:
        nonlocal doing
        doing = what
        await work

    turn = await ask(store, "m1")
    await answer(store, turn)
    await store.history(turn.conversation_id, up_to_message_id=10**9, limit=50)
    assert told == []  # storing and reading let go of nothing

    await does("unspoken", store.mark_answer_unspoken(turn.turn_id, "cut short"))
    await does(
        "deleted on the platform", store.delete_platform_message("test", "W1", "C1", "pm-m1")
    )
    await ask(store, "m2")
    await does("conversation emptied", store.delete_conversation_messages(turn.conversation_id))
    await ask(store, "m3")
    await does("user forgotten", store.forget_user("test", "U1"))
    await ask(store, "m4")
    await does("workspace forgotten", store.forget_workspace("test", "W1"))
    await answer(store, await ask(store, "m5"))  # a turn still pending keeps its message
    expired = store.purge(
        now=datetime.now(UTC) + timedelta(days=400),
        default_retention_days=30,
        dedupe_days=2,
        batch_size=100,
    )
    await does("expired", expired)
    assert told == [
        "unspoken",
        "deleted on the platform",
        "conversation emptied",
        "user forgotten",
        "workspace forgotten",
        "expired",
    ]


async def test_a_forgotten_users_words_are_not_kept_in_memory(store: SqlStore) -> None:
    for key in ("m1", "m2", "m3"):
        await answer(store, await ask(store, key, text=f"private words {key}"))
        other = await ask(store, f"{key}-other", text="something else", user_id="U2")
        await answer(store, other)
    # Read, so the store keeps the window and its messages.
    await store.history(other.conversation_id, up_to_message_id=10**9, limit=50)

    await store.forget_user("test", "U1")
    gc.collect()

    kept = [o for o in gc.get_objects() if isinstance(o, StoredMessage) and "private" in o.text]
    assert kept == []


async def test_forgetting_a_workspace_deletes_only_its_data(store: SqlStore) -> None:
    await answer(store, await ask(store, "k1", workspace="W1"))
    await answer(store, await ask(store, "k2", workspace="W2"))
    await store.change_setting(
        "test", "W1", "C1", field="instructions", value="be brief", changed_by="U1"
    )

    assert await store.forget_workspace("test", "W1") == 1

    assert not await store.has_conversation(KEY)
    assert await store.has_conversation(ConversationKey("test", "W2", "C1", "T1"))
    assert await store.channel_settings("test", "W1", "C1") == ChannelSettings()
    assert await store.setting_changes("test", "W1", "C1") == []
    assert await store.accept(incoming("k1", workspace="W1"), text="again", tokens=1) is None, (
        "the dedupe marker outlives the workspace's data"
    )


async def test_settings_read_after_every_kind_of_change_are_current(store: SqlStore) -> None:
    assert await store.channel_settings("test", "W1", "C1") == ChannelSettings()
    await store.change_setting(
        "test", "W1", "", field="model", value="m-workspace", changed_by="U9"
    )
    assert (await store.channel_settings("test", "W1", "C1")).model == "m-workspace"
    await store.change_setting(
        "test", "W1", "C1", field="model", value="m-channel", changed_by="U1"
    )
    assert (await store.channel_settings("test", "W1", "C1")).model == "m-channel"
    await store.forget_user("test", "U1")  # what U1 set stays in force
    assert (await store.channel_settings("test", "W1", "C1")).model == "m-channel"
    await store.change_setting("test", "W1", "C1", field="model", value=None, changed_by="U2")
    assert (await store.channel_settings("test", "W1", "C1")).model == "m-workspace"
    await store.forget_workspace("test", "W1")
    assert await store.channel_settings("test", "W1", "C1") == ChannelSettings()


async def test_an_answer_talked_over_is_stored_with_what_was_not_spoken_marked(
    store: SqlStore,
) -> None:
    turn = await ask(store, "k1", text="Tell me everything.")
    answer_id = await answer(store, turn, text="First part. Second part.")
    assert answer_id is not None

    marked = await store.mark_answer_unspoken(
        turn.turn_id, "First part. (not spoken:) Second part."
    )
    unanswered = await ask(store, "k2")

    stored = await store.message_text(answer_id)
    assert marked and stored is not None
    assert stored.text == "First part. (not spoken:) Second part."
    assert not await store.mark_answer_unspoken(unanswered.turn_id, "anything")


class _DriverError(Exception):
    """What asyncpg's errors carry through SQLAlchemy: the server's SQLSTATE."""

    def __init__(self, message: str, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def test_a_server_refusing_connections_is_unavailable_for_now_and_a_bad_statement_is_not() -> None:
    # PostgreSQL at max_connections refuses a new connection with SQLSTATE 53300,
    # which asyncpg raises through SQLAlchemy as a plain driver error: a turn waits
    # and retries (StoreUnavailable) instead of failing.
    refused = DBAPIError(None, None, _DriverError("sorry, too many clients already", "53300"))
    with pytest.raises(StoreUnavailable), _unavailable_as_store_error():
        raise refused
    duplicate = DBAPIError(None, None, _DriverError("duplicate key value", "23505"))
    with pytest.raises(DBAPIError), _unavailable_as_store_error():
        raise duplicate


async def test_conversations_with_tool_rounds_are_flagged_as_the_flag_is_added(
    empty_database_url: str,
) -> None:
    """0012_tool_round_flag: a conversation that had a tool round before the flag existed
    has it set (a turn would otherwise answer its rounds from the flag: none)."""
    store = await SqlStore.open(empty_database_url)
    try:
        plain = await store.accept(incoming("m1", thread="T1"), text="hi", tokens=1)
        asked = await store.accept(incoming("m2", thread="T2"), text="look up q", tokens=1)
        assert plain is not None and asked is not None
        call = StoredToolCall(
            user_message_id=asked.user_message_id,
            round=0,
            position=0,
            call_id="c0",
            name="lookup",
            arguments="{}",
            status="requested",
        )
        await store.store_tool_round(asked.turn_id, [call])
    finally:
        await store.aclose()

    # The database as 0011 left it, with these rows: no flag, and the version before.
    engine = create_engine(empty_database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("ALTER TABLE conversations DROP COLUMN has_tool_rounds"))
            await connection.execute(
                text("UPDATE alembic_version SET version_num = '0011_voice_modes'")
            )
        await upgrade(engine)
        async with engine.connect() as connection:
            flags = dict(
                (await connection.execute(text("SELECT id, has_tool_rounds FROM conversations")))
                .tuples()
                .all()
            )
    finally:
        await engine.dispose()
    assert flags == {plain.conversation_id: False, asked.conversation_id: True}

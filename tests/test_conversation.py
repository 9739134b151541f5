"""The conversation core, driven like a conversation through a fake adapter,
against the fake model server (real HTTP, real SSE) and a real SQLite store."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio

from botservice.core.commands import parse_command
from botservice.core.conversation import TRIM_FOOTNOTE, ConversationCore
from botservice.core.events import Attachment, Command
from botservice.core.ports import Claim, PendingTurn, StoredMessage
from botservice.core.settings import Settings
from botservice.model.client import OpenAIChatClient
from botservice.model.tokens import TokenCounter
from botservice.storage.engine import create_engine
from botservice.storage.repository import SqlStore
from botservice.voice.transcription import NothingHeard
from tests.chat_kit import Chat, HearingRecordingSink, RecordingSink, settings_for
from tests.db import StoreFactory
from tests.fakes.model_server import (
    Behaviour,
    CutMidway,
    EmptyAnswer,
    FakeModelServer,
    RateLimited,
    Reply,
    ServerError,
    Slow,
)


@pytest.fixture
def settings(fake_model: FakeModelServer) -> Settings:
    return settings_for(fake_model.base_url)


@pytest_asyncio.fixture
async def model(settings: Settings) -> AsyncIterator[OpenAIChatClient]:
    client = OpenAIChatClient(settings.model)
    yield client
    await client.aclose()


@pytest.fixture
def core(settings: Settings, sqlite_store: SqlStore, model: OpenAIChatClient) -> ConversationCore:
    return ConversationCore(settings=settings, store=sqlite_store, model=model)


@pytest.fixture
def chat(core: ConversationCore) -> Chat:
    return Chat(core)


def prompt_of(fake_model: FakeModelServer, index: int = -1) -> list[dict[str, object]]:
    return fake_model.chat_requests[index].body["messages"]


# --- remembering ---------------------------------------------------------------


async def test_history_is_carried_across_turns(chat: Chat, fake_model: FakeModelServer) -> None:
    first = await chat.say("My name is Ada.")
    assert first.final == "You said: My name is Ada."

    await chat.say("What is my name?")

    messages = prompt_of(fake_model)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == "My name is Ada."
    assert messages[2]["content"] == "You said: My name is Ada."
    assert messages[3]["content"] == "What is my name?"


async def test_threads_are_isolated(chat: Chat, fake_model: FakeModelServer) -> None:
    await chat.say("secret in thread one", thread="T1")
    await chat.say("hello from thread two", thread="T2")

    contents = [m["content"] for m in prompt_of(fake_model)]
    assert "secret in thread one" not in contents
    assert contents[-1] == "hello from thread two"


async def test_several_people_in_one_thread_keep_who_said_what(
    chat: Chat, fake_model: FakeModelServer
) -> None:
    await chat.say("I like tea.", user="U1", name="Ada")
    await chat.say("I like coffee.", user="U2", name="Grace")

    contents = [m["content"] for m in prompt_of(fake_model) if m["role"] == "user"]
    assert contents == ["Ada: I like tea.", "Grace: I like coffee."]


async def test_concurrent_messages_in_one_thread_are_answered_in_order(
    chat: Chat, core: ConversationCore, fake_model: FakeModelServer
) -> None:
    fake_model.script(*(Reply(delay_between_chunks=0.02) for _ in range(3)))
    sinks = [RecordingSink() for _ in range(3)]
    submissions = []
    for number, sink in enumerate(sinks, start=1):
        submissions.append(await core.submit(chat.message(f"question {number}"), sink))
    await asyncio.gather(*(s.answered for s in submissions if s is not None))

    assert [sink.final for sink in sinks] == [f"You said: question {n}" for n in (1, 2, 3)]
    # Each request saw every earlier question followed by its answer, and no later one.
    third = [m["content"] for m in prompt_of(fake_model, 2)[1:]]
    assert third == [
        "question 1",
        "You said: question 1",
        "question 2",
        "You said: question 2",
        "question 3",
    ]
    starts = [r.received_at for r in fake_model.chat_requests]
    assert starts == sorted(starts)


async def test_different_conversations_run_concurrently(
    chat: Chat, core: ConversationCore, fake_model: FakeModelServer
) -> None:
    fake_model.script(Slow(0.5), Slow(0.5))
    sinks = [RecordingSink(), RecordingSink()]
    await asyncio.gather(
        core.handle(chat.message("a", thread="T1"), sinks[0]),
        core.handle(chat.message("b", thread="T2"), sinks[1]),
    )
    # The second question reached the model while the first answer was still being
    # written (each takes 0.5 s): the threads did not wait on each other. Measured on
    # the fake's clock, so a loaded machine does not change the verdict.
    first, second = sorted(r.received_at for r in fake_model.chat_requests)
    assert second - first < 0.5, "two threads waited on each other"


# --- exactly once ----------------------------------------------------------------


async def test_a_redelivered_message_is_answered_once_even_after_a_restart(
    chat: Chat,
    settings: Settings,
    sqlite_database_url: str,
    model: OpenAIChatClient,
    fake_model: FakeModelServer,
) -> None:
    message = chat.message("hello", key="C1:1700000000.000100")
    first, again = RecordingSink(), RecordingSink()
    assert await chat.core.handle(message, first)
    assert not await chat.core.handle(message, again)

    restarted_store = await SqlStore.open(sqlite_database_url, migrate=False)
    try:
        restarted = ConversationCore(settings=settings, store=restarted_store, model=model)
        after_restart = RecordingSink()
        assert not await restarted.handle(message, after_restart)
    finally:
        await restarted_store.aclose()

    assert len(fake_model.chat_requests) == 1
    assert first.final == "You said: hello"
    assert again.begun == after_restart.begun == 0


async def test_final_text_is_sent_even_when_it_equals_the_previous_answer(
    chat: Chat, fake_model: FakeModelServer
) -> None:
    fake_model.script(Reply("Same answer."), Reply("Same answer."))
    first = await chat.say("one")
    second = await chat.say("two")
    assert first.final == second.final == "Same answer."


# --- streaming -------------------------------------------------------------------


async def test_the_answer_streams_first_text_at_once_then_throttled(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = settings_for(fake_model.base_url, conversation__stream_update_interval_seconds="0.2")
    client = OpenAIChatClient(settings.model)
    core = ConversationCore(settings=settings, store=sqlite_store, model=client)
    words = " ".join(f"w{n}" for n in range(20))
    fake_model.script(Reply(words, delay_between_chunks=0.05))  # about one second of stream
    try:
        sink = await Chat(core).say("stream please")
    finally:
        await client.aclose()

    assert sink.final == words
    assert sink.updates, "no streaming update before the final text"
    assert sink.updates[0].strip() == "w0", "the first update must carry the first text, not wait"
    assert all(words.startswith(text) for text in sink.updates)
    gaps = [b - a for a, b in zip(sink.update_times, sink.update_times[1:], strict=False)]
    assert all(gap >= 0.18 for gap in gaps), gaps
    assert 3 <= len(sink.updates) <= 7
    assert sink.finished_at is not None and sink.finished_at >= sink.update_times[-1]


# --- instructions and commands ---------------------------------------------------------


async def test_instructions_are_sent_first_and_only_managers_change_them(
    chat: Chat, fake_model: FakeModelServer, sqlite_store: SqlStore, settings: Settings
) -> None:
    await chat.say("hi")
    assert prompt_of(fake_model)[0] == {
        "role": "system",
        "content": settings.conversation.default_instructions,
    }

    refused = await chat.say("/instructions set Answer in French.", user="U2")
    assert refused.notices[0].startswith("Only ")
    accepted = await chat.say("/instructions set Answer in French.", user="U3", admin=True)
    assert "updated" in accepted.notices[0]

    await chat.say("hello again")
    assert prompt_of(fake_model)[0]["content"] == "Answer in French."

    shown = await chat.say("/instructions show", user="U2")
    assert "Answer in French." in shown.notices[0]
    changes = await sqlite_store.setting_changes("test", "W1", "C1")
    assert [(c.field, c.old, c.new, c.changed_by) for c in changes] == [
        ("instructions", None, "Answer in French.", "U3")
    ]

    await chat.say("/instructions clear", admin=True)
    await chat.say("and now?")
    assert prompt_of(fake_model)[0]["content"] == settings.conversation.default_instructions


async def test_bot_admins_from_config_may_change_any_channel(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = settings_for(fake_model.base_url, access__admin_user_ids="OPS1,OPS2")
    client = OpenAIChatClient(settings.model)
    try:
        chat = Chat(ConversationCore(settings=settings, store=sqlite_store, model=client))
        reply = await chat.say("/model set gpt-4.1", user="OPS2")
        assert reply.notices == ["This channel now uses the model gpt-4.1."]
        await chat.say("which model?")
    finally:
        await client.aclose()
    assert fake_model.chat_requests[-1].body["model"] == "gpt-4.1"


async def test_only_managers_choose_how_a_channel_is_spoken(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = settings_for(fake_model.base_url, voice__speech_model="tts-1")
    client = OpenAIChatClient(settings.model)
    try:
        chat = Chat(ConversationCore(settings=settings, store=sqlite_store, model=client))
        shown = await chat.say("/speech show")
        assert shown.notices == [
            "This channel speaks in the voice alloy (the default) "
            "with the speech model tts-1 (the default)."
        ]

        refused = await chat.say("/speech set voice nova", user="U2")
        assert refused.notices == [
            "Only channel managers, or people the operator listed as bot admins "
            "can change this channel's speech settings."
        ]
        set_voice = await chat.say("/speech set voice nova", admin=True)
        set_model = await chat.say("/speech set model gpt-4o-mini-tts", admin=True)
        assert set_voice.notices[0].startswith("Speech settings updated.")
        assert set_model.notices[0].endswith(
            "the voice nova with the speech model gpt-4o-mini-tts."
        )
        shown = await chat.say("/speech show", user="U2")
        assert shown.notices == [
            "This channel speaks in the voice nova with the speech model gpt-4o-mini-tts."
        ]
        assert (
            (await chat.say("/speech set voice -x", admin=True))
            .notices[0]
            .startswith("Give a voice or a speech model")
        )

        cleared = await chat.say("/speech clear", admin=True)
        assert cleared.notices == [
            "Speech settings cleared. This channel speaks in the voice alloy (the default) "
            "with the speech model tts-1 (the default)."
        ]
    finally:
        await client.aclose()
    changes = await sqlite_store.setting_changes("test", "W1", "C1")
    assert [(c.field, c.new) for c in changes] == [
        ("speech_voice", "nova"),
        ("speech_model", "gpt-4o-mini-tts"),
        ("speech_voice", None),
        ("speech_model", None),
    ]


async def test_speech_without_an_endpoint_names_espeak_voices(chat: Chat) -> None:
    assert parse_command("speech set voice en-gb model tts-1") == Command(
        "speech", "set", "voice en-gb model tts-1"
    )
    await chat.say("/speech set voice en-gb model tts-1", admin=True)
    shown = await chat.say("/speech show")
    assert shown.notices == [
        "This channel speaks in the voice en-gb through espeak-ng; its speech model tts-1 "
        "applies once a speech endpoint is set up."
    ]
    assert "speech show | set voice|model <name> | clear" in (await chat.say("/help")).notices[0]


async def test_a_model_that_takes_developer_instructions_gets_them_so(
    chat: Chat, fake_model: FakeModelServer
) -> None:
    await chat.say("/model set o3-mini", admin=True)
    await chat.say("hi")
    assert prompt_of(fake_model)[0]["role"] == "developer"


async def test_reset_starts_afresh_without_deleting(
    chat: Chat, fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    await chat.say("remember the number 7")
    reset = await chat.say("/reset")
    assert reset.notices == ["Done: the next message here starts a fresh conversation."]
    await chat.say("what number?")
    assert [m["content"] for m in prompt_of(fake_model)[1:]] == ["what number?"]


async def test_forget_me_deletes_my_messages_everywhere_and_says_how_many(
    chat: Chat, fake_model: FakeModelServer
) -> None:
    await chat.say("mine one", user="U1", thread="T1")
    await chat.say("mine two", user="U1", thread="T2", channel="C2")
    await chat.say("someone else's", user="U2", thread="T1")

    reply = await chat.say("/forget-me", user="U1")
    assert reply.notices == [
        "Deleted 2 messages of yours and the 2 answers to them, in every conversation."
    ]

    await chat.say("anything left?", user="U2", thread="T1")
    assert "mine" not in str(prompt_of(fake_model))


async def test_forget_me_leaves_none_of_my_words_in_the_bots_memory(
    chat: Chat, fake_model: FakeModelServer
) -> None:
    # A thread long enough for its prompt to be followed from turn to turn (three people:
    # each may send 10 messages a minute).
    for turn in range(18):
        if turn % 2 == 0:
            await chat.say(f"secret number {turn}", user="U1")
        else:
            await chat.say(f"and mine {turn}", user="U2" if turn % 4 == 1 else "U3")
    await chat.say("/forget-me", user="U1")
    gc.collect()

    remembered = [
        o for o in gc.get_objects() if isinstance(o, StoredMessage) and "secret" in o.text
    ]
    assert remembered == []
    await chat.say("what is left?", user="U2")
    assert "secret" not in str(prompt_of(fake_model))


async def test_forget_me_takes_the_answers_that_repeat_me_and_leaves_my_settings(
    chat: Chat, fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    fake_model.script(Reply("Noted."), Reply("Your name is Ada."))
    await chat.say("/instructions set Answer in French.", user="U1", admin=True)
    await chat.say("Hi, I am new here.", user="U2")
    await chat.say("My name is Ada.", user="U1")

    reply = await chat.say("/forget-me", user="U1")
    await chat.say("Who was here before?", user="U2")

    assert reply.notices == [
        "Deleted 1 message of yours and the 1 answer to them, in every conversation. "
        "The 1 setting change you made stay in force but no longer carry your name."
    ]
    prompt = prompt_of(fake_model)
    assert "Ada" not in str(prompt)
    assert prompt[0]["content"] == "Answer in French."
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user"]
    changes = await sqlite_store.setting_changes("test", "W1", "C1")
    assert [c.changed_by for c in changes] == ["(forgotten)"]


async def test_an_answer_whose_question_is_gone_is_left_out_of_the_prompt(
    chat: Chat, fake_model: FakeModelServer, core: ConversationCore, sqlite_store: SqlStore
) -> None:
    await chat.say("first question")
    second = dataclasses.replace(chat.message("second question"), platform_message_id="pm2")
    await core.handle(second, RecordingSink())
    # The person deletes their second message on the platform; its answer stays stored.
    assert await sqlite_store.delete_platform_message("test", "W1", "C1", "pm2") == 1
    await chat.say("third question")

    prompt = prompt_of(fake_model)
    assert [(m["role"], m["content"]) for m in prompt[1:]] == [
        ("user", "first question"),
        ("assistant", "You said: first question"),
        ("user", "third question"),
    ]


async def test_retention_zero_keeps_nothing_after_the_reply(
    chat: Chat, fake_model: FakeModelServer
) -> None:
    await chat.say("/retention set 0", admin=True)
    await chat.say("do not keep this")
    await chat.say("next")
    assert [m["content"] for m in prompt_of(fake_model)[1:]] == ["next"]


async def test_unknown_command_lists_the_commands(chat: Chat) -> None:
    reply = await chat.say("/frobnicate now")
    assert "I don't know the command 'frobnicate'" in reply.notices[0]
    assert "forget-me" in reply.notices[0]


# --- context budget ----------------------------------------------------------------


async def test_trimming_keeps_the_newest_turns_within_budget_and_says_so_once(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = settings_for(
        fake_model.base_url,
        model__name="tiny-model",  # not listed in config, so [model_defaults] apply
        model_defaults__context_window="400",
        model__max_answer_tokens="100",
        limits__messages_per_minute="0",  # twelve messages in a row from one person
    )
    counter = TokenCounter()
    client = OpenAIChatClient(settings.model)
    try:
        chat = Chat(
            ConversationCore(settings=settings, store=sqlite_store, model=client, tokens=counter)
        )
        replies = [await chat.say(f"message number {n} " + "word " * 20) for n in range(12)]
    finally:
        await client.aclose()

    budget = 400 - 100
    for request in fake_model.chat_requests:
        used = sum(counter.count(str(m["content"])) + 4 for m in request.body["messages"])
        assert used <= budget, used
    last = prompt_of(fake_model)
    assert str(last[-1]["content"]).startswith("message number 11")
    assert "message number 0 " not in str(last)
    # Kept turns are the newest ones, contiguous up to the current message.
    numbers = [int(str(m["content"]).split()[2]) for m in last[1:] if m["role"] == "user"]
    assert numbers == list(range(numbers[0], 12))
    noted = [r for r in replies if r.final.endswith(TRIM_FOOTNOTE)]
    assert len(noted) == 1


# --- failures -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "attempts", "sentence"),
    [
        # A wait over the cap fails at once; a 500 is retried up to max_attempts.
        (RateLimited(retry_after=120), 1, "rate-limiting me; please try again in 2 minutes."),
        (ServerError(500), 4, "had an internal error (HTTP 500)"),
        (EmptyAnswer(), 1, "returned no text"),
    ],
)
async def test_a_failing_model_keeps_the_message_and_says_what_happened(
    chat: Chat, fake_model: FakeModelServer, behaviour: Behaviour, attempts: int, sentence: str
) -> None:
    fake_model.script(*([behaviour] * attempts))
    failed = await chat.say("please remember this question")
    assert len(fake_model.chat_requests) == attempts

    assert sentence in failed.final
    assert "Traceback" not in failed.final and "sk-test" not in failed.final
    assert fake_model.pending_script == 0
    await chat.say("and now?")
    contents = [m["content"] for m in prompt_of(fake_model)]
    assert "please remember this question" in contents


async def test_a_model_too_slow_to_start_is_a_timeout_sentence(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = settings_for(
        fake_model.base_url, model__read_timeout_seconds="0.2", model__max_attempts="2"
    )
    fake_model.script(Slow(1.0), Slow(1.0))
    client = OpenAIChatClient(settings.model)
    try:
        chat = Chat(ConversationCore(settings=settings, store=sqlite_store, model=client))
        reply = await chat.say("are you there?")
    finally:
        await client.aclose()
    assert reply.final == "The model took too long to answer; please try again."


async def test_an_unreachable_endpoint_is_one_sentence(sqlite_store: SqlStore) -> None:
    settings = settings_for("http://127.0.0.1:9/v1")
    client = OpenAIChatClient(settings.model)
    try:
        reply = await Chat(
            ConversationCore(settings=settings, store=sqlite_store, model=client)
        ).say("hi")
    finally:
        await client.aclose()
    assert reply.final == "I could not reach the model endpoint; please try again shortly."


async def test_a_stream_cut_midway_keeps_the_partial_answer_marked(
    chat: Chat, fake_model: FakeModelServer
) -> None:
    fake_model.script(CutMidway("The first half of"))
    cut = await chat.say("tell me a story")
    assert cut.final.startswith("The first half of")
    assert "cut off midway" in cut.final

    await chat.say("go on")
    messages = prompt_of(fake_model)
    assert messages[2] == {"role": "assistant", "content": "The first half of"}


# --- bad input ------------------------------------------------------------------------


async def test_empty_and_oversized_messages_get_a_clear_reply_and_no_model_call(
    chat: Chat, fake_model: FakeModelServer
) -> None:
    empty = await chat.say("   \x00 ")
    assert empty.notices == ["Your message was empty; what would you like to ask?"]
    huge = await chat.say("x" * 100_000)
    assert huge.notices == [
        "Your message is 100,000 characters long and the limit here is 20,000; "
        "please shorten it or split it up."
    ]
    assert fake_model.chat_requests == []


async def test_control_characters_and_lone_surrogates_are_cleaned(
    chat: Chat, fake_model: FakeModelServer
) -> None:
    reply = await chat.say("bell\x07 and \ud800 surrogate")
    assert reply.final == "You said: bell and ? surrogate"


async def test_files_are_named_and_images_sent_as_parts_when_the_model_takes_them(
    chat: Chat, fake_model: FakeModelServer
) -> None:
    files = (
        Attachment(name="cat.png", content_type="image/png", data=b"\x89PNG fake"),
        Attachment(name="report.pdf", content_type="application/pdf"),
    )
    await chat.say("what is this?", attachments=files)
    content = prompt_of(fake_model)[-1]["content"]
    assert isinstance(content, list)
    assert content[0]["text"] == (
        "what is this?\n\n[Attached: cat.png (image/png), report.pdf (application/pdf)]"
    )
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")


# --- voice messages ----------------------------------------------------------------

CLIP = Attachment(
    name="voice-message.ogg", content_type="audio/ogg", url="https://cdn.test/v.ogg", size=2048
)


async def test_an_audio_message_is_stored_before_it_is_heard_then_answered_with_the_transcript(
    chat: Chat, core: ConversationCore, sqlite_store: SqlStore, fake_model: FakeModelServer
) -> None:
    seen: dict[str, object] = {}

    async def look_at_the_store() -> None:
        [pending] = await sqlite_store.pending_turns()
        seen["audio"] = await sqlite_store.unheard_audio(pending.user_message_id)
        stored = await sqlite_store.message_text(pending.user_message_id)
        seen["text"] = stored.text if stored else None
        seen["message_id"] = pending.user_message_id

    sink = HearingRecordingSink(transcript="What is a mutex?", on_hear=look_at_the_store)
    assert await core.handle(chat.message("", attachments=(CLIP,)), sink)

    assert seen["audio"] == (CLIP,), "the clip was not stored, pending, before it was heard"
    assert seen["text"] == "[Attached: voice-message.ogg (audio/ogg)]"
    assert sink.heard == [(CLIP,)]
    assert sink.final == "You said: What is a mutex?"
    assert prompt_of(fake_model)[-1]["content"] == "What is a mutex?"
    message_id = seen["message_id"]
    assert isinstance(message_id, int)
    stored = await sqlite_store.message_text(message_id)
    assert stored is not None and stored.text == "What is a mutex?"
    assert await sqlite_store.unheard_audio(message_id) == ()


async def test_typed_text_comes_first_and_a_redelivered_clip_is_heard_once(
    chat: Chat, core: ConversationCore, fake_model: FakeModelServer
) -> None:
    message = chat.message("Please answer this:", attachments=(CLIP,))
    sink = HearingRecordingSink(transcript="how long do eggs boil?")
    again = HearingRecordingSink()

    assert await core.handle(message, sink)
    assert not await core.handle(message, again)

    assert prompt_of(fake_model)[-1]["content"] == "Please answer this:\n\nhow long do eggs boil?"
    assert len(sink.heard) == 1 and again.heard == []
    assert len(fake_model.chat_requests) == 1


async def test_audio_that_cannot_be_heard_fails_the_turn_in_one_sentence(
    chat: Chat, core: ConversationCore, sqlite_store: SqlStore, fake_model: FakeModelServer
) -> None:
    sink = HearingRecordingSink(fails_with=NothingHeard("silence"))

    assert await core.handle(chat.message("", attachments=(CLIP,)), sink)

    assert sink.final == "I could not hear any words in that audio."
    assert fake_model.requests == []
    assert await sqlite_store.pending_turns() == []


async def test_a_sink_that_cannot_hear_gets_an_answer_about_the_named_file(
    chat: Chat, fake_model: FakeModelServer
) -> None:
    reply = await chat.say("", attachments=(CLIP,))

    assert reply.final == "You said: [Attached: voice-message.ogg (audio/ogg)]"


async def test_an_audio_message_left_unheard_by_a_crash_is_heard_when_resumed(
    chat: Chat, core: ConversationCore, sqlite_store: SqlStore, fake_model: FakeModelServer
) -> None:
    # What a crash mid-transcription leaves: the clip stored and named, its turn pending.
    message = chat.message("", attachments=(CLIP,))
    accepted = await sqlite_store.accept(
        message, text="[Attached: voice-message.ogg (audio/ogg)]", tokens=12
    )
    assert accepted is not None

    sink = HearingRecordingSink(transcript="Are you still there?")
    assert await core.resume_pending(lambda turn: sink) == 1
    await core.drain()

    assert sink.heard == [(CLIP,)]
    assert sink.final == "You said: Are you still there?"
    assert prompt_of(fake_model)[-1]["content"] == "Are you still there?"
    assert await sqlite_store.unheard_audio(accepted.user_message_id) == ()
    assert await sqlite_store.pending_turns() == []


# --- nothing lost across a crash ------------------------------------------------------


async def test_turns_left_pending_by_a_crash_are_answered_at_start_up(
    chat: Chat, core: ConversationCore, sqlite_store: SqlStore, fake_model: FakeModelServer
) -> None:
    # What a crash leaves: the message stored, its turn claimed by the process that
    # crashed, a placeholder posted.
    message = chat.message("answer me after the restart")
    crashed = Claim(holder="the-process-that-crashed", alive_until=datetime.now(UTC))
    accepted = await sqlite_store.accept(message, text=message.text, tokens=8, claim=crashed)
    assert accepted is not None and accepted.claimed is not None
    await sqlite_store.set_reply_ref(accepted.turn_id, "placeholder-from-before")

    sink = RecordingSink()
    resumed = await core.resume_pending(lambda turn: sink)
    await core.drain()

    assert resumed == 1
    assert sink.existing_refs == ["placeholder-from-before"]
    # Claimed before: the sink may look for a placeholder that no stored reference names.
    assert sink.begins == [(str(accepted.turn_id), True)]
    assert sink.final == "You said: answer me after the restart"
    assert await sqlite_store.pending_turns() == []


async def test_turns_pending_too_long_are_failed_and_the_user_told(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = settings_for(fake_model.base_url, conversation__resume_pending_max_age_seconds="0")
    client = OpenAIChatClient(settings.model)
    core = ConversationCore(settings=settings, store=sqlite_store, model=client)
    message = Chat(core).message("too old")
    await sqlite_store.accept(message, text=message.text, tokens=3)
    await asyncio.sleep(0.01)
    sink = RecordingSink()
    try:
        await core.resume_pending(lambda turn: sink)
        await core.drain()
    finally:
        await client.aclose()
    assert "restarted before I could answer" in sink.final
    assert fake_model.chat_requests == []
    assert await sqlite_store.pending_turns() == []


async def test_a_turn_another_process_is_answering_is_left_to_it(
    store: SqlStore, fake_model: FakeModelServer
) -> None:
    """Several processes share PostgreSQL: a newcomer answers only turns nobody holds."""
    settings = settings_for(fake_model.base_url)
    client = OpenAIChatClient(settings.model)
    core = ConversationCore(settings=settings, store=store, model=client)
    chat = Chat(core)
    busy = chat.message("being answered elsewhere")
    accepted = await store.accept(busy, text=busy.text, tokens=4)
    assert accepted is not None
    elsewhere = datetime.now(UTC) + timedelta(minutes=5)
    claimed = await store.claim_next_turn(
        accepted.conversation_id, holder="another-process", alive_until=elsewhere
    )
    assert claimed is not None and claimed.turn_id == accepted.turn_id
    orphaned = chat.message("its process died before claiming it", thread="T2")
    await store.accept(orphaned, text=orphaned.text, tokens=4)

    sinks: dict[str, RecordingSink] = {}
    try:
        resumed = await core.resume_pending(
            lambda turn: sinks.setdefault(turn.conversation.thread, RecordingSink()),
            at_start_up=False,
        )
        await core.drain()
    finally:
        await client.aclose()

    assert resumed == 1
    assert sinks["T2"].final == "You said: its process died before claiming it"
    assert "T1" not in sinks
    assert [r.last_user_text for r in fake_model.chat_requests] == [
        "its process died before claiming it"
    ]


async def test_a_turn_whose_process_stopped_renewing_it_is_taken_over(
    store: SqlStore, fake_model: FakeModelServer
) -> None:
    settings = settings_for(fake_model.base_url)
    client = OpenAIChatClient(settings.model)
    core = ConversationCore(settings=settings, store=store, model=client)
    message = Chat(core).message("asked of a process that died")
    accepted = await store.accept(message, text=message.text, tokens=6)
    assert accepted is not None
    stopped = datetime.now(UTC) - timedelta(seconds=1)
    await store.claim_next_turn(accepted.conversation_id, holder="dead", alive_until=stopped)

    sink = RecordingSink()
    try:
        assert await core.resume_pending(lambda turn: sink, at_start_up=False) == 1
        await core.drain()
    finally:
        await client.aclose()
    assert sink.final == "You said: asked of a process that died"
    assert sink.existing_refs == [None]
    assert await store.pending_turns() == []


async def test_at_start_up_a_one_process_store_takes_back_its_own_turns_at_once(
    sqlite_store: SqlStore, fake_model: FakeModelServer
) -> None:
    settings = settings_for(fake_model.base_url)
    client = OpenAIChatClient(settings.model)
    core = ConversationCore(settings=settings, store=sqlite_store, model=client)
    mine = Chat(core).message("asked just before the crash")
    accepted = await sqlite_store.accept(mine, text=mine.text, tokens=5)
    assert accepted is not None
    # The crashed process had claimed it; its heartbeat would still look fresh.
    await sqlite_store.claim_next_turn(
        accepted.conversation_id,
        holder="before-the-crash",
        alive_until=datetime.now(UTC) + timedelta(minutes=5),
    )
    sink = RecordingSink()
    try:
        assert await core.resume_pending(lambda turn: sink, at_start_up=False) == 0
        assert await core.resume_pending(lambda turn: sink) == 1
        await core.drain()
    finally:
        await client.aclose()
    assert sink.final == "You said: asked just before the crash"


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_two_processes_answer_one_thread_one_turn_at_a_time(
    make_store: StoreFactory, fake_model: FakeModelServer
) -> None:
    """Two processes on one PostgreSQL database get messages of the same thread
    (e.g. two Socket Mode connections): the second answer waits for the first,
    and its prompt carries the first answer. The process answering the first
    turn answers the second too, through a sink its adapter rebuilds."""
    settings = settings_for(fake_model.base_url)
    client = OpenAIChatClient(settings.model)
    first_process = ConversationCore(settings=settings, store=await make_store(), model=client)
    second_process = ConversationCore(settings=settings, store=await make_store(), model=client)
    fake_model.script(
        Reply("The first answer, slowly.", delay_between_chunks=0.1), Reply("Second.")
    )
    first, second = RecordingSink(), RecordingSink()
    two_id: list[int] = []

    # What an adapter's `sink_for` does: the same destination, rebuilt from the turn.
    def sink_for(turn: PendingTurn) -> RecordingSink:
        return second if turn.turn_id in two_id else first

    try:
        for process in (first_process, second_process):
            await process.resume_pending(sink_for, at_start_up=False)
        one = await first_process.submit(Chat(first_process).message("first question"), first)
        await asyncio.sleep(0.05)  # the first answer is streaming now
        two = await second_process.submit(Chat(second_process).message("second question"), second)
        assert one is not None and two is not None
        two_id.append(two.turn_id)
        await asyncio.wait_for(asyncio.gather(first.done.wait(), second.done.wait()), 10)
        await asyncio.gather(first_process.drain(), second_process.drain())
    finally:
        await client.aclose()

    assert first.finished_at is not None and second.finished_at is not None
    second_request = fake_model.chat_requests[1]
    assert second_request.received_at >= first.finished_at - 0.01
    assert [m["content"] for m in second_request.body["messages"][1:]] == [
        "first question",
        "The first answer, slowly.",
        "second question",
    ]


async def test_images_past_the_per_message_limits_are_named_not_shown_on_every_platform(
    chat: Chat, fake_model: FakeModelServer
) -> None:
    # Public CDN images (Discord's), which no adapter downloads or counts first.
    photos = tuple(
        Attachment(
            name=f"photo{number}.png",
            content_type="image/png",
            url=f"https://cdn.example.test/photo{number}.png",
            size=1024,
            public_url=True,
        )
        for number in range(6)
    )
    await chat.say("what are these?", attachments=photos)

    content = prompt_of(fake_model)[-1]["content"]
    assert isinstance(content, list)
    shown = [part["image_url"]["url"] for part in content if part["type"] == "image_url"]
    assert shown == [f"https://cdn.example.test/photo{number}.png" for number in range(4)]
    assert content[0]["text"].count("not shown: over the limit of 4 images per message") == 2


async def test_a_repeat_of_a_message_this_process_took_is_dropped_without_the_database(
    fake_model: FakeModelServer, sqlite_database_url: str
) -> None:
    """Slack sends most mentions twice: the second copy is acknowledged without a
    database round trip (here the database is already closed when it arrives)."""
    settings = settings_for(fake_model.base_url)
    store = SqlStore(create_engine(sqlite_database_url))
    client = OpenAIChatClient(settings.model)
    core = ConversationCore(settings=settings, store=store, model=client)
    message = Chat(core).message("twice, please")
    try:
        assert await core.handle(message, RecordingSink())
        await core.drain()
        await store.aclose()
        again = RecordingSink()
        assert await core.submit(message, again) is None
    finally:
        await client.aclose()
    assert again.begun == 0 and again.notices == []
    assert len(fake_model.chat_requests) == 1

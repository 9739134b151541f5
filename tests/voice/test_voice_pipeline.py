"""The speech queue: sentences synthesized as they complete, played in order, cut on demand."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from botservice.core.conversation import ConversationCore
from botservice.core.errors import BotServiceError
from botservice.core.ports import ChatRequest
from botservice.model.client import OpenAIChatClient
from botservice.storage.repository import SqlStore
from botservice.voice.audio import DependencyMissing
from botservice.voice.pipeline import SpeakingSink, VoiceSpeaker, VoiceSpeakers
from botservice.voice.speech import EspeakSpeechEngine, OpenAISpeechEngine, SpeechError
from tests.chat_kit import Chat, RecordingSink, settings_for
from tests.fakes.model_server import FakeModelServer, Reply
from tests.voice.helpers import RecordingPlayback

SLOW_ANSWER = (
    "Hello there. The weather today is sunny with a light breeze from the west. "
    "Tomorrow it will rain in the afternoon, so take an umbrella. That is all for now."
)


class TimedEngine:
    """Delegates to espeak-ng and notes when each synthesis starts and ends."""

    def __init__(self, inner: EspeakSpeechEngine) -> None:
        self.inner = inner
        self.calls: list[tuple[str, float, float]] = []

    @property
    def description(self) -> str:
        return self.inner.description

    async def synthesize(
        self, text: str, *, voice: str | None = None, model: str | None = None
    ) -> bytes:
        started = time.monotonic()
        audio = await self.inner.synthesize(text, voice=voice, model=model)
        self.calls.append((text, started, time.monotonic()))
        return audio

    async def aclose(self) -> None:
        await self.inner.aclose()


async def deltas(text: str, *, delay: float = 0.0, step: int = 4) -> AsyncIterator[str]:
    for start in range(0, len(text), step):
        if delay:
            await asyncio.sleep(delay)
        yield text[start : start + step]


async def test_sentences_play_in_order_as_whole_frames(espeak: EspeakSpeechEngine) -> None:
    playback = RecordingPlayback()
    speaker = VoiceSpeaker(espeak, playback)

    await speaker.speak_stream(deltas("First one. Second one! Third one? And the rest"))
    await speaker.wait_done()

    assert playback.texts == ["First one.", "Second one!", "Third one?", "And the rest"]
    assert all(record.completed and record.frames > 10 for record in playback.played)
    assert playback.frame_sizes == {3840}
    assert not speaker.speaking


async def test_the_first_sentence_plays_before_the_model_stream_ends(
    fake_model: FakeModelServer, espeak: EspeakSpeechEngine
) -> None:
    # The fake model streams word by word, 80 ms apart: about 2.5 s in all.
    fake_model.script(Reply(SLOW_ANSWER, delay_between_chunks=0.08))
    settings = settings_for(fake_model.base_url)
    model = OpenAIChatClient(settings.model)
    playback = RecordingPlayback()
    speaker = VoiceSpeaker(espeak, playback)
    first_sentence_complete: float | None = None
    try:
        answer = speaker.begin_answer()
        text = ""
        async for delta in model.stream(
            ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}])
        ):
            text += delta
            answer.update(text)
            if first_sentence_complete is None and answer.sentences:
                first_sentence_complete = time.monotonic()
        stream_ended = time.monotonic()
        answer.finish(text)
        await speaker.wait_done()
    finally:
        await model.aclose()

    first_frame = playback.played[0].first_frame_at
    assert first_sentence_complete is not None and first_frame is not None
    assert playback.texts[0] == "Hello there."
    assert first_frame < stream_ended - 1.0, "speech waited for the model to finish"
    assert first_frame - first_sentence_complete < 1.0
    assert playback.texts == [
        "Hello there.",
        "The weather today is sunny with a light breeze from the west.",
        "Tomorrow it will rain in the afternoon, so take an umbrella.",
        "That is all for now.",
    ]


async def test_a_channels_voice_and_model_reach_the_speech_endpoint(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    settings = settings_for(fake_model.base_url)
    model = OpenAIChatClient(settings.model)
    core = ConversationCore(settings=settings, store=sqlite_store, model=model)
    engine = OpenAISpeechEngine(base_url=fake_model.base_url, model="tts-1", voice="alloy")
    speaker = VoiceSpeaker(engine, RecordingPlayback())
    chat = Chat(core)
    await chat.say("/speech set voice nova model gpt-4o-mini-tts", admin=True)
    try:
        speech = await sqlite_store.channel_settings("test", "W1", "C1")
        sink = SpeakingSink(
            RecordingSink(), speaker, voice=speech.speech_voice, model=speech.speech_model
        )
        await core.handle(chat.message("Say hello.", channel="C1"), sink)
        speaker.say("Elsewhere.")
        await speaker.wait_done()
    finally:
        await model.aclose()
        await engine.aclose()

    bodies = [r.body for r in fake_model.requests if r.path == "/v1/audio/speech"]
    assert [(b["input"], b["voice"], b["model"]) for b in bodies] == [
        ("You said: Say hello.", "nova", "gpt-4o-mini-tts"),
        ("Elsewhere.", "alloy", "tts-1"),
    ]


async def test_the_core_streams_into_a_speaking_sink(
    fake_model: FakeModelServer, sqlite_store: SqlStore, espeak: EspeakSpeechEngine
) -> None:
    fake_model.script(Reply(SLOW_ANSWER, delay_between_chunks=0.08))
    settings = settings_for(fake_model.base_url)
    model = OpenAIChatClient(settings.model)
    core = ConversationCore(settings=settings, store=sqlite_store, model=model)
    playback = RecordingPlayback()
    speaker = VoiceSpeaker(espeak, playback)
    text_sink = RecordingSink()
    try:
        await core.handle(Chat(core).message("weather?"), SpeakingSink(text_sink, speaker))
        await speaker.wait_done()
    finally:
        await model.aclose()

    assert text_sink.final == SLOW_ANSWER, "the text reply still appears"
    assert text_sink.updates, "text edits still stream"
    assert playback.texts[0] == "Hello there."
    assert len(playback.texts) == 4
    first_frame = playback.played[0].first_frame_at
    assert first_frame is not None and text_sink.finished_at is not None
    assert first_frame < text_sink.finished_at - 1.0


async def test_next_sentence_is_synthesized_while_the_previous_one_plays() -> None:
    engine = TimedEngine(EspeakSpeechEngine(words_per_minute=300))
    playback = RecordingPlayback(frame_seconds=0.02)  # real time
    speaker = VoiceSpeaker(engine, playback)

    speaker.say("This first sentence takes a couple of seconds to say out loud. Short second.")
    await speaker.wait_done()

    first_played = playback.played[0]
    assert first_played.first_frame_at is not None
    first_playback_ends = first_played.first_frame_at + first_played.frames * 0.02
    second_synthesized_at = engine.calls[1][2]
    assert second_synthesized_at < first_playback_ends - 0.5
    assert playback.texts == [
        "This first sentence takes a couple of seconds to say out loud.",
        "Short second.",
    ]


async def test_interrupt_cuts_the_current_sentence_and_drops_the_queue(
    espeak: EspeakSpeechEngine,
) -> None:
    playback = RecordingPlayback(frame_seconds=0.02)
    speaker = VoiceSpeaker(espeak, playback)
    answer = speaker.begin_answer()
    answer.feed("A long first sentence that keeps the speaker busy for a while. Second. Third. ")

    await asyncio.wait_for(playback.started.wait(), 5)
    await asyncio.sleep(0.2)
    await speaker.interrupt()
    answer.feed("Fourth, said after the interruption. ")
    answer.finish()
    await asyncio.sleep(0.3)

    assert playback.texts == ["A long first sentence that keeps the speaker busy for a while."]
    assert playback.played[0].cancelled and not playback.played[0].completed
    assert not speaker.speaking

    # The speaker carries on with the next answer.
    speaker.say("A new answer.")
    await asyncio.wait_for(speaker.wait_done(), 10)
    assert playback.texts[-1] == "A new answer."
    assert playback.played[-1].completed


async def test_answers_queue_whole_without_interleaving(espeak: EspeakSpeechEngine) -> None:
    playback = RecordingPlayback()
    speaker = VoiceSpeaker(espeak, playback)
    first = speaker.begin_answer()
    second = speaker.begin_answer()
    second.feed("Second answer, one. Second answer, two. ")
    second.finish()
    first.feed("First answer, one. ")
    await asyncio.sleep(0.3)
    first.feed("First answer, two.")
    first.finish()
    await speaker.wait_done()

    assert playback.texts == [
        "First answer, one.",
        "First answer, two.",
        "Second answer, one.",
        "Second answer, two.",
    ]


async def test_a_new_question_interrupts_through_the_sink(espeak: EspeakSpeechEngine) -> None:
    playback = RecordingPlayback(frame_seconds=0.02)
    speaker = VoiceSpeaker(espeak, playback)
    first = SpeakingSink(RecordingSink(), speaker, interrupt=True)
    await first.begin(None, turn_tag="1", resumed=False)
    await first.update("An answer that is long enough to still be playing later on. More to come. ")
    await asyncio.wait_for(playback.started.wait(), 5)

    second = SpeakingSink(RecordingSink(), speaker, interrupt=True)
    await second.begin(None, turn_tag="1", resumed=False)
    await first.finish(
        "An answer that is long enough to still be playing later on. More to come. Late."
    )
    await second.finish("The new answer.")
    await speaker.wait_done()

    assert playback.texts == [
        "An answer that is long enough to still be playing later on.",
        "The new answer.",
    ]
    assert playback.played[0].cancelled


async def test_observe_speaks_without_waiting_for_the_text_throttle(
    espeak: EspeakSpeechEngine,
) -> None:
    playback = RecordingPlayback()
    speaker = VoiceSpeaker(espeak, playback)
    text_sink = RecordingSink()
    sink = SpeakingSink(text_sink, speaker)
    await sink.begin(None, turn_tag="1", resumed=False)
    sink.observe("Spoken before any edit. And")
    await asyncio.wait_for(playback.started.wait(), 5)
    assert playback.texts == ["Spoken before any edit."]
    assert text_sink.updates == []
    await sink.finish("Spoken before any edit. And the rest.")
    await speaker.wait_done()
    assert playback.texts == ["Spoken before any edit.", "And the rest."]
    assert text_sink.final == "Spoken before any edit. And the rest."


async def test_without_interruption_a_new_answer_waits_its_turn(espeak: EspeakSpeechEngine) -> None:
    playback = RecordingPlayback()
    speaker = VoiceSpeaker(espeak, playback)
    first = SpeakingSink(RecordingSink(), speaker, interrupt=False)
    second = SpeakingSink(RecordingSink(), speaker, interrupt=False)
    await first.begin(None, turn_tag="1", resumed=False)
    await second.begin(None, turn_tag="1", resumed=False)
    await second.finish("Second.")
    await first.finish("First.")
    await speaker.wait_done()
    assert playback.texts == ["First.", "Second."]


async def test_a_failed_sentence_is_reported_and_the_rest_still_spoken(
    espeak: EspeakSpeechEngine,
) -> None:
    errors: list[BotServiceError] = []

    async def on_error(error: BotServiceError) -> None:
        errors.append(error)

    playback = RecordingPlayback()
    speaker = VoiceSpeaker(espeak, playback, on_error=on_error)
    speaker.say("Unknown voice here.", voice="zzqx")
    speaker.say("Known voice here.")
    await speaker.wait_done()

    assert playback.texts == ["Known voice here."]
    assert len(errors) == 1 and isinstance(errors[0], SpeechError)


async def test_a_missing_ffmpeg_is_reported_once_not_per_sentence(
    espeak: EspeakSpeechEngine,
) -> None:
    errors: list[BotServiceError] = []

    async def on_error(error: BotServiceError) -> None:
        errors.append(error)

    playback = RecordingPlayback()
    speaker = VoiceSpeaker(espeak, playback, ffmpeg="/nonexistent/ffmpeg", on_error=on_error)
    speaker.say("One. Two. Three.")
    await asyncio.wait_for(speaker.wait_done(), 10)

    assert len(errors) == 1 and isinstance(errors[0], DependencyMissing)
    assert "apt-get install ffmpeg" in errors[0].user_message
    assert all(not record.completed for record in playback.played)


async def test_code_is_not_read_aloud(espeak: EspeakSpeechEngine) -> None:
    playback = RecordingPlayback()
    speaker = VoiceSpeaker(espeak, playback)
    speaker.say("Run this:\n```sh\nrm -rf build. now\n```\nThen rebuild.")
    await speaker.wait_done()
    assert playback.texts == ["Run this:", "(code omitted)", "Then rebuild."]


async def test_one_speaker_per_guild(espeak: EspeakSpeechEngine) -> None:
    speakers = VoiceSpeakers(espeak)
    guild_a, guild_b = RecordingPlayback(), RecordingPlayback()
    a = speakers.open("guild-a", guild_a)
    b = speakers.open("guild-b", guild_b)
    assert speakers.open("guild-a", guild_a) is a

    a.say("For guild A.")
    b.say("For guild B.")
    await a.wait_done()
    await b.wait_done()
    assert (guild_a.texts, guild_b.texts) == (["For guild A."], ["For guild B."])

    await speakers.close("guild-a")
    assert speakers.get("guild-a") is None
    await speakers.aclose()
    with pytest.raises(RuntimeError):
        b.say("closed")

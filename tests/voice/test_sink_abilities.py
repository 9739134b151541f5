"""Sink abilities are declared, so the order in which sinks wrap each other hides none."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from botservice.core.conversation import ConversationCore
from botservice.core.events import Attachment
from botservice.core.ports import ReplySink, abilities_of
from botservice.model.client import OpenAIChatClient
from botservice.storage.repository import SqlStore
from botservice.voice.messages import ListeningSink
from botservice.voice.pipeline import SpeakingSink, VoiceSpeaker
from botservice.voice.speech import EspeakSpeechEngine
from botservice.voice.transcription import Transcriber
from tests.chat_kit import Chat, RecordingSink, settings_for
from tests.fakes.model_server import FakeModelServer
from tests.voice.helpers import RecordingPlayback

CLIP = Attachment(
    name="voice-message.ogg", content_type="audio/ogg", url="https://cdn.test/v.ogg", size=2048
)
Wrap = Callable[[ReplySink, VoiceSpeaker, Transcriber], ReplySink]


async def download(audio: Attachment) -> bytes:
    # Where a platform's file download would be: the clip's bytes.
    return b"OggS" + bytes(2044)


def listening_outside(leaf: ReplySink, speaker: VoiceSpeaker, ears: Transcriber) -> ReplySink:
    return ListeningSink(SpeakingSink(leaf, speaker), ears, download)


def speaking_outside(leaf: ReplySink, speaker: VoiceSpeaker, ears: Transcriber) -> ReplySink:
    return SpeakingSink(ListeningSink(leaf, ears, download), speaker)


ORDERS = pytest.mark.parametrize(
    "wrap", [listening_outside, speaking_outside], ids=["listening-outside", "speaking-outside"]
)


@ORDERS
async def test_both_orders_of_wrapping_declare_the_same_abilities(
    wrap: Wrap, espeak: EspeakSpeechEngine, fake_model: FakeModelServer
) -> None:
    ears = Transcriber(base_url=fake_model.base_url, model="whisper-1")
    try:
        # The recording sink at the bottom shows status lines; the wrappers add the rest.
        sink = wrap(RecordingSink(), VoiceSpeaker(espeak, RecordingPlayback()), ears)
        assert abilities_of(sink).names == {"observe", "hear", "status", "speaks"}
    finally:
        await ears.aclose()


class PlainSink(RecordingSink):
    """A sink that declares no ability (as a console's would)."""

    abilities = None  # type: ignore[assignment]


def test_a_plain_sink_declares_nothing_and_each_wrapper_adds_its_own() -> None:
    leaf = PlainSink()
    assert abilities_of(leaf).names == frozenset()
    assert abilities_of(RecordingSink()).names == {"status"}
    ears = Transcriber(base_url="http://127.0.0.1:9/v1", model="whisper-1")
    assert abilities_of(ListeningSink(leaf, ears, download)).names == {"hear"}


@ORDERS
async def test_in_either_order_the_core_hears_the_clip_and_speaks_the_answer(
    wrap: Wrap,
    espeak: EspeakSpeechEngine,
    fake_model: FakeModelServer,
    sqlite_store: SqlStore,
) -> None:
    fake_model.transcript = "What is a mutex?"
    settings = settings_for(fake_model.base_url)
    model = OpenAIChatClient(settings.model)
    ears = Transcriber(base_url=fake_model.base_url, model="whisper-1")
    playback = RecordingPlayback()
    speaker = VoiceSpeaker(espeak, playback)
    core = ConversationCore(settings=settings, store=sqlite_store, model=model)
    leaf = RecordingSink()
    try:
        message = Chat(core).message("", attachments=(CLIP,))
        assert await core.handle(message, wrap(leaf, speaker, ears))
        await speaker.wait_done()
    finally:
        await ears.aclose()
        await model.aclose()

    assert leaf.final.endswith("You said: What is a mutex?")
    assert "What is a mutex?" in leaf.final.splitlines()[0], "the transcript is shown"
    assert any("You said: What is a mutex?" in text for text in playback.texts)

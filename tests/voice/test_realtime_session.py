"""Realtime mode: a speech-to-speech session against a fake GA `/v1/realtime` server.

A member's 20 ms frames go in as Discord hands them on; the answer's frames are read
from the playback queue as Discord's player would, one per 20 ms tick.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import pytest_asyncio

from botservice.core.conversation import ConversationCore
from botservice.core.ports import SinkAbilities, Usage
from botservice.core.tool_rounds import CANNOT_ASK, NOT_OFFERED
from botservice.core.tools import ToolContext, ToolOutput, ToolPolicy, ToolSpec
from botservice.model.client import OpenAIChatClient
from botservice.storage.repository import SqlStore
from botservice.tools.builtin import BuiltinTools
from botservice.tools.current_time import CurrentTime
from botservice.tools.earlier_messages import EarlierMessages
from botservice.voice.barge_in import UNSPOKEN_MARK
from botservice.voice.realtime import (
    DISCORD_FRAME_BYTES,
    RealtimeCall,
    RealtimePlayback,
    RealtimeSession,
    RealtimeSettings,
    to_discord_audio,
    to_session_audio,
)
from botservice.voice.realtime_tools import NOT_HEARD, ChannelVoiceTools, HeardTurn, HeardTurns
from tests.chat_kit import Chat, settings_for
from tests.fakes.model_server import FakeModelServer
from tests.fakes.realtime_server import CallTool, FakeRealtimeServer, Speak, speech_frame

MEMBER = 7001
SILENCE_MS = 200
PADDING_MS = 400


class KeptTranscripts:
    """The conversation's side of the session: what each side said, in order, and what
    each response spent. With a core, a member's words are stored as a spoken turn (the
    calls that answer them belong to it)."""

    def __init__(self, core: ConversationCore | None = None) -> None:
        self.said: list[tuple[str, str]] = []
        self.spending: list[tuple[Usage, str, int | None]] = []
        self.core = core
        self.turns = HeardTurns()

    async def member_said(self, user_id: int, text: str, *, item_id: str) -> None:
        self.said.append((f"member {user_id}", text))
        if self.core is None:
            return
        heard = Chat(platform="discord").message(
            text, user=str(user_id), name="Bob", channel="C1", thread="", key=f"voice:{item_id}"
        )
        turn = await self.core.hear_spoken_turn(heard)
        assert turn is not None
        self.turns.heard(item_id, HeardTurn(turn, SinkAbilities()))

    async def bot_said(self, text: str, *, interrupted: bool) -> None:
        self.said.append(("bot", text))

    async def spent(self, usage: Usage, *, item_id: str, author: int | None) -> None:
        self.spending.append((usage, item_id, author))


@pytest.fixture
async def fake_realtime() -> AsyncIterator[FakeRealtimeServer]:
    server = FakeRealtimeServer()
    await server.start()
    yield server
    await server.stop()


async def open_session(
    server: FakeRealtimeServer, kept: KeptTranscripts, tools: Any = None
) -> RealtimeSession:
    session = RealtimeSession(
        RealtimeSettings(
            base_url=server.base_url,
            api_key="sk-realtime-test",
            model="gpt-realtime",
            silence_duration_ms=SILENCE_MS,
            padding_ms=PADDING_MS,
        ),
        playback=RealtimePlayback(),
        transcripts=kept,
        tools=tools,
    )
    await session.start()
    return session


async def until(condition: Callable[[], object]) -> None:
    async with asyncio.timeout(10):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


def member_talks(session: RealtimeSession, ms: int = 300) -> None:
    for offset in range(0, ms, 20):
        session.feed(MEMBER, speech_frame(offset_ms=offset))


def play(playback: RealtimePlayback, frames: int | None = None) -> list[bytes]:
    """Discord's player reading the queue (all of it, or `frames` frames)."""
    played = []
    while frames is None or len(played) < frames:
        frame = playback.read()
        if frame is None:
            break
        played.append(frame)
    return played


def appended_ms(server: FakeRealtimeServer) -> list[tuple[int, bool]]:
    """Each appended chunk: its length in ms at 24 kHz, and whether it was silent."""
    chunks = []
    for event in server.of_type("input_audio_buffer.append"):
        pcm = base64.b64decode(event["audio"])
        chunks.append((len(pcm) // 2 * 1000 // 24_000, not any(pcm)))
    return chunks


async def test_a_member_is_answered_aloud_and_both_sides_are_kept(
    fake_realtime: FakeRealtimeServer,
) -> None:
    fake_realtime.script.append(Speak("It is noon.", audio_ms=1000))
    kept = KeptTranscripts()
    session = await open_session(fake_realtime, kept)
    try:
        member_talks(session)
        frames: list[bytes] = []
        await until(lambda: frames.extend(play(session.playback)) or len(kept.said) == 2)
    finally:
        await session.aclose()

    update = fake_realtime.received[0]
    assert update["type"] == "session.update"
    audio = update["session"]["audio"]
    assert audio["input"]["format"] == {"type": "audio/pcm", "rate": 24_000}
    assert audio["input"]["turn_detection"]["type"] == "server_vad"
    assert audio["output"]["format"] == {"type": "audio/pcm", "rate": 24_000}
    # The server detects the turn; the response is ours to ask for (budgets first).
    assert audio["input"]["turn_detection"]["create_response"] is False
    types = fake_realtime.received_types()[1:]
    assert set(types) == {"input_audio_buffer.append", "response.create"}
    assert types.count("response.create") == 1
    sent = [e["type"] for e in fake_realtime.sent]
    assert sent.index("input_audio_buffer.committed") < sent.index("response.created")
    assert fake_realtime.requests_headers[0]["Authorization"] == "Bearer sk-realtime-test"
    # One second of answer at 24 kHz is fifty 20 ms frames of 48 kHz stereo.
    assert len(frames) == 50
    assert {len(frame) for frame in frames} == {DISCORD_FRAME_BYTES}
    assert kept.said == [(f"member {MEMBER}", "What time is it?"), ("bot", "It is noon.")]


async def test_silence_is_appended_after_the_member_stops_so_the_turn_ends(
    fake_realtime: FakeRealtimeServer,
) -> None:
    kept = KeptTranscripts()
    session = await open_session(fake_realtime, kept)
    try:
        member_talks(session, ms=300)
        await until(lambda: any(e["type"] == "response.done" for e in fake_realtime.sent))
        # The padding runs out: nothing more is appended while nobody talks.
        await asyncio.sleep(PADDING_MS / 1000 + 0.3)
        chunks = appended_ms(fake_realtime)
        await asyncio.sleep(0.2)
        assert appended_ms(fake_realtime) == chunks
    finally:
        await session.aclose()

    spoken = [ms for ms, silent in chunks if not silent]
    padding = [ms for ms, silent in chunks if silent]
    assert sum(spoken) == 300
    # Enough silence for the server's pause, and no more than the padding.
    assert SILENCE_MS <= sum(padding) <= PADDING_MS
    sent = [e["type"] for e in fake_realtime.sent]
    assert sent.index("input_audio_buffer.speech_stopped") < sent.index("response.created")


async def test_without_padding_the_server_never_ends_the_turn(
    fake_realtime: FakeRealtimeServer,
) -> None:
    kept = KeptTranscripts()
    session = RealtimeSession(
        RealtimeSettings(
            base_url=fake_realtime.base_url,
            api_key=None,
            model="gpt-realtime",
            silence_duration_ms=SILENCE_MS,
            padding_ms=0,
        ),
        playback=RealtimePlayback(),
        transcripts=kept,
    )
    await session.start()
    try:
        member_talks(session, ms=300)
        await asyncio.sleep(1.0)
    finally:
        await session.aclose()
    sent = [e["type"] for e in fake_realtime.sent]
    assert "input_audio_buffer.speech_started" in sent
    assert "input_audio_buffer.speech_stopped" not in sent


async def test_a_member_talking_over_the_answer_cuts_it_where_it_was_heard(
    fake_realtime: FakeRealtimeServer,
) -> None:
    fake_realtime.hold_response_done = True
    fake_realtime.late_audio_on_cancel = True
    fake_realtime.script.append(
        Speak("The weather tomorrow is sunny in the morning and rainy later.", audio_ms=2000)
    )
    kept = KeptTranscripts()
    session = await open_session(fake_realtime, kept)
    try:
        member_talks(session)
        await until(lambda: session.playback.queued_frames == 100)
        heard = play(session.playback, frames=15)  # 300 ms of the answer played
        member_talks(session)
        await until(lambda: fake_realtime.of_type("conversation.item.truncate"))
        await until(lambda: len(kept.said) == 2)
        await until(lambda: any(e["type"] == "response.done" for e in fake_realtime.sent))
        # The answer's audio that was on the wire before the cancel is not played.
        late_frames = play(session.playback)
    finally:
        await session.aclose()

    assert len(heard) == 15
    assert late_frames == []
    types = fake_realtime.received_types()
    assert types.index("response.cancel") < types.index("conversation.item.truncate")
    (truncate,) = fake_realtime.of_type("conversation.item.truncate")
    answer_item = next(
        e["item_id"] for e in fake_realtime.sent if e["type"] == "response.output_audio.delta"
    )
    assert truncate == {
        "type": "conversation.item.truncate",
        "item_id": answer_item,
        "content_index": 0,
        "audio_end_ms": 300,
    }
    who, text = kept.said[1]
    assert who == "bot"
    assert text.startswith("The")
    assert UNSPOKEN_MARK in text


@pytest_asyncio.fixture
async def model(fake_model: FakeModelServer) -> AsyncIterator[OpenAIChatClient]:
    client = OpenAIChatClient(settings_for(fake_model.base_url).model)
    yield client
    await client.aclose()


def core_with(
    store: SqlStore, model: OpenAIChatClient, *sources: Any, **settings: str
) -> ConversationCore:
    return ConversationCore(
        settings=settings_for("http://127.0.0.1:9/v1", **settings),
        store=store,
        model=model,
        tool_sources=sources,
    )


def voice_tools(
    core: ConversationCore, kept: KeptTranscripts, policy: ToolPolicy | None = None
) -> ChannelVoiceTools:
    return ChannelVoiceTools(
        core.tools,
        policy or ToolPolicy(),
        turns=kept.turns,
        turn_tools=core.spoken_turn_tools,
        heard_wait_seconds=2,
    )


def noon() -> datetime:
    return datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


async def test_a_tool_call_is_served_by_the_tool_sources_and_the_answer_follows(
    fake_realtime: FakeRealtimeServer, store: SqlStore, model: OpenAIChatClient
) -> None:
    fake_realtime.script.extend([CallTool("current_time"), Speak("It is noon.", audio_ms=200)])
    builtin = BuiltinTools([CurrentTime(timezone=ZoneInfo("UTC"), clock=noon)])
    core = core_with(store, model, builtin)
    kept = KeptTranscripts(core)
    session = await open_session(fake_realtime, kept, tools=voice_tools(core, kept))
    try:
        member_talks(session)
        await until(lambda: session.playback.playing)
        play(session.playback)
        await until(lambda: ("bot", "It is noon.") in kept.said)
    finally:
        await session.aclose()

    offered = fake_realtime.received[0]["session"]["tools"]
    assert [tool["name"] for tool in offered] == ["current_time"]
    types = fake_realtime.received_types()
    create = types.index("conversation.item.create")
    assert types[create + 1] == "response.create"
    (output,) = fake_realtime.of_type("conversation.item.create")
    assert output["item"]["type"] == "function_call_output"
    assert output["item"]["call_id"] == next(
        e["call_id"]
        for e in fake_realtime.sent
        if e["type"] == "response.function_call_arguments.done"
    )
    assert "12:00" in output["item"]["output"]


class WritingTools:
    """An MCP-like source with a tool that changes the world (not read-only)."""

    name = "tickets"
    trusted = True

    def __init__(self) -> None:
        self.ran: list[str] = []

    def tools(self) -> Sequence[ToolSpec]:
        return [
            ToolSpec(
                name="tickets__close",
                description="Close a ticket.",
                parameters={"type": "object", "properties": {}},
                source=self.name,
            )
        ]

    async def call(
        self, name: str, arguments: Mapping[str, Any], context: ToolContext
    ) -> ToolOutput:
        self.ran.append(name)
        return ToolOutput("closed")

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def a_call(name: str, item_id: str = "item_1") -> RealtimeCall:
    async def say_waiting(text: str) -> None:
        return None

    return RealtimeCall(
        call_id="call_1", name=name, arguments="{}", item_id=item_id, say_waiting=say_waiting
    )


async def test_tools_follow_the_channel_rules_and_a_turn_that_cannot_ask_is_declined(
    store: SqlStore, model: OpenAIChatClient
) -> None:
    tickets = WritingTools()
    core = core_with(store, model, tickets)
    kept = KeptTranscripts(core)
    default_rules = voice_tools(core, kept)
    assert default_rules.specs() == ()
    assert await default_rules.call(a_call("tickets__close")) == NOT_OFFERED.format(
        name="tickets__close"
    )
    rules = ToolPolicy().with_rule("tickets__*", enabled=True)
    await store.change_setting(
        "discord", "W1", "C1", field="tools", value="+tickets__*", changed_by="admin"
    )
    enabled = voice_tools(core, kept, policy=rules)
    assert [spec.name for spec in enabled.specs()] == ["tickets__close"]
    # Words never transcribed: nobody to run it for.
    assert await enabled.call(a_call("tickets__close", "item_unheard")) == NOT_HEARD
    await kept.member_said(MEMBER, "Close the ticket.", item_id="item_1")
    # Words heard, but nowhere to ask (these transcripts have no confirm ability).
    assert await enabled.call(a_call("tickets__close")) == CANNOT_ASK
    assert tickets.ran == []


def test_audio_is_halved_to_24_khz_mono_and_doubled_back_to_48_khz_stereo() -> None:
    frame = speech_frame()
    down = to_session_audio(frame)
    assert len(down) == len(frame) // 4  # half the rate, one channel
    up, _ = to_discord_audio(down)
    assert len(up) == len(frame)
    original = np.frombuffer(frame, dtype="<i2").astype(float)
    back = np.frombuffer(up, dtype="<i2").astype(float)
    assert np.corrcoef(original, back)[0, 1] > 0.99


def test_playback_counts_what_was_played_of_each_answer_from_its_first_frame() -> None:
    ticks = iter(range(100))
    playback = RealtimePlayback(clock=lambda: float(next(ticks)))
    audio, _ = to_discord_audio(bytes(2 * 24 * 100))  # 100 ms
    playback.enqueue("answer-1", audio)
    playback.finish("answer-1")

    first = play(playback, frames=1)
    rest = play(playback)

    assert len(first) + len(rest) == 5
    assert playback.played_ms("answer-1") == 100
    assert playback.first_frame_read == {"answer-1": 0.0}, "timed from its first frame only"
    playback.enqueue("answer-2", audio)
    playback.forget("answer-2")
    play(playback)
    assert playback.played_ms("answer-2") == 0, "a forgotten answer is not counted again"
    assert list(playback.first_frame_read) == ["answer-1"]


async def test_a_call_in_voice_reads_the_voice_channels_conversation(
    fake_realtime: FakeRealtimeServer, store: SqlStore, model: OpenAIChatClient
) -> None:
    earlier = BuiltinTools([EarlierMessages(store, timezone=ZoneInfo("UTC"))])
    core = core_with(store, model, earlier)
    await store.change_setting(
        "discord", "W1", "C1", field="tools", value="+earlier_messages", changed_by="admin"
    )
    # Said in the channel's text chat before the voice talk.
    await core.record_spoken_turn(
        Chat(platform="discord").message(
            "The deploy is on Friday.", channel="C1", thread="", key="voice:0"
        ),
        "Noted.",
        model="gpt-realtime",
    )
    fake_realtime.script.extend([CallTool("earlier_messages"), Speak("Friday.", audio_ms=200)])
    kept = KeptTranscripts(core)
    session = await open_session(fake_realtime, kept, tools=voice_tools(core, kept))
    try:
        member_talks(session)
        await until(lambda: fake_realtime.of_type("conversation.item.create"))
    finally:
        await session.aclose()

    (output,) = fake_realtime.of_type("conversation.item.create")
    assert "The deploy is on Friday." in output["item"]["output"]
    assert "Noted." in output["item"]["output"]
    assert "What time is it?" not in output["item"]["output"], "only what came before"


async def test_each_response_reports_its_usage_for_the_member_heard(
    fake_realtime: FakeRealtimeServer,
) -> None:
    fake_realtime.script.append(Speak("It is noon.", audio_ms=200))
    kept = KeptTranscripts()
    session = await open_session(fake_realtime, kept)
    try:
        member_talks(session)
        await until(lambda: kept.spending)
    finally:
        await session.aclose()

    [(usage, item_id, author)] = kept.spending
    assert usage == Usage(prompt_tokens=1200, completion_tokens=300, cached_tokens=640)
    assert author == MEMBER
    assert item_id == fake_realtime.of_type_sent("input_audio_buffer.speech_stopped")[0]["item_id"]


async def test_a_response_asked_for_while_another_is_active_is_asked_for_again(
    fake_realtime: FakeRealtimeServer, store: SqlStore, model: OpenAIChatClient
) -> None:
    fake_realtime.script.extend([CallTool("current_time"), Speak("It is noon.", audio_ms=200)])
    # The first ask after the tool's output collides with a response the server started.
    fake_realtime.refuse_creates = 1
    fake_realtime.refuse_creates_of = "after_tools"
    builtin = BuiltinTools([CurrentTime(timezone=ZoneInfo("UTC"), clock=noon)])
    core = core_with(store, model, builtin)
    kept = KeptTranscripts(core)
    session = await open_session(fake_realtime, kept, tools=voice_tools(core, kept))
    try:
        member_talks(session)
        await until(lambda: session.playback.playing)
        play(session.playback)
        await until(lambda: ("bot", "It is noon.") in kept.said)
    finally:
        await session.aclose()

    asked = [
        e["response"]["metadata"]["botservice"] for e in fake_realtime.of_type("response.create")
    ]
    # The member's turn, then the answer after the tool's output: refused, asked again.
    assert asked == ["turn", "after_tools", "after_tools"]
    assert [e["type"] for e in fake_realtime.sent].count("error") == 1

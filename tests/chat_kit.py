"""A fake adapter for driving the core in tests, so a test reads like a conversation.

It stands where a platform would: it builds `IncomingMessage`s and records what
the core shows through the sink. Nothing of the project's own code is replaced.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from botservice.core.conversation import ConversationCore
from botservice.core.events import Attachment, IncomingMessage
from botservice.core.ports import ModelClient, SinkAbilities, Store
from botservice.core.settings import Settings


@dataclass
class RecordingSink:
    """Records every call the core makes, with the time it was made."""

    begun: int = 0
    existing_refs: list[str | None] = field(default_factory=list)
    # (turn_tag, resumed) of each `begin`.
    begins: list[tuple[str, bool]] = field(default_factory=list)
    updates: list[str] = field(default_factory=list)
    update_times: list[float] = field(default_factory=list)
    finals: list[str] = field(default_factory=list)
    finished_at: float | None = None
    notices: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    ref: str = "placeholder-1"
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def begin(self, existing_ref: str | None, *, turn_tag: str, resumed: bool) -> str | None:
        self.begun += 1
        self.existing_refs.append(existing_ref)
        self.begins.append((turn_tag, resumed))
        return existing_ref or self.ref

    async def update(self, text: str) -> None:
        self.updates.append(text)
        self.update_times.append(time.monotonic())

    async def finish(self, text: str) -> None:
        self.finals.append(text)
        self.finished_at = time.monotonic()
        self.done.set()

    async def notice(self, text: str, *, private: bool = True) -> None:
        self.notices.append(text)

    async def status(self, text: str) -> None:
        self.statuses.append(text)

    @property
    def abilities(self) -> SinkAbilities:
        return SinkAbilities(status=self.status)

    @property
    def final(self) -> str:
        assert len(self.finals) == 1, f"expected one final text, got {self.finals!r}"
        return self.finals[0]


@dataclass
class HearingRecordingSink(RecordingSink):
    """A sink that can hear, as an adapter's would: it "transcribes" to `transcript`
    (or raises `fails_with`) and records what it was asked to hear. `on_hear` runs
    first, where a test looks at what the store holds at that moment."""

    transcript: str = "what was heard"
    fails_with: Exception | None = None
    heard: list[tuple[Attachment, ...]] = field(default_factory=list)
    on_hear: Callable[[], Awaitable[None]] | None = None

    @property
    def abilities(self) -> SinkAbilities:
        return SinkAbilities(hear=self.hear, status=self.status)

    async def hear(self, audio: Sequence[Attachment]) -> str:
        if self.on_hear is not None:
            await self.on_hear()
        self.heard.append(tuple(audio))
        if self.fails_with is not None:
            raise self.fails_with
        return self.transcript


class Chat:
    """Messages from people in one workspace of a made-up platform ("test")."""

    _keys = itertools.count(1)

    def __init__(self, core: ConversationCore | None = None, *, platform: str = "test") -> None:
        self.core = core
        self.platform = platform

    def message(
        self,
        text: str,
        *,
        user: str = "U1",
        name: str | None = None,
        channel: str = "C1",
        thread: str = "T1",
        admin: bool = False,
        direct: bool = False,
        key: str | None = None,
        attachments: tuple[Attachment, ...] = (),
    ) -> IncomingMessage:
        return IncomingMessage(
            platform=self.platform,
            workspace="W1",
            channel=channel,
            thread=thread,
            user_id=user,
            user_name=name or f"user {user}",
            text=text,
            message_key=key or f"m{next(self._keys)}",
            is_channel_admin=admin,
            is_direct=direct,
            attachments=attachments,
            reply_target={"channel": channel, "thread": thread},
        )

    async def say(self, text: str, **kwargs: object) -> RecordingSink:
        """Send a message (or a `/command`) and wait until it is answered."""
        assert self.core is not None, "a Chat without a core only makes messages"
        sink = RecordingSink()
        message = self.message(text, **kwargs)  # type: ignore[arg-type]
        if text.startswith("/"):
            from botservice.core.commands import parse_command

            command = parse_command(text[1:])
            assert command is not None
            await self.core.run_command(message, command, sink)
        else:
            await self.core.handle(message, sink)
        return sink


def make_core(settings: Settings, store: Store, model: ModelClient) -> ConversationCore:
    return ConversationCore(settings=settings, store=store, model=model)


def settings_for(base_url: str, **overrides: str) -> Settings:
    """The shipped settings, pointed at a fake model server, with fast retries.

    `overrides` use the environment's names: `conversation__history_limit="5"`.
    """
    from botservice.app.config import load_settings

    env = {
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": "sk-test-secret-key",
        "BOTSERVICE_MODEL__BACKOFF_BASE_SECONDS": "0.01",
        "BOTSERVICE_MODEL__READ_TIMEOUT_SECONDS": "2",
        "BOTSERVICE_CONVERSATION__STREAM_UPDATE_INTERVAL_SECONDS": "0.05",
    }
    env.update({f"BOTSERVICE_{key.upper()}": value for key, value in overrides.items()})
    return load_settings(env)

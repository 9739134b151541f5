"""The console adapter: a terminal conversation through the same core as Slack and Discord.

Interactive, the answer streams onto the screen as it arrives. Piped, each input
line is one user message and each reply is printed whole, so scripts can read it.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
import uuid
from typing import Any, TextIO

from botservice.core.commands import parse_command
from botservice.core.conversation import ConversationCore
from botservice.core.events import IncomingMessage
from botservice.core.ports import PendingTurn, ReplySink

PLATFORM = "console"
WORKSPACE = "local"
CHANNEL = "console"


class ConsoleSink:
    """Writes one answer to a text stream; streams it when the stream is a terminal."""

    def __init__(self, output: TextIO, *, stream: bool) -> None:
        self._output = output
        self._stream = stream
        self._shown = ""

    async def begin(self, existing_ref: str | None, *, turn_tag: str, resumed: bool) -> str | None:
        return None

    async def update(self, text: str) -> None:
        if not self._stream or not text.startswith(self._shown):
            return
        self._output.write(text[len(self._shown) :])
        self._output.flush()
        self._shown = text

    async def finish(self, text: str) -> None:
        if self._shown and text.startswith(self._shown):
            self._output.write(text[len(self._shown) :] + "\n")
        else:
            # Nothing streamed yet, or the final text is not a continuation
            # (an error after partial text): start it on a line of its own.
            self._output.write(("\n" if self._shown else "") + text + "\n")
        self._output.flush()
        self._shown = ""

    async def notice(self, text: str, *, private: bool = True) -> None:
        self._output.write(text + "\n")
        self._output.flush()


class ConsoleAdapter:
    """Reads lines from `input`, answers on `output`, until end of input."""

    platform = PLATFORM

    def __init__(
        self,
        core: ConversationCore,
        *,
        input: TextIO | None = None,
        output: TextIO | None = None,
        user_name: str | None = None,
    ) -> None:
        self._core = core
        self._input = input or sys.stdin
        self._output = output or sys.stdout
        self._interactive = self._input.isatty() and self._output.isatty()
        self._user_name = user_name or _login_name()
        self._session = uuid.uuid4().hex[:12]
        self._count = 0

    async def start(self) -> None:
        await self.serve()

    async def stop(self) -> None:
        return None

    def http_routes(self) -> list[Any]:
        return []

    def is_connected(self) -> bool:
        return True

    def sink_for(self, turn: PendingTurn) -> ReplySink | None:
        if turn.platform != PLATFORM:
            return None
        return ConsoleSink(self._output, stream=self._interactive)

    async def serve(self) -> None:
        """Answer line after line; return at end of input."""
        if self._interactive:
            self._output.write(
                "botservice console: type a message, /help for commands, Ctrl-D to quit.\n"
            )
        while True:
            if self._interactive:
                self._output.write("you> ")
                self._output.flush()
            line = await asyncio.to_thread(self._input.readline)
            if not line:
                return
            line = line.rstrip("\n")
            if not line.strip():
                continue
            await self.say(line)

    async def say(self, line: str) -> None:
        """One line typed by the console user: a `/command` or a message."""
        self._count += 1
        message = IncomingMessage(
            platform=PLATFORM,
            workspace=WORKSPACE,
            channel=CHANNEL,
            thread="",
            user_id=self._user_name,
            user_name=self._user_name,
            text=line,
            message_key=f"{self._session}:{self._count}",
            # Whoever holds the terminal runs the bot: they manage its one channel.
            is_channel_admin=True,
            from_operator=True,
        )
        sink = ConsoleSink(self._output, stream=self._interactive)
        if line.startswith("/"):
            command = parse_command(line[1:])
            if command is not None:
                await self._core.run_command(message, command, sink)
                return
        if self._interactive:
            self._output.write("bot> ")
            self._output.flush()
        await self._core.handle(message, sink)


def _login_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "console-user"

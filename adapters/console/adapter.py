"""The console adapter: a terminal conversation through the same core as Slack and Discord.

Interactive (prompt_toolkit, see `terminal.py`), the answer streams onto the screen
as it arrives. Piped, each input line is one user message and each reply is printed
whole, so scripts can read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import io
import os
import queue
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TextIO

from botservice.core.commands import parse_command
from botservice.core.conversation import ConversationCore
from botservice.core.events import IncomingMessage
from botservice.core.ports import PendingTurn, ReplySink, SinkAbilities
from botservice.core.tools import ConfirmationRequest, Decision

if TYPE_CHECKING:
    from botservice.adapters.console.terminal import TerminalPrompt

PLATFORM = "console"
WORKSPACE = "local"
CHANNEL = "console"

# Approve (True) or deny a tool call waiting for the console's person.
Decide = Callable[[int, bool], Awaitable[Decision]]
PIPED_DENIAL = (
    "The assistant wanted to run {tool} ({arguments}); that needs your approval, which "
    "piped input cannot give, so it was declined."
)


class ConsoleSink:
    """Writes one answer to a text stream; streams it when the stream is a terminal."""

    def __init__(self, output: TextIO, *, stream: bool, decide: Decide | None = None) -> None:
        self._output = output
        self._stream = stream
        self._shown = ""
        self._decide = decide

    @property
    def abilities(self) -> SinkAbilities:
        return SinkAbilities(confirm=self.confirm if self._decide is not None else None)

    async def confirm(self, request: ConfirmationRequest) -> None:
        """Piped input cannot answer a question: the call is declined, and the person
        reading the output is told why."""
        assert self._decide is not None
        self._output.write(
            PIPED_DENIAL.format(tool=request.tool, arguments=request.arguments) + "\n"
        )
        self._output.flush()
        await self._decide(request.confirmation_id, False)

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


class TerminalSink:
    """One answer on an interactive terminal.

    The person's own answer streams straight onto the screen (the prompt is not
    shown while they wait for it). An answer resumed after a restart can arrive while
    the prompt is shown: it is printed whole, labelled, above the prompt.
    """

    def __init__(
        self,
        output: TextIO,
        terminal: TerminalPrompt,
        *,
        resumed: bool,
        decide: Decide | None = None,
    ) -> None:
        self._output = output
        self._terminal = terminal
        self._label = "bot (resumed)> " if resumed else "bot> "
        self._stream = not resumed
        self._shown: str | None = None  # None: the label is not on the screen yet
        self._decide = decide
        self._questions: set[asyncio.Task[None]] = set()

    @property
    def abilities(self) -> SinkAbilities:
        return SinkAbilities(confirm=self.confirm if self._decide is not None else None)

    async def confirm(self, request: ConfirmationRequest) -> None:
        """Ask y/N on the terminal. Returns at once: the answer comes back through the
        core, which waits for it (no answer within the timeout is a denial)."""
        task = asyncio.get_running_loop().create_task(self._ask(request))
        self._questions.add(task)
        task.add_done_callback(self._questions.discard)

    async def _ask(self, request: ConfirmationRequest) -> None:
        assert self._decide is not None
        if self._shown is not None:
            self._print("\n")  # below any words streamed so far
            self._shown = None
        question = f"Run {request.tool} {request.arguments}? [y/N] "
        try:
            approve = await asyncio.wait_for(
                self._terminal.ask_yes_no(question), request.timeout_seconds
            )
        except TimeoutError:
            self._terminal.cancel_question()
            self._print("No answer in time: declined.\n")
            approve = False
        await self._decide(request.confirmation_id, approve)

    async def begin(self, existing_ref: str | None, *, turn_tag: str, resumed: bool) -> str | None:
        return None

    async def update(self, text: str) -> None:
        if not self._stream or self._terminal.showing:
            return
        if self._shown is None:
            self._output.write(self._label)
            self._shown = ""
        if text.startswith(self._shown):
            self._output.write(text[len(self._shown) :])
            self._output.flush()
            self._shown = text

    async def finish(self, text: str) -> None:
        shown = self._shown
        self._shown = None
        if shown is not None and not self._terminal.showing:
            # Streamed so far: the rest, or (an error after partial text) a line of its own.
            rest = text[len(shown) :] if text.startswith(shown) else "\n" + text
            self._print(rest + "\n")
            return
        await self._terminal.write(lambda: self._print(f"{self._label}{text}\n"))

    async def notice(self, text: str, *, private: bool = True) -> None:
        await self._terminal.write(lambda: self._print(text + "\n"))

    def _print(self, text: str) -> None:
        self._output.write(text)
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
        terminal: TerminalPrompt | None = None,
    ) -> None:
        """`terminal` is the interactive prompt (tests pass one on prompt_toolkit's pipe
        input); None means one on the process's terminal when both `input` and
        `output` are terminals, else line-by-line reading of `input`."""
        self._core = core
        self._input = input or sys.stdin
        self._output = output or sys.stdout
        if terminal is None and self._input.isatty() and self._output.isatty():
            from botservice.adapters.console.terminal import TerminalPrompt

            terminal = TerminalPrompt()
        self._terminal = terminal
        self._user_name = user_name or _login_name()
        self._session = uuid.uuid4().hex[:12]
        self._count = 0
        self._closing = asyncio.Event()

    async def start(self) -> None:
        await self.serve()

    async def stop(self) -> None:
        self.close_input()

    def close_input(self) -> None:
        """Read no more messages: `serve` returns once the answer in flight is shown."""
        self._closing.set()
        if self._terminal is not None:
            self._terminal.close()

    def http_routes(self) -> list[Any]:
        return []

    def is_connected(self) -> bool:
        return True

    def sink_for(self, turn: PendingTurn) -> ReplySink | None:
        if turn.platform != PLATFORM:
            return None
        return self._sink(resumed=True)

    def _sink(self, *, resumed: bool) -> ReplySink:
        if self._terminal is not None:
            return TerminalSink(self._output, self._terminal, resumed=resumed, decide=self._decide)
        return ConsoleSink(self._output, stream=False, decide=self._decide)

    async def _decide(self, confirmation_id: int, approve: bool) -> Decision:
        return await self._core.decide_tool_call(
            confirmation_id, platform=PLATFORM, user_id=self._user_name, approve=approve
        )

    async def serve(self) -> None:
        """Answer message after message; return at end of input (or after `close_input`)."""
        if self._terminal is not None:
            await self._serve_terminal(self._terminal)
        else:
            await self._serve_lines()

    async def _serve_terminal(self, terminal: TerminalPrompt) -> None:
        self._output.write(
            "botservice console: type a message, /help for commands, Ctrl-D to quit.\n"
        )
        self._output.flush()
        while not self._closing.is_set():
            text = await terminal.read()
            if text is None:
                return
            if text.strip():
                await self.say(text)

    async def _serve_lines(self) -> None:
        lines = _LineReader(self._input)
        while not self._closing.is_set():
            line = await self._unless_closing(lines.readline())
            if not line:
                return
            line = line.rstrip("\n")
            if not line.strip():
                continue
            await self.say(line)

    async def _unless_closing(self, read: Any) -> str:
        """The next line, or "" once `close_input` is called while waiting for it."""
        reading = asyncio.ensure_future(read)
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({reading, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
        if reading.done():
            line: str = reading.result()
            return line
        reading.cancel()
        return ""

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
        sink = self._sink(resumed=False)
        if line.startswith("/"):
            command = parse_command(line[1:])
            if command is not None:
                await self._core.run_command(message, command, sink)
                return
        await self._core.handle(message, sink)


class _LineReader:
    """Lines of piped input (or a file), read without blocking the event loop.

    A file descriptor is read by a daemon thread of its own, not the default
    executor: a read still waiting on an open pipe when the console stops (Ctrl-C)
    would otherwise hold the process at exit. The thread reads only when a line is
    asked for, so nothing is read ahead. In-memory streams (tests) never block and
    are read directly.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        try:
            self._fd: int | None = stream.fileno()
        except (OSError, ValueError, io.UnsupportedOperation):
            self._fd = None
        self._encoding = getattr(stream, "encoding", None) or "utf-8"
        self._buffer = b""
        self._ended = False
        self._requests: queue.SimpleQueue[asyncio.Future[bytes]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def readline(self) -> str:
        """The next line with its newline; the last one may lack it; "" at the end."""
        if self._fd is None:
            return self._stream.readline()
        while b"\n" not in self._buffer and not self._ended:
            data = await self._read()
            if data:
                self._buffer += data
            else:
                self._ended = True
        line, newline, self._buffer = self._buffer.partition(b"\n")
        return (line + newline).decode(self._encoding, errors="replace")

    async def _read(self) -> bytes:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="console-input", daemon=True)
            self._thread.start()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._requests.put(future)
        return await future

    def _serve(self) -> None:
        assert self._fd is not None
        while True:
            future = self._requests.get()
            try:
                data = os.read(self._fd, 65536)
            except OSError:
                data = b""
            # The loop may be gone (the console stopped while this read waited).
            with contextlib.suppress(RuntimeError):
                future.get_loop().call_soon_threadsafe(_deliver, future, data)
            if not data:
                return


def _deliver(future: asyncio.Future[bytes], data: bytes) -> None:
    if not future.done():
        future.set_result(data)


def _login_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "console-user"

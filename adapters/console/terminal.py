"""The console's interactive terminal, on prompt_toolkit.

A terminal in canonical mode hands a program at most 4,095 characters per line and
cuts the rest without a word, and it splits a pasted block at its first newline.
prompt_toolkit reads the keyboard in raw mode instead, with line editing, history
and bracketed paste, so a pasted block arrives whole as one message. Text that
arrives while the prompt is shown (an answer resumed after a restart) is printed
above the prompt, which is then drawn again below it.

Only `botservice chat` on a terminal imports this module: prompt_toolkit costs
start-up time that piped input does not need.
"""

from __future__ import annotations

from collections.abc import Callable

from prompt_toolkit import PromptSession
from prompt_toolkit.application import in_terminal
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.output import Output

PROMPT = "you> "


class TerminalPrompt:
    """Reads one message at a time from the person at the terminal.

    `input` and `output` are prompt_toolkit's; None means the process's terminal.
    Tests pass `create_pipe_input()` and `DummyOutput()`.
    """

    def __init__(self, *, input: Input | None = None, output: Output | None = None) -> None:
        # History stays in memory: a history file would keep message text on disk
        # outside the database, beyond the retention that purges it there.
        self._session: PromptSession[str] = PromptSession(
            history=InMemoryHistory(), input=input, output=output
        )
        # y/N questions get a session of their own: their answers are no messages to recall.
        self._questions: PromptSession[str] = PromptSession(input=input, output=output)
        self._closed = False

    @property
    def showing(self) -> bool:
        """Whether the prompt is on the screen (anything printed must go above it)."""
        return self._session.app.is_running or self._questions.app.is_running

    async def ask_yes_no(self, question: str) -> bool:
        """A y/N question; anything but y or yes (Ctrl-D, Ctrl-C, Enter) is no. Asked
        only while no prompt is shown (the person is waiting for an answer)."""
        if self._closed or self.showing:
            return False
        try:
            answer = await self._questions.prompt_async(question, handle_sigint=False)
        except (EOFError, KeyboardInterrupt):
            return False
        return answer.strip().lower() in ("y", "yes")

    def cancel_question(self) -> None:
        """Take an unanswered y/N question down (its time is up)."""
        app = self._questions.app
        if app.is_running and app.future is not None and not app.future.done():
            app.exit(exception=EOFError())

    async def read(self) -> str | None:
        """The next message; None at Ctrl-D, at Ctrl-C, or once `close` was called."""
        if self._closed:
            return None
        try:
            # SIGINT is the command line's to handle (finish the answer in flight,
            # then exit): prompt_toolkit would take the handler and remove it after.
            # At the prompt, Ctrl-C is a key press (raw mode), reported as
            # KeyboardInterrupt.
            return await self._session.prompt_async(PROMPT, handle_sigint=False)
        except (EOFError, KeyboardInterrupt):
            return None

    def close(self) -> None:
        """Take the prompt down (if shown) and read nothing more."""
        self._closed = True
        app = self._session.app
        if app.is_running and app.future is not None and not app.future.done():
            app.exit(exception=EOFError())

    async def write(self, write: Callable[[], None]) -> None:
        """Run `write` (which prints to the terminal) above the prompt if it is shown."""
        if not self.showing:
            write()
            return
        async with in_terminal():
            write()

"""`botservice chat` on a terminal: the real console adapter and the real core, driven
through prompt_toolkit's own test input (keys as a terminal sends them), against the
fake model server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from prompt_toolkit.data_structures import Size
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput, Output
from prompt_toolkit.output.vt100 import Vt100_Output

from botservice.adapters.console.adapter import CHANNEL, PLATFORM, WORKSPACE, ConsoleAdapter
from botservice.adapters.console.terminal import TerminalPrompt
from botservice.core.conversation import ConversationCore
from botservice.core.events import IncomingMessage
from botservice.model.client import OpenAIChatClient
from botservice.storage.repository import SqlStore
from tests.chat_kit import settings_for
from tests.fakes.model_server import FakeModelServer, Slow, last_user_text

ENTER = "\r"
UP = "\x1b[A"
LEFT = "\x1b[D"
CTRL_D = "\x04"
PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"


@dataclass
class Terminal:
    keys: PipeInput
    screen: io.StringIO  # what the console printed (answers, notices)
    adapter: ConsoleAdapter
    core: ConversationCore
    prompt: TerminalPrompt

    def type(self, keys: str) -> None:
        self.keys.send_text(keys)

    async def until(self, condition: Callable[[], bool], within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while not condition():
            assert time.monotonic() < deadline, f"gave up waiting; screen: {self.text()!r}"
            await asyncio.sleep(0.02)

    async def until_prompt(self) -> None:
        await self.until(lambda: self.prompt.showing)

    def text(self) -> str:
        return self.screen.getvalue()


@asynccontextmanager
async def terminal(
    fake_model: FakeModelServer,
    store: SqlStore,
    *,
    screen_output: Callable[[io.StringIO], Output] | None = None,
    **settings: str,
) -> AsyncIterator[Terminal]:
    """A console on a terminal; it serves in the background until Ctrl-D (sent at the end)."""
    config = settings_for(fake_model.base_url, **settings)
    model = OpenAIChatClient(config.model)
    core = ConversationCore(settings=config, store=store, model=model)
    screen = io.StringIO()
    with create_pipe_input() as keys:
        output = screen_output(screen) if screen_output else DummyOutput()
        prompt = TerminalPrompt(input=keys, output=output)
        adapter = ConsoleAdapter(core, output=screen, user_name="ada", terminal=prompt)
        serving = asyncio.create_task(adapter.serve())
        try:
            yield Terminal(keys, screen, adapter, core, prompt)
            keys.send_text(CTRL_D)
            await asyncio.wait_for(serving, timeout=20)
        finally:
            serving.cancel()
            await core.stop()
            await model.aclose()


async def test_a_typed_message_is_answered_and_history_recalls_it_for_editing(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    async with terminal(fake_model, sqlite_store) as term:
        await term.until_prompt()
        # A typo fixed by moving the cursor back, as anyone edits a line.
        term.type("Hello wrld" + LEFT * 3 + "o" + ENTER)
        await term.until(lambda: "bot> You said: Hello world\n" in term.text())
        await term.until_prompt()
        # Up recalls the last message; it is edited and sent again.
        term.type(UP + " again" + ENTER)
        await term.until(lambda: "bot> You said: Hello world again\n" in term.text())
        await term.until_prompt()
    assert [last_user_text(r.body) for r in fake_model.chat_requests] == [
        "Hello world",
        "Hello world again",
    ]


async def test_a_pasted_block_of_50_kb_is_one_whole_message(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    """A terminal's line discipline cut such a paste at 4,095 characters, silently,
    and sent each of its lines as a message of its own."""
    block = "\n".join(f"line {number:05d} " + "x" * 90 for number in range(500))
    assert len(block) > 50_000
    async with terminal(fake_model, sqlite_store, conversation__max_message_chars="100000") as term:
        await term.until_prompt()
        term.type(PASTE_START + block + PASTE_END)
        term.type(ENTER)
        await term.until(lambda: "line 00499" in term.text())
        await term.until_prompt()
    assert len(fake_model.chat_requests) == 1
    assert last_user_text(fake_model.chat_requests[0].body) == block


async def test_a_paste_over_the_message_limit_is_refused_in_a_sentence_not_cut(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    block = "\n".join("y" * 99 for _ in range(500))
    async with terminal(fake_model, sqlite_store) as term:
        await term.until_prompt()
        term.type(PASTE_START + block + PASTE_END + ENTER)
        await term.until(lambda: "limit here is 20,000" in term.text())
        await term.until_prompt()
    assert "Your message is 49,999 characters long" in term.text()
    assert fake_model.chat_requests == []


async def test_a_command_answers_on_the_terminal(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    async with terminal(fake_model, sqlite_store) as term:
        await term.until_prompt()
        term.type("/instructions set Answer like a pirate." + ENTER)
        await term.until(lambda: "Instructions updated" in term.text())
        await term.until_prompt()
        term.type("Ahoy" + ENTER)
        await term.until(lambda: "bot> You said: Ahoy\n" in term.text())
    assert fake_model.chat_requests[0].body["messages"][0]["content"] == "Answer like a pirate."


async def test_an_answer_resumed_while_the_prompt_is_shown_is_printed_above_it_labelled(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    # A message the previous run stored and never answered (it was stopped at once).
    left_behind = IncomingMessage(
        platform=PLATFORM,
        workspace=WORKSPACE,
        channel=CHANNEL,
        thread="",
        user_id="ada",
        user_name="ada",
        text="what about yesterday?",
        message_key="earlier-run:1",
        is_channel_admin=True,
        from_operator=True,
    )
    assert await sqlite_store.accept(left_behind, text=left_behind.text, tokens=5) is not None
    fake_model.script(Slow(delay_before_first_byte=0.3))

    def vt100(screen: io.StringIO) -> Output:
        # A real terminal's escape sequences, into the same transcript as the answers,
        # so the order of prompt, erase and answer can be read.
        return Vt100_Output(screen, lambda: Size(rows=24, columns=120), term="xterm")

    async with terminal(fake_model, sqlite_store, screen_output=vt100) as term:
        await term.until_prompt()
        await term.until(lambda: "you>" in term.text())
        term.type("half a thou")  # the person is typing when the answer arrives
        await term.core.resume_pending(term.adapter.sink_for)
        await term.until(lambda: "bot (resumed)> You said: what about yesterday?" in term.text())
        screen = term.text()
        answer_at = screen.index("bot (resumed)> ")
        # The prompt was on the screen, was taken down, the answer printed on a
        # line of its own, and the prompt drawn again below it with what was typed.
        before = screen[:answer_at]
        assert "you>" in before
        erase_below = "\x1b[J"
        assert before.rindex(erase_below) > before.rindex("half a thou")
        after = screen[answer_at:]
        assert "you>" in after and "half a thou" in after[after.index("you>") :]
        term.type("ght" + ENTER)
        await term.until(lambda: "bot> You said: half a thought\n" in term.text())
    assert [last_user_text(r.body) for r in fake_model.chat_requests] == [
        "what about yesterday?",
        "half a thought",
    ]

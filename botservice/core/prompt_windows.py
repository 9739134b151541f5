"""Each long conversation's last prompt, moved on with its history window.

A long thread's window moves by a question and its answer a turn, yet `build_prompt`
walks all of its 200 messages again each time (40 us of a reply, measured in place on
this machine, against 12 us in a 10-message thread). `PromptWindows` keeps, per
conversation, what that walk found (the questions, who spoke, the answers whose
question is gone) and updates it by the few messages that left and came, so a
window that keeps its usual shape is answered with a copy of the prompt entries it
already had. Any other window, and any turn with tool rounds or images, is built by
`build_prompt`: the result is always exactly `build_prompt`'s (tests/test_prompt_windows.py
checks them against each other on random windows).

It keeps references to the windows' messages, no copies; `clear` lets go of all of
them, and the core calls it whenever the store forgets or changes messages, so no
forgotten text stays here.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Literal

from botservice.core.events import Attachment
from botservice.core.ports import StoredMessage, StoredToolCall
from botservice.core.prompt import MESSAGE_OVERHEAD_TOKENS, Prompt, build_prompt

# Shorter windows are built whole: cheap, and most conversations never grow past them.
FOLLOWED_FROM = 32
# Conversations whose last window is kept (least recently built go first).
KEPT_CONVERSATIONS = 256
# How many of the last window's messages may have left its front for the next window
# to follow it (a turn moves it by two: more means it was read otherwise).
MOST_LEFT = 16

_ENTRY = attrgetter("prompt_entry")
_NAMED_ENTRY = attrgetter("named_prompt_entry")


@dataclass(slots=True)
class _Window:
    """A window, and what `build_prompt`'s walk would find in it when it all fits."""

    history: list[StoredMessage]
    questions: set[int] = field(default_factory=set)  # ids of its user messages
    answers: Counter[int | None] = field(default_factory=Counter)  # by the id they answer
    authors: Counter[str] = field(default_factory=Counter)  # its user messages, by author
    orphans: int = 0  # answers whose question is not in it (`build_prompt` leaves them out)
    doubles: int = 0  # answers right after another answer
    costs: int = 0  # the budget all its messages take
    lead: int = 0  # how many messages at its front are orphans
    entries: list[dict[str, Any]] = field(default_factory=list)  # of history[lead:]

    @classmethod
    def of(cls, history: Sequence[StoredMessage]) -> _Window:
        window = cls(list(history))
        for position in range(len(history)):
            window.add(position)
        window.lead = window.front_orphans()
        window.entries = list(map(window.entry, history[window.lead :]))
        return window

    @property
    def named(self) -> bool:
        return len(self.authors) > 1

    @property
    def entry(self) -> attrgetter[dict[str, Any]]:
        return _NAMED_ENTRY if self.named else _ENTRY

    def add(self, position: int) -> None:
        """Count in the message at `position` of `history`, which came after the ones
        before it.

        An answer is counted an orphan when its question is not before it. Windows
        come in question order, but one whose question came after it would stay
        counted so until it leaves: `orphans` may count too many, never too few, so
        such a window is only ever walked."""
        message = self.history[position]
        self.costs += message.tokens + MESSAGE_OVERHEAD_TOKENS
        if message.role == "user":
            self.questions.add(message.id)
            self.authors[message.author_id] += 1
        else:
            self.answers[message.reply_to_id] += 1
            self.orphans += message.reply_to_id not in self.questions
            if position and self.history[position - 1].role == "assistant":
                self.doubles += 1

    def drop(self, count: int) -> None:
        """Count out the first `count` messages of `history` (which stay in it)."""
        history = self.history
        for position in range(count):
            message = history[position]
            self.costs -= message.tokens + MESSAGE_OVERHEAD_TOKENS
            if message.role == "user":
                self.questions.discard(message.id)
                self.authors[message.author_id] -= 1
                if not self.authors[message.author_id]:
                    del self.authors[message.author_id]
                # Its answers still here have no question now.
                self.orphans += self.answers[message.id]
            else:
                self.answers[message.reply_to_id] -= 1
                self.orphans -= message.reply_to_id not in self.questions
            if position + 1 < len(history) and (
                message.role == history[position + 1].role == "assistant"
            ):
                self.doubles -= 1

    def front_orphans(self) -> int:
        history, questions = self.history, self.questions
        lead = 0
        while (
            lead < len(history)
            and history[lead].role == "assistant"
            and history[lead].reply_to_id not in questions
        ):
            lead += 1
        return lead

    def regular(self) -> bool:
        """Whether `build_prompt` keeps every message after the front's orphans as it
        is: no orphan past them, and no answer right after another answer past them.
        (The first message past them is a question, or an answer to a question after
        it, which `orphans` counts.)"""
        front_pairs = max(self.lead - 1, 0)  # the orphans' own, left out with them
        return self.orphans == self.lead and self.doubles == front_pairs

    def kept_costs(self) -> int:
        return self.costs - sum(
            message.tokens + MESSAGE_OVERHEAD_TOKENS for message in self.history[: self.lead]
        )


class PromptWindows:
    """`build_prompt` for a conversation's turns, following its last window."""

    def __init__(self, conversations: int = KEPT_CONVERSATIONS) -> None:
        self._conversations = conversations
        self._windows: OrderedDict[int, _Window] = OrderedDict()
        # What was done, for tests and benchmarks: windows counted whole (not followed
        # from the last), and prompts given from a window's entries (no walk).
        self.windows_counted = 0
        self.prompts_from_windows = 0

    def __len__(self) -> int:
        """How many conversations' windows are kept."""
        return len(self._windows)

    def clear(self) -> None:
        self._windows.clear()

    def build(
        self,
        conversation_id: int,
        *,
        instructions: str,
        instructions_role: Literal["system", "developer"],
        instructions_tokens: int,
        history: Sequence[StoredMessage],
        budget_tokens: int,
        images: Sequence[Attachment] = (),
        tool_calls: Mapping[int, Sequence[StoredToolCall]] | None = None,
        reasoning: Mapping[tuple[int, int], Sequence[dict[str, Any]]] | None = None,
    ) -> Prompt:
        """What `build_prompt` gives for these arguments."""
        window = self._window(conversation_id, history) if len(history) >= FOLLOWED_FROM else None
        if (
            window is not None
            and not tool_calls
            and not any(image.shown_to_model for image in images)
            and window.regular()
        ):
            used = instructions_tokens + MESSAGE_OVERHEAD_TOKENS + window.kept_costs()
            if used <= budget_tokens:  # all of it fits
                instruction = {"role": instructions_role, "content": instructions}
                self.prompts_from_windows += 1
                return Prompt(messages=[instruction, *window.entries], left_out=0, tokens=used)
        return build_prompt(
            instructions=instructions,
            instructions_role=instructions_role,
            instructions_tokens=instructions_tokens,
            history=history,
            budget_tokens=budget_tokens,
            images=images,
            tool_calls=tool_calls,
            reasoning=reasoning,
        )

    def _window(self, conversation_id: int, history: Sequence[StoredMessage]) -> _Window:
        windows = self._windows
        window = windows.get(conversation_id)
        if window is None or not _moved_on(window, history):
            window = windows[conversation_id] = _Window.of(history)
            self.windows_counted += 1
        windows.move_to_end(conversation_id)
        while len(windows) > self._conversations:
            windows.popitem(last=False)
        return window


def _moved_on(window: _Window, history: Sequence[StoredMessage]) -> bool:
    """Move `window` on to `history` when that is it with a few messages gone from its
    front and new ones after it: the same messages, the very objects the store kept
    between turns (read again after its cache was emptied, they are new objects, and
    the window is counted anew). False when it is not, and then the window is of no
    use."""
    old = window.history
    if not history:
        return False
    first = history[0]
    for left in range(min(len(old), MOST_LEFT + 1)):
        if old[left] is first:
            break
    else:
        return False
    stayed = len(old) - left
    if len(history) < stayed or history[:stayed] != old[left:]:
        return False
    named, old_lead, old_entries = window.named, window.lead, window.entries
    window.drop(left)
    window.history = list(history)
    for position in range(stayed, len(history)):
        window.add(position)
    lead = window.lead = window.front_orphans()
    entry = window.entry
    if window.named == named and old_lead <= left + lead and lead <= stayed:
        # history[lead:stayed] is old[left + lead:], whose entries are kept.
        window.entries = old_entries[left + lead - old_lead :]
        window.entries += map(entry, history[stayed:])
    else:
        window.entries = list(map(entry, history[lead:]))
    return True

"""Tools the model may call: what a tool source offers, what one call carries, which
tools a channel allows, and what a person is asked before an action runs.

Built-in tools and MCP servers are both `ToolSource`s; the core sees only these types.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from botservice.core.events import ConversationKey

# The source name of the tools that ship with the bot.
BUILTIN = "builtin"
# What the model APIs accept as a function name.
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolSpec:
    """One tool as the model is offered it.

    `name` is what the model sees and calls (`TOOL_NAME`; an MCP server's tools are
    `server__tool`). The hints follow MCP's annotations and their defaults when a
    server says nothing: not read-only, destructive.
    """

    name: str
    description: str
    # JSON Schema of the arguments object.
    parameters: Mapping[str, Any]
    source: str
    read_only: bool = False
    destructive: bool = True
    # Whether the tool's source is trusted (built-in tools always are).
    trusted: bool = False
    # The status line shown while the tool runs ("Searching this channel's history…");
    # empty: "Calling <name>…".
    status: str = ""

    @property
    def runs_without_asking(self) -> bool:
        """Read-only by its annotations and from a trusted source: anything else asks
        the person who asked first."""
        return self.read_only and self.trusted


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call the model asked for in a tool round."""

    # The model's call id, echoed back as the result's `tool_call_id`.
    id: str
    name: str
    # The arguments as the model sent them: JSON text, possibly malformed.
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolOutput:
    """What a call returned, as text for the model. `is_error`: the tool failed, and
    the text says how (the model is told, and may try otherwise)."""

    text: str
    is_error: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolContext:
    """Whom a call is made for. Built-in tools stay inside it: `search_history` reads
    only this conversation's channel (same platform and workspace)."""

    conversation: ConversationKey
    conversation_id: int
    user_id: str
    turn_id: int


class ToolSource(Protocol):
    """A set of tools: the built-in ones, or one MCP server's."""

    name: str
    trusted: bool

    def tools(self) -> Sequence[ToolSpec]:
        """The tools offered now. No I/O: a source that lists remotely keeps its list
        current in the background (an MCP server that is down offers none)."""
        ...

    async def call(
        self, name: str, arguments: Mapping[str, Any], context: ToolContext
    ) -> ToolOutput:
        """Run one of `tools()` by its `ToolSpec.name`. A failure of the tool itself is
        an `is_error` output; the core bounds the time (cancellation) and the size."""
        ...

    async def start(self) -> None:
        """Begin serving (connect, list). Never raises for a server that is down."""
        ...

    async def aclose(self) -> None: ...


# --- which tools a channel allows ----------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolPolicy:
    """A channel's tool rules, set by its managers (`tools enable|disable <pattern>`).

    The last rule whose pattern (a name or a glob such as `jira__*`) matches a tool
    decides; with no matching rule, built-in read-only tools are on and every other
    tool is off. Stored as one channel setting, `+pattern,-pattern,…` in order.
    """

    rules: tuple[tuple[str, bool], ...] = ()

    def allows(self, spec: ToolSpec) -> bool:
        for pattern, enabled in reversed(self.rules):
            if fnmatch.fnmatchcase(spec.name, pattern):
                return enabled
        return spec.source == BUILTIN and spec.read_only

    def with_rule(self, pattern: str, *, enabled: bool) -> ToolPolicy:
        """The policy after `tools enable|disable pattern`: the new rule comes last, and
        an earlier rule for the same pattern is dropped."""
        kept = tuple(rule for rule in self.rules if rule[0] != pattern)
        return ToolPolicy((*kept, (pattern, enabled)))

    def serialize(self) -> str | None:
        if not self.rules:
            return None
        return ",".join(("+" if enabled else "-") + pattern for pattern, enabled in self.rules)

    @classmethod
    def parse(cls, stored: str | None) -> ToolPolicy:
        if not stored:
            return cls()
        rules = tuple(
            (item[1:], item[0] == "+") for item in stored.split(",") if item[:1] in ("+", "-")
        )
        return cls(rules)


# --- asking a person before an action ------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfirmationRequest:
    """A call that waits for the asker's Approve or Deny.

    A sink that can ask shows it (Slack and Discord: a message in the thread with
    two buttons; the console: a y/N prompt) and hands the click back to the core
    with `ConversationCore.decide_tool_call(confirmation_id, ...)`. The id is
    stored, so buttons shown before a restart still work after it.
    """

    confirmation_id: int
    tool: str
    # The arguments shortened for display (at most `SHOWN_ARGUMENTS` characters).
    arguments: str
    asker_id: str
    asker_name: str
    timeout_seconds: float


SHOWN_ARGUMENTS = 300

# What a click (or the console's answer) came to:
# approved / denied: recorded, and the waiting turn goes on;
# not_asker: only the person who asked may decide (nothing recorded);
# already_decided: decided before, or timed out (a denial);
# unknown: no such confirmation (expired and purged, or forged);
# expired: still open, but nobody waits for the answer any more (its turn ended, or the
# realtime voice session that asked is gone: the process restarted, or the session
# ended): now marked timed out, and nothing runs.
Decision = Literal["approved", "denied", "not_asker", "already_decided", "unknown", "expired"]

# What a question nobody answered in time says once its buttons are gone.
UNANSWERED = "No answer within {seconds:g} s: not run."


def unanswered_text(request: ConfirmationRequest) -> str:
    return UNANSWERED.format(seconds=request.timeout_seconds)


# What became of a question closed by the core (a click closes it through the adapter
# that took the click): nobody answered in time, or the realtime voice session that
# asked ended first.
ClosedOutcome = Literal["timed_out", "session_ended"]
# What a question says once its voice session ended before anyone answered.
SESSION_ENDED = "The voice session ended before an answer: not run."


# --- a call's progress, as the person sees it --------------------------------------

# pending: waits for the asker's Approve; in_progress: running; complete / error: done
# (error: refused, failed, timed out or declined).
ToolState = Literal["pending", "in_progress", "complete", "error"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolProgress:
    """Where one tool call stands, for a sink that shows each call on its own (Slack's
    task cards in a native stream). A sink that cannot show it says so, and the core
    shows the round's status line instead."""

    # Names the call within its turn (its round and position: models reuse their own
    # call ids from one round to the next). The same id for every state of one call.
    call_id: str
    # The status text ("Searching this channel's history…", "Calling <name>…").
    title: str
    state: ToolState
    # One short sentence: whose approval is awaited, why the call failed.
    detail: str = ""

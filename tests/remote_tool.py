"""A tool source standing for a remote server's tools (an MCP server, say) in tests of
what people see: it offers the tools it is given and records every call it runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from botservice.core.tools import ToolContext, ToolOutput, ToolSpec


@dataclass(frozen=True, slots=True)
class RecordedCall:
    name: str
    arguments: Mapping[str, Any]
    user_id: str
    turn_id: int


@dataclass
class RemoteTools:
    """An untrusted source (as an MCP server is by default) with the tools it is given."""

    name: str = "jira"
    trusted: bool = False
    specs: Sequence[ToolSpec] = ()
    answer: str = "Created JIRA-101."
    calls: list[RecordedCall] = field(default_factory=list)

    def tools(self) -> Sequence[ToolSpec]:
        return self.specs

    async def call(
        self, name: str, arguments: Mapping[str, Any], context: ToolContext
    ) -> ToolOutput:
        self.calls.append(RecordedCall(name, dict(arguments), context.user_id, context.turn_id))
        return ToolOutput(self.answer)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def jira_tools() -> RemoteTools:
    """`jira__create_issue`: destructive by default (its server says nothing about it),
    so every call waits for the asker's Approve."""
    return RemoteTools(
        specs=(
            ToolSpec(
                name="jira__create_issue",
                description="Create an issue in JIRA.",
                parameters={
                    "type": "object",
                    "properties": {"title": {"type": "string"}},
                    "required": ["title"],
                },
                source="jira",
            ),
        )
    )

"""Tools the model endpoint runs itself: the Responses API's web search, file search,
code interpreter, image generation and remote MCP servers.

The operator says which the endpoint offers (`[hosted_tools]`); a channel's managers
enable them with the same rules as other tools (`tools enable hosted__web_search`),
and each is off until they do. They are sent with the request as the endpoint's own
tool entries; nothing runs here (an MCP call that needs approval is the exception:
the asker approves it as any other action, see botservice/core/conversation.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botservice.core.settings import HostedToolSettings
from botservice.core.tools import ToolContext, ToolOutput, ToolPolicy, ToolSpec

log = logging.getLogger(__name__)

# The source name of hosted tools, and the prefix of their policy names.
HOSTED = "hosted"
PREFIX = "hosted__"
# A remote MCP server's policy name is this and its label.
MCP_PREFIX = f"{PREFIX}mcp_"
# The result of an approved remote MCP call, as the tool loop stores it; a backend
# sends it on as `mcp_approval_response` with `approve: true` (anything else: false).
MCP_APPROVED = "Approved by the asker; the endpoint runs the call."


@dataclass(frozen=True, slots=True, kw_only=True)
class HostedTool:
    """One hosted tool: its policy name and the entry the request's `tools` carries."""

    name: str
    description: str
    entry: Mapping[str, Any]
    # Whether each call waits for the asker's approval (a remote MCP server's
    # `require_approval: always`); the others run at the endpoint unasked.
    asks: bool = False

    @property
    def spec(self) -> ToolSpec:
        """As the channel's rules and `tools show` see it (never offered as a function;
        off by default, as every tool not built in is)."""
        return ToolSpec(
            name=self.name,
            description=self.description,
            parameters={},
            source=HOSTED,
            read_only=not self.asks,
            destructive=self.asks,
            trusted=not self.asks,
        )


def hosted_tools(
    settings: HostedToolSettings, environ: Mapping[str, str] | None = None
) -> list[HostedTool]:
    """The hosted tools the operator configured, in a fixed order; `environ` holds the
    remote MCP servers' tokens (`authorization_env`)."""
    tools: list[HostedTool] = []
    if settings.web_search:
        tools.append(
            HostedTool(
                name=f"{PREFIX}web_search",
                description="Search the web (run by the model endpoint).",
                entry={"type": "web_search"},
            )
        )
    if settings.file_search_vector_store_ids:
        tools.append(
            HostedTool(
                name=f"{PREFIX}file_search",
                description="Search the configured vector stores (run by the model endpoint).",
                entry={
                    "type": "file_search",
                    "vector_store_ids": list(settings.file_search_vector_store_ids),
                },
            )
        )
    if settings.code_interpreter:
        tools.append(
            HostedTool(
                name=f"{PREFIX}code_interpreter",
                description="Run Python in a sandbox (run by the model endpoint).",
                entry={"type": "code_interpreter", "container": {"type": "auto"}},
            )
        )
    if settings.image_generation:
        tools.append(
            HostedTool(
                name=f"{PREFIX}image_generation",
                description="Draw images; they are posted in the thread.",
                entry={"type": "image_generation"},
            )
        )
    for server in settings.mcp:
        entry: dict[str, Any] = {
            "type": "mcp",
            "server_label": server.label,
            "server_url": server.url,
            "require_approval": server.require_approval,
        }
        if server.description:
            entry["server_description"] = server.description
        if server.allowed_tools:
            entry["allowed_tools"] = list(server.allowed_tools)
        if server.authorization_env:
            token = (environ or {}).get(server.authorization_env)
            if token:
                entry["authorization"] = token
            else:
                log.warning(
                    "remote MCP server %s: %s is not set; it is asked without a token",
                    server.label,
                    server.authorization_env,
                )
        tools.append(
            HostedTool(
                name=f"{PREFIX}mcp_{server.label}",
                description=server.description or f"The remote MCP server {server.label}.",
                entry=entry,
                asks=server.require_approval == "always",
            )
        )
    return tools


def enabled_entries(
    tools: Sequence[HostedTool], policy: ToolPolicy
) -> tuple[Mapping[str, Any], ...]:
    """The request entries of the hosted tools the channel's rules enable."""
    return tuple(tool.entry for tool in tools if policy.allows(tool.spec))


class McpApprovals:
    """The remote MCP servers whose calls need approval, as a tool source.

    A call the endpoint asks approval for (`mcp_approval_request`) comes through the
    tool loop as a call of `hosted__mcp_<label>`, its arguments `{"tool": ..., "arguments":
    ...}`: it is stored, and asked of the asker, like any action. "Running" it only
    records the approval; the backend sends the decision back as
    `mcp_approval_response`, and the endpoint runs (or skips) the call itself.
    """

    name = HOSTED
    trusted = False

    def __init__(self, tools: Sequence[HostedTool]) -> None:
        self._specs = [tool.spec for tool in tools if tool.asks]

    def __bool__(self) -> bool:
        return bool(self._specs)

    def tools(self) -> Sequence[ToolSpec]:
        return self._specs

    async def call(
        self, name: str, arguments: Mapping[str, Any], context: ToolContext
    ) -> ToolOutput:
        return ToolOutput(MCP_APPROVED)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

"""The tool sources the bot offers the model: the built-in tools, and one source per
`[[mcp.servers]]` entry, built from the settings and the environment.

`open_services` builds them, starts them with the bot, hands them to the core and
closes them on stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from zoneinfo import ZoneInfo

from botservice.core.errors import ConfigError
from botservice.core.settings import McpServerSettings, Settings
from botservice.core.tools import ToolSource
from botservice.tools.builtin import BuiltinStore, builtin_tools

log = logging.getLogger(__name__)


def build_tool_sources(
    settings: Settings, store: BuiltinStore, environ: Mapping[str, str] | None = None
) -> list[ToolSource]:
    """The built-in tools first, then each configured MCP server. Raises `ConfigError`
    for a header or variable that names an unset environment variable, or for MCP
    servers configured without the `mcp` extra installed."""
    env = os.environ if environ is None else environ
    builtin = settings.builtin_tools
    fetch = None
    if builtin.fetch_url:
        from botservice.tools.fetch_url import FetchLimits, networks

        fetch = FetchLimits(
            max_bytes=builtin.fetch_max_bytes,
            timeout_seconds=builtin.fetch_timeout_seconds,
            allowed_networks=networks(builtin.fetch_allowed_networks),
        )
    sources: list[ToolSource] = [
        builtin_tools(
            store,
            timezone=ZoneInfo(builtin.timezone),
            default_retention_days=settings.storage.retention_days,
            fetch=fetch,
        )
    ]
    if not settings.mcp.servers:
        return sources
    try:
        # Imported only when servers are configured: the SDK costs start-up time.
        from botservice.tools.mcp_source import McpServer, McpToolSource
    except ImportError:
        raise ConfigError(
            "mcp.servers",
            "needs the MCP SDK; install it with `python -m pip install 'botservice[mcp]'`",
        ) from None
    for server in settings.mcp.servers:
        sources.append(
            McpToolSource(
                McpServer(
                    name=server.name,
                    url=server.url,
                    headers=_from_environment(server, "headers", server.headers, env),
                    command=server.command,
                    args=server.args,
                    env=_from_environment(server, "env", server.env, env),
                    trusted=server.trusted,
                    allowed_tools=server.allowed_tools,
                ),
                connect_timeout_seconds=settings.mcp.connect_timeout_seconds,
                retry_max_seconds=settings.mcp.retry_max_seconds,
            )
        )
    return sources


def _from_environment(
    server: McpServerSettings, kind: str, names: Mapping[str, str], env: Mapping[str, str]
) -> dict[str, str]:
    values: dict[str, str] = {}
    for key, variable in names.items():
        value = env.get(variable)
        if not value:
            raise ConfigError(
                f"mcp.servers.{server.name}.{kind}.{key}",
                f"names the environment variable {variable}, which is not set",
            )
        values[key] = value
    return values


async def start_tool_sources(sources: Sequence[ToolSource]) -> None:
    """Start every source at once; a server that is down is retried in the background
    (its source says so in the log), never stopping the bot."""
    await asyncio.gather(*(source.start() for source in sources))
    offered = ", ".join(f"{source.name}={len(source.tools())}" for source in sources)
    log.info("tool sources: %s", offered)


async def close_tool_sources(sources: Sequence[ToolSource]) -> None:
    results = await asyncio.gather(*(source.aclose() for source in sources), return_exceptions=True)
    for source, result in zip(sources, results, strict=True):
        if isinstance(result, Exception):
            log.warning("closing the tool source %s failed: %r", source.name, result)

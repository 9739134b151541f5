"""The tools a realtime voice session may call: the text turns' tool sources and rules.

The same `ToolBox` (every source), the channel's `ToolPolicy` (the allow-list), the same
bounds (`[tools]` call timeout, result size) and the same refusals the core's tool rounds
tell the model. Confirmation: a voice session has no button to press, so a tool that
would ask the asker first (anything not read-only from a trusted source) is declined
exactly as in a text turn whose sink cannot ask (`CANNOT_ASK`); read-only tools run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from botservice.core.settings import ToolSettings
from botservice.core.tool_rounds import (
    BAD_ARGUMENTS,
    CANNOT_ASK,
    NOT_OFFERED,
    TIMED_OUT,
    TOOL_FAILED,
    ToolBox,
    cap_result,
    parse_arguments,
)
from botservice.core.tools import ToolContext, ToolPolicy, ToolSpec

log = logging.getLogger(__name__)


class ChannelVoiceTools:
    """`RealtimeTools` for one voice channel: what its policy allows, run by the rules."""

    def __init__(
        self,
        toolbox: ToolBox,
        policy: ToolPolicy,
        *,
        settings: ToolSettings,
        context: ToolContext,
    ) -> None:
        self._toolbox = toolbox
        self._policy = policy
        self._settings = settings
        self._context = context

    def specs(self) -> Sequence[ToolSpec]:
        return self._toolbox.offered(self._policy).specs

    async def call(self, name: str, arguments: str) -> str:
        found = self._toolbox.find(name)
        if found is None or not self._policy.allows(found[1]):
            return NOT_OFFERED.format(name=name[:80])
        source, spec = found
        parsed, problem = parse_arguments(arguments)
        if parsed is None:
            return BAD_ARGUMENTS.format(problem=problem)
        if not spec.runs_without_asking:
            log.info("declined a realtime call that needs approval (%s)", spec.name)
            return CANNOT_ASK
        timeout = self._settings.call_timeout_seconds
        try:
            output = await asyncio.wait_for(
                source.call(spec.name, parsed, self._context), timeout=timeout
            )
        except TimeoutError:
            return TIMED_OUT.format(seconds=timeout)
        except Exception as error:
            log.warning("tool %s failed: %s", spec.name, type(error).__name__)
            return TOOL_FAILED.format(kind=type(error).__name__)
        return cap_result(output.text, self._settings.max_result_bytes)

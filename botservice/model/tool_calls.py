"""Reading the tool calls of a streamed answer, as the servers that exist send them.

One accumulator for every style seen:
- OpenAI, vLLM: the call's id and name in its first fragment, then the arguments in
  fragments, each keyed by the call's `index`;
- whole calls in one chunk (llama.cpp, many proxies);
- Ollama: several parallel calls each whole, all at `index: 0`: a new `id` at an index
  already taken opens a new call (and, with no ids at all, a new name after a call
  whose arguments have come);
- arguments sent as a JSON object instead of text (some Ollama versions).

Whether the arguments are valid JSON is not judged here: the core tells the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from botservice.core.tools import ToolCall


@dataclass(slots=True)
class _Partial:
    id: str = ""
    name: str = ""
    arguments: str = ""


class ToolCallAccumulator:
    """Feed it each chunk's `delta.tool_calls`; `calls()` gives the whole calls."""

    __slots__ = ("_at_index", "_calls")

    def __init__(self) -> None:
        self._calls: list[_Partial] = []
        self._at_index: dict[int, _Partial] = {}

    def __bool__(self) -> bool:
        return bool(self._calls)

    def feed(self, fragments: Any) -> None:
        if not isinstance(fragments, list):
            return
        for fragment in fragments:
            if isinstance(fragment, dict):
                self._feed_one(fragment)

    def _feed_one(self, fragment: dict[str, Any]) -> None:
        index = fragment.get("index")
        call_id = fragment.get("id")
        call_id = call_id if isinstance(call_id, str) else ""
        function = fragment.get("function")
        function = function if isinstance(function, dict) else {}
        name = function.get("name")
        name = name if isinstance(name, str) else ""
        arguments = function.get("arguments")
        if isinstance(arguments, dict | list):
            arguments = orjson.dumps(arguments).decode()
        arguments = arguments if isinstance(arguments, str) else ""

        if isinstance(index, int):
            current = self._at_index.get(index)
        else:
            current = self._calls[-1] if self._calls else None
        if current is not None and (
            (call_id and current.id and call_id != current.id)
            or (name and current.name and current.arguments and not call_id)
        ):
            current = None  # another call at a taken index (Ollama)
        if current is None:
            current = _Partial()
            self._calls.append(current)
            if isinstance(index, int):
                self._at_index[index] = current
        if call_id and not current.id:
            current.id = call_id
        if name and name != current.name:
            # Names come whole in practice; a server that splits one is joined.
            current.name = name if not current.name else current.name + name
        current.arguments += arguments

    def replace(self, index: int, *, call_id: str, name: str, arguments: str) -> None:
        """A call as a server restates it whole when it is done (the Responses API):
        the whole replaces what the fragments built."""
        current = self._at_index.get(index)
        if current is None:
            current = self._at_index[index] = _Partial()
            self._calls.append(current)
        current.id = call_id or current.id
        current.name = name or current.name
        current.arguments = arguments

    def calls(self) -> list[ToolCall]:
        """The calls, in the order they began. A call without an id gets one (the
        result must name it), as does one whose id repeats an earlier one's."""
        whole: list[ToolCall] = []
        seen: set[str] = set()
        for number, partial in enumerate(self._calls):
            if not partial.name and not partial.arguments:
                continue
            call_id = partial.id or f"call_{number}"
            while call_id in seen:
                call_id = f"{call_id}_{number}"
            seen.add(call_id)
            whole.append(ToolCall(call_id, partial.name, partial.arguments))
        return whole

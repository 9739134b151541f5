"""The event sequence of a streamed OpenAI Responses API answer, as OpenAI sends it
(`event:` and `data:` lines, `sequence_number` counting up), for the fake model server."""

from __future__ import annotations

import json
import time
from typing import Any


class ResponseEvents:
    """Builds the events of one response, in order."""

    def __init__(self, response_id: str, model: str) -> None:
        self.response_id = response_id
        self.item_id = f"msg_{response_id.removeprefix('resp_')}"
        self.model = model
        self._sequence = 0
        self._created = int(time.time())

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        data = json.dumps(payload, separators=(",", ":"))
        return f"event: {kind}\ndata: {data}\n\n".encode()

    def response(self, status: str, text: str | None = None, **extra: Any) -> dict[str, Any]:
        output = [] if text is None else [self.message(text, "completed")]
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self._created,
            "status": status,
            "model": self.model,
            "output": output,
            "store": False,
            "usage": None,
            "error": None,
            "incomplete_details": None,
            **extra,
        }

    def message(self, text: str, status: str) -> dict[str, Any]:
        return {
            "id": self.item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [{"type": "output_text", "annotations": [], "text": text}] if text else [],
        }

    def opening(self) -> list[bytes]:
        return [
            self.event("response.created", response=self.response("in_progress")),
            self.event("response.in_progress", response=self.response("in_progress")),
        ]

    def text(self, pieces: list[str]) -> list[bytes]:
        """The message item, its text part, and one delta per piece."""
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        events = [
            self.event(
                "response.output_item.added", output_index=0, item=self.message("", "in_progress")
            ),
            self.event(
                "response.content_part.added",
                **where,
                part={"type": "output_text", "annotations": [], "text": ""},
            ),
        ]
        events += [
            self.event("response.output_text.delta", **where, delta=piece, logprobs=[])
            for piece in pieces
        ]
        return events

    def text_done(self, text: str, status: str = "completed") -> list[bytes]:
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        return [
            self.event("response.output_text.done", **where, text=text, logprobs=[]),
            self.event(
                "response.content_part.done",
                **where,
                part={"type": "output_text", "annotations": [], "text": text},
            ),
            self.event(
                "response.output_item.done", output_index=0, item=self.message(text, status)
            ),
        ]

    def completed(self, text: str, usage: dict[str, Any] | None) -> bytes:
        return self.event(
            "response.completed", response=self.response("completed", text, usage=usage)
        )

    def incomplete(self, text: str, reason: str, usage: dict[str, Any] | None) -> bytes:
        return self.event(
            "response.incomplete",
            response=self.response(
                "incomplete", text, usage=usage, incomplete_details={"reason": reason}
            ),
        )

    def reasoning(self, encrypted: str | None, output_index: int = 0) -> tuple[list[bytes], dict]:
        """A reasoning item as a reasoning model streams it before its calls: added
        (empty), done (with a summary, and its encrypted content when the request
        asked for it with `include`)."""
        item: dict[str, Any] = {"id": f"rs_{self.response_id}", "type": "reasoning", "summary": []}
        events = [self.event("response.output_item.added", output_index=output_index, item=item)]
        done = {**item, "summary": [{"type": "summary_text", "text": "Thinking it over."}]}
        if encrypted is not None:
            done["encrypted_content"] = encrypted
        events.append(self.event("response.output_item.done", output_index=output_index, item=done))
        return events, done

    def function_calls(
        self, calls: list[tuple[str, str, str]], *, reasoning: dict[str, Any] | None = None
    ) -> list[bytes]:
        """Each call (call_id, name, arguments) as OpenAI streams a function call: the
        item, its arguments in two deltas, done, the item done; then completed.
        `reasoning`: the round's reasoning item (streamed before, by `reasoning()`),
        which comes first in the response's output."""
        events: list[bytes] = []
        items = [reasoning] if reasoning is not None else []
        first = len(items)
        for index, (call_id, name, arguments) in enumerate(calls, start=first):
            item = {
                "id": f"fc_{index}",
                "type": "function_call",
                "status": "in_progress",
                "call_id": call_id,
                "name": name,
                "arguments": "",
            }
            events.append(self.event("response.output_item.added", output_index=index, item=item))
            half = len(arguments) // 2
            for piece in (arguments[:half], arguments[half:]):
                events.append(
                    self.event(
                        "response.function_call_arguments.delta",
                        item_id=item["id"],
                        output_index=index,
                        delta=piece,
                    )
                )
            events.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    arguments=arguments,
                )
            )
            done = {**item, "status": "completed", "arguments": arguments}
            items.append(done)
            events.append(self.event("response.output_item.done", output_index=index, item=done))
        completed = self.response("completed", usage=responses_usage(10, 5))
        completed["output"] = items
        events.append(self.event("response.completed", response=completed))
        return events

    def failed(self, code: str, message: str) -> bytes:
        return self.event(
            "response.failed",
            response=self.response("failed", error={"code": code, "message": message}),
        )

    def error(self, code: str, message: str) -> bytes:
        return self.event("error", code=code, message=message, param=None)


def responses_usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }

"""Tool calls as Slack task cards: the `task_update` chunks of a native stream.

In a stream, Slack shows each task as a card in the message's timeline (the default
`task_display_mode`), placed where its first chunk arrived and updated in place by
later chunks with the same id; text streamed afterwards comes below the cards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from botservice.adapters.slack.mrkdwn import escape
from botservice.core.tools import ToolProgress

# Slack's limit on a task's `details` and `output`; titles are kept as short.
TASK_TEXT_LIMIT = 256


def task_chunk(progress: ToolProgress) -> dict[str, Any]:
    """One `task_update` chunk (fields as slack-sdk's `TaskUpdateChunk` names them)."""
    chunk: dict[str, Any] = {
        "type": "task_update",
        "id": progress.call_id,
        # Escaped like any text we show: a model's call name can reach these fields.
        "title": _short(escape(progress.title)),
        "status": progress.state,
    }
    if progress.detail:
        # Before the card is done its detail says what it waits for; after, what came of it.
        key = "output" if progress.state in ("complete", "error") else "details"
        chunk[key] = _short(escape(progress.detail))
    return chunk


def markdown_chunk(text: str) -> dict[str, Any]:
    return {"type": "markdown_text", "text": text}


@dataclass(slots=True)
class TaskCards:
    """The cards of one streamed answer: the newest state of each, and what Slack was
    last sent of it (an append skipped or lost leaves them apart until the stop)."""

    _latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    _sent: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self._latest)

    def note(self, progress: ToolProgress) -> dict[str, Any]:
        chunk = task_chunk(progress)
        self._latest[progress.call_id] = chunk
        return chunk

    def sent(self, chunks: list[dict[str, Any]]) -> None:
        for chunk in chunks:
            if chunk.get("type") == "task_update":
                self._sent[chunk["id"]] = chunk

    def unsent(self) -> list[dict[str, Any]]:
        """The cards whose newest state Slack has not been sent, in their order."""
        return [chunk for key, chunk in self._latest.items() if self._sent.get(key) != chunk]


def _short(text: str) -> str:
    flat = " ".join(text.split())
    if len(flat) <= TASK_TEXT_LIMIT:
        return flat
    return flat[: TASK_TEXT_LIMIT - 1] + "…"

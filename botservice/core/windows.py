"""How many tokens a model's context window holds, as far as the bot can tell.

In order: a `context_window` set for the model under `[models."<name>"]` (the
operator knows best); else what the endpoint reports (llama.cpp's `/props`,
vLLM's `max_model_len`, Ollama's `/api/show`: see botservice/model/discovery.py);
else `[model_defaults]`. Whatever the source, a window that a request has since
proven too large (the endpoint said the prompt was too long, or answered a long
prompt with nothing) is remembered smaller for the rest of the process's life.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Literal, Protocol

from botservice.core.settings import Settings

log = logging.getLogger(__name__)

# A reported window is counted in the server's own tokens, ours in tiktoken's; a
# local model's tokenizer often needs a tenth more for the same text.
DISCOVERED_MARGIN = 0.9

Source = Literal["config", "endpoint", "learned", "default"]


class WindowSource(Protocol):
    async def context_window(self, model: str, *, fresh: bool = False) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Window:
    tokens: int
    source: Source


class ContextWindows:
    """The source remembers what the endpoint reported (and asks a dead endpoint again
    only now and then), so asking it on every turn costs a dictionary look-up."""

    def __init__(self, settings: Settings, source: WindowSource) -> None:
        self._settings = settings
        self._source = source
        self._learned: dict[str, int] = {}

    def configured(self, model: str) -> int | None:
        """The window set by hand for this model, if any (`[models."<name>"]`)."""
        info = self._settings.models.get(model)
        if info is not None and "context_window" in info.model_fields_set:
            return info.context_window
        return None

    async def window(self, model: str, *, fresh: bool = False) -> Window:
        """`fresh`: ask the endpoint again (a channel switched to this model)."""
        configured = self.configured(model)
        if configured is not None:
            window = Window(configured, "config")
        else:
            window = await self._discover(model, fresh=fresh)
        learned = self._learned.get(model)
        if learned is not None and learned < window.tokens:
            return Window(learned, "learned")
        return window

    def learn(self, model: str, tokens: int) -> None:
        """A request showed the window holds at most `tokens`."""
        tokens = max(1, tokens)
        if tokens < self._learned.get(model, tokens + 1):
            log.warning(
                "%s takes at most about %d tokens; later prompts are trimmed to fit", model, tokens
            )
            self._learned[model] = tokens

    async def _discover(self, model: str, *, fresh: bool) -> Window:
        try:
            reported = await self._source.context_window(model, fresh=fresh)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Discovery is a convenience: the configured default still works.
            log.warning("asking the endpoint for %s's context window failed", model, exc_info=True)
            reported = None
        if reported is None:
            return Window(self._settings.model_defaults.context_window, "default")
        return Window(max(1, int(reported * DISCOVERED_MARGIN)), "endpoint")

"""Asking a model endpoint how large a model's context window is.

Each server says it in its own place, so each is asked where it answers:

- `/v1/models` entries: vLLM's `max_model_len` (the running server's limit),
  `context_length` / `context_window` (some proxies and LM Studio), and
  llama.cpp's `meta.n_ctx_train` (what the model was trained with, not what the
  server runs with: used only when nothing better answers).
- llama.cpp's `GET /props`: `default_generation_settings.n_ctx` (or `n_ctx`), the
  context each slot of the running server has. That is what counts on llama.cpp.
- Ollama's `POST /api/show`: `model_info["<arch>.context_length"]`, and the
  Modelfile's `num_ctx` parameter when set (Ollama serves at most `num_ctx`).

The routes a server does not have answer 404 (or are not there at all); that is
normal and logged at DEBUG only. Nothing here raises: a window nobody reports is
None, and the caller uses its configured default.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

log = logging.getLogger(__name__)

# A dead endpoint is asked again after this long, not on every turn.
FAILURE_RETRY_SECONDS = 60.0
# The discovery routes answer from memory; a server slower than this is not waited for.
DISCOVERY_TIMEOUT_SECONDS = 5.0

_NUM_CTX = re.compile(r"^\s*num_ctx\s+(\d+)\s*$", re.MULTILINE)


class WindowDiscovery:
    """Asks an endpoint for model context windows; remembers the answers for the
    process's life (a server's window changes only when it restarts, and a channel
    switching model asks again through `forget`)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        headers: Mapping[str, str],
        connect_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        # llama.cpp and Ollama serve their own routes beside /v1, at the server's root.
        self._root = self._base.removesuffix("/v1")
        self._headers = dict(headers)
        self._timeout = httpx.Timeout(DISCOVERY_TIMEOUT_SECONDS, connect=connect_timeout)
        self._clock = clock
        self._windows: dict[str, int | None] = {}
        self._failed_at: dict[str, float] = {}
        self._asking: dict[str, asyncio.Task[int | None]] = {}
        self._listing: dict[str, dict[str, Any]] | None = None
        self._props: int | None = None
        self._props_asked = False

    async def context_window(self, model: str) -> int | None:
        if model in self._windows:
            return self._windows[model]
        failed_at = self._failed_at.get(model)
        if failed_at is not None and self._clock() - failed_at < FAILURE_RETRY_SECONDS:
            return None
        # Fifty turns arriving at once for a new model ask the endpoint once.
        task = self._asking.get(model)
        if task is None:
            task = self._asking[model] = asyncio.ensure_future(self._discover(model))
            task.add_done_callback(lambda _: self._asking.pop(model, None))
        return await asyncio.shield(task)

    def forget(self, model: str) -> None:
        """Ask again next time (a channel switched to this model)."""
        self._windows.pop(model, None)
        self._failed_at.pop(model, None)
        self._listing = None
        self._props_asked = False

    async def _discover(self, model: str) -> int | None:
        try:
            window = await self._ask(model)
        except httpx.HTTPError as error:
            log.info(
                "could not ask the model endpoint for context windows: %s", type(error).__name__
            )
            self._failed_at[model] = self._clock()
            return None
        self._windows[model] = window
        if window is not None:
            log.info("the endpoint reports a context window of %d tokens for %s", window, model)
        return window

    async def _ask(self, model: str) -> int | None:
        """The running server's limit first; what the model was trained with last."""
        props = await self._props_window()
        if props is not None:
            return props
        entry = (await self._models()).get(model) or {}
        for key in ("max_model_len", "context_length", "context_window"):
            value = _positive_int(entry.get(key))
            if value is not None:
                return value
        ollama = await self._ollama_window(model)
        if ollama is not None:
            return ollama
        meta = entry.get("meta")
        return _positive_int(meta.get("n_ctx_train")) if isinstance(meta, dict) else None

    async def _models(self) -> dict[str, dict[str, Any]]:
        if self._listing is None:
            body = await self._get_json(f"{self._base}/models")
            listed = body.get("data") if isinstance(body, dict) else None
            self._listing = {
                str(item["id"]): item
                for item in listed or []
                if isinstance(item, dict) and item.get("id")
            }
        return self._listing

    async def _props_window(self) -> int | None:
        if not self._props_asked:
            body = await self._get_json(f"{self._root}/props")
            settings = body.get("default_generation_settings") if isinstance(body, dict) else None
            n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
            if n_ctx is None and isinstance(body, dict):
                n_ctx = body.get("n_ctx")
            self._props, self._props_asked = _positive_int(n_ctx), True
        return self._props

    async def _ollama_window(self, model: str) -> int | None:
        body = await self._request("POST", f"{self._root}/api/show", json={"model": model})
        if not isinstance(body, dict):
            return None
        info = body.get("model_info")
        trained = None
        if isinstance(info, dict):
            trained = next(
                (
                    _positive_int(value)
                    for key, value in info.items()
                    if key.endswith(".context_length")
                ),
                None,
            )
        parameters = body.get("parameters")
        match = _NUM_CTX.search(parameters) if isinstance(parameters, str) else None
        served = int(match.group(1)) if match else None
        if served and trained:
            return min(served, trained)
        return served or trained

    async def _get_json(self, url: str) -> Any:
        return await self._request("GET", url)

    async def _request(self, method: str, url: str, json: Any = None) -> Any:
        """The JSON body of a 2xx answer; None for any other answer. Transport errors
        propagate (the endpoint is down: try again later)."""
        response = await self._http.request(
            method, url, headers=self._headers, json=json, timeout=self._timeout
        )
        if response.status_code >= 400:
            log.debug("%s %s: HTTP %d", method, url.rsplit("/", 1)[-1], response.status_code)
            return None
        try:
            return response.json()
        except ValueError:
            return None


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and value > 0:
        return int(value)
    if isinstance(value, str) and value.isdigit() and int(value) > 0:
        return int(value)
    return None

"""Keeping the gateway connection serving: malformed frames skipped, a dead connection redone.

discord.py reads the gateway in one task (`Client.connect`). A frame it cannot parse (not
JSON, a MESSAGE_CREATE without `author`, a dispatch whose `d` is a list) raises out of
`DiscordWebSocket.received_message` and ends that task: no reconnect, no log line, no
later event. Two seams keep it serving:

- `guard_frames` wraps each new websocket's `received_message`, so a frame that fails to
  parse is logged (what kind, which event; never its content) and skipped. discord.py
  itself swaps methods on the websocket instance the same way (`ws.send = ws.debug_send`).
- `run_gateway` runs `connect` once the adapter serves, and starts it again with backoff
  if it still ends (an error the guard does not cover), so one bad moment is not the end
  of every Discord answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import discord
from discord.gateway import DiscordWebSocket, ReconnectWebSocket

log = logging.getLogger(__name__)

ReceivedMessage = Callable[[Any], Awaitable[None]]

# Events without which the session is not usable: skipping one would leave the client
# never ready (READY) or unsure which session it resumed (RESUMED), so reconnect instead.
_SESSION_EVENTS = frozenset({"READY", "RESUMED"})
# A connection that lasted this long was healthy: the next failure starts the backoff over.
_STEADY_SECONDS = 60.0


def guard_frames(ws: DiscordWebSocket) -> None:
    """Make `ws` skip frames it cannot parse instead of ending the connection."""
    received: ReceivedMessage = ws.received_message

    async def guarded(msg: Any, /) -> None:
        try:
            await received(msg)
        except (ReconnectWebSocket, discord.ConnectionClosed):
            raise  # discord.py's own control flow: reconnect, resume, or give up
        except Exception as error:
            await _malformed(ws, msg, error)

    ws.received_message = guarded  # type: ignore[method-assign]


async def _malformed(ws: DiscordWebSocket, msg: Any, error: Exception) -> None:
    kind, event = _describe(msg)
    # The type only: an exception's text may quote the payload (a message's content).
    log.warning(
        "Discord gateway: skipped a malformed frame (%s, event %s, %s) on shard %s",
        kind,
        event or "-",
        type(error).__name__,
        ws.shard_id,
    )
    log.debug("malformed gateway frame", exc_info=error)
    if isinstance(msg, bytes):
        # A compressed frame that fails leaves the zlib stream unusable: every later
        # frame would fail too. A new connection resumes the session where it was.
        await ws.close(code=4000)
        raise ReconnectWebSocket(ws.shard_id, resume=True) from None
    if event in _SESSION_EVENTS or (ws._keep_alive is not None and ws.session_id is None):
        # Between HELLO and READY the only dispatch due is READY: a frame that fails
        # there leaves no session, so identify again. (Before HELLO, discord.py is still
        # inside its first connect, where a reconnect request would end it: skip there.)
        await ws.close(code=4000)
        raise ReconnectWebSocket(ws.shard_id, resume=False) from None


def _describe(msg: Any) -> tuple[str, str | None]:
    """What kind of frame failed and the event it named, without any of its content."""
    if isinstance(msg, bytes):
        return "compressed", None
    try:
        payload = json.loads(msg)
    except ValueError:
        return "not JSON", None
    if not isinstance(payload, dict):
        return f"JSON {type(payload).__name__}, not an object", None
    event = payload.get("t")
    name = event if isinstance(event, str) and event.isidentifier() else None
    data = payload.get("d")
    if not isinstance(data, dict):
        return f"op {payload.get('op')} with d as {type(data).__name__}", name
    return f"op {payload.get('op')} that does not parse", name


class Backoff:
    """Exponential backoff with jitter: the n-th delay is between half and all of
    `base * 2**n`, capped, so processes that lost the gateway together do not return
    together."""

    def __init__(self, base: float = 1.0, cap: float = 60.0) -> None:
        self._base = base
        self._cap = cap
        self._attempt = 0

    def next_delay(self) -> float:
        delay = min(self._cap, self._base * 2**self._attempt)
        self._attempt = min(self._attempt + 1, 16)
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._attempt = 0


async def run_gateway(
    client: discord.Client,
    *,
    serving: Callable[[], bool],
    backoff: Backoff | None = None,
) -> None:
    """Run `client.connect` until the client is closed.

    discord.py reconnects by itself after network failures and resumable close codes.
    Before the adapter serves (`serving()` False), anything that ends `connect` is
    raised, so start-up reports it. After, `connect` is started again with backoff;
    only a closed client (a refused token or intents, or `stop`) ends the loop.
    """
    backoff = backoff or Backoff()
    loop = asyncio.get_running_loop()
    while not client.is_closed():
        started = loop.time()
        try:
            await client.connect(reconnect=True)
        except Exception as error:
            if loop.time() - started > _STEADY_SECONDS:
                backoff.reset()
            if not serving():
                raise
            if client.is_closed():
                log.error(
                    "Discord gateway closed for good (%s); Discord answers stop until the "
                    "process restarts",
                    _close_reason(error),
                )
                return
            delay = backoff.next_delay()
            log.error(
                "Discord gateway connection ended (%s); reconnecting in %.1f s",
                type(error).__name__,
                delay,
                exc_info=error,
            )
            await _close_socket(client)
            await asyncio.sleep(delay)
        else:
            if client.is_closed():
                return
            # `connect` returned without a close: a clean 1000 close from the gateway.
            delay = backoff.next_delay()
            log.warning("Discord gateway closed the connection; reconnecting in %.1f s", delay)
            await asyncio.sleep(delay)


def _close_reason(error: Exception) -> str:
    if isinstance(error, discord.ConnectionClosed):
        return f"close code {error.code}"
    return type(error).__name__


async def _close_socket(client: discord.Client) -> None:
    ws = getattr(client, "ws", None)
    if ws is not None and ws.open:
        with contextlib.suppress(Exception):
            await ws.close(code=4000)

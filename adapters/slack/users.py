"""Display names and admin rights, looked up once per user and cached."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from botservice.adapters.slack.events import SlackUser, user_from_info

log = logging.getLogger(__name__)


@dataclass(slots=True)
class UserDirectory:
    """`users.info` once per (workspace, user) per `ttl_seconds`; concurrent asks share one call."""

    ttl_seconds: float = 3600.0
    failure_ttl_seconds: float = 60.0
    max_entries: int = 50_000
    clock: Callable[[], float] = time.monotonic
    _entries: dict[tuple[str, str], tuple[float, SlackUser]] = field(default_factory=dict)
    _inflight: dict[tuple[str, str], asyncio.Future[SlackUser]] = field(default_factory=dict)

    def cached(self, team: str, user_id: str) -> SlackUser | None:
        entry = self._entries.get((team, user_id))
        if entry is None or entry[0] < self.clock():
            return None
        return entry[1]

    async def lookup(self, client: AsyncWebClient, team: str, user_id: str) -> SlackUser:
        key = (team, user_id)
        if (user := self.cached(team, user_id)) is not None:
            return user
        if (pending := self._inflight.get(key)) is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[SlackUser] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            user, ttl = await self._fetch(client, user_id)
            self._remember(key, user, ttl)
            future.set_result(user)
            return user
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved here so an unshared failure is not reported twice
            raise
        finally:
            del self._inflight[key]

    def forget_workspace(self, team: str) -> None:
        for key in [key for key in self._entries if key[0] == team]:
            del self._entries[key]

    async def _fetch(self, client: AsyncWebClient, user_id: str) -> tuple[SlackUser, float]:
        try:
            response = await client.users_info(user=user_id)
        except SlackApiError as error:
            code = error.response.get("error") if error.response is not None else "unknown"
            log.warning("users.info failed for a user: %s", code)
            return SlackUser(user_id, user_id), self.failure_ttl_seconds
        return user_from_info(user_id, response.data if isinstance(response.data, dict) else {}), (
            self.ttl_seconds
        )

    def _remember(self, key: tuple[str, str], user: SlackUser, ttl: float) -> None:
        if len(self._entries) >= self.max_entries:
            # Drop the oldest tenth; dicts keep insertion order.
            for old in list(self._entries)[: self.max_entries // 10 or 1]:
                del self._entries[old]
        self._entries[key] = (self.clock() + ttl, user)

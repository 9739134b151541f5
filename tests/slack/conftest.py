from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from botservice.storage.repository import SqlStore
from tests.fakes.model_server import FakeModelServer
from tests.fakes.slack_api import FakeSlackApi
from tests.slack.harness import SlackHarness, slack_settings


@pytest_asyncio.fixture
async def bot(
    slack_api: FakeSlackApi,
    fake_model: FakeModelServer,
    sqlite_store: SqlStore,
    sqlite_database_url: str,
) -> AsyncIterator[SlackHarness]:
    """The Slack adapter serving HTTP events in one workspace (admin: UADMIN via users.info)."""
    settings = slack_settings(
        model_url=fake_model.base_url,
        slack_url=slack_api.base_url,
        database_url=sqlite_database_url,
    )
    harness = await SlackHarness.start(slack_api, settings, sqlite_store)
    try:
        yield harness
    finally:
        await harness.close()

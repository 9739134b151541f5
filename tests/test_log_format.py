"""`BOTSERVICE_LOG_FORMAT=json`: JSON lines that name the turn they were logged in, and
no message text at INFO; the human format names the turn too."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from botservice.app.config import load_settings
from botservice.app.logs import configure_logging
from botservice.app.runtime import startup_summary
from botservice.core.conversation import ConversationCore
from botservice.core.settings import Settings
from botservice.model.client import OpenAIChatClient
from botservice.storage.repository import SqlStore
from tests.chat_kit import Chat, settings_for
from tests.fakes.model_server import FakeModelServer, RateLimited, Refuse, Reply

SECRET_TEXT = "my-very-private-question-42"


@pytest.fixture
def settings(fake_model: FakeModelServer) -> Settings:
    return settings_for(fake_model.base_url)


@pytest_asyncio.fixture
async def chat(settings: Settings, sqlite_store: SqlStore) -> AsyncIterator[Chat]:
    model = OpenAIChatClient(settings.model)
    core = ConversationCore(settings=settings, store=sqlite_store, model=model)
    yield Chat(core)
    await core.stop()
    await model.aclose()


@pytest.fixture
def log_buffer(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    log_format = getattr(request, "param", "json")
    handler = configure_logging("INFO", stream=buffer, log_format=log_format)
    try:
        yield buffer
    finally:
        logging.getLogger().removeHandler(handler)


def test_the_environment_chooses_the_format() -> None:
    assert load_settings({}).log_format == "human"
    assert load_settings({"BOTSERVICE_LOG_FORMAT": "json"}).log_format == "json"


async def test_json_lines_parse_and_carry_the_turn(
    chat: Chat, fake_model: FakeModelServer, log_buffer: io.StringIO
) -> None:
    # A retried 429 and a refusal: both log a warning from inside their turn.
    fake_model.script(RateLimited(retry_after=0.01), Reply("fine"))
    await chat.say(f"first {SECRET_TEXT}", thread="T1")
    fake_model.script(Refuse(400, "Invalid request."))
    await chat.say(f"second {SECRET_TEXT}", thread="T2")
    logging.getLogger("botservice.test").info("outside any turn")

    lines = [json.loads(line) for line in log_buffer.getvalue().splitlines()]
    assert lines, "nothing was logged"
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line)
    in_turns = [line for line in lines if "turn_id" in line]
    retry = next(line for line in in_turns if "retrying" in line["message"])
    refused = next(line for line in in_turns if "model call for turn" in line["message"])
    assert retry["platform"] == refused["platform"] == "test"
    assert retry["turn_id"] != refused["turn_id"]
    assert retry["conversation_id"] != refused["conversation_id"]
    assert isinstance(retry["turn_id"], int)
    outside = next(line for line in lines if line["message"] == "outside any turn")
    assert "turn_id" not in outside
    assert SECRET_TEXT not in log_buffer.getvalue()


@pytest.mark.parametrize("log_buffer", ["human"], indirect=True)
async def test_human_lines_name_the_turn(
    chat: Chat, fake_model: FakeModelServer, log_buffer: io.StringIO
) -> None:
    fake_model.script(Refuse(400, "Invalid request."))
    await chat.say(SECRET_TEXT)

    failed = next(line for line in log_buffer.getvalue().splitlines() if "model call" in line)
    assert "[turn=" in failed and "platform=test]" in failed
    assert not failed.startswith("{")
    assert SECRET_TEXT not in log_buffer.getvalue()


def test_the_start_up_summary_names_what_runs_and_no_secret() -> None:
    settings = load_settings(
        {
            "OPENAI_BASE_URL": "https://user:sk-secret@proxy.example/v1",
            "DATABASE_URL": "postgresql+asyncpg://bot:hunter2@db.example/bot",
        }
    )
    line = startup_summary(settings, [], metrics=True)
    assert "adapters=none" in line
    assert "database=postgresql+asyncpg://***@db.example/bot" in line
    assert "model_endpoint=https://***@proxy.example/v1" in line
    assert "metrics=/metrics" in line and "tools=" in line
    assert "hunter2" not in line and "sk-secret" not in line

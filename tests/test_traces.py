"""Traces (the `otel` extra): `botservice run` and `botservice chat` as real processes,
exporting over OTLP/HTTP to a fake collector on 127.0.0.1, with the fake Slack Web API
and the fake model server. And without the variable (or without the extra), no
opentelemetry module is ever imported."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from tests.bot_process import BotProcess
from tests.fakes.model_server import FakeModelServer, Refuse, Reply
from tests.fakes.otlp_collector import CollectedSpan, FakeCollector
from tests.fakes.slack_api import BOT_TOKEN, FakeSlackApi
from tests.slack.harness import CHANNEL, SIGNING_SECRET, payload, sign

ROOT = Path(__file__).resolve().parent.parent
SECRET_QUESTION = "what is the launch code zebra-4471"
SECRET_ANSWER = "the launch code is orchid-9902"
API_KEY = "sk-test-secret-key"
SPAN_KIND_CLIENT = 3
STATUS_ERROR = 2


@pytest_asyncio.fixture
async def otlp_collector() -> AsyncIterator[FakeCollector]:
    collector = FakeCollector()
    await collector.start()
    try:
        yield collector
    finally:
        await collector.close()


def tracing_env(collector: FakeCollector) -> dict[str, str]:
    # A short batch delay: the spans leave while the test waits, and all that is
    # left is sent when the process stops.
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.base_url, "OTEL_BSP_SCHEDULE_DELAY": "100"}


def assert_no_content(collector: FakeCollector) -> None:
    exported = b"".join(collector.bodies)
    for text in (SECRET_QUESTION, "zebra-4471", SECRET_ANSWER, "orchid-9902", API_KEY):
        assert text.encode() not in exported, text


def the_turn(collector: FakeCollector) -> tuple[CollectedSpan, list[CollectedSpan]]:
    (turn,) = collector.named("turn")
    assert turn.parent_span_id == b""  # a trace of its own
    children = collector.children_of(turn)
    assert all(child.trace_id == turn.trace_id for child in children)
    return turn, children


async def test_run_exports_one_turn_span_with_store_model_and_slack_children(
    slack_api: FakeSlackApi,
    fake_model: FakeModelServer,
    otlp_collector: FakeCollector,
    tmp_path: Path,
) -> None:
    fake_model.script(Reply(SECRET_ANSWER))
    env = {
        "OPENAI_BASE_URL": fake_model.base_url,
        "OPENAI_API_KEY": API_KEY,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack_api.base_url,
        **tracing_env(otlp_collector),
    }
    mention = payload("app_mention")
    mention["event"].update(text=f"<@UBOT0001> {SECRET_QUESTION}", user="UALICE", channel=CHANNEL)
    bot = await BotProcess.start(env, cwd=tmp_path)
    try:
        await bot.wait_healthy()
        assert await _send_event(bot.url, mention) == 200
        await slack_api.wait_for(
            lambda: any(
                m.text == SECRET_ANSWER for m in slack_api.thread(CHANNEL, mention["event"]["ts"])
            ),
            20,
            "the answer",
        )
        # Sent by the batch processor while the process runs (100 ms batches).
        await otlp_collector.wait_for(lambda: bool(otlp_collector.named("turn")), 20, "a turn")
    finally:
        await bot.stop()
    assert bot.process.returncode == 0, bot.output()

    turn, children = the_turn(otlp_collector)
    assert turn.attributes["botservice.platform"] == "slack"
    assert turn.attributes["botservice.turn.id"] == 1
    assert turn.attributes["botservice.turn.outcome"] == "answered"
    assert turn.attributes["botservice.turn.resumed"] is False
    assert turn.resource["service.name"] == "botservice"
    names = {child.name for child in children}

    (model,) = [child for child in children if child.name.startswith("chat ")]
    assert model.name == "chat gpt-4o-mini"
    assert model.kind == SPAN_KIND_CLIENT
    assert model.attributes["gen_ai.operation.name"] == "chat"
    assert model.attributes["gen_ai.system"] == "openai"
    assert model.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert model.attributes["gen_ai.usage.input_tokens"] > 0
    assert model.attributes["gen_ai.usage.output_tokens"] > 0
    assert model.attributes["server.address"] == "127.0.0.1"
    assert [name for name, _ in model.events] == ["model.attempt"]
    assert model.events[0][1] == {"botservice.model.status": "2xx"}

    # The store operations of the turn, each by its name only.
    for operation in ("channel_settings", "history", "store_answer"):
        assert any(name.startswith(f"store {operation}") for name in names), names
    store = [child for child in children if child.name.startswith("store ")]
    assert all(s.attributes["db.system.name"] == "sqlite" for s in store)
    assert all(set(s.attributes) == {"db.system.name", "db.operation.name"} for s in store)

    # Platform posts: method and status, nothing else.
    slack = [child for child in children if child.name.startswith("slack ")]
    assert slack, names
    for call in slack:
        assert set(call.attributes) == {
            "botservice.platform",
            "botservice.platform.method",
            "botservice.platform.status",
        }
        assert call.attributes["botservice.platform.status"] == "ok"
        assert call.end_ns >= call.start_ns
    methods = {call.attributes["botservice.platform.method"] for call in slack}
    assert methods & {"chat_postMessage", "chat_update"}, methods
    # Each child inside its turn.
    for child in children:
        assert turn.start_ns <= child.start_ns and child.end_ns <= turn.end_ns, child.name

    assert_no_content(otlp_collector)


async def test_chat_exports_its_turn_too(
    fake_model: FakeModelServer, otlp_collector: FakeCollector, tmp_path: Path
) -> None:
    fake_model.script(Reply(SECRET_ANSWER))
    run = await chat(
        f"{SECRET_QUESTION}\n",
        env={"OPENAI_BASE_URL": fake_model.base_url, **tracing_env(otlp_collector)},
        cwd=tmp_path,
    )
    assert run.status == 0, run.stderr
    assert run.stdout.splitlines()[0] == SECRET_ANSWER
    # Flushed at the stop: the process has exited, everything has arrived.
    turn, children = the_turn(otlp_collector)
    assert turn.attributes["botservice.platform"] == "console"
    assert turn.attributes["botservice.turn.outcome"] == "answered"
    assert "chat gpt-4o-mini" in {child.name for child in children}
    assert run.otel_modules, "traces on: opentelemetry was loaded"
    assert_no_content(otlp_collector)


async def test_a_refused_model_call_marks_its_span_and_the_turn_failed(
    fake_model: FakeModelServer, otlp_collector: FakeCollector, tmp_path: Path
) -> None:
    fake_model.script(Refuse(400, f"Invalid request: {SECRET_QUESTION}"))
    run = await chat(
        f"{SECRET_QUESTION}\n",
        env={"OPENAI_BASE_URL": fake_model.base_url, **tracing_env(otlp_collector)},
        cwd=tmp_path,
    )
    assert run.status == 0, run.stderr
    turn, children = the_turn(otlp_collector)
    assert turn.attributes["botservice.turn.outcome"] == "failed"
    assert turn.attributes["botservice.turn.failure_reason"] == "refused"
    assert turn.status_code == STATUS_ERROR
    (model,) = [child for child in children if child.name == "chat gpt-4o-mini"]
    assert model.status_code == STATUS_ERROR
    assert model.attributes["error.type"] == "ModelRefused"
    assert "gen_ai.usage.input_tokens" not in model.attributes
    assert model.events == [("model.attempt", {"botservice.model.status": "4xx"})]
    # The endpoint's error message quoted the question; the trace does not.
    assert_no_content(otlp_collector)


@pytest.mark.parametrize("disabled", [False, True], ids=["unset", "OTEL_SDK_DISABLED"])
async def test_without_the_variable_no_opentelemetry_module_is_imported(
    fake_model: FakeModelServer, otlp_collector: FakeCollector, tmp_path: Path, disabled: bool
) -> None:
    env = {"OPENAI_BASE_URL": fake_model.base_url}
    if disabled:
        env |= {**tracing_env(otlp_collector), "OTEL_SDK_DISABLED": "true"}
    run = await chat("Hello\n", env=env, cwd=tmp_path)
    assert run.status == 0, run.stderr
    assert run.stdout.splitlines()[0] == "You said: Hello"
    assert run.otel_modules == []
    assert otlp_collector.bodies == []


async def test_without_the_extra_the_bot_answers_and_says_traces_are_off(
    fake_model: FakeModelServer, otlp_collector: FakeCollector, tmp_path: Path
) -> None:
    run = await chat(
        "Hello\n",
        env={"OPENAI_BASE_URL": fake_model.base_url, **tracing_env(otlp_collector)},
        cwd=tmp_path,
        hide_opentelemetry=True,
    )
    assert run.status == 0, run.stderr
    assert run.stdout.splitlines()[0] == "You said: Hello"
    assert "the otel extra is not installed" in run.stderr
    assert run.otel_modules == []
    assert otlp_collector.bodies == []


# `botservice chat` in a fresh interpreter that reports, at exit, which opentelemetry
# modules it loaded; with `hide`, as if the extra were not installed.
_CHAT = """
import json, sys

class Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

if sys.argv[1] == "hide":
    sys.meta_path.insert(0, Hide())
from botservice.app.cli import main
try:
    code = main(["chat"])
finally:
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
    with open(sys.argv[2], "w") as report:
        json.dump(loaded, report)
sys.exit(code)
"""


class ChatRun:
    def __init__(self, status: int, stdout: str, stderr: str, otel_modules: list[str]) -> None:
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
        self.otel_modules = otel_modules


async def chat(
    stdin: str, *, env: dict[str, str], cwd: Path, hide_opentelemetry: bool = False
) -> ChatRun:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("OPENAI_", "SLACK_", "DISCORD_", "BOTSERVICE_", "DATABASE_URL", "OTEL_")
        )
    }
    report = cwd / "modules.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHAT,
        "hide" if hide_opentelemetry else "keep",
        str(report),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env={
            **clean,
            "PYTHONPATH": str(ROOT),
            "BOTSERVICE_CONFIG": str(ROOT / "config" / "botservice.toml"),
            **env,
        },
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), timeout=60)
    assert process.returncode is not None
    loaded: list[str] = json.loads(report.read_text())
    return ChatRun(process.returncode, out.decode(), err.decode(), loaded)


async def _send_event(url: str, data: dict[str, object]) -> int:
    body = json.dumps(data).encode()
    headers = {"Content-Type": "application/json", **sign(body)}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/slack/events", data=body, headers=headers) as response,
    ):
        return response.status

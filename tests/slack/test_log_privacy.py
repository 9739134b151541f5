"""No message text in the log at INFO, whatever a library does: a real `botservice run`
process, its stderr read after signed, forged, stale and interactive requests that all
carry one marker text, and a database failure while storing it."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sqlite3
import sys
import time
import urllib.parse
from pathlib import Path

import aiohttp

from botservice.app.logs import PrivateTextFilter, without_quotes
from tests.bot_process import clean_environment
from tests.fakes.model_server import FakeModelServer
from tests.fakes.slack_api import BOT_TOKEN, FakeSlackApi
from tests.slack.harness import CHANNEL, SIGNING_SECRET, payload, sign

ROOT = Path(__file__).resolve().parents[2]
MARKER = "zebra-umbrella-4417"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def mention(text: str, ts: str) -> bytes:
    data = payload("app_mention")
    data["event"].update(text=f"<@UBOT0001> {text}", ts=ts, event_ts=ts, channel=CHANNEL)
    data["event_id"] = f"Ev{ts.replace('.', '')}"
    return json.dumps(data).encode()


async def test_a_running_service_never_logs_message_text(
    slack_api: FakeSlackApi, fake_model: FakeModelServer, tmp_path: Path
) -> None:
    port = free_port()
    database = tmp_path / "bot.db"
    clean = clean_environment()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "botservice",
        "run",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
        env={
            **clean,
            "PYTHONPATH": str(ROOT),
            "BOTSERVICE_CONFIG": str(ROOT / "config" / "botservice.toml"),
            "BOTSERVICE_LOG_LEVEL": "INFO",
            "PORT": str(port),
            "DATABASE_URL": f"sqlite+aiosqlite:///{database}",
            "OPENAI_BASE_URL": fake_model.base_url,
            "OPENAI_API_KEY": "sk-test-secret-key",
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": slack_api.base_url,
        },
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await _wait_until_up(http, url, process)

            async def post(
                body: bytes, headers: dict[str, str], content_type: str = "application/json"
            ) -> int:
                async with http.post(
                    url + "/slack/events",
                    data=body,
                    headers={"Content-Type": content_type, **headers},
                ) as response:
                    return response.status

            answered = mention(f"remember {MARKER}", "1767200001.000100")
            assert await post(answered, sign(answered)) == 200
            await slack_api.wait_for(
                lambda: any(MARKER in m.text for m in slack_api.messages.values()),
                what="the answer",
            )
            forged = mention(f"forged {MARKER}", "1767200002.000100")
            assert await post(forged, sign(forged, secret="rotated-secret")) == 401
            stale = mention(f"stale {MARKER}", "1767200003.000100")
            old = sign(stale, timestamp=int(time.time()) - 10 * 60)
            assert await post(stale, old) == 401
            assert await post(stale, {}) == 401
            # Interactive payloads nobody listens to: Bolt quotes them in a warning.
            suggestion = json.dumps(
                {"type": "block_suggestion", "value": MARKER, "action_id": "a", "block_id": "b"}
            ).encode()
            assert await post(suggestion, sign(suggestion)) == 404
            dialog = urllib.parse.urlencode(
                {
                    "payload": json.dumps(
                        {"type": "dialog_submission", "submission": {"note": MARKER}}
                    )
                }
            ).encode()
            form = "application/x-www-form-urlencoded"
            assert await post(dialog, sign(dialog), form) == 404

            # The database loses a table: the traceback quotes the INSERT's parameters.
            with sqlite3.connect(database) as db:
                db.execute("ALTER TABLE messages RENAME TO messages_gone")
            failing = mention(f"lost {MARKER}", "1767200004.000100")
            assert await post(failing, sign(failing)) == 500
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 20)

    log = stderr.decode()
    assert MARKER not in log, log
    assert "refused 1 request to /slack/events (bad signature)" in log
    # Told without the text (a traceback of the failed INSERT, or one warning line).
    assert "botservice.adapters.slack.app" in log, "the database failure is still told"


async def _wait_until_up(
    http: aiohttp.ClientSession, url: str, process: asyncio.subprocess.Process
) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise AssertionError("botservice run exited early")
        try:
            async with http.get(url + "/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("botservice run did not come up")


def test_a_library_line_stops_where_it_starts_quoting() -> None:
    assert without_quotes("Unhandled request ({'type': 'x', 'value': 'secret'})") == (
        "Unhandled request ( …"
    )
    assert without_quotes('@app.command("a"secret")') == "@app.command( …"
    assert without_quotes("first line\nsecret on the next") == "first line …"
    assert without_quotes("Unclosed client session") == "Unclosed client session"


def test_a_traceback_keeps_frames_and_types_but_not_what_messages_quote() -> None:
    try:
        try:
            raise KeyError(f"it's {MARKER}")
        except KeyError as inner:
            raise RuntimeError(f"storing failed\n[parameters: ('{MARKER}',)]") from inner
    except RuntimeError as error:
        record = logging.LogRecord(
            "botservice.adapters.slack.app",
            logging.ERROR,
            __file__,
            1,
            "failed",
            (),
            (type(error), error, None),
        )
    assert PrivateTextFilter().filter(record)
    assert record.exc_text is not None
    assert MARKER not in record.exc_text
    assert "KeyError" in record.exc_text and "RuntimeError: storing failed …" in record.exc_text
    assert "test_a_traceback_keeps_frames" in record.exc_text


def test_library_info_is_dropped_and_warnings_lose_their_quotes() -> None:
    check = PrivateTextFilter()

    def record(name: str, level: int, message: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, message, args, None)

    assert not check.filter(record("slack_bolt.AsyncApp", logging.INFO, "body: %s", MARKER))
    assert not check.filter(record("app.py", logging.INFO, f"request body: {MARKER}"))
    warning = record("slack_bolt.AsyncApp", logging.WARNING, "Unhandled (%r)", {"v": MARKER})
    assert check.filter(warning) and warning.getMessage() == "Unhandled ( …"
    own = record("botservice.adapters.slack.app", logging.INFO, "Slack adapter started")
    assert check.filter(own) and own.getMessage() == "Slack adapter started"

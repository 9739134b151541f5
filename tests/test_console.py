"""`botservice chat` and the CLI as a user runs them: a subprocess with piped input,
against the fake model server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from botservice.adapters.console.adapter import ConsoleAdapter
from botservice.core.conversation import ConversationCore
from botservice.model.client import OpenAIChatClient
from botservice.storage.repository import SqlStore
from tests.bot_process import clean_environment
from tests.chat_kit import settings_for
from tests.fakes.model_server import FakeModelServer, Refuse

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    status: int
    stdout: str
    stderr: str


async def botservice(*args: str, stdin: str = "", env: dict[str, str], cwd: Path) -> Run:
    clean = clean_environment()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "botservice",
        *args,
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
    return Run(process.returncode, out.decode(), err.decode())


async def test_piped_chat_answers_each_line_and_exits_zero(
    fake_model: FakeModelServer, tmp_path: Path
) -> None:
    run = await botservice(
        "chat",
        stdin="Hello there\n/instructions set Answer like a pirate.\nWhat now?\n",
        env={"OPENAI_BASE_URL": fake_model.base_url},
        cwd=tmp_path,
    )
    assert run.status == 0, run.stderr
    assert run.stdout.splitlines() == [
        "You said: Hello there",
        "Instructions updated; they apply from the next message.",
        "You said: What now?",
    ]
    last = fake_model.chat_requests[-1].body["messages"]
    assert last[0]["content"] == "Answer like a pirate."
    assert [m["content"] for m in last[1:]] == ["Hello there", "You said: Hello there", "What now?"]
    # SQLite by default, in the working directory, kept across runs.
    assert (tmp_path / "botservice.db").exists()
    again = await botservice(
        "chat", stdin="And again\n", env={"OPENAI_BASE_URL": fake_model.base_url}, cwd=tmp_path
    )
    assert again.status == 0
    assert "Hello there" in str(fake_model.chat_requests[-1].body["messages"])


async def test_message_text_stays_out_of_the_logs(
    fake_model: FakeModelServer, tmp_path: Path
) -> None:
    run = await botservice(
        "chat",
        stdin="my secret plan\n",
        env={
            "OPENAI_BASE_URL": fake_model.base_url,
            "OPENAI_API_KEY": "sk-do-not-leak",
            "BOTSERVICE_LOG_LEVEL": "INFO",
        },
        cwd=tmp_path,
    )
    assert run.status == 0
    assert "my secret plan" not in run.stderr
    assert "sk-do-not-leak" not in run.stderr + run.stdout


async def test_a_model_failure_is_one_sentence_on_the_console(
    fake_model: FakeModelServer, tmp_path: Path
) -> None:
    fake_model.script(Refuse(status=401, message="Incorrect API key provided: sk-abc"))
    run = await botservice(
        "chat", stdin="hi\n", env={"OPENAI_BASE_URL": fake_model.base_url}, cwd=tmp_path
    )
    assert run.status == 0
    assert (
        run.stdout.strip()
        == "The model endpoint refused my credentials; an operator needs to check the API key."
    )
    assert "Traceback" not in run.stderr


async def test_configuration_mistakes_exit_2_with_one_sentence(tmp_path: Path) -> None:
    cases = [
        ({}, "OPENAI_API_KEY: no model endpoint is configured"),
        (
            {"OPENAI_BASE_URL": "ftp://example"},
            "OPENAI_BASE_URL: 'ftp://example' is not an http(s) URL",
        ),
        (
            {"OPENAI_API_KEY": "sk-x", "BOTSERVICE_STORAGE__RETENTON_DAYS": "3"},
            "storage.retenton_days: is not a known setting",
        ),
        (
            {
                "OPENAI_API_KEY": "sk-x",
                "DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none",
            },
            "DATABASE_URL: cannot connect",
        ),
        (
            {"OPENAI_API_KEY": "sk-x", "DATABASE_URL": "mysql://localhost/db"},
            "DATABASE_URL: must start with",
        ),
    ]
    for env, expected in cases:
        run = await botservice("chat", env=env, cwd=tmp_path)
        assert run.status == 2, (env, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"botservice: {expected}"), run.stderr
        assert "Traceback" not in run.stderr


async def test_configuration_errors_never_print_credentials_from_a_url(tmp_path: Path) -> None:
    cases = [
        (
            {"OPENAI_BASE_URL": "ftp://sk-SECRET-123@example/v1"},
            "OPENAI_BASE_URL: 'ftp://***@example/v1' is not an http(s) URL",
        ),
        (
            {"OPENAI_BASE_URL": "ftp://user:SECRET-pw@example/v1?api-key=SECRET-q"},
            "OPENAI_BASE_URL: 'ftp://***@example/v1?***' is not an http(s) URL",
        ),
        (
            {
                "OPENAI_API_KEY": "sk-x",
                "DATABASE_URL": "postgresql+asyncpg://ada:SECRET-pw@127.0.0.1:1/db"
                "?sslpassword=SECRET-ssl",
            },
            "DATABASE_URL: postgresql+asyncpg://ada:***@127.0.0.1:1/db?*** has an option the "
            "database driver does not take",
        ),
        (
            {
                "OPENAI_API_KEY": "sk-x",
                "DATABASE_URL": "postgresql+asyncpg://ada@127.0.0.1:1/db?password=SECRET-q",
            },
            "DATABASE_URL: cannot connect to postgresql+asyncpg://ada@127.0.0.1:1/db?***",
        ),
    ]
    for env, expected in cases:
        run = await botservice("chat", env=env, cwd=tmp_path)
        assert run.status == 2, (env, run.stderr)
        assert run.stderr.startswith(f"botservice: {expected}"), run.stderr
        assert "SECRET" not in run.stderr + run.stdout


async def test_help_lists_every_command(tmp_path: Path) -> None:
    run = await botservice("--help", env={}, cwd=tmp_path)
    assert run.status == 0
    for command in ("run", "chat", "db", "purge", "discord", "voice"):
        assert f"    {command} " in run.stdout


async def test_run_without_platform_tokens_is_the_console(
    fake_model: FakeModelServer, tmp_path: Path
) -> None:
    run = await botservice(
        "run", stdin="ping\n", env={"OPENAI_BASE_URL": fake_model.base_url}, cwd=tmp_path
    )
    assert run.status == 0, run.stderr
    assert run.stdout.strip() == "You said: ping"


async def test_db_upgrade_and_purge_print_what_they_did(
    fake_model: FakeModelServer, tmp_path: Path
) -> None:
    env = {"OPENAI_BASE_URL": fake_model.base_url, "DATABASE_URL": f"sqlite:///{tmp_path}/ops.db"}
    upgraded = await botservice("db", "upgrade", env=env, cwd=tmp_path)
    assert upgraded.status == 0 and upgraded.stdout.strip() == "database is up to date"
    chatted = await botservice(
        "chat", stdin="/retention set 0\nforget this\n", env=env, cwd=tmp_path
    )
    assert chatted.status == 0
    purged = await botservice("purge", "--dry-run", env=env, cwd=tmp_path)
    assert purged.status == 0
    assert purged.stdout.strip().startswith("would delete: ")


async def test_voice_render_writes_what_the_bot_would_say(tmp_path: Path) -> None:
    rendered = await botservice(
        "voice", "render", "Hello there. I am the bot.", "-o", "hello.wav", env={}, cwd=tmp_path
    )
    assert rendered.status == 0, rendered.stderr
    assert rendered.stdout.startswith("Wrote hello.wav: ")
    assert (tmp_path / "hello.wav").stat().st_size > 10_000

    refused = await botservice("voice", "render", "Hi.", "-o", "hello.xyz", env={}, cwd=tmp_path)
    assert refused.status == 2
    assert refused.stderr.strip().splitlines() == [
        "botservice: cannot write 'hello.xyz': use one of .flac, .mp3, .ogg, .opus, .wav"
    ]


async def test_run_with_no_platform_and_no_terminal_serves_health_checks_until_stopped(
    fake_model: FakeModelServer, tmp_path: Path
) -> None:
    """A platform starts a Procfile `web:` process with stdin on /dev/null: it stays up,
    answering health checks, instead of exiting to be restarted forever."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DISCORD_"))}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "botservice",
        "run",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
        env={
            **clean,
            "PYTHONPATH": str(ROOT),
            "BOTSERVICE_CONFIG": str(ROOT / "config" / "botservice.toml"),
            "OPENAI_BASE_URL": fake_model.base_url,
            "PORT": str(port),
        },
    )
    try:
        statuses = []
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                        statuses.append(response.status)
                        break
                except aiohttp.ClientConnectionError:
                    assert process.returncode is None, "run exited instead of serving"
                    await asyncio.sleep(0.1)
        assert statuses == [200]
    finally:
        process.terminate()
        _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, err.decode()
    assert "no platform is configured" in err.decode()


async def test_the_console_is_always_connected(
    fake_model: FakeModelServer, sqlite_store: SqlStore
) -> None:
    # Readiness (`/readyz`) asks every adapter; the terminal has no connection to lose.
    settings = settings_for(fake_model.base_url)
    model = OpenAIChatClient(settings.model)
    core = ConversationCore(settings=settings, store=sqlite_store, model=model)
    adapter = ConsoleAdapter(core, input=io.StringIO(""), output=io.StringIO())
    try:
        assert adapter.is_connected()
    finally:
        await model.aclose()


async def test_piped_input_is_not_held_to_the_per_person_message_rate(
    fake_model: FakeModelServer, tmp_path: Path
) -> None:
    """The console is the operator's own terminal: a file of questions piped in is
    answered line by line, however many there are."""
    lines = [f"question {number}" for number in range(15)]
    run = await botservice(
        "chat",
        stdin="".join(f"{line}\n" for line in lines),
        env={"OPENAI_BASE_URL": fake_model.base_url},
        cwd=tmp_path,
    )
    assert run.status == 0, run.stderr
    assert run.stdout.splitlines() == [f"You said: {line}" for line in lines]

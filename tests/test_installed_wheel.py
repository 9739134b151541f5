"""A wheel install (`pip install .`, not `-e`) behaves like the checkout: the shipped
defaults travel inside the package, so `botservice` run from any directory uses them.

The wheel is built from a copy of the repository and installed into a fresh
virtual environment that sees this machine's site-packages (so the dependencies
need no download) but not the checkout: no PYTHONPATH, no `config/` in the
working directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from botservice.app.config import load_settings
from botservice.core.settings import Settings
from tests.fakes.model_server import FakeModelServer

ROOT = Path(__file__).resolve().parent.parent

# What a wheel is built from; everything else in a working copy is left behind.
_NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    ".benchmarks",
    ".venv",
    "*.db",
    "*.db-*",
    "tests",
    "bench",
)

pytestmark = [pytest.mark.wheel, pytest.mark.timeout(600)]


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without the checkout (PYTHONPATH) or any of the service's settings."""
    keep = {
        key: value
        for key, value in os.environ.items()
        if key != "PYTHONPATH"
        and not key.startswith(("OPENAI_", "SLACK_", "DISCORD_", "BOTSERVICE_", "DATABASE_URL"))
    }
    return {**keep, **extra}


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with the wheel installed; returns its bin/ folder."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    # symlinks=True keeps botservice/{adapters,storage,config} links as links, as in git.
    shutil.copytree(ROOT, source, symlinks=True, ignore=_NOT_SOURCES)
    dist = base / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, source, cwd=base)
    (wheel,) = dist.glob("botservice-*.whl")
    venv = base / "venv"
    _run(sys.executable, "-m", "venv", "--system-site-packages", venv, cwd=base)
    bin_dir = venv / "bin"
    _run(
        bin_dir / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=base
    )
    return bin_dir


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory with no config/ in it."""
    assert not (tmp_path / "config").exists()
    return tmp_path


def test_the_installed_package_loads_the_shipped_defaults(installed: Path, elsewhere: Path) -> None:
    script = (
        "import botservice; from botservice.app.config import load_settings; "
        "print(botservice.__file__); print(load_settings({}).model_dump_json())"
    )
    where, dumped = _run(installed / "python", "-c", script, cwd=elsewhere).stdout.splitlines()

    # The venv's copy, not the checkout's (the editable install is on the system path too).
    assert Path(where).is_relative_to(installed.parent), where
    from_checkout = load_settings({"BOTSERVICE_CONFIG": str(ROOT / "config" / "botservice.toml")})
    assert json.loads(dumped) == json.loads(from_checkout.model_dump_json())


async def test_botservice_chat_from_a_wheel_answers_with_the_shipped_instructions(
    installed: Path, elsewhere: Path, fake_model: FakeModelServer
) -> None:
    process = await asyncio.create_subprocess_exec(
        str(installed / "botservice"),
        "chat",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=elsewhere,
        env=_clean_env(OPENAI_BASE_URL=fake_model.base_url),
    )
    out, err = await asyncio.wait_for(process.communicate(b"hi\n"), timeout=60)

    assert process.returncode == 0, err.decode()
    assert out.decode().splitlines() == ["You said: hi"]
    shipped = tomllib.loads((ROOT / "config" / "botservice.toml").read_text())
    instructions = shipped["conversation"]["default_instructions"]
    # The shipped instructions differ from the code's fallback, so this tells them apart.
    assert instructions != Settings().conversation.default_instructions
    system = fake_model.chat_requests[0].body["messages"][0]
    assert system == {"role": "system", "content": instructions}
    assert (elsewhere / "botservice.db").exists()

"""The endpoint check that runs before anything heavy is imported: it answers a
configuration mistake before the settings models, the database or a platform library
load, and says exactly what the full settings check says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from botservice.app.config import load_settings
from botservice.app.preflight import check_model_endpoint
from botservice.app.runtime import require_model_endpoint
from botservice.core.errors import ConfigError
from tests.bot_process import clean_environment

ROOT = Path(__file__).resolve().parent.parent
HEAVY = (
    "asyncio",
    "pydantic",
    "sqlalchemy",
    "alembic",
    "httpx",
    "aiohttp",
    "discord",
    "slack_bolt",
)


def test_a_configuration_mistake_is_answered_before_any_heavy_import(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from botservice.app.cli import main\n"
        "status = main(['chat'])\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
        "sys.exit(status)\n"
    )
    clean = clean_environment()
    for env, message in (
        ({}, "botservice: OPENAI_API_KEY: no model endpoint is configured"),
        ({"OPENAI_BASE_URL": "ftp://x/v1"}, "botservice: OPENAI_BASE_URL: 'ftp://x/v1' is not"),
    ):
        run = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
            env={
                **clean,
                "PYTHONPATH": str(ROOT),
                "BOTSERVICE_CONFIG": str(ROOT / "config" / "botservice.toml"),
                **env,
            },
        )
        assert run.returncode == 2, run.stderr
        assert run.stderr.startswith(message), run.stderr
        assert run.stdout.strip() == "", f"loaded before answering: {run.stdout.strip()}"


def _full_check(env: dict[str, str]) -> ConfigError | None:
    try:
        require_model_endpoint(load_settings(env))
    except ConfigError as error:
        return error
    return None


def _early_check(env: dict[str, str]) -> ConfigError | None:
    try:
        check_model_endpoint(needs_endpoint=True, environ=env)
    except ConfigError as error:
        return error
    return None


@pytest.mark.parametrize(
    ("env", "toml"),
    [
        ({}, ""),
        ({"OPENAI_API_KEY": "sk-x"}, ""),
        ({"OPENAI_BASE_URL": "http://127.0.0.1:11434/v1"}, ""),
        ({"OPENAI_BASE_URL": "ftp://user:pw@example/v1?key=1"}, ""),
        ({"OPENAI_BASE_URL": "localhost:11434/v1"}, ""),
        ({}, '[model]\nbase_url = "http://127.0.0.1:8080/v1"\n'),
        ({}, '[model]\nbase_url = "file:///v1"\n'),
        ({"OPENAI_BASE_URL": "ftp://x"}, '[model]\nbase_url = "http://127.0.0.1:8080/v1"\n'),
        ({"BOTSERVICE_MODEL__BASE_URL": "gopher://x", "OPENAI_BASE_URL": "http://a/v1"}, ""),
        ({"BOTSERVICE_MODEL__BASE_URL": "http://a/v1"}, ""),
    ],
)
def test_the_early_check_says_what_the_full_check_says(
    env: dict[str, str], toml: str, tmp_path: Path
) -> None:
    config = tmp_path / "botservice.toml"
    config.write_text(toml)
    env = {**env, "BOTSERVICE_CONFIG": str(config)}
    full, early = _full_check(env), _early_check(env)
    assert (early and (early.setting, early.problem)) == (full and (full.setting, full.problem))

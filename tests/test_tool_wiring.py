"""The tool sources as `botservice` builds them from its settings file: the built-in
tools, and MCP servers that may be up or down when the bot starts."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.bot_process import free_port
from tests.fakes.model_server import FakeModelServer
from tests.test_console import ROOT, botservice

FAKE_SERVER_SCRIPT = ROOT / "tests" / "fakes" / "mcp_server.py"


def config_with_servers(tmp_path: Path, servers: str) -> Path:
    path = tmp_path / "botservice.toml"
    shipped = (ROOT / "config" / "botservice.toml").read_text()
    path.write_text(shipped + "\n" + servers)
    return path


async def test_the_bot_answers_with_one_mcp_server_down_and_says_so_once(
    fake_model: FakeModelServer, tmp_path: Path
) -> None:
    down = f"http://127.0.0.1:{free_port()}/mcp"
    config = config_with_servers(
        tmp_path,
        f"""
[[mcp.servers]]
name = "jira"
url = "{down}"
headers = {{ Authorization = "TEST_JIRA_AUTH" }}

[[mcp.servers]]
name = "local"
command = "{sys.executable}"
args = ["{FAKE_SERVER_SCRIPT}", "local"]
trusted = true
""",
    )
    run = await botservice(
        "chat",
        stdin="Hello there\n",
        env={
            "OPENAI_BASE_URL": fake_model.base_url,
            "BOTSERVICE_CONFIG": str(config),
            "BOTSERVICE_LOG_LEVEL": "INFO",
            "TEST_JIRA_AUTH": "Bearer do-not-log-me",
        },
        cwd=tmp_path,
    )
    assert run.status == 0, run.stderr
    assert run.stdout.splitlines() == ["You said: Hello there"]
    assert run.stderr.count("MCP server jira") == 1, run.stderr
    assert "is unreachable" in run.stderr
    assert "tool sources: builtin=3, jira=0, local=" in run.stderr
    assert "local=0" not in run.stderr
    assert "do-not-log-me" not in run.stderr + run.stdout


async def test_a_header_naming_an_unset_variable_exits_2_with_one_sentence(
    fake_model: FakeModelServer, tmp_path: Path
) -> None:
    config = config_with_servers(
        tmp_path,
        """
[[mcp.servers]]
name = "jira"
url = "http://127.0.0.1:9/mcp"
headers = { Authorization = "TEST_UNSET_JIRA_AUTH" }
""",
    )
    run = await botservice(
        "chat",
        stdin="Hello\n",
        env={"OPENAI_BASE_URL": fake_model.base_url, "BOTSERVICE_CONFIG": str(config)},
        cwd=tmp_path,
    )
    assert run.status == 2
    assert "mcp.servers.jira.headers.Authorization" in run.stderr
    assert "TEST_UNSET_JIRA_AUTH, which is not set" in run.stderr
    assert "Traceback" not in run.stderr

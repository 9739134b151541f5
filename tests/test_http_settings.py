"""Where the HTTP server listens: `[http] host` and `port`, PORT over them, the old
`[server]` name still read; and `botservice run` with nothing to connect to (a
Procfile `web:` process) serving health checks instead of exiting."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from botservice.app.config import load_settings
from botservice.app.runtime import start_http_server
from botservice.core.errors import ConfigError
from botservice.storage.repository import SqlStore
from tests.bot_process import clean_environment
from tests.fakes.model_server import FakeModelServer

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = str(ROOT / "config" / "botservice.toml")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def settings_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "botservice.toml"
    path.write_text(text)
    return str(path)


def test_the_shipped_default_listens_on_every_interface_at_3000() -> None:
    http = load_settings({"BOTSERVICE_CONFIG": SHIPPED}).http
    assert (http.host, http.port) == ("0.0.0.0", 3000)


def test_port_from_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    config = settings_file(tmp_path, '[http]\nhost = "127.0.0.1"\nport = 4000\n')
    assert load_settings({"BOTSERVICE_CONFIG": config}).http.port == 4000
    http = load_settings({"BOTSERVICE_CONFIG": config, "PORT": "8080"}).http
    assert (http.host, http.port) == ("127.0.0.1", 8080)


def test_host_is_set_through_the_generic_override() -> None:
    env = {"BOTSERVICE_CONFIG": SHIPPED, "BOTSERVICE_HTTP__HOST": "127.0.0.1"}
    assert load_settings(env).http.host == "127.0.0.1"


def test_an_empty_host_or_a_port_out_of_range_is_refused() -> None:
    with pytest.raises(ConfigError) as empty:
        load_settings({"BOTSERVICE_CONFIG": SHIPPED, "BOTSERVICE_HTTP__HOST": ""})
    assert empty.value.setting == "http.host"
    with pytest.raises(ConfigError) as large:
        load_settings({"BOTSERVICE_CONFIG": SHIPPED, "PORT": "70000"})
    assert large.value.setting == "http.port"


def test_the_old_server_section_is_still_read_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = settings_file(tmp_path, "[server]\nport = 4000\n")
    with caplog.at_level(logging.WARNING, logger="botservice"):
        assert load_settings({"BOTSERVICE_CONFIG": config}).http.port == 4000
    assert [record.getMessage() for record in caplog.records] == [
        f"settings: [server] in {config} is deprecated; rename it to [http] (it means the same)"
    ]
    # [http] and the environment still win over it.
    assert load_settings({"BOTSERVICE_CONFIG": config, "PORT": "5000"}).http.port == 5000
    both = settings_file(tmp_path, "[server]\nport = 4000\n[http]\nport = 4500\n")
    assert load_settings({"BOTSERVICE_CONFIG": both}).http.port == 4500


def test_the_old_variable_is_still_read_and_port_wins_over_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {"BOTSERVICE_CONFIG": SHIPPED, "BOTSERVICE_SERVER__PORT": "4100"}
    with caplog.at_level(logging.WARNING, logger="botservice"):
        assert load_settings(env).http.port == 4100
    assert [record.getMessage() for record in caplog.records] == [
        "settings: BOTSERVICE_SERVER__PORT is deprecated; rename it to BOTSERVICE_HTTP__PORT "
        "(it means the same)"
    ]
    assert load_settings({**env, "PORT": "5000"}).http.port == 5000
    assert load_settings({**env, "BOTSERVICE_HTTP__PORT": "4200", "PORT": "5000"}).http.port == 5000


async def test_the_server_binds_the_configured_host(sqlite_store: SqlStore) -> None:
    port = free_port()
    runner = await start_http_server(sqlite_store, [], port, host="127.0.0.1")
    try:
        assert runner.addresses == [("127.0.0.1", port)]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/healthz") as response,
        ):
            assert response.status == 200
    finally:
        await runner.cleanup()


async def test_a_taken_port_or_a_foreign_address_names_the_setting(
    sqlite_store: SqlStore,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as in_use:
            await start_http_server(sqlite_store, [], port, host="127.0.0.1")
    assert in_use.value.setting == "PORT"
    assert in_use.value.problem.startswith(f"cannot listen on 127.0.0.1:{port} (")
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: binding fails locally.
    with pytest.raises(ConfigError) as foreign:
        await start_http_server(sqlite_store, [], free_port(), host="192.0.2.1")
    assert foreign.value.setting == "http.host"


async def test_run_with_nothing_to_connect_serves_health_checks_and_says_so_once(
    fake_model: FakeModelServer, tmp_path: Path
) -> None:
    """A platform starts a `web:` process with no terminal and, before the tokens are
    set, no platform: it logs that once and keeps serving `/healthz` on [http]."""
    port = free_port()
    clean = clean_environment()
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
            "BOTSERVICE_CONFIG": SHIPPED,
            "OPENAI_BASE_URL": fake_model.base_url,
            "BOTSERVICE_LOG_LEVEL": "INFO",
            "BOTSERVICE_HTTP__HOST": "127.0.0.1",
            "PORT": str(port),
        },
    )
    healthy = 0
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(600):
                assert process.returncode is None, "run exited instead of serving"
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                        assert response.status == 200
                        healthy += 1
                except aiohttp.ClientConnectionError:
                    pass
                if healthy == 5:
                    break
                await asyncio.sleep(0.3 if healthy else 0.1)
        assert healthy == 5 and process.returncode is None
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    log = err.decode()
    assert process.returncode == 0, log
    assert log.count("no platform is configured") == 1, log
    assert f"HTTP server listening on 127.0.0.1:{port}" in log
    assert "Traceback" not in log

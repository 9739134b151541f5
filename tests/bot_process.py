"""`botservice run` as a real process, for tests that kill it (SIGKILL) and start it again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


# The bot's own settings and OpenTelemetry's: a developer's exported OPENAI_BASE_URL,
# SLACK_BOT_TOKEN or OTEL_EXPORTER_OTLP_ENDPOINT must never reach a bot a test starts.
_BOT_SETTINGS = ("OPENAI_", "SLACK_", "DISCORD_", "BOTSERVICE_", "DATABASE_URL", "OTEL_")


def clean_environment() -> dict[str, str]:
    """This process's environment without any of the bot's settings."""
    return {key: value for key, value in os.environ.items() if not key.startswith(_BOT_SETTINGS)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class BotProcess:
    """One `botservice run`; its output goes to `log_path` (read it when a test fails)."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path

    @classmethod
    async def start(cls, env: dict[str, str], *, cwd: Path, name: str = "bot") -> BotProcess:
        port = int(env.get("PORT") or free_port())
        clean = clean_environment()
        log_path = cwd / f"{name}-{time.monotonic_ns()}.log"
        with log_path.open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "botservice",
                "run",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                cwd=cwd,
                env={
                    **clean,
                    "PYTHONPATH": str(ROOT),
                    "BOTSERVICE_CONFIG": str(ROOT / "config" / "botservice.toml"),
                    **env,
                    "PORT": str(port),
                },
            )
        return cls(process, port, log_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_healthy(self, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process.returncode is not None:
                    raise AssertionError(f"botservice exited early:\n{self.output()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(self.url + "/healthz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise AssertionError(f"botservice did not become healthy:\n{self.output()}")

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                await self.kill()

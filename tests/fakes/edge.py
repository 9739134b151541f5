"""The fake Slack Web API and the fake model server in a process of their own.

A benchmark that times Slack acknowledgements must not serve the bots' Slack and
model calls in the loop that times them: every chat.update and model stream the
fakes answer would count as the bot's latency. Here both fakes run in a child
process; the parent keeps a copy of what they recorded, brought up to date by
`await edge.refresh()` from a loopback control endpoint (`GET /changes`).

    async with EdgeFakes.running(answer="tests.scale_out:answer_to", log=path) as edge:
        edge.slack.base_url, edge.model.base_url   # for the bots
        await edge.refresh()
        edge.slack.messages, edge.slack.calls, edge.model.chat_requests

Times (`SlackCall.at`, `RecordedRequest.received_at`) are the child's
`time.monotonic()`, which on Linux is the parent's clock too.

    python -m tests.fakes.edge [--answer module:function] [--chunk-delay S] [--user ID=Name]

prints "READY <json with the three URLs>" and serves until stdin closes or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes.model_server import FakeModelServer, RecordedRequest, echo_answer
from tests.fakes.slack_api import FakeSlackApi, PostedMessage, SlackCall

READY = "READY "

# --- the child ---------------------------------------------------------------------


def _load(name: str) -> Callable[[dict[str, Any]], str]:
    module, _, attribute = name.partition(":")
    answer: Callable[[dict[str, Any]], str] = getattr(importlib.import_module(module), attribute)
    return answer


@dataclass
class _Recorder:
    """What the fakes did, as lists the parent reads from an offset on."""

    slack: FakeSlackApi
    model: FakeModelServer
    # Every post or edit of a message, as the message then reads.
    message_changes: list[PostedMessage] = field(default_factory=list)

    def watch_messages(self) -> None:
        for method in ("chat.postMessage", "chat.update"):
            self.slack.handlers[method] = self._watched(self.slack.handlers[method])

    def _watched(
        self, handler: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def run(args: dict[str, Any]) -> dict[str, Any]:
            answer = handler(args)
            if answer.get("ok"):
                message = self.slack.messages.get((str(answer["channel"]), str(answer["ts"])))
                if message is not None:
                    self.message_changes.append(PostedMessage(**asdict(message)))
            return answer

        return run

    async def changes(self, request: web.Request) -> web.Response:
        calls, messages, requests = (
            int(request.query.get(name, 0)) for name in ("calls", "messages", "requests")
        )
        return web.json_response(
            {
                "calls": [asdict(call) for call in self.slack.calls[calls:]],
                "messages": [asdict(m) for m in self.message_changes[messages:]],
                "requests": [
                    {**asdict(r), "files": {}, "peer": r.peer}
                    for r in self.model.requests[requests:]
                ],
            },
            dumps=lambda data: json.dumps(data, separators=(",", ":")),
        )


async def _serve(args: argparse.Namespace) -> None:
    # A bot killed mid-stream drops its model connection; aiohttp would log a stack each time.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    slack = FakeSlackApi()
    for user in args.user:
        user_id, _, name = user.partition("=")
        slack.add_user(user_id, name or user_id)
    model = FakeModelServer(
        answer=_load(args.answer) if args.answer else echo_answer,
        default_delay_between_chunks=args.chunk_delay,
    )
    recorder = _Recorder(slack, model)
    recorder.watch_messages()
    control = web.Application()
    control.router.add_get("/changes", recorder.changes)
    runner = web.AppRunner(control, access_log=None)
    await slack.start()
    await model.start()
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    control_port = runner.addresses[0][1]
    urls = {
        "slack": slack.base_url,
        "model": model.base_url,
        "control": f"http://127.0.0.1:{control_port}",
    }
    print(READY + json.dumps(urls), flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    # The parent holds our stdin: when it goes (even by kill -9), so do we.
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    watch = asyncio.create_task(stdin.read())
    watch.add_done_callback(lambda _: stop.set())
    await stop.wait()
    watch.cancel()
    await runner.cleanup()
    await model.stop()
    await slack.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--answer", default="", help="module:function(body) -> answer text")
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    parser.add_argument("--user", action="append", default=[], help="ID=Name, repeatable")
    asyncio.run(_serve(parser.parse_args(argv)))


# --- the parent ----------------------------------------------------------------------


@dataclass
class SlackRecord:
    """The parent's copy of the fake Slack's record."""

    base_url: str
    calls: list[SlackCall] = field(default_factory=list)
    messages: dict[tuple[str, str], PostedMessage] = field(default_factory=dict)
    changes_seen: int = 0


@dataclass
class ModelRecord:
    """The parent's copy of the fake model's record."""

    base_url: str
    requests: list[RecordedRequest] = field(default_factory=list)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]


@dataclass
class EdgeFakes:
    process: asyncio.subprocess.Process
    control_url: str
    slack: SlackRecord
    model: ModelRecord
    session: aiohttp.ClientSession

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls,
        *,
        log: Path,
        answer: str = "",
        chunk_delay: float = 0.0,
        users: Sequence[str] = (),
        env: dict[str, str] | None = None,
        within: float = 30.0,
    ) -> AsyncIterator[EdgeFakes]:
        command = [sys.executable, "-m", "tests.fakes.edge", "--chunk-delay", str(chunk_delay)]
        if answer:
            command += ["--answer", answer]
        for user in users:
            command += ["--user", user]
        with log.open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                env=env,
            )
        try:
            assert process.stdout is not None
            async with asyncio.timeout(within):
                line = (await process.stdout.readline()).decode()
            if not line.startswith(READY):
                raise RuntimeError(f"the fakes' process did not start: {line!r}\n{_read(log)}")
            urls = json.loads(line.removeprefix(READY))
            async with aiohttp.ClientSession() as session:
                yield cls(
                    process,
                    urls["control"],
                    SlackRecord(urls["slack"]),
                    ModelRecord(urls["model"]),
                    session,
                )
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 10)
                except TimeoutError:
                    process.kill()
                    await process.wait()

    async def refresh(self) -> None:
        """Bring the copies up to date with what the fakes recorded so far."""
        query = {
            "calls": len(self.slack.calls),
            "messages": self.slack.changes_seen,
            "requests": len(self.model.requests),
        }
        async with self.session.get(
            f"{self.control_url}/changes", params=query, timeout=aiohttp.ClientTimeout(total=30)
        ) as response:
            response.raise_for_status()
            data = await response.json()
        self.slack.calls += [SlackCall(**call) for call in data["calls"]]
        for change in data["messages"]:
            message = PostedMessage(**change)
            self.slack.messages[(message.channel, message.ts)] = message
        self.slack.changes_seen += len(data["messages"])
        self.model.requests += [
            RecordedRequest(**{**r, "peer": tuple(r["peer"]) if r["peer"] else None})
            for r in data["requests"]
        ]


def _read(path: Path) -> str:
    return path.read_text(errors="replace")


if __name__ == "__main__":
    main()

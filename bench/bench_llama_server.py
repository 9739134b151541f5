"""A real local server against the bot: llama-cpp-python's OpenAI-compatible server with
its default settings (a 2,048-token context), serving a tiny random-weight model that
this script writes (bench/tiny_gguf.py). Prints a table; not a test.

It answers the question issue 13 started from: does a long conversation keep working
against a small real server? Thirty long messages in one thread go through the
conversation core and the real model client (SQLite store, a sink that keeps what
the user would see). The server reports no context window on `/v1/models`, so the bot
starts from its configured default, and learns the real one from the server's own
"exceed context window" answer. The model's words are random bytes; only whether
each turn is answered, and how, is measured.

Needs llama-cpp-python with its server extra and the `gguf` writer (not in the
project's dependencies: pip builds llama.cpp from source, about 15 minutes on 2 cores):

    pip install 'llama-cpp-python[server]==0.3.36' gguf
    python -m bench.bench_llama_server [--turns 30] [--words 400] [--byte-level]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from botservice.app.config import load_settings
from botservice.core.conversation import SHRUNK_FOOTNOTE, TRIM_FOOTNOTE, ConversationCore
from botservice.core.events import IncomingMessage
from botservice.model.client import OpenAIChatClient, pooled_transport
from botservice.storage.repository import SqlStore

ROOT = Path(__file__).resolve().parent.parent
MODEL = "tiny"


class KeptSink:
    """What the user would see of one answer: its final text."""

    def __init__(self) -> None:
        self.final = ""

    async def begin(self, existing_ref: str | None, *, turn_tag: str, resumed: bool) -> str | None:
        return None

    async def update(self, text: str) -> None:
        return None

    async def finish(self, text: str) -> None:
        self.final = text

    async def notice(self, text: str, *, private: bool = True) -> None:
        self.final = text


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(model: Path, port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--model_alias",
            MODEL,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the llama.cpp server did not start within 60 s")


async def converse(
    base_url: str, database: Path, turns: int, words: int
) -> list[tuple[str, float]]:
    settings = load_settings(
        {
            "OPENAI_BASE_URL": base_url,
            "OPENAI_API_KEY": "sk-local",
            "BOTSERVICE_CONFIG": str(ROOT / "config" / "botservice.toml"),
            "BOTSERVICE_MODEL": MODEL,
            "BOTSERVICE_LIMITS__MESSAGES_PER_MINUTE": "0",
            # Short answers: the tiny model writes random bytes until the limit.
            "BOTSERVICE_MODEL__MAX_ANSWER_TOKENS": "128",
        }
    )
    store = await SqlStore.open(f"sqlite+aiosqlite:///{database}")
    client = OpenAIChatClient(settings.model, transport=pooled_transport())
    core = ConversationCore(settings=settings, store=store, model=client)
    outcomes: list[tuple[str, float]] = []
    try:
        print(f"window reported by the server: {await client.context_window(MODEL)}")
        for turn in range(turns):
            sink = KeptSink()
            incoming = IncomingMessage(
                platform="bench",
                workspace="W",
                channel="C",
                thread="long",
                user_id="U",
                user_name="bench user",
                text=f"Turn {turn}: " + "please summarise this long paragraph " * (words // 5),
                message_key=f"long:{turn}",
            )
            started = time.perf_counter()
            await core.handle(incoming, sink)
            outcomes.append((classify(sink.final), time.perf_counter() - started))
    finally:
        await client.aclose()
        await store.aclose()
    return outcomes


MARKS = {
    "answered": ".",
    "answered, marked as cut at the length limit": "l",
    "answered, told the window was smaller": "w",
    "answered, told older turns were left out": "t",
}


def classify(final: str) -> str:
    if "reached the answer length limit" in final:
        # The tiny model writes until `max_tokens`; a real one stops on its own.
        return "answered, marked as cut at the length limit"
    if final.endswith(SHRUNK_FOOTNOTE):
        return "answered, told the window was smaller"
    if final.endswith(TRIM_FOOTNOTE):
        return "answered, told older turns were left out"
    if final.startswith("The model") or "please try again" in final:
        return f"failed: {final}"
    return "answered"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--words", type=int, default=400, help="per message")
    parser.add_argument(
        "--byte-level",
        action="store_true",
        help="the model's tokenizer counts every byte (about 4x the bot's count)",
    )
    args = parser.parse_args()
    if not all(importlib.util.find_spec(name) for name in ("llama_cpp", "gguf")):
        raise SystemExit("llama-cpp-python or gguf is not installed: see this script's docstring")
    from bench.tiny_gguf import write_tiny_model

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_tiny_model(folder / "tiny.gguf", whole_words=not args.byte_level)
        port = free_port()
        server = start_server(folder / "tiny.gguf", port)
        try:
            outcomes = asyncio.run(
                converse(f"http://127.0.0.1:{port}/v1", folder / "bot.db", args.turns, args.words)
            )
        finally:
            server.terminate()
            server.wait(10)
    print(f"\n{args.turns} messages of about {args.words} words in one thread")
    print(f"{'outcome':<48} {'turns':>5}")
    for outcome in sorted(set(name for name, _ in outcomes)):
        print(f"{outcome:<48} {sum(1 for name, _ in outcomes if name == outcome):>5}")
    seconds = sorted(elapsed for _, elapsed in outcomes)
    print(
        f"\nseconds per turn: median {statistics.median(seconds):.2f}, "
        f"max {seconds[-1]:.2f}; outcome by turn: "
        + "".join(MARKS.get(name, "f") for name, _ in outcomes)
    )


if __name__ == "__main__":
    main()

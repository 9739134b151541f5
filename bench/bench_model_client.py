"""Model-client benchmark: `OpenAIChatClient` streaming against the instant fake model
(a process of its own on 127.0.0.1) beside a bare aiohttp client doing the same work
(orjson request, SSE lines, orjson chunks).

Prints requests/s and CPU ms per request (this process's CPU time / requests) at
`--concurrency` concurrent streams, medians of `--rounds` runs that alternate between
the clients, and each client's figures as a ratio of the bare client's from the same
runs; also the client over the console's transport (botservice/model/h11_transport.py). `--baseline path/to/model_client.py` adds another version of the module (e.g.
main's) to the same runs, for before/after figures.

    python -m bench.bench_model_client [--concurrency 50] [--requests 2000] [--rounds 3]
                                       [--baseline /work/main/botservice/model/client.py]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import httpx
import orjson

from bench.bench_core import Row, print_table, start_fake_model
from botservice.core.ports import ChatRequest
from botservice.core.settings import ModelSettings
from botservice.model import client as model_client
from botservice.model.h11_transport import H11Transport

# A prompt of a usual size: instructions and a few turns of history.
PROMPT = ChatRequest(
    model="bench",
    messages=[{"role": "system", "content": "You are a helpful assistant."}]
    + [
        {"role": role, "content": f"message {n}: how do I reverse a list in Python?"}
        for n in range(20)
        for role in ("user", "assistant")
    ]
    + [{"role": "user", "content": "And a tuple?"}],
    max_tokens=1024,
)


class BareClient:
    def __init__(self, base_url: str) -> None:
        self._url = base_url + "/chat/completions"
        self._headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))

    async def one(self) -> str:
        body = orjson.dumps(
            {
                "model": PROMPT.model,
                "messages": list(PROMPT.messages),
                "max_tokens": PROMPT.max_tokens,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        )
        parts = []
        async with self._http.post(self._url, data=body, headers=self._headers) as response:
            async for line in response.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    continue
                for choice in orjson.loads(data).get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        parts.append(content)
        return "".join(parts)

    async def aclose(self) -> None:
        await self._http.close()


class ModuleClient:
    """`OpenAIChatClient` from a given version of botservice/model/client.py."""

    def __init__(
        self, module: ModuleType, base_url: str, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        settings = ModelSettings(base_url=base_url, api_key="sk-bench")  # type: ignore[arg-type]
        self._client: Any = module.OpenAIChatClient(settings, transport=transport)

    async def one(self) -> str:
        return "".join([delta async for delta in self._client.stream(PROMPT)])

    async def aclose(self) -> None:
        await self._client.aclose()


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("baseline_model_client", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Figures:
    rates: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)


async def run(
    one: Callable[[], Awaitable[str]], concurrency: int, requests: int
) -> tuple[float, float]:
    per_worker = requests // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            assert await one()

    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    done = per_worker * concurrency
    return done / elapsed, 1000 * cpu / done


async def main_async(args: argparse.Namespace, base_url: str) -> list[Row]:
    clients: dict[str, Any] = {"bare aiohttp + orjson": BareClient(base_url)}
    if args.baseline:
        clients["model client, baseline"] = ModuleClient(load_module(args.baseline), base_url)
    clients["model client, this tree"] = ModuleClient(model_client, base_url)
    # The console's transport (one person's turns; here as many streams as the others).
    clients["the same over h11 (console)"] = ModuleClient(model_client, base_url, H11Transport())
    figures = {name: Figures() for name in clients}
    try:
        for client in clients.values():
            await run(client.one, args.concurrency, args.concurrency * 4)  # warm-up
        for round_ in range(args.rounds):
            names = list(clients) if round_ % 2 == 0 else list(reversed(clients))
            for name in names:
                rate, cpu = await run(clients[name].one, args.concurrency, args.requests)
                figures[name].rates.append(rate)
                figures[name].cpu_ms.append(cpu)
    finally:
        for client in clients.values():
            await client.aclose()
    bare = figures["bare aiohttp + orjson"]
    rows = []
    for name, measured in figures.items():
        rate, cpu = statistics.median(measured.rates), statistics.median(measured.cpu_ms)
        rows.append(
            Row(
                f"{name}: requests/s",
                f"{rate:.0f}",
                f"{rate / statistics.median(bare.rates):.2f}x bare",
                ", ".join(f"{r:.0f}" for r in measured.rates),
            )
        )
        rows.append(
            Row(
                f"{name}: CPU ms per request",
                f"{cpu:.3f}",
                f"{cpu / statistics.median(bare.cpu_ms):.2f}x bare",
                ", ".join(f"{c:.3f}" for c in measured.cpu_ms),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2000, help="per client and run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another model_client.py to compare")
    args = parser.parse_args()
    process, base_url = start_fake_model()
    try:
        rows = asyncio.run(main_async(args, base_url))
    finally:
        process.terminate()
        process.wait()
    print(f"{args.concurrency} concurrent streams, {args.requests} requests per client and run")
    print_table(rows)


if __name__ == "__main__":
    main()

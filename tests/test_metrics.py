"""`GET /metrics` scraped from the real HTTP server after scripted conversations: the real
core, a real SQLite store and the fake model server (real HTTP, real SSE)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import aiohttp
import pytest_asyncio
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from botservice.app.metrics import EXPORTED, PrometheusTelemetry, TimedStore
from botservice.app.runtime import start_http_server
from botservice.core.conversation import ConversationCore
from botservice.core.ports import Store
from botservice.model.client import OpenAIChatClient
from botservice.storage.repository import SqlStore
from tests.chat_kit import Chat, RecordingSink, settings_for
from tests.fakes.model_server import FakeModelServer, RateLimited, Refuse, Reply

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Service:
    core: ConversationCore
    chat: Chat
    url: str

    async def scrape(self) -> Samples:
        async with aiohttp.ClientSession() as session, session.get(self.url) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()
        samples: Samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest_asyncio.fixture
async def service(fake_model: FakeModelServer, sqlite_store: SqlStore) -> AsyncIterator[Service]:
    # No per-person message rate: the label test sends 1,000 people's messages at once.
    settings = settings_for(
        fake_model.base_url, limits__messages_per_minute="0", limits__max_queued_turns="1000"
    )
    telemetry = PrometheusTelemetry(settings)
    model = OpenAIChatClient(settings.model, telemetry=telemetry)
    core = ConversationCore(
        settings=settings,
        store=cast(Store, TimedStore(sqlite_store, telemetry)),
        model=model,
        telemetry=telemetry,
    )
    telemetry.watch_core(lambda: core.load)
    port = free_port()
    runner: web.AppRunner = await start_http_server(
        sqlite_store, [], port, metrics=telemetry, host="127.0.0.1"
    )
    try:
        yield Service(core=core, chat=Chat(core), url=f"http://127.0.0.1:{port}/metrics")
    finally:
        await core.stop()
        await runner.cleanup()
        await model.aclose()


async def test_answers_move_the_counters_and_the_latency_histograms(service: Service) -> None:
    await service.chat.say("Hello")
    await service.chat.say("And again", user="U2")

    samples = await service.scrape()
    model = "gpt-4o-mini"
    assert value(samples, "botservice_messages_accepted_total", platform="test") == 2
    assert value(samples, "botservice_turns_total", platform="test", outcome="answered") == 2
    assert value(samples, "botservice_turns_started_total", resumed="false") == 2
    assert value(samples, "botservice_time_to_first_text_seconds_count", model=model) == 2
    assert value(samples, "botservice_time_to_final_text_seconds_count", model=model) == 2
    # The final text comes after the first, so its sum of seconds is not smaller.
    assert value(samples, "botservice_time_to_final_text_seconds_sum") >= value(
        samples, "botservice_time_to_first_text_seconds_sum"
    )
    assert value(samples, "botservice_model_requests_total", model=model, status="2xx") == 2
    assert value(samples, "botservice_model_tokens_total", model=model, kind="prompt") > 0
    assert value(samples, "botservice_model_tokens_total", model=model, kind="completion") > 0
    assert value(samples, "botservice_store_operation_seconds_count", operation="accept") == 2
    assert value(samples, "botservice_pending_turns") == 0
    assert value(samples, "botservice_running_turns") == 0
    assert value(samples, "botservice_model_calls_waiting") == 0
    # Every family the module names is exported once it has been touched or is a gauge.
    names = {name for name, _ in samples}
    for name in ("botservice_info", "botservice_messages_accepted_total"):
        assert name in names and name in EXPORTED


async def test_a_refused_request_counts_as_a_failure_with_its_reason(
    service: Service, fake_model: FakeModelServer
) -> None:
    fake_model.script(Refuse(400, "Invalid request."))
    sink = await service.chat.say("Please fail")
    assert sink.finals  # the person was told

    samples = await service.scrape()
    assert value(samples, "botservice_turns_total", outcome="failed", reason="refused") == 1
    assert value(samples, "botservice_turns_total", outcome="answered") == 0
    assert value(samples, "botservice_model_requests_total", status="4xx") == 1
    assert value(samples, "botservice_time_to_first_text_seconds_count") == 0


async def test_a_redelivery_is_counted_and_not_answered_again(service: Service) -> None:
    message = service.chat.message("Only once", key="same-key")
    first, second = RecordingSink(), RecordingSink()
    assert await service.core.handle(message, first)
    assert not await service.core.handle(message, second)

    samples = await service.scrape()
    assert value(samples, "botservice_messages_accepted_total") == 1
    assert value(samples, "botservice_messages_redelivered_total", platform="test") == 1
    assert value(samples, "botservice_turns_total", outcome="answered") == 1


async def test_a_429_is_counted_with_the_wait_it_asked_for(
    service: Service, fake_model: FakeModelServer
) -> None:
    fake_model.script(RateLimited(retry_after=0.2), Reply("Made it"))
    sink = await service.chat.say("Busy endpoint?")
    assert sink.final == "Made it"

    samples = await service.scrape()
    assert value(samples, "botservice_model_requests_total", status="429") == 1
    assert value(samples, "botservice_model_requests_total", status="2xx") == 1
    assert value(samples, "botservice_model_retries_total", cause="rate_limited") == 1
    assert value(samples, "botservice_model_retry_wait_seconds_count", cause="rate_limited") == 1
    assert value(samples, "botservice_model_retry_wait_seconds_sum", cause="rate_limited") == 0.2
    assert value(samples, "botservice_turns_total", outcome="answered") == 1
    # The wait is part of what the person waited for their first text.
    assert value(samples, "botservice_time_to_first_text_seconds_sum") >= 0.2


async def test_label_sets_stay_bounded_after_a_thousand_people(service: Service) -> None:
    people = [f"U{n:05d}" for n in range(1000)]

    async def conversations(numbers: range) -> None:
        await asyncio.gather(
            *(
                service.chat.say(
                    f"hello from {people[n]}", user=people[n], channel=f"C{n}", thread=f"T{n}"
                )
                for n in numbers
            )
        )

    await conversations(range(10))
    after_ten = set(await service.scrape())
    await conversations(range(10, 1000))
    samples = await service.scrape()

    assert value(samples, "botservice_turns_total", outcome="answered") == 1000
    # Not one series more for 990 more people, channels and threads; only a store
    # operation that had not run yet (the heartbeat) may have appeared, and those are
    # the `Store` port's methods.
    new = set(samples) - after_ten
    assert all(name.startswith("botservice_store_operation_seconds") for name, _ in new), new
    operations = {v for _, labels in samples for k, v in labels if k == "operation"}
    assert operations <= set(dir(Store))
    label_values = {v for _, labels in samples for _, v in labels}
    assert not label_values & set(people)
    assert not any(v[:1] in "CT" and v[1:].isdigit() for v in label_values)
    assert not any("hello" in v for v in label_values)

"""The model client against a fake OpenAI-compatible server over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import email.utils
import io
import logging
import socket
import ssl
import sys
import time
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr

from botservice.core.errors import (
    ModelEmptyAnswer,
    ModelRateLimited,
    ModelRefused,
    ModelServerError,
    ModelStreamBroken,
    ModelTimeout,
    ModelUnreachable,
)
from botservice.core.ports import ChatRequest
from botservice.core.settings import ModelSettings
from botservice.model.client import OpenAIChatClient, pooled_transport
from botservice.model.h11_transport import H11Transport
from tests.fakes.certificates import self_signed_certificate
from tests.fakes.model_server import (
    CutMidway,
    EmptyAnswer,
    ErrorInStream,
    FakeModelServer,
    PlainJson,
    RateLimited,
    Refuse,
    Reply,
    ServerError,
    Slow,
)
from tests.fakes.tcp_proxy import TcpProxy

REPO_ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-5ecret-key-do-not-leak"
ASK = ChatRequest(
    model="fake-model",
    messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    max_tokens=50,
)


def model_settings(base_url: str, **overrides: Any) -> ModelSettings:
    values: dict[str, Any] = {
        "base_url": base_url,
        "connect_timeout_seconds": 1.0,
        "read_timeout_seconds": 2.0,
        "max_attempts": 3,
        "retry_after_cap_seconds": 1.0,
        "backoff_base_seconds": 0.01,
    }
    values.update(overrides)
    return ModelSettings(**values)


Transport = Callable[[], httpx.AsyncBaseTransport]


@pytest.fixture(params=["aiohttp", "h11"])
def transport(request: pytest.FixtureRequest) -> Transport:
    """Each test runs over both transports: aiohttp's pool (`botservice run`) and h11
    (the console, botservice/model/h11_transport.py)."""
    return pooled_transport if request.param == "aiohttp" else H11Transport


@pytest_asyncio.fixture
async def client(
    fake_model: FakeModelServer, transport: Transport
) -> AsyncIterator[OpenAIChatClient]:
    model = OpenAIChatClient(
        model_settings(fake_model.base_url, api_key=SecretStr(KEY)), transport=transport()
    )
    yield model
    await model.aclose()


async def collect(model: OpenAIChatClient, request: ChatRequest = ASK) -> list[str]:
    return [delta async for delta in model.stream(request)]


# --- answers ---------------------------------------------------------------------


async def test_stream_yields_deltas_in_order_and_reads_usage(
    fake_model: FakeModelServer, client: OpenAIChatClient
) -> None:
    fake_model.script(Reply("Paris is the capital.", chunk_size=5))
    stream = client.stream(ASK)
    deltas = [delta async for delta in stream]

    assert deltas == ["Paris", " is t", "he ca", "pital", "."]
    assert stream.finished
    assert stream.usage is not None and stream.usage.completion_tokens == 5
    # The fake's own count: a quarter of the request's bytes.
    assert stream.usage.prompt_tokens == fake_model.chat_requests[0].size // 4 > 0
    sent = fake_model.chat_requests[0].body
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["model"] == "fake-model"
    assert sent["max_tokens"] == 50
    assert sent["messages"] == list(ASK.messages)


async def test_default_answer_echoes_the_last_user_message(client: OpenAIChatClient) -> None:
    assert "".join(await collect(client)) == "You said: What is the capital of France?"


async def test_stream_arrives_while_the_server_is_still_writing(
    fake_model: FakeModelServer, client: OpenAIChatClient
) -> None:
    fake_model.script(Reply("one two three four", delay_between_chunks=0.15))
    arrived: list[float] = []
    async for _delta in client.stream(ASK):
        arrived.append(time.monotonic())

    # The server pauses 0.15 s between its pieces: a client that waited for the whole
    # answer would hand them all over at once. (Measured between the pieces, not from
    # the start, so a loaded machine does not decide it.)
    assert len(arrived) >= 4
    assert arrived[-1] - arrived[0] >= 0.3


async def test_complete_returns_text_and_usage(
    fake_model: FakeModelServer, client: OpenAIChatClient
) -> None:
    fake_model.script(Reply("Paris."))
    result = await client.complete(ASK)

    assert result.text == "Paris."
    assert result.usage is not None and result.usage.completion_tokens == 1
    assert "stream" not in fake_model.chat_requests[0].body


async def test_plain_json_answer_to_a_stream_request_is_yielded_once(
    fake_model: FakeModelServer, client: OpenAIChatClient
) -> None:
    fake_model.script(PlainJson("Paris, all at once."))
    stream = client.stream(ASK)

    assert [delta async for delta in stream] == ["Paris, all at once."]
    assert stream.finished
    assert stream.usage is not None


async def test_server_without_usage_is_fine(
    fake_model: FakeModelServer, client: OpenAIChatClient
) -> None:
    # Ollama and llama.cpp ignore stream_options: no usage chunk at all.
    fake_model.script(Reply("no usage here", include_usage=False))
    stream = client.stream(ASK)

    assert "".join([delta async for delta in stream]) == "no usage here"
    assert stream.finished
    assert stream.usage is None


async def test_base_url_with_trailing_slash(
    fake_model: FakeModelServer, transport: Transport
) -> None:
    model = OpenAIChatClient(model_settings(fake_model.base_url + "/"), transport=transport())
    try:
        assert "".join(await collect(model)).startswith("You said:")
    finally:
        await model.aclose()
    assert fake_model.chat_requests[0].path == "/v1/chat/completions"


# --- retries ---------------------------------------------------------------------


async def test_rate_limit_under_the_cap_is_waited_out(
    fake_model: FakeModelServer, client: OpenAIChatClient
) -> None:
    fake_model.script(RateLimited(retry_after=0.4), Reply("After the wait."))
    started = time.monotonic()

    assert "".join(await collect(client)) == "After the wait."
    waited = fake_model.chat_requests[1].received_at - fake_model.chat_requests[0].received_at
    assert waited >= 0.4
    assert time.monotonic() - started < 1.5


async def test_retry_after_ms_wins_over_retry_after(
    fake_model: FakeModelServer, client: OpenAIChatClient
) -> None:
    # Retry-After alone (5 s) would be over the 1 s cap and fail; retry-after-ms is honoured.
    fake_model.script(RateLimited(retry_after=5, retry_after_ms=250), Reply("ok"))

    assert await collect(client) == ["ok"]
    waited = fake_model.chat_requests[1].received_at - fake_model.chat_requests[0].received_at
    assert 0.25 <= waited < 0.9


async def test_rate_limit_over_the_cap_fails_at_once_with_the_wait(
    fake_model: FakeModelServer, client: OpenAIChatClient
) -> None:
    fake_model.script(RateLimited(retry_after=30))
    started = time.monotonic()

    with pytest.raises(ModelRateLimited) as caught:
        await collect(client)

    assert time.monotonic() - started < 0.5
    assert caught.value.retry_after == 30
    assert "30 seconds" in caught.value.user_message
    assert len(fake_model.chat_requests) == 1


async def test_rate_limit_with_an_http_date(
    fake_model: FakeModelServer, client: OpenAIChatClient
) -> None:
    fake_model.script(RateLimited(retry_after=email.utils.formatdate(time.time() + 120)))

    with pytest.raises(ModelRateLimited) as caught:
        await client.complete(ASK)

    assert caught.value.retry_after is not None
    assert 115 <= caught.value.retry_after <= 121
    assert "2 minutes" in caught.value.user_message


async def test_rate_limit_without_header_backs_off_then_gives_up(
    fake_model: FakeModelServer, client: OpenAIChatClient
) -> None:
    fake_model.script(*[RateLimited(omit_header=True)] * 3, Reply("never reached"))

    with pytest.raises(ModelRateLimited) as caught:
        await collect(client)

    assert caught.value.retry_after is None
    assert len(fake_model.chat_requests) == 3  # max_attempts
    assert fake_model.pending_script == 1


async def test_server_error_is_retried_then_succeeds(
    fake_model: FakeModelServer, client: OpenAIChatClient
) -> None:
    fake_model.script(ServerError(502), ServerError(500), Reply("third time"))

    result = await client.complete(ASK)

    assert result.text == "third time"
    assert len(fake_model.chat_requests) == 3


async def test_server_error_after_max_attempts(
    fake_model: FakeModelServer, client: OpenAIChatClient
) -> None:
    fake_model.script(*[ServerError(503)] * 3)

    with pytest.raises(ModelServerError) as caught:
        await collect(client)

    assert caught.value.status == 503
    assert "503" in caught.value.user_message
    assert len(fake_model.chat_requests) == 3


async def test_connection_refused_is_unreachable(transport: Transport) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port now.
    model = OpenAIChatClient(model_settings(f"http://127.0.0.1:{port}/v1"), transport=transport())
    try:
        with pytest.raises(ModelUnreachable):
            await collect(model)
        with pytest.raises(ModelUnreachable):
            await model.complete(ASK)
    finally:
        await model.aclose()


async def test_slow_first_byte_beyond_read_timeout(
    fake_model: FakeModelServer, transport: Transport
) -> None:
    fake_model.script(*[Slow(3)] * 2)
    model = OpenAIChatClient(
        model_settings(fake_model.base_url, read_timeout_seconds=0.3, max_attempts=2),
        transport=transport(),
    )
    started = time.monotonic()
    try:
        with pytest.raises(ModelTimeout):
            await collect(model)
    finally:
        await model.aclose()

    assert len(fake_model.chat_requests) == 2
    assert time.monotonic() - started < 1.5


async def test_one_slow_answer_is_retried(
    fake_model: FakeModelServer, transport: Transport
) -> None:
    fake_model.script(Slow(3), Reply("second try"))
    model = OpenAIChatClient(
        model_settings(fake_model.base_url, read_timeout_seconds=0.3), transport=transport()
    )
    try:
        assert "".join(await collect(model)) == "second try"
    finally:
        await model.aclose()


# --- broken answers ----------------------------------------------------------------


@pytest.mark.parametrize("clean_end", [False, True], ids=["connection-dropped", "no-done"])
async def test_stream_cut_midway_keeps_the_partial_text(
    fake_model: FakeModelServer, client: OpenAIChatClient, clean_end: bool
) -> None:
    fake_model.script(CutMidway("The capital is Par", clean_end=clean_end))
    received: list[str] = []

    with pytest.raises(ModelStreamBroken):
        async for delta in client.stream(ASK):
            received.append(delta)

    assert "".join(received) == "The capital is Par"
    assert len(fake_model.chat_requests) == 1  # Never retried once text was shown.


async def test_cut_after_the_finish_reason_keeps_the_whole_answer(
    fake_model: FakeModelServer, client: OpenAIChatClient
) -> None:
    fake_model.script(CutMidway("Paris.", after_finish_reason=True))
    stream = client.stream(ASK)

    assert [delta async for delta in stream] == ["Paris."]
    assert stream.finished
    assert stream.finish_reason == "stop"
    assert stream.usage is None


async def test_cut_before_any_text_is_retried(
    fake_model: FakeModelServer, client: OpenAIChatClient
) -> None:
    fake_model.script(CutMidway(""), Reply("whole answer"))

    assert await collect(client) == ["whole ", "answer"]


async def test_empty_answer(fake_model: FakeModelServer, client: OpenAIChatClient) -> None:
    fake_model.script(EmptyAnswer())

    with pytest.raises(ModelEmptyAnswer):
        await collect(client)
    assert len(fake_model.chat_requests) == 1


async def test_error_inside_the_stream(
    fake_model: FakeModelServer, client: OpenAIChatClient
) -> None:
    fake_model.script(ErrorInStream("This model's maximum context length is 8192 tokens.", 400))

    with pytest.raises(ModelRefused) as caught:
        await collect(client)
    assert "too long" in caught.value.user_message


# --- refusals and the key ---------------------------------------------------------


async def test_bad_key_is_refused_without_leaking_it(
    fake_model: FakeModelServer, client: OpenAIChatClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    masked = "sk-tes*****leak"  # how OpenAI echoes a rejected key
    fake_model.script(Refuse(401, f"Incorrect API key provided: {KEY} ({masked}). " + "x" * 300))

    with pytest.raises(ModelRefused) as caught:
        await collect(client)

    error = caught.value
    assert error.status == 401
    assert error.reason.startswith("Incorrect API key provided: ***")
    assert len(error.reason) <= 200
    for shown in (str(error), error.reason, error.user_message, caplog.text):
        assert KEY not in shown
        assert masked not in shown
    assert "API key" in error.user_message
    assert len(fake_model.chat_requests) == 1  # A 4xx is not retried.


async def test_unknown_model(fake_model: FakeModelServer, client: OpenAIChatClient) -> None:
    fake_model.script(Refuse(404, "The model `nope` does not exist.", "model_not_found"))

    with pytest.raises(ModelRefused) as caught:
        await client.complete(ASK)
    assert caught.value.reason == "The model `nope` does not exist."
    assert "model" in caught.value.user_message


async def test_logs_carry_no_message_text(
    fake_model: FakeModelServer, client: OpenAIChatClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="botservice")
    fake_model.script(ServerError(500), RateLimited(retry_after=0.05), Reply("secret answer"))

    assert "".join(await collect(client)) == "secret answer"
    assert "retrying" in caplog.text  # Retries are logged...
    assert "capital of France" not in caplog.text  # ...without the prompt,
    assert "secret answer" not in caplog.text  # the answer,
    assert KEY not in caplog.text  # or the key.


async def test_authorization_header_only_when_a_key_is_set(
    fake_model: FakeModelServer, client: OpenAIChatClient, transport: Transport
) -> None:
    await collect(client)
    keyless = OpenAIChatClient(
        model_settings(fake_model.base_url, api_key=None), transport=transport()
    )
    try:
        await keyless.complete(ASK)
    finally:
        await keyless.aclose()

    with_key, without_key = fake_model.chat_requests
    assert with_key.headers["Authorization"] == f"Bearer {KEY}"
    assert "Authorization" not in without_key.headers


# --- connections ----------------------------------------------------------------


async def test_one_http_client_and_connection_serve_many_requests(
    fake_model: FakeModelServer, client: OpenAIChatClient
) -> None:
    http = client.http
    for _ in range(5):
        await collect(client)
    await client.complete(ASK)

    assert client.http is http
    peers = {request.peer for request in fake_model.chat_requests}
    assert len(fake_model.chat_requests) == 6
    assert len(peers) == 1  # Same TCP connection every time: the pool is reused.


async def test_a_connection_the_server_dropped_while_idle_is_not_used_again(
    fake_model: FakeModelServer, transport: Transport, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="botservice")
    proxy = TcpProxy(("127.0.0.1", httpx.URL(fake_model.base_url).port or 80))
    await proxy.start()
    client = OpenAIChatClient(
        model_settings(f"http://127.0.0.1:{proxy.port}/v1"), transport=transport()
    )
    try:
        assert await collect(client)
        await proxy.cut()  # the pooled connection is reset, as by a server going away
        await proxy.restore()
        await asyncio.sleep(0.05)

        assert "".join(await collect(client)).startswith("You said:")
    finally:
        await client.aclose()
        await proxy.close()
    # Sent once on a new connection: no attempt failed on the dead one.
    assert len(fake_model.chat_requests) == 2
    assert proxy.accepted == 2
    assert "failed" not in caplog.text


async def test_https_is_verified_against_the_ca_bundle_httpx_uses(
    transport: Transport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    server = FakeModelServer(tls=tls)
    await server.start()
    try:
        # httpx's CA bundle, as both transports read it: SSL_CERT_FILE, else certifi's.
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        trusting = OpenAIChatClient(model_settings(server.base_url), transport=transport())
        try:
            assert "".join(await collect(trusting)).startswith("You said:")
        finally:
            await trusting.aclose()

        monkeypatch.delenv("SSL_CERT_FILE")
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        strict = OpenAIChatClient(model_settings(server.base_url), transport=transport())
        try:
            with pytest.raises(ModelUnreachable):  # a certificate nobody vouches for
                await collect(strict)
        finally:
            await strict.aclose()
    finally:
        await server.stop()
    assert server.base_url.startswith("https://127.0.0.1:")
    assert len(server.chat_requests) == 1


async def test_the_answer_is_whole_at_done_before_the_body_ends(
    fake_model: FakeModelServer, transport: Transport
) -> None:
    body_ended = asyncio.Event()
    fake_model.script(Reply("Paris.", end_after=body_ended))
    client = OpenAIChatClient(
        model_settings(fake_model.base_url, read_timeout_seconds=60), transport=transport()
    )
    try:
        stream = client.stream(ASK)
        # [DONE] came, the server has not ended the body: the answer is complete, and
        # its final text is not held back until the server gets round to ending it.
        deltas = await asyncio.wait_for(collect_stream(stream), timeout=10)

        assert deltas == ["Paris."]
        assert stream.finished and stream.usage is not None
        assert fake_model.chat_requests[0].finished_at is None  # the body is still open
        body_ended.set()
        await asyncio.wait_for(client.drain(), timeout=10)
        # The rest of the body was read out: the next request takes the same connection.
        assert "".join(await asyncio.wait_for(collect(client), timeout=10))
        first, second = fake_model.chat_requests
        assert first.peer == second.peer
    finally:
        body_ended.set()
        await client.aclose()


async def collect_stream(stream: Any) -> list[str]:
    return [delta async for delta in stream]


async def test_a_shared_http_client_is_left_open(fake_model: FakeModelServer) -> None:
    async with httpx.AsyncClient() as shared:
        model = OpenAIChatClient(model_settings(fake_model.base_url), http_client=shared)
        assert await model.complete(ASK)
        await model.aclose()
        assert not shared.is_closed
    assert model.http is shared


async def test_aclose_closes_the_own_client(
    fake_model: FakeModelServer, transport: Transport
) -> None:
    model = OpenAIChatClient(model_settings(fake_model.base_url), transport=transport())
    await collect(model)
    await model.aclose()
    assert model.http.is_closed


async def test_a_stream_is_iterated_once(client: OpenAIChatClient) -> None:
    stream = client.stream(ASK)
    assert [delta async for delta in stream]
    with pytest.raises(RuntimeError):
        stream.__aiter__()


# --- the fake itself: audio endpoints and the standalone process -------------------------


async def test_fake_speech_is_a_wav_that_grows_with_the_text(fake_model: FakeModelServer) -> None:
    async with httpx.AsyncClient(base_url=fake_model.base_url) as http:
        short = await http.post(
            "/audio/speech", json={"model": "tts", "input": "Hi.", "voice": "x"}
        )
        long = await http.post("/audio/speech", json={"model": "tts", "input": "Hello " * 20})

    durations = []
    for response in (short, long):
        assert response.status_code == 200
        assert response.headers["content-type"] == "audio/wav"
        with wave.open(io.BytesIO(response.content)) as audio:
            assert (audio.getframerate(), audio.getnchannels(), audio.getsampwidth()) == (
                24000,
                1,
                2,
            )
            assert audio.readframes(audio.getnframes()).strip(b"\0")  # a tone, not silence
            durations.append(audio.getnframes() / audio.getframerate())
    assert 0.1 < durations[0] < durations[1]
    assert [r.body["input"] for r in fake_model.requests] == ["Hi.", "Hello " * 20]


async def test_fake_transcription_returns_the_configured_text(fake_model: FakeModelServer) -> None:
    fake_model.transcript = "what is the weather"
    async with httpx.AsyncClient(base_url=fake_model.base_url) as http:
        response = await http.post(
            "/audio/transcriptions",
            data={"model": "whisper-1"},
            files={"file": ("speech.wav", b"RIFF....WAVE", "audio/wav")},
        )

    assert response.json() == {"text": "what is the weather"}
    (recorded,) = fake_model.requests
    assert recorded.body == {"model": "whisper-1"}
    assert recorded.files == {"file": b"RIFF....WAVE"}


async def test_fake_runs_standalone() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.model_server",
        "--port",
        "0",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 10)).decode().strip()
        assert line.startswith("READY http://127.0.0.1:") and line.endswith("/v1")
        model = OpenAIChatClient(model_settings(line.removeprefix("READY ")))
        try:
            assert "".join(await collect(model)) == "You said: What is the capital of France?"
        finally:
            await model.aclose()
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 10) == 0


def asking(text: str) -> ChatRequest:
    return ChatRequest(model="fake-model", messages=[{"role": "user", "content": text}])


async def test_the_fake_notes_when_each_answer_ended_though_answers_overlap(
    fake_model: FakeModelServer, client: OpenAIChatClient
) -> None:
    # The first request waits before answering while the second is recorded and done.
    fake_model.script(Slow(0.2, Reply("late")), Reply("early"))
    slow = asyncio.create_task(collect(client, asking("first")))
    for _ in range(400):  # until the server has it (at most 2 s)
        if fake_model.requests:
            break
        await asyncio.sleep(0.005)
    assert "".join(await collect(client, asking("second"))) == "early"
    assert "".join(await slow) == "late"

    first, second = fake_model.chat_requests
    assert (first.last_user_text, second.last_user_text) == ("first", "second")
    assert first.finished_at is not None and second.finished_at is not None
    assert first.finished_at > second.finished_at


async def test_a_fake_keeping_some_requests_keeps_the_latest() -> None:
    server = FakeModelServer(keep_requests=2)
    await server.start()
    try:
        model = OpenAIChatClient(model_settings(server.base_url), transport=pooled_transport())
        try:
            for turn in range(5):
                await collect(model, asking(f"question {turn}"))
        finally:
            await model.aclose()
    finally:
        await server.stop()
    # Trimmed to the latest 2 when it held 4, then one more came.
    assert [r.last_user_text for r in server.requests] == [f"question {t}" for t in (2, 3, 4)]
    assert all(r.finished_at is not None for r in server.requests)

"""Junk sent to `/slack/events` by someone who is not Slack: refused before it is read,
with a fixed answer, no stack trace, no model call, and a log that cannot be flooded."""

from __future__ import annotations

import json
import logging
import time

import pytest

from botservice.adapters.slack.rejections import Rejection, RejectionLog
from tests.fakes.model_server import FakeModelServer
from tests.slack.harness import SlackHarness, sign

DEEP = b"[" * 50_000 + b"]" * 50_000
JUNK_BODIES = {
    "list": b"[1,2,3]",
    "null": b"null",
    "string": b'"event_callback"',
    "number": b"42",
    "deep": DEEP,
    "deep object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "authorizations": b'{"type":"event_callback","authorizations":"x","event":{"type":"app_mention"}}',
    "event as text": b'{"type":"event_callback","event":"type"}',
    "not utf-8": b'{"type":"\xff\xfe"}',
    "empty": b"",
    "form payload": b"payload=%5B1%2C2%5D",
}
REFUSED = {"ok": False, "error": "refused"}


def refusals(caplog: pytest.LogCaptureFixture, kind: Rejection) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "botservice.adapters.slack.rejections" and kind.value in r.getMessage()
    ]


def assert_quiet(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info or r.stack_info], "a stack trace"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("name", list(JUNK_BODIES))
async def test_unsigned_junk_gets_401_with_a_fixed_body(
    bot: SlackHarness, fake_model: FakeModelServer, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    caplog.set_level(logging.DEBUG)
    status, text = await bot.post(JUNK_BODIES[name], signed=False)
    await bot.settle()

    assert status == 401
    assert json.loads(text) == REFUSED
    assert fake_model.requests == []
    assert_quiet(caplog)


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Slack-Request-Timestamp": "soon", "X-Slack-Signature": "v0=" + "0" * 64},
        {"X-Slack-Request-Timestamp": "1e9", "X-Slack-Signature": "v0=abc"},
        {"X-Slack-Request-Timestamp": "-1", "X-Slack-Signature": "v0=abc"},
        {"X-Slack-Request-Timestamp": "9" * 40, "X-Slack-Signature": "v0=abc"},
        {"X-Slack-Request-Timestamp": "", "X-Slack-Signature": ""},
        {"X-Slack-Signature": "v0=abc"},
        {"X-Slack-Request-Timestamp": str(int(time.time()))},
        {"X-Slack-Request-Timestamp": str(int(time.time())), "X-Slack-Signature": "v1=abc"},
    ],
)
async def test_bad_signature_headers_get_401(
    bot: SlackHarness,
    fake_model: FakeModelServer,
    caplog: pytest.LogCaptureFixture,
    headers: dict[str, str],
) -> None:
    caplog.set_level(logging.DEBUG)
    body = json.dumps(bot.mention("let me in")).encode()
    status, text = await bot.post(body, signed=False, headers=headers)
    await bot.settle()

    assert (status, json.loads(text)) == (401, REFUSED)
    assert fake_model.requests == []
    assert_quiet(caplog)


@pytest.mark.parametrize("skew", [-6 * 60, 6 * 60])
async def test_stale_and_future_signatures_get_401(
    bot: SlackHarness, fake_model: FakeModelServer, caplog: pytest.LogCaptureFixture, skew: int
) -> None:
    caplog.set_level(logging.DEBUG)
    body = json.dumps(bot.mention("from another time")).encode()
    status, text = await bot.post(
        body, signed=False, headers=sign(body, timestamp=int(time.time()) + skew)
    )
    await bot.settle()

    assert (status, json.loads(text)) == (401, REFUSED)
    assert fake_model.requests == []
    assert refusals(caplog, Rejection.BAD_TIMESTAMP)
    assert_quiet(caplog)


@pytest.mark.parametrize("name", ["list", "null", "string", "deep", "deep object", "not utf-8"])
async def test_signed_but_unreadable_bodies_get_400(
    bot: SlackHarness, fake_model: FakeModelServer, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    caplog.set_level(logging.DEBUG)
    status, text = await bot.post(JUNK_BODIES[name])
    await bot.settle()

    assert (status, json.loads(text)) == (400, REFUSED)
    assert fake_model.requests == []
    assert_quiet(caplog)


@pytest.mark.parametrize(
    "odd",
    [
        {"authorizations": "x"},
        {"authorizations": ["x"]},
        {"authorizations": [{"team_id": 7}]},
        {"user": 5},
        {"team": ["T0001"]},
        {"event": "type"},
        {"event": {"type": ["app_mention"], "user": "UALICE"}},
        {"event": {"type": "app_mention", "user": {"name": "x"}, "channel": 3}},
        {"event": {"type": "message", "subtype": "message_deleted", "previous_message": "x"}},
        {"event": {"type": "app_mention", "files": [{"size": "big"}], "user": "UALICE"}},
        {"event": {"type": "app_mention", "files": ["x"], "user": "UALICE"}},
        {"response_urls": "x"},
        {"is_ext_shared_channel": True, "event": None},
    ],
)
async def test_signed_but_odd_payloads_are_ignored_with_a_debug_line(
    bot: SlackHarness,
    fake_model: FakeModelServer,
    caplog: pytest.LogCaptureFixture,
    odd: dict[str, object],
) -> None:
    caplog.set_level(logging.DEBUG)
    mention = bot.mention("odd but signed")
    mention.update(odd)

    status, _ = await bot.event(mention)
    await bot.settle()

    assert status == 200
    assert fake_model.requests == []
    ignored = [r for r in caplog.records if "ignored a signed Slack request" in r.getMessage()]
    assert [r.levelno for r in ignored] == [logging.DEBUG]
    assert "odd but signed" not in caplog.text
    assert_quiet(caplog)


async def test_a_flood_of_junk_writes_one_warning_per_kind(
    bot: SlackHarness, fake_model: FakeModelServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for n in range(200):
        body = f"[{n}]".encode()
        assert (await bot.post(body, signed=False))[0] == 401
        forged = sign(body, secret="guessed")
        assert (await bot.post(body, signed=False, headers=forged))[0] == 401
        assert (await bot.post(body))[0] == 400

    assert len(refusals(caplog, Rejection.UNSIGNED)) == 1
    assert len(refusals(caplog, Rejection.BAD_SIGNATURE)) == 1
    assert len(refusals(caplog, Rejection.MALFORMED)) == 1
    assert len(caplog.records) == 3, [r.getMessage() for r in caplog.records]
    assert fake_model.requests == []
    assert_quiet(caplog)


def test_refusals_are_counted_and_reported_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    now = [1000.0]
    log = RejectionLog(clock=lambda: now[0])

    log.count(Rejection.UNSIGNED)
    for _ in range(99):
        now[0] += 0.5
        log.count(Rejection.UNSIGNED)
    log.count(Rejection.BAD_SIGNATURE)
    now[0] = 1061.0
    log.count(Rejection.UNSIGNED)

    assert [r.getMessage() for r in caplog.records] == [
        "refused 1 request to /slack/events (unsigned)",
        "refused 1 request to /slack/events (bad signature)",
        "refused 100 requests to /slack/events (unsigned) in the last 61 s",
    ]
    assert {r.levelno for r in caplog.records} == {logging.WARNING}

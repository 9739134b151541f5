"""Fuzzing `/slack/events` through the real Bolt app over HTTP: unsigned, badly signed,
malformed and oddly shaped bodies, headers and timestamps. Whatever arrives: no 5xx, no
stack trace, no model call, and the text it carries never in the log at INFO."""

from __future__ import annotations

import io
import json
import logging
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from botservice.app.logs import configure_logging
from tests.fakes.model_server import FakeModelServer
from tests.fakes.slack_api import BOT_USER_ID
from tests.slack.harness import SlackHarness, sign

MARKER = "quokka-parasol-9931"
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

texts = st.one_of(st.text(max_size=12), st.just(MARKER), st.just(f"<@{BOT_USER_ID}> {MARKER}"))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
# The names Bolt and our translators read, given any JSON value.
KEYS = (
    "type", "subtype", "event", "authorizations", "user", "team", "channel", "enterprise",
    "team_id", "user_id", "channel_id", "enterprise_id", "view", "actions", "response_urls",
    "message", "previous_message", "item", "assistant_thread", "files", "tokens", "ts",
    "thread_ts", "deleted_ts", "command", "text", "value", "submission", "callback_id",
    "trigger_id", "is_ext_shared_channel", "is_enterprise_install", "function_data",
    "function_execution_id", "bot_id", "bot_profile", "channel_type", "user_team", "challenge",
    "tab", "context", "entities", "authorizations",
)  # fmt: skip
EVENT_TYPES = ("app_mention", "message", "assistant_thread_started", "app_uninstalled",
               "tokens_revoked", "reaction_added", "function_executed", "app_home_opened",
               "app_context_changed", "assistant_thread_context_changed")  # fmt: skip
ENVELOPE_TYPES = ("event_callback", "url_verification", "block_actions", "block_suggestion",
                  "dialog_submission", "view_submission", "shortcut", "message_action",
                  "interactive_message", "ssl_check")  # fmt: skip


def some_fields() -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(KEYS), values, max_size=5)


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """Slack-shaped bodies with any values where Slack puts fields; never a person's
    message to the bot, so nothing here should reach the model."""
    event = draw(some_fields())
    event["type"] = draw(st.sampled_from(EVENT_TYPES) | values)
    event["text"] = MARKER
    if draw(st.booleans()):
        event["user"] = BOT_USER_ID  # the bot's own message
    else:
        event.pop("user", None)  # no author: not a person
    body = draw(some_fields())
    body["type"] = draw(st.sampled_from(ENVELOPE_TYPES) | values)
    body["event"] = draw(st.just(event) | values)
    return body


@st.composite
def forms(draw: st.DrawFn) -> bytes:
    fields = draw(
        st.dictionaries(
            st.sampled_from(("command", "text", "user_id", "channel_id", "trigger_id",
                             "team_id", "payload", "ssl_check", "response_url")),
            st.text(max_size=10) | st.just(MARKER) | values.map(json.dumps),
            max_size=5,
        )
    )  # fmt: skip
    # A slash command from nobody: no user id, so no command runs.
    fields.pop("user_id", None)
    return urllib.parse.urlencode(fields).encode()


raw_bodies = st.one_of(
    st.binary(max_size=64),
    values.map(lambda v: json.dumps(v).encode()),
    envelopes().map(lambda v: json.dumps(v).encode()),
    forms(),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
)
content_types = st.sampled_from(
    ["application/json", "application/x-www-form-urlencoded", "text/plain", "", "x/y"]
)


@st.composite
def bad_headers(draw: st.DrawFn, body: bytes) -> dict[str, str]:
    now = int(time.time())
    good = sign(body)
    timestamp = draw(
        st.one_of(
            st.just(str(now - 301)),
            st.just(str(now + 301)),
            st.integers(-(2**80), 2**80).map(str),
            st.text(alphabet=st.characters(codec="ascii", exclude_categories=("Cc",)), max_size=20),
            st.just(good["X-Slack-Request-Timestamp"]),
        )
    )
    signature = draw(
        st.one_of(
            st.text(alphabet="v0=abcdef0123456789xyz", max_size=70),
            st.just(good["X-Slack-Signature"][:-1] + "0"),
            st.just(sign(body, secret="guessed")["X-Slack-Signature"]),
        )
    )
    headers = {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": signature}
    drop = draw(st.sampled_from([None, "X-Slack-Request-Timestamp", "X-Slack-Signature"]))
    if drop:
        del headers[drop]
    if headers == good:
        headers["X-Slack-Signature"] = "v0=" + "0" * 64
    return headers


@pytest.fixture
def service_log() -> Iterator[io.StringIO]:
    """The service's real logging configuration, written to a buffer."""
    root = logging.getLogger()
    saved = (
        root.level,
        {name: logging.getLogger(name).level for name in logging.root.manager.loggerDict},
    )
    buffer = io.StringIO()
    handler = configure_logging("INFO", stream=buffer)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        for name, level in saved[1].items():
            logging.getLogger(name).setLevel(level)


def assert_nothing_leaked(
    fake_model: FakeModelServer, caplog: pytest.LogCaptureFixture, service_log: io.StringIO
) -> None:
    assert fake_model.requests == []
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    written = service_log.getvalue()
    assert MARKER not in written and "Traceback" not in written, written


@FUZZ
@given(data=st.data())
async def test_fuzzed_unsigned_requests_get_401(
    service_log: io.StringIO,
    bot: SlackHarness,
    fake_model: FakeModelServer,
    caplog: pytest.LogCaptureFixture,
    data: st.DataObject,
) -> None:
    caplog.set_level(logging.DEBUG)
    body = data.draw(raw_bodies)
    headers = data.draw(bad_headers(body))
    status, _ = await bot.post(
        body, content_type=data.draw(content_types), signed=False, headers=headers
    )
    assert status == 401
    assert_nothing_leaked(fake_model, caplog, service_log)


@FUZZ
@given(data=st.data())
async def test_fuzzed_signed_requests_never_fail_on_our_side(
    service_log: io.StringIO,
    bot: SlackHarness,
    fake_model: FakeModelServer,
    caplog: pytest.LogCaptureFixture,
    data: st.DataObject,
) -> None:
    caplog.set_level(logging.DEBUG)
    body = data.draw(raw_bodies)
    status, _ = await bot.post(body, content_type=data.draw(content_types))
    await bot.settle()
    assert status < 500
    assert_nothing_leaked(fake_model, caplog, service_log)


@pytest.mark.parametrize(
    "actions",
    [[], [1], ["x"], [{}], [{"action_id": 5}], [{"action_id": "a", "block_id": ["b"]}], "x", {}],
)
async def test_a_signed_block_action_whose_actions_bolt_cannot_read_is_ignored(
    service_log: io.StringIO,
    bot: SlackHarness,
    fake_model: FakeModelServer,
    caplog: pytest.LogCaptureFixture,
    actions: Any,
) -> None:
    # Bolt takes `actions[0]` of a block action and reads its `action_id` by name:
    # found by the fuzzer above (an empty list made Bolt raise IndexError).
    caplog.set_level(logging.DEBUG)
    for kind in ("block_actions", "interactive_message"):
        body = {"type": kind, "actions": actions, "callback_id": "c", "team": {"id": "T1"}}
        payload = urllib.parse.urlencode({"payload": json.dumps(body)}).encode()
        status, _ = await bot.post(payload, content_type="application/x-www-form-urlencoded")
        await bot.settle()
        assert status == 200
    assert_nothing_leaked(fake_model, caplog, service_log)

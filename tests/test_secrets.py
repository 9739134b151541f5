"""Secrets stay out of what the service prints and keeps: URLs in errors, audio endpoint
errors that echo the key, and interaction tokens past their 15 minutes."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from botservice.app.expiry import purge_once
from botservice.core.redact import redact_url, scrub
from botservice.core.settings import StorageSettings
from botservice.storage.repository import SqlStore
from botservice.storage.tables import TURNS
from botservice.voice.speech import OpenAISpeechEngine, SpeechEndpointError
from botservice.voice.transcription import Transcriber, TranscriptionEndpointError
from tests.db import incoming
from tests.fakes.model_server import FakeModelServer, tone

KEY = "sk-proj-SECRET-0123456789abcdef"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("ftp://sk-SECRET-123@example/v1", "ftp://***@example/v1"),
        ("https://user:SECRET@proxy:8443/v1?api-key=SECRET#x", "https://***@proxy:8443/v1?***#***"),
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        ("sk-SECRET@example/v1", "***@example/v1"),
        ("http://[::1/v1?key=SECRET", "http://***"),
    ],
)
def test_urls_lose_user_info_and_query_strings(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "SECRET" not in redact_url(url)


def test_text_loses_keys_and_the_credentials_of_urls_in_it() -> None:
    text = f"rejected {KEY} at https://u:SECRET@host/v1?token=SECRET (sk-proj-********cdef)"
    assert scrub(text, KEY) == "rejected *** at https://***@host/v1?*** (***)"


async def test_transcription_errors_never_carry_the_key(
    fake_model: FakeModelServer, caplog: pytest.LogCaptureFixture
) -> None:
    fake_model.audio_key_rejected = 401
    transcriber = Transcriber(base_url=fake_model.base_url, api_key=KEY)
    try:
        with pytest.raises(TranscriptionEndpointError) as caught:
            await transcriber.transcribe(tone(seconds=0.2), filename="a.wav")
    finally:
        await transcriber.aclose()
    logging.getLogger("test").warning("could not hear: %s", caught.value)

    assert caught.value.reason.startswith("Incorrect API key provided: ***")
    assert "SECRET" not in str(caught.value) + caught.value.user_message + caplog.text
    assert "cdef" not in caught.value.reason  # the masked echo goes too


async def test_speech_errors_never_carry_the_key(fake_model: FakeModelServer) -> None:
    fake_model.audio_key_rejected = 403
    engine = OpenAISpeechEngine(base_url=fake_model.base_url, model="tts-1", api_key=KEY)
    try:
        with pytest.raises(SpeechEndpointError) as caught:
            await engine.synthesize("Hello.")
    finally:
        await engine.aclose()
    assert caught.value.reason.startswith("Incorrect API key provided: ***")
    assert "SECRET" not in str(caught.value) + caught.value.reason


# --- reply secrets (SQLite and PostgreSQL) -----------------------------------------------


async def reply_targets(store: SqlStore) -> list[dict[str, object]]:
    async with store.engine.connect() as connection:
        rows = await connection.execute(select(TURNS.c.reply_target).order_by(TURNS.c.id))
        return [json.loads(row[0]) for row in rows]


async def test_reply_secrets_are_deleted_once_they_expire(store: SqlStore) -> None:
    now = datetime.now(UTC)
    expires = (now + timedelta(minutes=15)).timestamp()
    for n in range(3):
        target = {"kind": "interaction", "expires_at": expires, "secrets": {"token": f"tok{n}"}}
        await store.accept(incoming(f"i{n}", reply_target=target), text="hi", tokens=1)
    await store.accept(incoming("plain", reply_target={"channel": "C1"}), text="hi", tokens=1)

    assert await store.forget_expired_reply_secrets(now=now, batch_size=2) == 0
    assert [t.get("secrets") for t in await reply_targets(store)][:3] == [
        {"token": "tok0"},
        {"token": "tok1"},
        {"token": "tok2"},
    ]

    later = now + timedelta(minutes=15, seconds=1)
    assert await store.forget_expired_reply_secrets(now=later, batch_size=2) == 3

    targets = await reply_targets(store)
    assert all("secrets" not in target for target in targets)
    assert targets[0] == {"kind": "interaction", "expires_at": expires}
    assert targets[3] == {"channel": "C1"}
    assert "tok" not in json.dumps(targets)


async def test_the_purge_deletes_expired_reply_secrets_too(store: SqlStore) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).timestamp()
    target = {"kind": "interaction", "expires_at": past, "secrets": {"token": "tok"}}
    await store.accept(incoming("i1", reply_target=target), text="hi", tokens=1)

    await purge_once(store, StorageSettings(), claim_period=False)

    assert await reply_targets(store) == [{"kind": "interaction", "expires_at": past}]

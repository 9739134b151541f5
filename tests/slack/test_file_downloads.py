"""Files fetched with the bot token: only from Slack's file host (here the fake Slack's own
origin), never by redirect, never bigger than the cap or of the wrong type; and only the
bytes that were downloaded go to the model, never a private Slack URL, within the
per-turn image limits. Hostile URLs point at a second fake host on another port."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from botservice.adapters.slack.files import token_may_go_to
from botservice.storage.repository import SqlStore
from tests.fakes.file_host import FakeFileHost
from tests.fakes.model_server import FakeModelServer
from tests.fakes.slack_api import FakeSlackApi
from tests.slack.harness import CHANNEL, SlackHarness, slack_settings
from tests.slack.test_audio import DM, answer_in, audio_clip

PNG = b"\x89PNG\r\n\x1a\n" + b"pixels" * 10


def with_images(bot: SlackHarness, *images: tuple[str, str, int]) -> dict[str, Any]:
    """A mention carrying images (name, url, declared size), as Slack delivers it."""
    data = bot.mention("what is in these?")
    data["event"]["files"] = [
        {
            "id": f"F0IMAGE{n}",
            "name": name,
            "mimetype": "image/png",
            "filetype": "png",
            "size": size,
            "mode": "hosted",
            "url_private": url,
            "url_private_download": url,
        }
        for n, (name, url, size) in enumerate(images)
    ]
    return data


def image_urls(fake_model: FakeModelServer) -> list[str]:
    content = fake_model.chat_requests[-1].body["messages"][-1]["content"]
    if not isinstance(content, list):
        return []
    return [part["image_url"]["url"] for part in content if part["type"] == "image_url"]


def prompt_text(fake_model: FakeModelServer) -> str:
    content = fake_model.chat_requests[-1].body["messages"][-1]["content"]
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if part["type"] == "text")
    return str(content)


async def ask(bot: SlackHarness, data: dict[str, Any]) -> None:
    status, _ = await bot.event(data)
    assert status == 200
    await bot.settle()
    assert bot.slack.thread(CHANNEL, data["event"]["ts"]), "answered"


@pytest_asyncio.fixture
async def small_bot(
    slack_api: FakeSlackApi,
    fake_model: FakeModelServer,
    sqlite_store: SqlStore,
    sqlite_database_url: str,
) -> AsyncIterator[SlackHarness]:
    """A bot that shows the model at most 25,000 bytes of images per message."""
    settings = slack_settings(
        model_url=fake_model.base_url,
        slack_url=slack_api.base_url,
        database_url=sqlite_database_url,
        extra={"BOTSERVICE_IMAGES__MAX_IMAGE_BYTES_PER_TURN": "25000"},
    )
    harness = await SlackHarness.start(slack_api, settings, sqlite_store)
    try:
        yield harness
    finally:
        await harness.close()


# --- where the token may go ----------------------------------------------------------


async def test_an_image_on_another_port_gets_no_token(
    bot: SlackHarness, fake_model: FakeModelServer, file_host: FakeFileHost
) -> None:
    elsewhere = file_host.add_file("cat.png", "image/png", PNG)

    await ask(bot, with_images(bot, ("cat.png", elsewhere, len(PNG))))

    assert file_host.authorizations() == []
    assert image_urls(fake_model) == []
    assert "cat.png (image/png, not shown: not downloaded)" in prompt_text(fake_model)


async def test_an_audio_clip_on_another_port_gets_no_token(
    bot: SlackHarness, fake_model: FakeModelServer, file_host: FakeFileHost
) -> None:
    clip = audio_clip(bot, b"\x1aE\xdf\xa3 webm audio")
    elsewhere = file_host.add_file("audio_message.webm", "audio/webm", b"\x1aE\xdf\xa3 webm")
    clip["event"]["files"][0].update(url_private=elsewhere, url_private_download=elsewhere)

    await bot.event(clip)

    await answer_in(bot.slack, DM, "could not download that audio")
    await bot.settle()
    assert file_host.authorizations() == []
    assert not [r for r in fake_model.requests if r.path.endswith("/audio/transcriptions")]


async def test_a_redirect_is_not_followed(
    bot: SlackHarness, fake_model: FakeModelServer, file_host: FakeFileHost
) -> None:
    url = bot.slack.add_file("cat.png", "image/png", PNG)
    bot.slack.redirects["cat.png"] = file_host.add_file("cat.png", "image/png", PNG)

    await ask(bot, with_images(bot, ("cat.png", url, len(PNG))))

    assert bot.slack.file_downloads == [("cat.png", "Bearer xoxb-test-token")]
    assert file_host.requests == [], "the redirect was followed"
    assert image_urls(fake_model) == []
    assert "not shown: not downloaded" in prompt_text(fake_model)


async def test_a_login_page_is_not_taken_for_the_image(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    url = bot.slack.add_file("cat.png", "text/html", b"<html>Sign in to Slack</html>")

    await ask(bot, with_images(bot, ("cat.png", url, len(PNG))))

    assert image_urls(fake_model) == []
    assert "cat.png (image/png, not shown: not downloaded)" in prompt_text(fake_model)


async def test_a_file_bigger_than_it_said_is_cut_off_at_the_cap(
    small_bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    bot = small_bot
    whole = bytes(range(256)) * 90  # 23,040 bytes: under the cap, over one read
    big = bot.slack.add_file("big.png", "image/png", b"\x89PNG" + b"x" * 200_000)
    fine = bot.slack.add_file("fine.png", "image/png", whole)

    await ask(bot, with_images(bot, ("big.png", big, 100), ("fine.png", fine, len(whole))))

    [shown] = image_urls(fake_model)
    assert base64.b64decode(shown.removeprefix("data:image/png;base64,")) == whole
    assert "big.png (image/png, not shown: not downloaded)" in prompt_text(fake_model)


# --- what reaches the model ------------------------------------------------------------


async def test_no_private_url_ever_reaches_the_model(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    missing = bot.slack.root_url + "/files/never-uploaded.png"  # 404 from Slack
    too_big = bot.slack.add_file("huge.png", "image/png", PNG)

    await ask(bot, with_images(bot, ("gone.png", missing, 10), ("huge.png", too_big, 11 << 20)))

    assert image_urls(fake_model) == []
    sent = json.dumps(fake_model.chat_requests[-1].body)
    assert missing not in sent and too_big not in sent and "/files/" not in sent
    text = prompt_text(fake_model)
    assert "gone.png (image/png, not shown: not downloaded)" in text
    assert "huge.png (image/png, not shown: too large)" in text
    assert [name for name, _ in bot.slack.file_downloads] == ["never-uploaded.png"]


async def test_at_most_four_images_a_message_the_rest_named(
    bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    images = [
        (f"p{n}.png", bot.slack.add_file(f"p{n}.png", "image/png", PNG + bytes([n])), len(PNG))
        for n in range(6)
    ]

    await ask(bot, with_images(bot, *images))

    shown = [base64.b64decode(url.split(",", 1)[1]) for url in image_urls(fake_model)]
    assert shown == [PNG + bytes([n]) for n in range(4)]
    text = prompt_text(fake_model)
    assert "p4.png (image/png, not shown: over the limit of 4 images per message)" in text
    assert "p5.png (image/png, not shown: over the limit of 4 images per message)" in text
    assert len(bot.slack.file_downloads) == 4, "the rest are not even downloaded"


async def test_images_stop_at_the_bytes_a_message_may_show(
    small_bot: SlackHarness, fake_model: FakeModelServer
) -> None:
    bot = small_bot
    ten_k = [bytes([n]) * 10_000 for n in range(3)]
    images = [
        (f"t{n}.png", bot.slack.add_file(f"t{n}.png", "image/png", data), 10)  # sizes understated
        for n, data in enumerate(ten_k)
    ]

    await ask(bot, with_images(bot, *images))

    shown = [base64.b64decode(url.split(",", 1)[1]) for url in image_urls(fake_model)]
    assert shown == ten_k[:2]
    assert "t2.png (image/png, not shown: over the limit of 24 KB of images per message)" in (
        prompt_text(fake_model)
    )


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://files.slack.com/files-pri/T1-F1/cat.png", True),
        ("https://FILES.slack.com:443/files-pri/T1-F1/cat.png", True),
        ("http://files.slack.com/files-pri/T1-F1/cat.png", False),
        ("https://files.slack.com:8443/files-pri/T1-F1/cat.png", False),
        ("https://evil.slack.com/files-pri/T1-F1/cat.png", False),
        ("https://slack-files.com/T1-F1/cat.png", False),
        ("https://files.slack.com.evil.example/cat.png", False),
        ("https://user:pw@files.slack.com/cat.png", False),
        ("files.slack.com/cat.png", False),
        ("https://[::1/cat.png", False),
        ("https://files.slack.com:99999/cat.png", False),
        ("http://127.0.0.1:8080/files/cat.png", True),  # the configured API origin
        ("http://127.0.0.1:8081/files/cat.png", False),
        ("https://127.0.0.1:8080/files/cat.png", False),
        ("http://localhost:8080/files/cat.png", False),
    ],
)
def test_where_the_token_may_go(url: str, allowed: bool) -> None:
    assert token_may_go_to(url, "http://127.0.0.1:8080/api/") is allowed

"""`fetch_url` against a small web server on 127.0.0.1: readable text, and the
addresses, sizes and times it refuses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from botservice.app.tool_sources import build_tool_sources
from botservice.core.settings import BuiltinToolSettings, Settings
from botservice.core.tools import ToolContext, ToolOutput
from botservice.tools.fetch_url import FetchLimits, FetchUrl, networks
from tests.db import incoming

CONTEXT = ToolContext(
    conversation=incoming("x").conversation, conversation_id=1, user_id="U1", turn_id=1
)
LOOPBACK = networks(["127.0.0.0/8"])

PAGE = """<!doctype html><html><head><title>Release notes</title>
<style>body { color: red }</style><script>track("visit")</script></head>
<body><nav>Home | Docs | Pricing</nav>
<main><h1>Version 2.4</h1><p>Faster search.</p><p>Fewer crashes.</p></main>
<footer>© Example</footer></body></html>"""


class Site:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.url = ""
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, request.headers.get("Host", "")))
        if request.path == "/page":
            return web.Response(text=PAGE, content_type="text/html")
        if request.path == "/plain":
            return web.Response(text="just text", content_type="text/plain")
        if request.path == "/huge":
            return web.Response(text="y" * 5_000_000, content_type="text/plain")
        if request.path == "/slow":
            await asyncio.sleep(30)
            return web.Response(text="late")
        if request.path == "/picture":
            return web.Response(body=b"\x89PNG" + b"\x00" * 50, content_type="image/png")
        if request.path == "/to-page":
            raise web.HTTPFound("/page")
        if request.path == "/to-elsewhere":
            raise web.HTTPFound(f"http://127.0.0.2:{self.port}/page")
        if request.path == "/loop":
            raise web.HTTPFound("/loop")
        return web.Response(status=404)


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    served = Site()
    app = web.Application()
    app.router.add_get("/{tail:.*}", served.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    served.port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    served.url = f"http://127.0.0.1:{served.port}"
    yield served
    await runner.cleanup()


async def fetch(url: str, **limits: object) -> ToolOutput:
    tool = FetchUrl(FetchLimits(**limits))  # type: ignore[arg-type]
    return await tool.run({"url": url}, CONTEXT)


async def test_a_page_becomes_its_readable_text(site: Site) -> None:
    result = await fetch(f"{site.url}/page", allowed_networks=LOOPBACK)
    assert result == ToolOutput(
        f"{site.url}/page\n\nRelease notes\nVersion 2.4\nFaster search.\nFewer crashes."
    )
    assert site.requests == [("/page", f"127.0.0.1:{site.port}")]
    plain = await fetch(f"{site.url}/plain", allowed_networks=LOOPBACK)
    assert plain.text.endswith("just text")
    followed = await fetch(f"{site.url}/to-page", allowed_networks=LOOPBACK)
    assert "Faster search." in followed.text


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/page",
        "http://localhost:{port}/page",
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:{port}/page",
        "http://[::ffff:127.0.0.1]:{port}/page",
        "http://0.0.0.0:{port}/page",
    ],
)
async def test_private_loopback_and_link_local_addresses_are_refused(site: Site, url: str) -> None:
    result = await fetch(url.format(port=site.port))
    assert result.is_error
    assert "only public addresses are fetched" in result.text
    assert site.requests == []


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://example.com/file", "Only http:// and https:// URLs"),
        ("file:///etc/passwd", "Only http:// and https:// URLs"),
        ("http://user:secret@127.0.0.1/", "user name or password"),
        ("http://no-such-host.invalid/", "could not be resolved"),
    ],
)
async def test_other_urls_are_refused_with_a_reason(url: str, says: str) -> None:
    result = await fetch(url, allowed_networks=LOOPBACK)
    assert result.is_error and says in result.text


async def test_a_redirect_to_an_address_not_allowed_is_refused(site: Site) -> None:
    result = await fetch(f"{site.url}/to-elsewhere", allowed_networks=networks(["127.0.0.1/32"]))
    assert result.is_error and "127.0.0.2" in result.text
    assert site.requests == [("/to-elsewhere", f"127.0.0.1:{site.port}")]
    looping = await fetch(f"{site.url}/loop", allowed_networks=LOOPBACK)
    assert looping.is_error and "redirects more than 3 times" in looping.text


async def test_size_time_and_content_type_are_capped(site: Site) -> None:
    huge = await fetch(f"{site.url}/huge", allowed_networks=LOOPBACK, max_bytes=10_000)
    assert not huge.is_error
    assert (
        huge.text == f"{site.url}/huge\n\n{'y' * 10_000}\n[only the first 10,000 bytes were read]"
    )

    slow = await fetch(f"{site.url}/slow", allowed_networks=LOOPBACK, timeout_seconds=0.5)
    assert slow == ToolOutput(f"{site.url}/slow did not answer within 0.5 seconds.", True)

    picture = await fetch(f"{site.url}/picture", allowed_networks=LOOPBACK)
    assert picture.is_error and "image/png" in picture.text

    missing = await fetch(f"{site.url}/nothing", allowed_networks=LOOPBACK)
    assert missing == ToolOutput(f"{site.url}/nothing answered HTTP 404.", True)


def test_fetch_url_is_offered_only_when_turned_on() -> None:
    def names(settings: Settings) -> list[str]:
        (builtin,) = build_tool_sources(settings, None, {})  # type: ignore[arg-type]
        return [spec.name for spec in builtin.tools()]

    assert "fetch_url" not in names(Settings())
    on = Settings(builtin_tools=BuiltinToolSettings(fetch_url=True))
    assert names(on)[-1] == "fetch_url"
    with pytest.raises(ValueError, match="is not a network"):
        BuiltinToolSettings(fetch_allowed_networks=("intranet",))

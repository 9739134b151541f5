"""`fetch_url`: a web page's readable text (off unless `[builtin_tools] fetch_url = true`).

Only http(s). The host's addresses are resolved first and every one must be public:
private, loopback, link-local (cloud metadata), shared, multicast and reserved ranges
are refused unless `[builtin_tools] fetch_allowed_networks` lists them. The request
then goes to the address that was checked (the name still sent as Host and as TLS
server name, so certificates are verified as usual), so a name that resolves
differently a moment later cannot redirect it inward; each redirect is checked the
same way. The body is read up to a cap in bytes and the whole fetch up to a time
limit; HTML becomes its readable text (BeautifulSoup, scripts, styles and page chrome
dropped).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
from bs4 import BeautifulSoup

from botservice.core.tools import ToolContext, ToolOutput, ToolSpec
from botservice.tools.kit import builtin_spec

NAME = "fetch_url"
MAX_REDIRECTS = 3
# The text handed back: the core caps every result at 16 KB anyway.
MAX_TEXT_CHARS = 12_000
_TEXT_TYPES = ("text/plain", "text/markdown", "text/csv", "application/json", "application/xml")
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_CHROME = ("script", "style", "noscript", "template", "svg", "nav", "footer", "header", "form")

SPEC = builtin_spec(
    NAME,
    "Fetch a public web page (http or https) and return its readable text.",
    {"url": {"type": "string", "description": "The page's full URL, http:// or https://."}},
    "url",
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class FetchLimits:
    max_bytes: int = 1_000_000
    timeout_seconds: float = 10.0
    # Networks fetched even though they are not public (a test server, an intranet).
    allowed_networks: tuple[IPNetwork, ...] = ()


class Refused(Exception):
    """A URL this tool will not fetch; the message is for the model."""


class FetchUrl:
    def __init__(self, limits: FetchLimits) -> None:
        self._limits = limits

    @property
    def spec(self) -> ToolSpec:
        return SPEC

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolOutput:
        url = arguments.get("url")
        if not isinstance(url, str) or not url.strip():
            return ToolOutput("Give `url`: the page's full http:// or https:// address.", True)
        try:
            async with asyncio.timeout(self._limits.timeout_seconds):
                return await self._fetch(url.strip())
        except Refused as refusal:
            return ToolOutput(str(refusal), is_error=True)
        except TimeoutError:
            return ToolOutput(
                f"{url} did not answer within {self._limits.timeout_seconds:g} seconds.",
                is_error=True,
            )
        except httpx.HTTPError as error:
            return ToolOutput(f"Fetching {url} failed: {type(error).__name__}.", is_error=True)

    async def _fetch(self, url: str) -> ToolOutput:
        for _ in range(MAX_REDIRECTS + 1):
            host, address = await self._checked(url)
            async with _pinned_client() as client:
                request = client.build_request(
                    "GET",
                    _with_host(url, address),
                    headers={
                        "Host": _host_header(url),
                        "Accept": "text/html, text/plain;q=0.9, */*;q=0.1",
                    },
                    extensions={"sni_hostname": host},
                )
                response = await client.send(request, stream=True)
                try:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code >= 400:
                        return ToolOutput(
                            f"{url} answered HTTP {response.status_code}.", is_error=True
                        )
                    body, cut = await self._read(response)
                finally:
                    await response.aclose()
            return self._readable(url, response.headers.get("content-type", ""), body, cut)
        raise Refused(f"{url} redirects more than {MAX_REDIRECTS} times.")

    async def _checked(self, url: str) -> tuple[str, IPAddress]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Refused(f"Only http:// and https:// URLs can be fetched (got {url!r}).")
        if parts.username or parts.password:
            raise Refused("URLs with a user name or password are not fetched.")
        host = parts.hostname
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise Refused(f"{url!r} has an invalid port.") from None
        try:
            found = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except (OSError, UnicodeError):
            raise Refused(f"The host {host!r} could not be resolved.") from None
        addresses = [ipaddress.ip_address(item[4][0]) for item in found]
        if not addresses:
            raise Refused(f"The host {host!r} could not be resolved.")
        for address in addresses:
            if not self._may_reach(address):
                raise Refused(
                    f"{host} is a private, loopback or link-local address ({address}); "
                    "only public addresses are fetched."
                )
        return host, addresses[0]

    def _may_reach(self, address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self._limits.allowed_networks):
            return True
        return address.is_global and not address.is_multicast

    async def _read(self, response: httpx.Response) -> tuple[bytes, bool]:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= self._limits.max_bytes:
                return b"".join(chunks)[: self._limits.max_bytes], True
        return b"".join(chunks), False

    def _readable(self, url: str, content_type: str, body: bytes, cut: bool) -> ToolOutput:
        kind = content_type.split(";")[0].strip().lower()
        charset = _charset(content_type)
        if kind in _HTML_TYPES or (not kind and body.lstrip()[:1] == b"<"):
            soup = BeautifulSoup(body, "html.parser", from_encoding=charset)
            for element in soup(_CHROME):
                element.decompose()
            title = soup.title.get_text(" ", strip=True) if soup.title else ""
            lines = (line.strip() for line in soup.get_text("\n").splitlines())
            text = "\n".join(line for line in lines if line)
            if title and not text.startswith(title):
                text = f"{title}\n\n{text}"
        elif kind.startswith("text/") or kind in _TEXT_TYPES or kind.endswith("+json"):
            text = body.decode(charset or "utf-8", errors="replace")
        else:
            return ToolOutput(
                f"{url} is {kind or 'of an unknown type'}, not a page with text.", is_error=True
            )
        notes = []
        if cut:
            notes.append(f"only the first {self._limits.max_bytes:,} bytes were read")
        if len(text) > MAX_TEXT_CHARS:
            text = text[:MAX_TEXT_CHARS]
            notes.append(f"the text was cut at {MAX_TEXT_CHARS:,} characters")
        suffix = f"\n[{'; '.join(notes)}]" if notes else ""
        return ToolOutput(f"{url}\n\n{text}{suffix}")


def networks(values: Sequence[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(value, strict=False) for value in values)


def _pinned_client() -> httpx.AsyncClient:
    # A client per fetch: its connections are to one checked address, named by SNI for
    # one host, and must not serve another host's request. Redirects are followed here.
    return httpx.AsyncClient(follow_redirects=False, trust_env=False)


def _with_host(url: str, address: IPAddress) -> str:
    parts = urlsplit(url)
    host = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc).geturl()


def _host_header(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host


def _charset(content_type: str) -> str | None:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            return value.strip('"').strip()
    return None

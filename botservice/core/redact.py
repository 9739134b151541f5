"""Keeping secrets out of what the service prints: URLs in errors, endpoint error text in logs.

Operators put credentials where they should not (`https://sk-…@proxy/v1`, `?api-key=…`)
and endpoints echo the key they rejected; neither may reach a log line, an error
message or a person.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

HIDDEN = "***"
# Keys as OpenAI-compatible endpoints spell them, whole or masked ("sk-ab***yz").
_KEY_LIKE = re.compile(r"\b(?:sk|key)-[\w*.-]{6,}")
# Anything URL-shaped inside free text (an exception's message, an endpoint's reason).
_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def redact_url(url: str) -> str:
    """The URL with its user info and query string (and fragment) replaced by `***`.

    `ftp://sk-SECRET@example/v1?key=x` -> `ftp://***@example/v1?***`. Something that does
    not parse as a URL keeps only what cannot be a credential: its scheme.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        scheme, found, _ = url.partition("://")
        return f"{scheme}://{HIDDEN}" if found else HIDDEN
    if not netloc and "@" in parts.path:
        # No "//": `sk-SECRET@host/v1` parses as a path; the part before "@" is user info.
        return f"{HIDDEN}@{parts.path.rpartition('@')[2]}" + (f"?{HIDDEN}" if parts.query else "")
    if "@" in netloc:
        netloc = f"{HIDDEN}@{netloc.rpartition('@')[2]}"
    return urlunsplit(
        (
            parts.scheme,
            netloc,
            parts.path,
            HIDDEN if parts.query else "",
            HIDDEN if parts.fragment else "",
        )
    )


def scrub(text: str, *secrets: str) -> str:
    """`text` without the given secrets, anything that looks like an API key, and the
    user info and query strings of any URL in it."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, HIDDEN)
    text = _KEY_LIKE.sub(HIDDEN, text)
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)

"""Logging set-up, the one place for every logger the service uses.

Conversations are private: no message text or request body in the log at INFO and
above. Our own code keeps to that; libraries do not (slack-bolt logs the whole body of
a request that fails verification, and quotes interactive payloads when no listener
takes them), and Bolt copies the root level onto its loggers when an app is built, so
levels alone cannot hold them. The filter on our handler therefore decides by the
record, not the logger: below DEBUG a library's INFO lines are dropped, its warnings
and errors lose whatever they quote, and no traceback shows an exception's message
(SQLAlchemy's carry the statement's parameters, message text included). DEBUG turns
all of this off, for an operator who asks for everything.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import TextIO

# Loggers whose lines are written for this service, never quoting message text at INFO.
_OWN = frozenset({"botservice", "adapters", "storage", "bench", "__main__"})
# Every library logger the service uses, set explicitly so the configuration reads as a
# list; the filter holds whatever level a library sets for itself afterwards.
_LIBRARIES = (
    "slack_bolt",
    "slack_sdk",
    "discord",
    "aiohttp",
    "aiohttp.access",
    "httpx",
    "httpcore",
    "sqlalchemy",
    "sqlalchemy.engine",
    "alembic",
    "aiosqlite",
    "asyncpg",
    "apscheduler",
    "apscheduler.executors.default",
    "asyncio",
    "websockets",
)
ELIDED = "…"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_OPENERS = {"{": "}", "[": "]"}


class PrivateTextFilter(logging.Filter):
    """On the service's handler: what a record may show, by who wrote it and how loud."""

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name.partition(".")[0] in _OWN
        if not own:
            if record.levelno < logging.WARNING:
                return False
            record.msg, record.args = elide_quoted(_message(record)), None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = _traceback_without_messages(record.exc_info[1])
        return True


def configure_logging(level: str, *, stream: TextIO | None = None) -> logging.Handler:
    """Send every logger to `stream` (stderr) at `level`; returns the handler it installed."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    if numeric > logging.DEBUG:
        handler.addFilter(PrivateTextFilter())
    root = logging.getLogger()
    # Replace our earlier handler (a second call), keep anyone else's (a test runner's).
    for old in [h for h in root.handlers if getattr(h, "botservice", False)]:
        root.removeHandler(old)
    handler.botservice = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(numeric)
    library_level = numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
    for name in _LIBRARIES:
        logging.getLogger(name).setLevel(library_level)
    return handler


def elide_quoted(text: str) -> str:
    """`text` without what it quotes: strings in quotes and `{...}`/`[...]` payloads become …"""
    out: list[str] = []
    closers: list[str] = []
    quote = ""
    for index, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ""
            continue
        if char in "'\"" and (index == 0 or not text[index - 1].isalnum()):
            quote = char
            if not closers:
                out.append(ELIDED)
            continue
        if char in _OPENERS:
            if not closers:
                out.append(ELIDED)
            closers.append(_OPENERS[char])
            continue
        if closers:
            if char == closers[-1]:
                closers.pop()
            continue
        out.append(char)
    return "".join(out)


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except (TypeError, ValueError):
        # A library's own formatting mistake must not raise at its logging call.
        return str(record.msg)


def _traceback_without_messages(error: BaseException) -> str:
    # Frames and exception types say where and what failed; the messages may quote input.
    lines: list[str] = []
    for line in traceback.TracebackException.from_exception(error).format():
        if line.startswith(("Traceback", "  ", "\n", "During handling", "The above")):
            lines.append(line)
        else:
            kind, colon, message = line.strip().partition(":")
            lines.append(kind + (": " + elide_quoted(message.strip()) if colon else "") + "\n")
    return "".join(lines).rstrip("\n")

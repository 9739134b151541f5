"""Logging set-up, the one place for every logger the service uses.

Conversations are private: no message text or request body in the log at INFO and
above. Our own code keeps to that; libraries do not (slack-bolt logs the whole body of
a request that fails verification, and quotes interactive payloads when no listener
takes them), and Bolt copies the root level onto its loggers when an app is built, so
levels alone cannot hold them. The filter on our handler therefore decides by the
record, not the logger: below DEBUG a library's INFO lines are dropped, its warnings
and errors keep only their first words before they quote anything, and a traceback
shows frames and exception types but no more of a message than that (SQLAlchemy's
carry the statement's parameters, message text included). DEBUG turns all of this
off, for an operator who asks for everything.

Two formats: human lines (the default) and JSON lines (`BOTSERVICE_LOG_FORMAT=json`),
one object per line for a log pipeline. In both, a line logged while a turn is being
answered names the turn, its conversation and platform (`botservice.core.log_context`).
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from datetime import UTC, datetime
from typing import Literal, TextIO

import orjson

from botservice.core.log_context import current_turn

LogFormat = Literal["human", "json"]

# Loggers whose lines are written for this service, never quoting message text at INFO.
_OWN = frozenset({"botservice", "bench", "__main__"})
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
    # The MCP SDK (MCP servers' tools): its DEBUG lines quote whole tool results.
    "mcp",
)
ELIDED = "…"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(turn)s"
_QUOTING = re.compile(r"['\"`{\[<]")


class PrivateTextFilter(logging.Filter):
    """On the service's handler: what a record may show, by who wrote it and how loud."""

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name.partition(".")[0] in _OWN
        if not own:
            if record.levelno < logging.WARNING:
                return False
            record.msg, record.args = without_quotes(_message(record)), None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = _traceback_without_messages(record.exc_info[1])
        return True


class TurnStamp(logging.Filter):
    """Puts the turn being answered (if any) on the record: `turn_id`, `conversation_id`,
    `platform`, and `turn`, the same as a suffix for human lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        turn = current_turn.get()
        if turn is None:
            record.turn = ""
        else:
            record.turn_id = turn.turn_id
            record.conversation_id = turn.conversation_id
            record.platform = turn.platform
            record.turn = (
                f" [turn={turn.turn_id} conversation={turn.conversation_id} "
                f"platform={turn.platform}]"
            )
        return True


class JsonLines(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, the turn's ids
    when inside one, and the traceback (as the privacy filter left it)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": _message(record),
        }
        for key in ("turn_id", "conversation_id", "platform"):
            if (value := getattr(record, key, None)) is not None:
                line[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return orjson.dumps(line).decode()


def configure_logging(
    level: str, *, stream: TextIO | None = None, log_format: LogFormat = "human"
) -> logging.Handler:
    """Send every logger to `stream` (stderr) at `level`; returns the handler it installed."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLines() if log_format == "json" else logging.Formatter(_FORMAT))
    # The handler keeps the level even if the root logger is lowered later.
    handler.setLevel(numeric)
    if numeric > logging.DEBUG:
        handler.addFilter(PrivateTextFilter())
    handler.addFilter(TurnStamp())
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


def without_quotes(text: str) -> str:
    """The first line of `text`, cut where it starts to quote something: what a library
    writes before it quotes a payload (a quote, bracket or brace), never what follows.
    Parsing the quoted part instead would let a crafted text close it early."""
    first, newline, _ = text.partition("\n")
    if match := _QUOTING.search(first):
        return (first[: match.start()].rstrip() + " " + ELIDED).lstrip()
    return first + (" " + ELIDED if newline else "")


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except (TypeError, ValueError):
        # A library's own formatting mistake must not raise at its logging call.
        return str(record.msg)


def _traceback_without_messages(error: BaseException) -> str:
    # Frames (our source code) and exception types say where and what failed; the
    # messages may quote input, so only their first words before any quote are kept.
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    parts: list[str] = []
    for index, item in enumerate(reversed(chain)):
        if index:
            parts.append("\nThe above exception led to the following one:\n\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(item.__traceback__))
        kind = type(item)
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else (f"{kind.__module__}.{kind.__qualname__}")
        )
        try:
            message = without_quotes(str(item))
        except Exception:  # a broken __str__ must not break logging
            message = ""
        parts.append(f"{name}: {message}\n" if message else f"{name}\n")
    return "".join(parts).rstrip("\n")

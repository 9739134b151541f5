"""Logging set-up. Conversations are private: no message text at the default level."""

from __future__ import annotations

import logging

# Libraries that log request or response bodies, or full URLs with tokens, at
# INFO or DEBUG; they stay at WARNING unless the operator asks for DEBUG.
_CHATTY = (
    "alembic",
    "httpx",
    "httpcore",
    "slack_bolt",
    "slack_sdk",
    "discord",
    "aiosqlite",
    "apscheduler",
    "asyncio",
)


def configure_logging(level: str) -> None:
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    logging.basicConfig(
        level=numeric,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    library_level = numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(library_level)
    logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)

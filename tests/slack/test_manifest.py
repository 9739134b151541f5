"""The manifest a user pastes must ask for what the code uses (read as text: no YAML dependency)."""

from __future__ import annotations

from pathlib import Path

from botservice.adapters.slack.oauth import BOT_SCOPES
from botservice.core.settings import SlackSettings

MANIFEST = Path(__file__).resolve().parents[2] / "config" / "slack-manifest.yml"


def _list_under(text: str, key: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == f"{key}:")
    indent = len(lines[start]) - len(lines[start].lstrip())
    items = []
    for line in lines[start + 1 :]:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if len(line) - len(line.lstrip()) <= indent and not stripped.startswith("- "):
            break
        if stripped.startswith("- "):
            items.append(stripped[2:].strip())
    return items


def test_manifest_matches_the_code() -> None:
    text = MANIFEST.read_text()
    assert sorted(_list_under(text, "bot")) == sorted(BOT_SCOPES)
    assert f"- command: {SlackSettings().command}" in text
    events = set(_list_under(text, "bot_events"))
    assert {
        "app_mention",
        "message.im",
        "message.channels",
        "app_uninstalled",
        "tokens_revoked",
        "assistant_thread_started",
        "app_home_opened",
        "app_context_changed",
        "assistant_thread_context_changed",
    } <= events
    assert "assistant_view:" in text
    assert "agent_view:" in text
    assert "request_url: https://bot.example.com/slack/events" in text

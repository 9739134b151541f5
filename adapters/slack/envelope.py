"""A signed `/slack/events` body, read and checked before Bolt sees it.

A valid signature says who sent the bytes, not that they are what Bolt expects: Bolt
reads fields by name (`authorizations[0]`, `event.type`, `user.id`, ...) and fails with
a traceback when one has another type. So the body is parsed the way Bolt parses it and
every field that Bolt or our translators read by name is checked for the type Slack
documents. Nothing here logs or keeps the content.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slack_bolt.request.internals import parse_body

# Slack's deepest payloads (rich-text blocks in an event) nest about a dozen levels.
MAX_DEPTH = 64

_NULL = type(None)
# Field -> the types it may have, wherever it appears in an object that is checked.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    # Bolt's extractors test `is not None`, then take a string or an object's "id".
    **dict.fromkeys(("team", "user", "channel", "enterprise"), (str, dict, _NULL)),
    **dict.fromkeys(
        (
            "type",
            "subtype",
            "team_id",
            "user_id",
            "channel_id",
            "enterprise_id",
            "user_team",
            "context_team_id",
            "context_enterprise_id",
            "ts",
            "thread_ts",
            "event_ts",
            "deleted_ts",
            "event_id",
            "channel_type",
            "command",
            "trigger_id",
            "response_url",
            "function_execution_id",
            "bot_access_token",
            "bot_id",
            "app_id",
            "api_app_id",
        ),
        (str, _NULL),
    ),
    # Bolt walks `authorizations[0]` and `response_urls[0]`; we walk `files`.
    **dict.fromkeys(("authorizations", "response_urls", "files"), (list, _NULL)),
    **dict.fromkeys(
        ("message", "previous_message", "item", "assistant_thread", "view", "tokens"),
        (dict, _NULL),
    ),
    # `body.get("event", {}).get(...)`: a present event must be an object.
    "event": (dict,),
    "size": (int, _NULL),
}
# Objects whose fields are read by name (relative to the body, the event, ...).
_NESTED = ("event", "message", "previous_message", "item", "assistant_thread")


class MalformedBody(ValueError):
    """Not a body Slack sends: not text, not JSON or a form, not an object, too deep."""


@dataclass(frozen=True, slots=True)
class Envelope:
    text: str
    body: dict[str, Any]


def read_envelope(raw: bytes, content_type: str | None) -> Envelope:
    """The body as Bolt will read it. MalformedBody when it cannot be a Slack request."""
    try:
        text = raw.decode("utf-8")
        body = parse_body(text, content_type)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedBody from None
    if not isinstance(body, dict) or _deeper_than(body, MAX_DEPTH):
        raise MalformedBody
    return Envelope(text, body)


def odd_field(body: Mapping[str, Any]) -> str | None:
    """The path of the first field that does not have the type Slack gives it, if any."""
    return _odd_in(body, "body") or _odd_actions(body)


# Interactions whose `actions[0]` Bolt takes to match listeners (and to log).
_ACTION_TYPES = ("block_actions", "interactive_message")


def _odd_actions(body: Mapping[str, Any]) -> str | None:
    """Bolt takes a block action's first action and reads its `action_id` (and
    `block_id`) by name: Slack always sends at least one, each an object with a string
    `action_id`."""
    if body.get("type") not in _ACTION_TYPES or "actions" not in body:
        return None
    actions = body["actions"]
    if not isinstance(actions, list) or not actions:
        return "body.actions"
    for index, action in enumerate(actions):
        if (
            not isinstance(action, dict)
            or not isinstance(action.get("action_id"), str)
            or not isinstance(action.get("block_id"), (str, _NULL))
        ):
            return f"body.actions[{index}]"
    return None


def _odd_in(obj: Mapping[str, Any], path: str) -> str | None:
    for key, allowed in _FIELD_TYPES.items():
        if key in obj and not isinstance(obj[key], allowed):
            return f"{path}.{key}"
    for key in ("authorizations", "response_urls", "files"):
        items = obj.get(key)
        if isinstance(items, Sequence):
            for index, item in enumerate(items):
                if not isinstance(item, dict):
                    return f"{path}.{key}[{index}]"
                if problem := _odd_in(item, f"{path}.{key}[{index}]"):
                    return problem
    for key in _NESTED:
        nested = obj.get(key)
        if isinstance(nested, dict) and (problem := _odd_in(nested, f"{path}.{key}")):
            return problem
    return None


def _deeper_than(value: object, limit: int) -> bool:
    # Iterative: a recursive walk is what deep nesting is meant to break.
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return False

"""Building the message list sent to the model: instructions first, then the newest history that fits."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from botservice.core.events import Attachment, ContextMessage
from botservice.core.ports import StoredMessage, StoredToolCall

# The key, on an assistant message with `tool_calls`, of the opaque items the endpoint
# returned with that round in this turn (reasoning items): a backend that takes them
# sends them back before the calls; they are never stored.
REASONING_ITEMS = "reasoning_items"

# Per-message framing the chat format adds around each message's content.
MESSAGE_OVERHEAD_TOKENS = 4
# What one image part costs in the budget (OpenAI's high-detail tile estimate).
IMAGE_TOKENS = 765


@dataclass(frozen=True, slots=True)
class Prompt:
    messages: list[dict[str, Any]]
    # How many stored messages did not fit and were left out (oldest first).
    left_out: int
    tokens: int


def build_prompt(
    *,
    instructions: str,
    instructions_role: Literal["system", "developer"],
    instructions_tokens: int,
    history: Sequence[StoredMessage],
    budget_tokens: int,
    images: Sequence[Attachment] = (),
    tool_calls: Mapping[int, Sequence[StoredToolCall]] | None = None,
    reasoning: Mapping[tuple[int, int], Sequence[dict[str, Any]]] | None = None,
) -> Prompt:
    """Instructions, then as much of `history` (oldest first, ending with the current
    message) as fits in `budget_tokens`, newest kept first.

    The current message is always included, even alone over budget: the endpoint
    then says the message is too long, which the user can act on.

    `tool_calls`: the tool rounds made answering a message, by its id, in order. They
    follow their message (before its answer), as the model made them, and are kept
    or left out with it. `reasoning`: the items a round of this turn came with, by
    (message id, round) (see `REASONING_ITEMS`).
    """
    rounds = tool_calls or {}
    images = [image for image in images if image.shown_to_model]
    used = instructions_tokens + MESSAGE_OVERHEAD_TOKENS + IMAGE_TOKENS * len(images)
    # A long thread's 200 messages are walked every turn: one walk, newest first, does
    # the budget, the answers without their question and the speakers, and each
    # message's prompt entry was built once with it (`StoredMessage.prompt_entry`).
    questions = {message.id for message in history if message.role == "user"}
    kept: list[StoredMessage] = []
    speakers: set[str] = set()
    for position in range(len(history) - 1, -1, -1):
        message = history[position]
        if message.role == "user":
            cost = message.tokens + MESSAGE_OVERHEAD_TOKENS
            if rounds and message.id in rounds:
                cost += tool_rounds_tokens(rounds[message.id])
        elif message.role == "assistant" and message.reply_to_id not in questions:
            # An answer whose question is gone (forgotten, deleted on the platform,
            # expired before its answer, or outside the window): it may repeat what was
            # forgotten, and would sit beside another answer with no question between.
            continue
        else:
            cost = message.tokens + MESSAGE_OVERHEAD_TOKENS
        if kept and used + cost > budget_tokens:
            break
        kept.append(message)
        if message.role == "user":
            speakers.add(message.author_id)
        used += cost
    else:
        position = -1
    left_out = sum(
        1
        for message in history[: position + 1]
        if message.role != "assistant" or message.reply_to_id in questions
    )

    # Name the speakers only when several people share the thread, so the
    # model can tell them apart; a one-person thread stays unprefixed.
    name_speakers = len(speakers) > 1

    messages: list[dict[str, Any]] = [{"role": instructions_role, "content": instructions}]
    last_question = 0
    previous_role: str = instructions_role
    for message in reversed(kept):
        role = message.role
        entry = message.named_prompt_entry if name_speakers else message.prompt_entry
        if role == "assistant" and previous_role == "assistant":
            # Two answers to one question (a turn answered twice): the later one stands.
            messages[-1] = entry
            continue
        messages.append(entry)
        previous_role = role
        if role == "user":
            last_question = len(messages) - 1
            if rounds and message.id in rounds:
                messages += tool_round_messages(rounds[message.id], reasoning)
                previous_role = messages[-1]["role"]
    if images and kept:
        messages[last_question] = _with_image_parts(messages[last_question], images)
    return Prompt(messages=messages, left_out=left_out, tokens=used)


def _with_image_parts(entry: dict[str, Any], images: Sequence[Attachment]) -> dict[str, Any]:
    # A new dict: the entry is the stored message's own, shared between turns.
    return {
        **entry,
        "content": [
            {"type": "text", "text": entry["content"]},
            *(_image_part(image) for image in images),
        ],
    }


# What the model is told of a call that has no result (its turn stopped midway).
NO_RESULT = "(no result: this call did not finish)"


def tool_rounds_tokens(calls: Sequence[StoredToolCall]) -> int:
    """What a message's tool rounds cost in the budget: each result as counted when it
    was stored (with its arguments), plus the framing of each message."""
    round_count = len({call.round for call in calls})
    return sum(call.tokens for call in calls) + MESSAGE_OVERHEAD_TOKENS * (len(calls) + round_count)


def tool_round_messages(
    calls: Sequence[StoredToolCall],
    reasoning: Mapping[tuple[int, int], Sequence[dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """Stored tool rounds in chat-completions shape: per round, the assistant message
    with its `tool_calls` (and the round's `REASONING_ITEMS`, when `reasoning` has
    them), then one `role: tool` message per call, by `tool_call_id`."""
    messages: list[dict[str, Any]] = []
    for _, grouped in itertools.groupby(calls, key=lambda call: call.round):
        round_calls = list(grouped)
        first = round_calls[0]
        carried = reasoning.get((first.user_message_id, first.round)) if reasoning else None
        messages.append(
            {
                **({REASONING_ITEMS: list(carried)} if carried else {}),
                "role": "assistant",
                "content": round_calls[0].round_text or None,
                "tool_calls": [
                    {
                        "id": call.call_id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": replayed_arguments(call)},
                    }
                    for call in round_calls
                ],
            }
        )
        messages += [
            {
                "role": "tool",
                "tool_call_id": call.call_id,
                "content": call.result if call.result is not None else NO_RESULT,
            }
            for call in round_calls
        ]
    return messages


def replayed_arguments(call: StoredToolCall) -> str:
    """The arguments as the model sent them, unless they are not a JSON object: some
    servers refuse a request whose history holds malformed arguments, so those are
    sent back as `{}` (the call's error result says what was wrong)."""
    try:
        parsed = json.loads(call.arguments) if call.arguments else {}
    except ValueError:
        return "{}"
    return call.arguments if isinstance(parsed, dict) and call.arguments else "{}"


def _image_part(image: Attachment) -> dict[str, Any]:
    if image.data is not None:
        encoded = base64.b64encode(image.data).decode("ascii")
        url = f"data:{image.content_type};base64,{encoded}"
    else:
        assert image.public_url  # `shown_to_model` let no private URL through
        url = image.url
    return {"type": "image_url", "image_url": {"url": url}}


def describe_attachments(attachments: Sequence[Attachment]) -> str:
    """A line naming the files that came with a message, so none is dropped silently.

    Images also travel to the model as image parts when its model accepts them (an
    image that does not, over a limit or not downloaded, says why); other files are
    named only (their contents are not read).
    """
    names = ", ".join(
        f"{a.name} ({a.content_type or 'unknown type'}"
        + (f", not shown: {a.skipped})" if a.skipped else ")")
        for a in attachments
    )
    return f"[Attached: {names}]"


def quote_context(context: Sequence[ContextMessage]) -> str:
    """Earlier messages of a thread, quoted ahead of the first question asked in it."""
    lines = ["Earlier in this thread:"]
    for message in context:
        speaker = f"{message.author_name} (bot)" if message.from_bot else message.author_name
        body = message.text.replace("\n", "\n> ")
        lines.append(f"> {speaker}: {body}")
    return "\n".join(lines)


def stored_text(pieces: Sequence[str], audio: Sequence[Attachment]) -> str:
    """A message's text as stored before its audio is heard: the audio files are named
    last, so `heard_text` can put the transcript in their place."""
    if audio:
        pieces = [*pieces, describe_attachments(audio)]
    return "\n\n".join(pieces)


def heard_text(stored: str, audio: Sequence[Attachment], transcript: str) -> str:
    """The stored text with the transcript in place of the audio files' names (after
    anything typed with them)."""
    before = stored.removesuffix(describe_attachments(audio)).rstrip() if audio else stored
    return f"{before}\n\n{transcript}" if before else transcript

"""Which images the model is shown: downloaded bytes, or a URL the platform made public
(Discord's CDN); never a private platform URL, and a skipped image is named with why."""

from __future__ import annotations

import json

from botservice.core.events import Attachment
from botservice.core.ports import StoredMessage
from botservice.core.prompt import build_prompt, describe_attachments

PRIVATE = "https://files.slack.com/files-pri/T1-F1/secret-plans.png"
PUBLIC = "https://cdn.discordapp.com/attachments/1/2/cat.png"


def prompt_with(*images: Attachment) -> list[dict[str, object]]:
    history = [StoredMessage(id=1, role="user", author_id="U1", author_name="Ada",
                             text="look", tokens=1)]  # fmt: skip
    prompt = build_prompt(
        instructions="Be brief.",
        instructions_role="system",
        instructions_tokens=3,
        history=history,
        budget_tokens=100_000,
        images=images,
    )
    return prompt.messages


def test_only_downloaded_bytes_and_public_urls_are_shown() -> None:
    messages = prompt_with(
        Attachment(name="a.png", content_type="image/png", url=PRIVATE, data=b"\x89PNG"),
        Attachment(name="b.png", content_type="image/png", url=PRIVATE),
        Attachment(name="c.png", content_type="image/png", url=PUBLIC, public_url=True),
        Attachment(name="d.png", content_type="image/png", data=b"x", skipped="too large"),
    )

    content = messages[-1]["content"]
    assert isinstance(content, list)
    urls = [part["image_url"]["url"] for part in content if part["type"] == "image_url"]
    assert urls == ["data:image/png;base64,iVBORw==", PUBLIC]
    assert PRIVATE not in json.dumps(messages)


def test_no_image_shown_leaves_plain_text() -> None:
    messages = prompt_with(Attachment(name="b.png", content_type="image/png", url=PRIVATE))
    assert messages[-1]["content"] == "look"


def test_skipped_images_are_named_with_the_reason() -> None:
    assert (
        describe_attachments(
            [
                Attachment(name="a.png", content_type="image/png", data=b"x"),
                Attachment(name="b.png", content_type="image/png", skipped="too large"),
                Attachment(name="r.pdf", content_type="application/pdf"),
            ]
        )
        == "[Attached: a.png (image/png), b.png (image/png, not shown: too large), r.pdf (application/pdf)]"
    )


def test_images_of_one_turn_stay_out_of_the_next_turns_prompt() -> None:
    # Stores keep a conversation's messages between turns, and each message's prompt
    # entry is built once with it: one turn's images must not stick to it.
    history = [StoredMessage(id=1, role="user", author_id="U1", author_name="Ada",
                             text="look", tokens=1)]  # fmt: skip
    image = Attachment(name="a.png", content_type="image/png", url=PRIVATE, data=b"\x89PNG")

    def prompt(*images: Attachment) -> list[dict[str, object]]:
        return build_prompt(
            instructions="Be brief.",
            instructions_role="system",
            instructions_tokens=3,
            history=history,
            budget_tokens=100_000,
            images=images,
        ).messages

    with_image = prompt(image)
    later = prompt()

    assert isinstance(with_image[-1]["content"], list)
    assert later[-1] == {"role": "user", "content": "look"}
    assert history[0].prompt_entry == {"role": "user", "content": "look"}

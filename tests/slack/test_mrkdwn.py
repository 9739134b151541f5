from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from botservice.adapters.slack.mrkdwn import markdown_to_mrkdwn


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("**bold** and __bold__", "*bold* and *bold*"),
        ("*italic* and _italic_", "_italic_ and _italic_"),
        ("~~gone~~", "~gone~"),
        ("[docs](https://e.com/a?b=1&c=2)", "<https://e.com/a?b=1&amp;c=2|docs>"),
        ("# Heading", "*Heading*"),
        ("- one\n* two\n  + three", "• one\n• two\n  • three"),
        ("1. first", "1. first"),
        ("a < b & c > d", "a &lt; b &amp; c &gt; d"),
        ("> quoted **text**", "> quoted *text*"),
        ("`**not bold**`", "`**not bold**`"),
        ("```python\nx = a**2 < 3\n```", "```\nx = a**2 &lt; 3\n```"),
        ("snake_case_name stays", "snake_case_name stays"),
        ("```\nunclosed", "```\nunclosed\n```"),
    ],
)
def test_markdown_to_mrkdwn(markdown: str, mrkdwn: str) -> None:
    assert markdown_to_mrkdwn(markdown) == mrkdwn


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        # Link targets Slack would read as mentions are shown as text.
        ("[hi](!channel)", "hi (!channel)"),
        ("[x](@U0ADMIN)", "x (@U0ADMIN)"),
        ("[x](#C0GENERAL)", "x (#C0GENERAL)"),
        ("[team](!subteam^S0123)", "team (!subteam^S0123)"),
        ("[!here](!here)", "!here"),
        ("[a](javascript:alert)", "a (javascript:alert)"),
        ("[a](//evil.example)", "a (//evil.example)"),
        ("[a](slack://open)", "a (slack://open)"),
        # Allowed schemes stay links, their targets encoded, labels escaped.
        ("[mail me](mailto:ada@example.com)", "<mailto:ada@example.com|mail me>"),
        ("[x](HTTPS://E.COM/a)", "<HTTPS://E.COM/a|x>"),
        ("[<!here>](https://e.com)", "<https://e.com|&lt;!here&gt;>"),
        ("[x](https://e.com/!channel|y)", "<https://e.com/!channel%7Cy|x>"),
        ("[x](https://e.com/<!channel>)", "<https://e.com/%3C!channel|x>"),
        # Slack's own markup from the model is plain text.
        ("<!channel> <!here> <!everyone>", "&lt;!channel&gt; &lt;!here&gt; &lt;!everyone&gt;"),
        ("<@U0ADMIN> <#C0GENERAL|general>", "&lt;@U0ADMIN&gt; &lt;#C0GENERAL|general&gt;"),
        ("<!subteam^S0123|@team>", "&lt;!subteam^S0123|@team&gt;"),
        ("`<!channel>`", "`&lt;!channel&gt;`"),
        ("<mailto:a@b.c|x>", "&lt;mailto:a@b.c|x&gt;"),
        # Characters the converter uses internally are not trusted from the model.
        ("a \ue00099\ue001 b", "a 99 b"),
        ("`\ue0000\ue001`", "`0`"),
    ],
)
def test_model_output_never_mentions_anyone(markdown: str, mrkdwn: str) -> None:
    assert markdown_to_mrkdwn(markdown) == mrkdwn


_ALLOWED_LINK = re.compile(r"<(https?://|mailto:)[^<>|]*(\|[^<>]*)?>", re.IGNORECASE)
_TRICKY = st.sampled_from(
    ["<", ">", "!", "@", "#", "[", "]", "(", ")", "|", "&", "^", "`", "*", "_", "~",
     "channel", "here", "everyone", "subteam", "U0ADMIN", "https://", "mailto:", "javascript:",
     " ", "\n", "```", "\ue000", "\ue001", "0", "&lt;", "-"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(_TRICKY, max_size=30).map("".join))
def test_no_model_output_makes_a_mention_or_a_foreign_link(markdown: str) -> None:
    mrkdwn = markdown_to_mrkdwn(markdown)
    # Every mention starts with "<"; a ">" alone is a quote.
    assert "<" not in _ALLOWED_LINK.sub("", mrkdwn), mrkdwn

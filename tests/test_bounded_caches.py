"""The bounded in-memory caches (cachetools) keep their bounds and their eviction order."""

from __future__ import annotations

from botservice.adapters.discord.reply_chains import ReplyChains
from botservice.adapters.slack.threads import KnownThreads
from botservice.core.events import ConversationKey
from botservice.model.tokens import _CountCache


def key(thread: str, workspace: str = "T1") -> ConversationKey:
    return ConversationKey("slack", workspace, "C1", thread)


def test_known_threads_forget_the_least_recently_added_and_asking_is_no_use() -> None:
    known = KnownThreads(max_entries=2)
    known.add(key("a"))
    known.add(key("b"))
    assert key("a") in known  # asking does not keep "a"
    known.add(key("b"))
    known.add(key("c"))
    assert key("a") not in known
    assert key("b") in known and key("c") in known


def test_known_threads_forget_a_workspace() -> None:
    known = KnownThreads()
    known.add(key("a", "T1"))
    known.add(key("b", "T2"))
    known.forget_workspace("T1")
    assert key("a", "T1") not in known and key("b", "T2") in known


def test_a_reply_chain_someone_reads_stays() -> None:
    chains = ReplyChains(capacity=2)
    chains.remember(1, "root-a")
    chains.remember(2, "root-b")
    assert chains.root_of(1) == "root-a"
    chains.remember(3, "root-c")
    assert chains.root_of(2) is None
    assert chains.root_of(1) == "root-a" and chains.root_of(3) == "root-c"
    assert len(chains) == 2


def test_token_counts_are_remembered_least_recently_used_first_out() -> None:
    encoded: list[str] = []

    def encode(text: str) -> list[int]:
        encoded.append(text)
        return list(range(len(text.split())))

    counts = _CountCache(encode, capacity=2)
    assert counts("one two") == 2
    assert counts("three") == 1
    assert counts("one two") == 2  # remembered, and now the most recent
    assert counts("four five six") == 3  # "three" goes
    assert counts("one two") == 2
    assert counts("three") == 1
    assert encoded == ["one two", "three", "four five six", "three"]

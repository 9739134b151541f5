"""Cleaning of what people type, before it is stored or sent anywhere."""

from __future__ import annotations

import re
import unicodedata

# C0/C1 control characters except tab and newline: terminals and some model
# servers choke on them, and they carry no meaning in a chat message.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_text(text: str) -> str:
    """Drop control characters and unpaired surrogates; normalize newlines and Unicode form."""
    # Lone surrogates (from broken clients or JSON escapes) cannot be encoded as
    # UTF-8, so the database and the model endpoint would reject the message.
    text = text.encode("utf-8", "replace").decode("utf-8") if _has_surrogates(text) else text
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    return unicodedata.normalize("NFC", text).strip()


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False

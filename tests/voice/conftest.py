from __future__ import annotations

import pytest

from botservice.voice.speech import EspeakSpeechEngine


@pytest.fixture
def espeak() -> EspeakSpeechEngine:
    return EspeakSpeechEngine()

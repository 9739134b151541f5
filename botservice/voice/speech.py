"""Speech engines: text in, audio (a WAV file's bytes) out.

Two engines stand behind one port: an OpenAI-compatible `/audio/speech`
endpoint, and espeak-ng running locally (offline, a few milliseconds a
sentence) for when no speech endpoint is configured, and for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

import httpx
from pydantic import SecretStr

from botservice.core.errors import BotServiceError
from botservice.core.redact import redact_url, scrub
from botservice.core.voice_settings import DEFAULT_SPEECH_MODEL, VoiceSettings
from botservice.voice.audio import kill_process

log = logging.getLogger(__name__)


class SpeechEngine(Protocol):
    """Turns one piece of text (a sentence, usually) into audio ffmpeg can read."""

    @property
    def description(self) -> str:
        """Which engine this is, for operators ("espeak-ng (en-us)")."""
        ...

    async def synthesize(
        self, text: str, *, voice: str | None = None, model: str | None = None
    ) -> bytes:
        """Audio of `text` (WAV). `voice` and `model` override the engine's defaults (a
        channel's own); an engine without models ignores `model`. Raises `SpeechError`."""
        ...

    async def aclose(self) -> None: ...


class SpeechError(BotServiceError):
    """Speech could not be synthesized."""

    user_message = "I could not speak this answer; the text reply is above."


class SpeechEngineMissing(SpeechError):
    def __init__(self, executable: str) -> None:
        super().__init__(f"{executable} is not installed (apt-get install espeak-ng)")
        self.executable = executable

    @property
    def user_message(self) -> str:  # type: ignore[override]
        return (
            "Voice needs espeak-ng (or a speech endpoint), which is not set up here; "
            "an operator can run `apt-get install espeak-ng`."
        )


class SpeechEndpointError(SpeechError):
    """The speech endpoint failed: `status` is the HTTP status, or None if it was not reached."""

    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(f"speech endpoint: HTTP {status}: {reason}" if status else reason)
        self.status = status
        self.reason = reason

    @property
    def user_message(self) -> str:  # type: ignore[override]
        if self.status in (401, 403):
            return "The speech endpoint refused my credentials; an operator needs to check the API key."
        if self.status == 404:
            return "The speech endpoint does not know the configured speech model or voice."
        if self.status == 429:
            return "The speech endpoint is rate-limiting me; the text reply is above."
        if self.status is None:
            return "I could not reach the speech endpoint; the text reply is above."
        return f"The speech endpoint failed (HTTP {self.status}); the text reply is above."


class OpenAISpeechEngine:
    """POST {base_url}/audio/speech, one pooled HTTP client for the engine's lifetime."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        voice: str = "alloy",
        api_key: SecretStr | str | None = None,
        timeout_seconds: float = 30.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.voice = voice
        headers = {}
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._headers = headers
        self._key = key or ""
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_seconds, connect=min(5.0, timeout_seconds))
        )

    @property
    def description(self) -> str:
        return (
            f"speech endpoint {redact_url(self.base_url)} (model {self.model}, voice {self.voice})"
        )

    async def synthesize(
        self, text: str, *, voice: str | None = None, model: str | None = None
    ) -> bytes:
        body = {
            "model": model or self.model,
            "voice": voice or self.voice,
            "input": text,
            "response_format": "wav",
        }
        try:
            response = await self._client.post(
                f"{self.base_url}/audio/speech", json=body, headers=self._headers
            )
        except httpx.TimeoutException:
            raise SpeechEndpointError(None, "the speech endpoint timed out") from None
        except httpx.HTTPError as error:
            raise SpeechEndpointError(
                None, f"could not reach the speech endpoint ({type(error).__name__})"
            ) from None
        if response.status_code != 200:
            # Endpoints may echo the key they rejected; the reason is logged.
            raise SpeechEndpointError(
                response.status_code, scrub(_error_reason(response), self._key)
            )
        if not response.content:
            raise SpeechEndpointError(response.status_code, "empty audio")
        return response.content

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


class EspeakSpeechEngine:
    """espeak-ng as a subprocess: `espeak-ng --stdout` with the text on stdin."""

    def __init__(
        self,
        *,
        executable: str = "espeak-ng",
        voice: str = "en-us",
        words_per_minute: int = 175,
    ) -> None:
        self.executable = executable
        self.voice = voice
        self.words_per_minute = words_per_minute

    @property
    def description(self) -> str:
        return f"espeak-ng (voice {self.voice}, {self.words_per_minute} wpm)"

    async def synthesize(
        self, text: str, *, voice: str | None = None, model: str | None = None
    ) -> bytes:
        # `voice` is an espeak-ng voice name ("en-gb", "de"); espeak-ng has no models.
        try:
            process = await asyncio.create_subprocess_exec(
                self.executable,
                "--stdout",
                "--stdin",
                "-v",
                voice or self.voice,
                "-s",
                str(self.words_per_minute),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError):
            raise SpeechEngineMissing(self.executable) from None
        try:
            # espeak-ng reads stdin line by line; one line keeps it one utterance.
            line = " ".join(text.split()) + "\n"
            audio, stderr = await process.communicate(line.encode())
        except BaseException:
            # Cancelled (an interruption): do not leave espeak-ng running.
            await kill_process(process)
            raise
        if process.returncode != 0 or not audio:
            reason = stderr.decode(errors="replace").strip() or f"exit status {process.returncode}"
            raise SpeechError(f"espeak-ng failed: {reason}")
        return audio

    async def aclose(self) -> None:
        return None


def create_speech_engine(
    voice: VoiceSettings,
    *,
    model_base_url: str,
    api_key: SecretStr | str | None = None,
    client: httpx.AsyncClient | None = None,
) -> SpeechEngine:
    """The endpoint engine when a speech model is configured (or forced), else espeak-ng.

    `model_base_url` and `api_key` are the chat model's (`settings.model`); a
    `speech_base_url` of its own replaces the URL, the key is shared.
    """
    if voice.uses_endpoint:
        return OpenAISpeechEngine(
            base_url=voice.speech_base_url or model_base_url,
            model=voice.speech_model or DEFAULT_SPEECH_MODEL,
            voice=voice.speech_voice,
            api_key=api_key,
            timeout_seconds=voice.speech_timeout_seconds,
            client=client,
        )
    return EspeakSpeechEngine(
        executable=voice.espeak_executable,
        voice=voice.espeak_voice,
        words_per_minute=voice.espeak_words_per_minute,
    )


def _error_reason(response: httpx.Response) -> str:
    """The endpoint's own error message if it sent one (never the request, which holds text)."""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        payload = response.json()
        error = payload.get("error", payload)
        message = error.get("message") if isinstance(error, dict) else error
        if message:
            return str(message)[:200]
    return response.reason_phrase or "error"

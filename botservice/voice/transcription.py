"""Voice messages and audio clips to text, over an OpenAI-compatible `/audio/transcriptions`."""

from __future__ import annotations

import contextlib
import logging

import httpx
from pydantic import SecretStr

from botservice.core.errors import TranscriptionError
from botservice.core.redact import scrub
from botservice.core.voice_settings import VoiceSettings

log = logging.getLogger(__name__)


class AudioTooLarge(TranscriptionError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"audio of {size} bytes exceeds the {limit}-byte limit")
        self.size = size
        self.limit = limit

    @property
    def user_message(self) -> str:  # type: ignore[override]
        return (
            f"That audio is too long for me to transcribe ({_megabytes(self.size)}; "
            f"the limit is {_megabytes(self.limit)})."
        )


class NothingHeard(TranscriptionError):
    user_message = "I could not hear any words in that audio."


class TranscriptionEndpointError(TranscriptionError):
    """The endpoint failed: `status` is the HTTP status, or None if it was not reached."""

    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(f"transcription endpoint: HTTP {status}: {reason}" if status else reason)
        self.status = status
        self.reason = reason

    @property
    def user_message(self) -> str:  # type: ignore[override]
        if self.status in (401, 403):
            return "The transcription endpoint refused my credentials; an operator needs to check the API key."
        if self.status == 404:
            return "The transcription endpoint does not know the configured transcription model."
        if self.status == 413:
            return "That audio is too large for the transcription endpoint."
        if self.status == 400:
            return "The transcription endpoint could not read that audio format."
        if self.status == 429:
            return "The transcription endpoint is rate-limiting me; please try again in a minute."
        if self.status is None:
            return "I could not reach the transcription endpoint; please try again shortly."
        return f"The transcription endpoint failed (HTTP {self.status}); please try again."


class Transcriber:
    """POST {base_url}/audio/transcriptions as multipart; one pooled HTTP client."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str = "whisper-1",
        api_key: SecretStr | str | None = None,
        timeout_seconds: float = 60.0,
        max_bytes: int = 25 * 1024 * 1024,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_bytes = max_bytes
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._key = key or ""
        self._owns_client = client is None
        self._timeout = httpx.Timeout(timeout_seconds, connect=min(5.0, timeout_seconds))
        # Made on the first transcription: a default client loads httpcore and the CA
        # bundle, start-up time that a bot receiving no voice message never needs.
        self._client_or_none = client

    def _client(self) -> httpx.AsyncClient:
        if self._client_or_none is None:
            self._client_or_none = httpx.AsyncClient(timeout=self._timeout)
        return self._client_or_none

    @classmethod
    def from_settings(
        cls,
        voice: VoiceSettings,
        *,
        model_base_url: str,
        api_key: SecretStr | str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> Transcriber:
        """`model_base_url` and `api_key` are the chat model's (`settings.model`)."""
        return cls(
            base_url=voice.transcription_base_url or model_base_url,
            model=voice.transcription_model,
            api_key=api_key,
            timeout_seconds=voice.transcription_timeout_seconds,
            max_bytes=voice.transcription_max_bytes,
            client=client,
        )

    async def transcribe(
        self,
        audio: bytes,
        *,
        filename: str = "audio.ogg",
        content_type: str = "application/octet-stream",
        language: str | None = None,
        prompt: str | None = None,
    ) -> str:
        """The words heard in `audio` (any format the endpoint takes: ogg, mp3, wav, m4a...).

        Raises `AudioTooLarge` before uploading, `NothingHeard` for silence,
        `TranscriptionEndpointError` when the endpoint fails or cannot be reached.
        """
        if len(audio) > self.max_bytes:
            raise AudioTooLarge(len(audio), self.max_bytes)
        if not audio:
            raise NothingHeard("empty audio")
        data = {"model": self.model, "response_format": "json"}
        if language:
            data["language"] = language
        if prompt:
            data["prompt"] = prompt
        try:
            response = await self._client().post(
                f"{self.base_url}/audio/transcriptions",
                data=data,
                files={"file": (filename, audio, content_type)},
                headers=self._headers,
            )
        except httpx.TimeoutException:
            raise TranscriptionEndpointError(None, "the transcription endpoint timed out") from None
        except httpx.HTTPError as error:
            raise TranscriptionEndpointError(
                None, f"could not reach the transcription endpoint ({type(error).__name__})"
            ) from None
        if response.status_code != 200:
            # Endpoints may echo the key they rejected; the reason is logged.
            raise TranscriptionEndpointError(
                response.status_code, scrub(_error_reason(response), self._key)
            )
        text = _transcript_of(response)
        log.debug("transcribed %d bytes of audio into %d characters", len(audio), len(text))
        if not text:
            raise NothingHeard("the transcript is empty")
        return text

    async def aclose(self) -> None:
        if self._owns_client and self._client_or_none is not None:
            await self._client_or_none.aclose()


def _transcript_of(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        # Some servers answer plain text whatever was asked.
        return response.text.strip()
    if isinstance(payload, dict) and isinstance(payload.get("text"), str):
        return str(payload["text"]).strip()
    raise TranscriptionEndpointError(response.status_code, "the answer has no `text` field")


def _error_reason(response: httpx.Response) -> str:
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        payload = response.json()
        error = payload.get("error", payload)
        message = error.get("message") if isinstance(error, dict) else error
        if message:
            return str(message)[:200]
    return response.reason_phrase or "error"


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"

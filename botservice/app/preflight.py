"""The model endpoint checked before anything heavy is imported.

A newcomer's first command usually has no endpoint configured, or a mistyped URL.
Those answers must come at once (the settings models, the database and the platform
libraries take seconds to load on a small machine), so this module reads only the
two settings involved, with the standard library, the way `config.load_settings`
reads them: `OPENAI_BASE_URL` / `OPENAI_API_KEY`, else `BOTSERVICE_MODEL__BASE_URL`,
else the settings file, else the default. Anything it is unsure of (an unreadable
settings file, say) it leaves to the full check, which runs next in any case and
says the same thing for the same mistake.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

from botservice.core.errors import ConfigError
from botservice.core.redact import redact_url

DEFAULT_BASE_URL = "https://api.openai.com/v1"
NO_ENDPOINT = (
    "no model endpoint is configured: set OPENAI_API_KEY to use OpenAI, or point "
    "OPENAI_BASE_URL at a local OpenAI-compatible server, e.g. "
    "OPENAI_BASE_URL=http://localhost:11434/v1 for Ollama"
)
# Where config.load_settings looks when BOTSERVICE_CONFIG is not set.
_DEFAULT_CONFIG = Path("config/botservice.toml")
_PACKAGED_CONFIG = Path(__file__).resolve().parents[2] / "config" / "botservice.toml"


def require_model_endpoint(base_url: str, api_key: object | None) -> None:
    """The one configuration mistake every newcomer makes first gets a sentence of its own."""
    if api_key is None and "api.openai.com" in base_url:
        raise ConfigError("OPENAI_API_KEY", NO_ENDPOINT)


def check_base_url(base_url: str) -> None:
    parsed = urlparse(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError("OPENAI_BASE_URL", f"{redact_url(base_url)!r} is not an http(s) URL")


def check_model_endpoint(*, needs_endpoint: bool, environ: Mapping[str, str] | None = None) -> None:
    """Raise the `ConfigError` the full settings check would raise for the endpoint.

    `needs_endpoint`: the command talks to the model (`run`, `chat`), so having none
    configured is an error, not only a malformed URL.
    """
    env = os.environ if environ is None else environ
    model = _model_section(env)
    if model is None:
        return
    base_url = (
        env.get("OPENAI_BASE_URL")
        or env.get("BOTSERVICE_MODEL__BASE_URL")
        or model.get("base_url", DEFAULT_BASE_URL)
    )
    if not isinstance(base_url, str):
        return
    check_base_url(base_url)
    if needs_endpoint:
        require_model_endpoint(base_url, env.get("OPENAI_API_KEY") or None)


def _model_section(env: Mapping[str, str]) -> Mapping[str, object] | None:
    """The settings file's [model] table ({} when there is no file); None when unsure."""
    if env.get("BOTSERVICE_CONFIG"):
        path = Path(env["BOTSERVICE_CONFIG"])
    else:
        path = _DEFAULT_CONFIG if _DEFAULT_CONFIG.exists() else _PACKAGED_CONFIG
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        return None if env.get("BOTSERVICE_CONFIG") else {}
    except (OSError, tomllib.TOMLDecodeError):
        return None
    model = data.get("model", {})
    return model if isinstance(model, dict) else None

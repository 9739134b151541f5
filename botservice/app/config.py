"""Settings: `config/botservice.toml` for defaults, the environment over it.

Secrets (API keys, tokens, signing secrets) are read from the environment only.
Every mistake becomes a `ConfigError` naming the setting, which the CLI turns
into one sentence and exit status 2.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import ValidationError

from botservice.core.errors import ConfigError
from botservice.core.redact import redact_url, scrub
from botservice.core.settings import Settings

DEFAULT_CONFIG_PATH = Path("config/botservice.toml")

log = logging.getLogger(__name__)


# Environment variable -> (section, key). Secrets are only ever read from here.
_ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "OPENAI_API_KEY": ("model", "api_key"),
    "OPENAI_BASE_URL": ("model", "base_url"),
    "BOTSERVICE_MODEL": ("model", "name"),
    "DATABASE_URL": ("database_url",),
    "PORT": ("http", "port"),
    "BOTSERVICE_LOG_LEVEL": ("log_level",),
    "BOTSERVICE_LOG_FORMAT": ("log_format",),
    "SLACK_BOT_TOKEN": ("slack", "bot_token"),
    "SLACK_SIGNING_SECRET": ("slack", "signing_secret"),
    "SLACK_APP_TOKEN": ("slack", "app_token"),
    "SLACK_CLIENT_ID": ("slack", "client_id"),
    "SLACK_CLIENT_SECRET": ("slack", "client_secret"),
    "SLACK_API_URL": ("slack", "api_url"),
    "DISCORD_TOKEN": ("discord", "token"),
    "DISCORD_API_URL": ("discord", "api_url"),
    "DISCORD_GATEWAY_URL": ("discord", "gateway_url"),
    "DISCORD_SHARD_COUNT": ("discord", "shard_count"),
    "DISCORD_SHARD_IDS": ("discord", "shard_ids"),
}
_SECRET_KEYS = {"api_key", "bot_token", "signing_secret", "app_token", "client_secret", "token"}
_LIST_KEYS = {"shard_ids", "admin_user_ids"}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file named by BOTSERVICE_CONFIG (or the default) and apply the environment."""
    env = os.environ if environ is None else environ
    if env.get("BOTSERVICE_CONFIG"):
        path: Path | Traversable = Path(env["BOTSERVICE_CONFIG"])
        missing = f"no settings file at {path}"
    else:
        path = _default_path()
        # Never fall back to the code's defaults in silence: they differ from the
        # shipped ones (the instructions, the models), so a broken install says so.
        missing = (
            f"the shipped defaults ({path}) are missing from this installation; "
            "reinstall botservice or point BOTSERVICE_CONFIG at a settings file"
        )
    data = _read_toml(path, missing=missing)
    _refuse_secrets_in_file(data, path)
    _read_old_server_section(data, path)
    _apply_environment(data, env)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(where, _explain(first)) from None
    _check_urls(settings)
    return settings


def packaged_defaults() -> Traversable:
    """The shipped `config/botservice.toml`, read through the installed package.

    `botservice/config` is a symlink to the repository's top-level `config/` (the
    design fixes that folder), the same way `adapters/` and `storage/` become
    `botservice.adapters` and `botservice.storage`: setuptools follows it into the
    wheel as package data, and an editable install resolves it in the checkout, so
    both read one file and there is no copy to keep in step (a build step copying
    the file would need a setuptools plugin, and an editable install would skip it).
    """
    return resources.files("botservice") / "config" / "botservice.toml"


def _default_path() -> Path | Traversable:
    # A `config/botservice.toml` in the working directory (a checkout) comes first.
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else packaged_defaults()


def _read_toml(path: Path | Traversable, *, missing: str) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError("BOTSERVICE_CONFIG", missing) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(str(path), f"is not valid TOML ({error})") from None


def _refuse_secrets_in_file(data: Mapping[str, Any], path: Path | Traversable) -> None:
    for section, values in data.items():
        if isinstance(values, Mapping):
            for key in values:
                if key in _SECRET_KEYS:
                    raise ConfigError(
                        f"{section}.{key}",
                        f"secrets are read from the environment only; remove it from {path}",
                    )


def _apply_environment(data: dict[str, Any], env: Mapping[str, str]) -> None:
    # Any setting: BOTSERVICE_<SECTION>__<KEY>, e.g. BOTSERVICE_STORAGE__RETENTION_DAYS=7.
    for name, value in env.items():
        if name.startswith("BOTSERVICE_") and "__" in name:
            section, _, key = name.removeprefix("BOTSERVICE_").lower().partition("__")
            if key in _SECRET_KEYS:
                continue
            if section == _OLD_HTTP_SECTION:
                section = "http"
                _warn_renamed(name, f"BOTSERVICE_HTTP__{key.upper()}")
            _set_path(data, (section, key), _list_value(key, value))
    # The named variables come last, so they win: a platform's PORT is the port.
    for name, path in _ENV_OVERRIDES.items():
        if named := env.get(name):
            _set_path(data, path, _list_value(path[-1], named))


# `[server]` became `[http]` (with `host` beside `port`). A file or a variable
# written for the old name keeps working, with a warning, rather than stopping a
# deployment that worked; `[http]` and the environment win over it.
_OLD_HTTP_SECTION = "server"


def _read_old_server_section(data: dict[str, Any], path: Path | Traversable) -> None:
    old = data.pop(_OLD_HTTP_SECTION, None)
    if old is None:
        return
    if not isinstance(old, Mapping):
        raise ConfigError(_OLD_HTTP_SECTION, f"is now called [http]; rename it in {path}")
    http = data.setdefault("http", {})
    for key, value in old.items():
        http.setdefault(key, value)
    _warn_renamed(f"[{_OLD_HTTP_SECTION}] in {path}", "[http]")


def _warn_renamed(old: str, new: str) -> None:
    # Settings load before logging is set up: Python's last-resort handler prints
    # this one line to stderr, which is where an operator looks.
    log.warning("settings: %s is deprecated; rename it to %s (it means the same)", old, new)


def _list_value(key: str, value: str) -> Any:
    if key in _LIST_KEYS:
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    target = data
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value


def _explain(error: Mapping[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "is not a known setting (check the spelling against config/botservice.toml)"
    return f"{error['msg'].lower()} (got {scrub(repr(error.get('input')))})"


def _check_urls(settings: Settings) -> None:
    for setting, url in (
        ("OPENAI_BASE_URL", settings.model.base_url),
        ("SLACK_API_URL", settings.slack.api_url),
        ("DISCORD_API_URL", settings.discord.api_url),
        ("voice.speech_base_url", settings.voice.speech_base_url or settings.model.base_url),
        (
            "voice.transcription_base_url",
            settings.voice.transcription_base_url or settings.model.base_url,
        ),
    ):
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(setting, f"{redact_url(url)!r} is not an http(s) URL")
    scheme = settings.database_url.partition("://")[0]
    if scheme not in _DATABASE_SCHEMES:
        raise ConfigError(
            "DATABASE_URL",
            "must start with sqlite+aiosqlite:/// or postgresql+asyncpg:// "
            "(sqlite:/// and postgres:// are accepted too)",
        )


_DATABASE_SCHEMES = {"sqlite", "sqlite+aiosqlite", "postgres", "postgresql", "postgresql+asyncpg"}

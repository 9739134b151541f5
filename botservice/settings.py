"""Settings: `config/botservice.toml` for defaults, the environment over it.

Secrets (API keys, tokens, signing secrets) are read from the environment only.
Every mistake becomes a `ConfigError` naming the setting, which the CLI turns
into one sentence and exit status 2.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from botservice.errors import ConfigError
from botservice.redact import redact_url, scrub
from botservice.voice_settings import VoiceSettings

DEFAULT_CONFIG_PATH = Path("config/botservice.toml")
# The defaults ship inside the package too, so an installed `botservice` works
# from any directory.
PACKAGED_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "botservice.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelInfo(_Section):
    context_window: int = Field(default=16384, gt=0)
    instructions_role: Literal["system", "developer"] = "system"
    accepts_images: bool = False


class ModelSettings(_Section):
    name: str = "gpt-4o-mini"
    base_url: str = "https://api.openai.com/v1"
    api_key: SecretStr | None = None
    max_answer_tokens: int = Field(default=1024, gt=0)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    read_timeout_seconds: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=4, ge=1, le=10)
    retry_after_cap_seconds: float = Field(default=20.0, ge=0)
    backoff_base_seconds: float = Field(default=0.5, ge=0)
    # `/model set` also accepts the names the endpoint lists at /models, not only [models].
    allow_discovered: bool = False


class ConversationSettings(_Section):
    default_instructions: str = "You are a helpful assistant."
    max_message_chars: int = Field(default=20000, gt=0)
    history_limit: int = Field(default=200, gt=0)
    stream_update_interval_seconds: float = Field(default=1.0, ge=0)
    resume_pending_max_age_seconds: float = Field(default=900, ge=0)
    turn_takeover_seconds: float = Field(default=20, gt=0)
    turn_heartbeat_seconds: float = Field(default=5, gt=0)
    store_retry_seconds: float = Field(default=300, ge=0)


class StorageSettings(_Section):
    retention_days: int = Field(default=30, ge=0)
    purge_interval_minutes: float = Field(default=60, gt=0)
    purge_batch_size: int = Field(default=5000, gt=0)
    dedupe_days: int = Field(default=2, ge=1)


class ImageSettings(_Section):
    """How much of a message's images one turn may show the model (the rest are named)."""

    max_images_per_turn: int = Field(default=4, ge=0)
    max_image_bytes_per_turn: int = Field(default=20 * 1024 * 1024, ge=0)


class LimitSettings(_Section):
    # 0 turns a limit off.
    messages_per_minute: int = Field(default=10, ge=0)
    max_concurrent_model_calls: int = Field(default=16, ge=1)
    max_queued_turns: int = Field(default=100, ge=0)
    user_daily_tokens: int = Field(default=0, ge=0)
    channel_daily_tokens: int = Field(default=0, ge=0)


class AccessSettings(_Section):
    admin_user_ids: tuple[str, ...] = ()


class ServerSettings(_Section):
    port: int = Field(default=3000, ge=0, le=65535)


class SlackSettings(_Section):
    bot_token: SecretStr | None = None
    signing_secret: SecretStr | None = None
    app_token: SecretStr | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    api_url: str = "https://slack.com/api/"
    command: str = "/botservice"

    @property
    def configured(self) -> bool:
        return bool(self.bot_token or self.app_token or self.client_id)


class DiscordSettings(_Section):
    token: SecretStr | None = None
    api_url: str = "https://discord.com/api/v10"
    gateway_url: str | None = None
    shard_count: int | None = Field(default=None, ge=1)
    shard_ids: tuple[int, ...] = ()

    @property
    def configured(self) -> bool:
        return self.token is not None


class Settings(_Section):
    model: ModelSettings = ModelSettings()
    model_defaults: ModelInfo = ModelInfo()
    models: dict[str, ModelInfo] = {}
    conversation: ConversationSettings = ConversationSettings()
    storage: StorageSettings = StorageSettings()
    access: AccessSettings = AccessSettings()
    images: ImageSettings = ImageSettings()
    limits: LimitSettings = LimitSettings()
    server: ServerSettings = ServerSettings()
    slack: SlackSettings = SlackSettings()
    discord: DiscordSettings = DiscordSettings()
    voice: VoiceSettings = VoiceSettings()
    database_url: str = "sqlite+aiosqlite:///botservice.db"
    log_level: str = "INFO"

    def model_info(self, model: str) -> ModelInfo:
        return self.models.get(model, self.model_defaults)

    @property
    def configured_models(self) -> tuple[str, ...]:
        """The models `/model set` accepts without asking the endpoint: the default and [models]."""
        return tuple(sorted({self.model.name, *self.models}))

    def chat_model(self, chosen: str | None) -> str:
        """The model to answer with: the channel's choice while it is still offered (a
        choice made before the operator narrowed [models] falls back), else the default."""
        if chosen and (self.model.allow_discovered or chosen in self.configured_models):
            return chosen
        return self.model.name


# Environment variable -> (section, key). Secrets are only ever read from here.
_ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "OPENAI_API_KEY": ("model", "api_key"),
    "OPENAI_BASE_URL": ("model", "base_url"),
    "BOTSERVICE_MODEL": ("model", "name"),
    "DATABASE_URL": ("database_url",),
    "PORT": ("server", "port"),
    "BOTSERVICE_LOG_LEVEL": ("log_level",),
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
    path = Path(env["BOTSERVICE_CONFIG"]) if env.get("BOTSERVICE_CONFIG") else _default_path()
    data = _read_toml(path, explicit="BOTSERVICE_CONFIG" in env)
    _refuse_secrets_in_file(data, path)
    _apply_environment(data, env)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(where, _explain(first)) from None
    _check_urls(settings)
    return settings


def _default_path() -> Path:
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else PACKAGED_CONFIG_PATH


def _read_toml(path: Path, *, explicit: bool) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        if explicit:
            raise ConfigError("BOTSERVICE_CONFIG", f"no settings file at {path}") from None
        return {}
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(str(path), f"is not valid TOML ({error})") from None


def _refuse_secrets_in_file(data: Mapping[str, Any], path: Path) -> None:
    for section, values in data.items():
        if isinstance(values, Mapping):
            for key in values:
                if key in _SECRET_KEYS:
                    raise ConfigError(
                        f"{section}.{key}",
                        f"secrets are read from the environment only; remove it from {path}",
                    )


def _apply_environment(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, path in _ENV_OVERRIDES.items():
        value = env.get(name)
        if value:
            _set_path(data, path, _list_value(path[-1], value))
    # Any other setting: BOTSERVICE_<SECTION>__<KEY>, e.g. BOTSERVICE_STORAGE__RETENTION_DAYS=7.
    for name, value in env.items():
        if name.startswith("BOTSERVICE_") and "__" in name:
            section, _, key = name.removeprefix("BOTSERVICE_").lower().partition("__")
            if key in _SECRET_KEYS:
                continue
            _set_path(data, (section, key), _list_value(key, value))


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

"""The settings every part reads: typed, frozen, validated (`botservice.app.config`
loads them from `config/botservice.toml` and the environment)."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal, Self
from urllib.parse import urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from botservice.core.voice_settings import VoiceSettings


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelInfo(_Section):
    context_window: int = Field(default=16384, gt=0)
    instructions_role: Literal["system", "developer"] = "system"
    accepts_images: bool = False
    # Answers are asked for in background mode on the Responses backend (reasoning
    # models that think for minutes): a dropped stream is resumed, and a restart
    # follows the same response instead of asking again.
    background: bool = False
    # This process paces its calls of the model under these (0: only the endpoint's
    # x-ratelimit headers pace it).
    requests_per_minute: int = Field(default=0, ge=0)
    tokens_per_minute: int = Field(default=0, ge=0)
    # Dollars per million tokens; 0 means unpriced (usage is still counted).
    price_input_per_mtok: float = Field(default=0.0, ge=0)
    price_output_per_mtok: float = Field(default=0.0, ge=0)
    # Cached prompt tokens; unset: the input price.
    price_cached_input_per_mtok: float | None = Field(default=None, ge=0)

    def cost(self, *, prompt: int, completion: int, cached: int = 0) -> float:
        """Dollars for one call's tokens. `cached` is part of `prompt` (as OpenAI counts)."""
        cached = min(cached, prompt)
        cached_price = self.price_cached_input_per_mtok
        if cached_price is None:
            cached_price = self.price_input_per_mtok
        return (
            (prompt - cached) * self.price_input_per_mtok
            + cached * cached_price
            + completion * self.price_output_per_mtok
        ) / 1_000_000


class ModelSettings(_Section):
    name: str = "gpt-4o-mini"
    base_url: str = "https://api.openai.com/v1"
    # Which of the endpoint's APIs answers: Chat Completions or the Responses API.
    api: Literal["chat", "responses"] = "chat"
    api_key: SecretStr | None = None
    max_answer_tokens: int = Field(default=1024, gt=0)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    read_timeout_seconds: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=4, ge=1, le=10)
    retry_after_cap_seconds: float = Field(default=20.0, ge=0)
    backoff_base_seconds: float = Field(default=0.5, ge=0)
    # `/model set` also accepts the names the endpoint lists at /models, not only [models].
    allow_discovered: bool = False
    # Send `parallel_tool_calls: true` with tools (OpenAI, vLLM and llama.cpp take it);
    # false for an endpoint that refuses fields it does not know.
    parallel_tool_calls: bool = True


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
    # Usage rows (tokens and cost, no text) are kept longer than messages.
    usage_retention_days: int = Field(default=400, ge=1)


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
    # Quotas from the usage ledger (botservice/core/usage.py); 0 turns one off.
    user_monthly_tokens: int = Field(default=0, ge=0)
    channel_monthly_tokens: int = Field(default=0, ge=0)
    user_daily_cost: float = Field(default=0.0, ge=0)
    user_monthly_cost: float = Field(default=0.0, ge=0)
    channel_daily_cost: float = Field(default=0.0, ge=0)
    channel_monthly_cost: float = Field(default=0.0, ge=0)
    # The bot's admins (access.admin_user_ids) are not held to the quotas or daily budgets.
    quota_exempt_admins: bool = True


class ToolSettings(_Section):
    """Bounds of the tool loop (botservice/core/tool_rounds.py)."""

    max_rounds: int = Field(default=5, ge=1)
    max_calls_per_round: int = Field(default=8, ge=1)
    call_timeout_seconds: float = Field(default=15.0, gt=0)
    # All tool calls of one turn together (waiting for a person's approval not counted).
    turn_timeout_seconds: float = Field(default=60.0, gt=0)
    max_result_bytes: int = Field(default=16 * 1024, ge=256)
    confirm_timeout_seconds: float = Field(default=120.0, gt=0)


class RemoteMcpServer(_Section):
    """A remote MCP server the Responses endpoint calls itself (`type: mcp`)."""

    # Names the server in requests and in the policy name `hosted__mcp_<label>`.
    label: str = Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")
    url: str
    description: str = ""
    # "always": each call the model makes waits for the asker's Approve / Deny.
    require_approval: Literal["always", "never"] = "always"
    # Only these of its tools (empty: all it offers).
    allowed_tools: tuple[str, ...] = ()
    # The environment variable holding the token sent as the server's `authorization`
    # (secrets stay out of the settings file); never logged.
    authorization_env: str | None = None


class HostedToolSettings(_Section):
    """Tools the model endpoint runs itself (the Responses API only), as far as the
    endpoint offers them. Each is off in every channel until its managers enable it
    (`tools enable hosted__web_search`, or `hosted__*`)."""

    web_search: bool = False
    # file_search is offered when vector stores are named here.
    file_search_vector_store_ids: tuple[str, ...] = ()
    code_interpreter: bool = False
    image_generation: bool = False
    mcp: tuple[RemoteMcpServer, ...] = ()


class AccessSettings(_Section):
    admin_user_ids: tuple[str, ...] = ()


class HttpSettings(_Section):
    """Where the HTTP server (Slack events, health checks) listens. `[server]`, its
    old name, is still read (see `botservice.app.config`)."""

    # Every interface: a platform's router or load balancer reaches the process from outside.
    host: str = Field(default="0.0.0.0", min_length=1)
    port: int = Field(default=3000, ge=0, le=65535)
    # On PostgreSQL, acknowledge Slack's HTTP message events on a thread of their own
    # (botservice.core.accept_loop). Off by default: on a crowded two-core machine it
    # lowered the median acknowledgement but not the 99th percentile (README, Benchmarks).
    accept_thread: bool = False


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
    # Earlier messages of a reply chain the bot never saw, read once when it is mentioned
    # in it (then stored with the question, never read again); 0 reads none.
    unseen_chain_fetch: int = Field(default=10, ge=0, le=100)

    @property
    def configured(self) -> bool:
        return self.token is not None


class BuiltinToolSettings(_Section):
    """The tools that ship with the bot (botservice/tools/)."""

    # The IANA timezone `current_time` answers in by default, and search results show.
    timezone: str = "UTC"
    # `fetch_url` (a web page's text) is offered only when this is true.
    fetch_url: bool = False
    # At most this many bytes of a page are read, within this many seconds.
    fetch_max_bytes: int = Field(default=1_000_000, gt=0)
    fetch_timeout_seconds: float = Field(default=10.0, gt=0)
    # Networks fetched although they are not public (CIDR, e.g. "10.1.2.0/24").
    fetch_allowed_networks: tuple[str, ...] = ()

    @field_validator("fetch_allowed_networks")
    @classmethod
    def _networks(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not a network (such as 10.1.2.0/24)") from None
        return values

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("is not an IANA timezone name (such as Europe/Paris or UTC)") from None
        return value


# What the model APIs accept in a tool name leaves room for `server__tool`.
_MCP_SERVER_NAME = r"^[A-Za-z0-9_-]{1,32}$"
_ENVIRONMENT_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class McpServerSettings(_Section):
    """One `[[mcp.servers]]` entry: an MCP server over streamable HTTP (`url`) or stdio
    (`command` + `args`)."""

    name: str = Field(pattern=_MCP_SERVER_NAME)
    url: str | None = None
    # Header name -> the NAME of the environment variable holding its value (never the
    # value itself: these files are not the place for secrets).
    headers: dict[str, str] = {}
    command: str | None = None
    args: tuple[str, ...] = ()
    # For a stdio server: variable in its environment -> the name of ours to pass on.
    env: dict[str, str] = {}
    # Read-only tools of a trusted server run without asking; every other tool asks.
    trusted: bool = False
    # Globs of the server's own tool names to offer; empty: all of them.
    allowed_tools: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one_transport(self) -> Self:
        if (self.url is None) == (self.command is None):
            raise ValueError("set either url (streamable HTTP) or command (stdio), not both")
        if self.name == "builtin":
            raise ValueError(
                '"builtin" names the tools that ship with the bot; choose another name'
            )
        if self.url is not None:
            parsed = urlparse(self.url)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ValueError(f"url {self.url!r} is not an http(s) URL")
            if self.env:
                raise ValueError("env is for stdio servers (command); send headers to a url")
        elif self.headers:
            raise ValueError("headers are for url servers; pass env to a command")
        for kind, names in (("headers", self.headers), ("env", self.env)):
            for key, variable in names.items():
                if not _ENVIRONMENT_VARIABLE.match(variable):
                    raise ValueError(
                        f"{kind}.{key} must NAME an environment variable that holds the "
                        "value (such as JIRA_TOKEN), not hold the value itself"
                    )
        return self


class McpSettings(_Section):
    """`[mcp]`: the MCP servers whose tools the bot may offer (off in every channel until
    its managers enable them)."""

    servers: tuple[McpServerSettings, ...] = ()
    # How long one attempt to connect and list a server's tools may take.
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    # A server that is down is retried with backoff, doubling up to this many seconds.
    retry_max_seconds: float = Field(default=300.0, gt=0)

    @field_validator("servers")
    @classmethod
    def _unique_names(cls, servers: tuple[McpServerSettings, ...]) -> tuple[McpServerSettings, ...]:
        names = [server.name for server in servers]
        if doubled := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"two servers are named {doubled[0]!r}; names must differ")
        return servers


class Settings(_Section):
    model: ModelSettings = ModelSettings()
    model_defaults: ModelInfo = ModelInfo()
    models: dict[str, ModelInfo] = {}
    conversation: ConversationSettings = ConversationSettings()
    storage: StorageSettings = StorageSettings()
    access: AccessSettings = AccessSettings()
    images: ImageSettings = ImageSettings()
    limits: LimitSettings = LimitSettings()
    tools: ToolSettings = ToolSettings()
    hosted_tools: HostedToolSettings = HostedToolSettings()
    http: HttpSettings = HttpSettings()
    slack: SlackSettings = SlackSettings()
    discord: DiscordSettings = DiscordSettings()
    voice: VoiceSettings = VoiceSettings()
    builtin_tools: BuiltinToolSettings = BuiltinToolSettings()
    mcp: McpSettings = McpSettings()
    database_url: str = "sqlite+aiosqlite:///botservice.db"
    log_level: str = "INFO"
    # "json": one JSON object a line, for log pipelines (BOTSERVICE_LOG_FORMAT).
    log_format: Literal["human", "json"] = "human"

    def model_info(self, model: str) -> ModelInfo:
        return self.models.get(model, self.model_defaults)

    def token_cost(self, model: str, *, prompt: int, completion: int, cached: int = 0) -> float:
        """Dollars for one call's tokens at the model's configured prices."""
        return self.model_info(model).cost(prompt=prompt, completion=completion, cached=cached)

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

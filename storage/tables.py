"""The tables botservice keeps, as sqlmodel classes.

Repository code talks to them through SQLAlchemy Core (`Message.__table__`,
available as `MESSAGES` etc. below) because the hot paths want plain rows, not
ORM objects. Every timestamp is timezone-aware UTC in Python: SQLite stores it
naive (ISO text that sorts lexically), PostgreSQL as `timestamptz`.

Ids of conversations, messages and turns use SQLite's AUTOINCREMENT so an id is
never handed out twice: `reset_after_message_id` and `reply_to_id` compare ids,
and a reused id would put a new message behind an old reset.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    String,
    Table,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Conversation(SQLModel, table=True):
    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("platform", "workspace", "channel", "thread", name="uq_conversations_key"),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    platform: str
    workspace: str
    channel: str
    thread: str
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # History shows only messages (and answers to messages) after this id.
    reset_after_message_id: int | None = None
    trim_noticed: bool = False
    # Set with the first tool round stored for a message of it, never unset: a turn's
    # reads on PostgreSQL say with this whether its history can have tool rounds, so
    # the turn asks for them only when it can (0012_tool_round_flag).
    # The database's default, not a Python one: statements that create conversations
    # name their columns and leave this one out.
    has_tool_rounds: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=false())
    )


class Message(SQLModel, table=True):
    __tablename__ = "messages"
    __table_args__ = (
        # PostgreSQL reads a turn's window (ids in answer-after-question order) from
        # the index alone (migration 0013).
        Index(
            "ix_messages_conversation_id_id",
            "conversation_id",
            "id",
            postgresql_include=["reply_to_id"],
        ),
        Index("ix_messages_created_at", "created_at"),
        Index("ix_messages_author_id", "author_id"),
        # Platform events name messages by their platform id (a Slack deletion, a
        # Discord reply to an answer from before a restart).
        Index("ix_messages_platform_message_id", "platform_message_id"),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    conversation_id: int = Field(foreign_key="conversations.id", ondelete="CASCADE")
    role: str  # 'user' | 'assistant'
    author_id: str
    author_name: str
    text: str
    platform_message_id: str = ""
    tokens: int = 0  # counted locally when stored
    prompt_tokens: int | None = None  # the provider's usage, when it reported one
    completion_tokens: int | None = None
    model: str | None = None
    status: str = "complete"  # 'complete' | 'interrupted'
    # An answer points at the user message it answers. Deliberately not a foreign
    # key: when that message is forgotten or expires, the answer keeps its place.
    reply_to_id: int | None = None
    # A voice message or audio clip not yet heard: JSON list of {name, content_type,
    # url, size}. Cleared when its transcript replaces the text; never the audio itself.
    audio: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Turn(SQLModel, table=True):
    """One claimed incoming message (the dedupe marker) and the state of its answer.

    Who answers a turn is decided here: a process claims the oldest pending turn
    of a conversation by setting it `running`, and the partial unique index
    allows one running turn per conversation, so turns of one conversation run
    one at a time, in order, whichever processes share the database. The holder
    renews `alive_until` while it works; a turn whose holder stopped renewing is
    put back to pending for anyone to claim.
    """

    __tablename__ = "turns"
    __table_args__ = (
        UniqueConstraint("platform", "message_key", name="uq_turns_platform_message_key"),
        Index("ix_turns_created_at", "created_at"),
        Index("ix_turns_status", "status"),
        Index("ix_turns_conversation_id", "conversation_id"),
        Index("ix_turns_user_message_id", "user_message_id"),
        Index("ix_turns_reply_ref", "reply_ref"),
        # The claim's lookup of a conversation's oldest pending turn.
        Index(
            "ix_turns_pending",
            "conversation_id",
            "id",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        Index(
            "uq_turns_one_running",
            "conversation_id",
            unique=True,
            postgresql_where=text("status = 'running'"),
            sqlite_where=text("status = 'running'"),
        ),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    platform: str
    message_key: str
    # Markers outlive their conversation: a redelivery after a purge is still a duplicate.
    conversation_id: int | None = Field(
        default=None, foreign_key="conversations.id", ondelete="SET NULL"
    )
    user_message_id: int | None = Field(
        default=None, foreign_key="messages.id", ondelete="SET NULL"
    )
    user_id: str = ""
    is_channel_admin: bool = False
    status: str = "pending"  # 'pending' | 'running' | 'answered' | 'failed' | 'command' | 'spoken'
    reply_target: str = "{}"  # JSON written by the adapter
    reply_ref: str | None = None  # what ReplySink.begin returned (the placeholder's id)
    # The process that claimed the turn last (it stays after a takeover resets the
    # turn to pending, so a holder that was only cut off can still save its answer).
    claimed_by: str | None = None
    # A running turn's heartbeat: its holder renews this while it works.
    alive_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # How often the turn was claimed; above one, an earlier holder may have posted
    # a placeholder that was never recorded.
    claims: int = 0
    # The endpoint's id of the response answering the turn in background mode, and
    # the tool round it answers: a restart follows that response instead of asking again.
    model_response_id: str | None = None
    model_response_round: int | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ChannelSetting(SQLModel, table=True):
    """Per-channel overrides; channel '' holds the workspace-wide values."""

    __tablename__ = "channel_settings"

    platform: str = Field(primary_key=True)
    workspace: str = Field(primary_key=True)
    channel: str = Field(primary_key=True)
    instructions: str | None = None
    model: str | None = None
    retention_days: int | None = None
    speech_model: str | None = None
    speech_voice: str | None = None
    # The channel's tool rules (`ToolPolicy.serialize()`): "+name,-server__*,...".
    tools: str | None = None
    # Background mode for this channel's answers (Responses backend); NULL: the model's.
    background: bool | None = None
    # A server's voice mode (`/voice mode`), on the workspace row only; NULL: `[voice] mode`.
    voice_mode: str | None = None
    updated_by: str = ""
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class SettingChangeRow(SQLModel, table=True):
    __tablename__ = "setting_changes"
    __table_args__ = (
        Index("ix_setting_changes_channel", "platform", "workspace", "channel"),
        Index("ix_setting_changes_changed_by", "changed_by"),
    )

    id: int | None = Field(default=None, primary_key=True)
    platform: str
    workspace: str
    channel: str
    field: str
    old_value: str | None = None
    new_value: str | None = None
    changed_by: str
    changed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PurgeClaim(SQLModel, table=True):
    """Which process ran a scheduled job for a period (processes share one database)."""

    __tablename__ = "purge_claims"

    job: str = Field(primary_key=True)
    period: str = Field(primary_key=True)
    claimed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    claimed_by: str = ""


class UsageEntry(SQLModel, table=True):
    """One model call's tokens and cost (botservice/core/usage.py). No text; kept for
    `usage_retention_days`; forget-me blanks `user_id`. No foreign key to the turn: turns
    are purged long before their usage."""

    __tablename__ = "usage"
    __table_args__ = (
        Index("ix_usage_created_at", "created_at"),
        Index("ix_usage_user", "platform", "user_id", "created_at"),
        Index("ix_usage_channel", "platform", "workspace", "channel", "created_at"),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    turn_id: int | None = None
    platform: str
    workspace: str
    channel: str
    user_id: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float = 0.0
    estimated: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class VoiceOptOut(SQLModel, table=True):
    """A member who said `/voice ignore-me` in a server (a Discord guild: `workspace`):
    their audio is dropped before it is decoded. Forget-me removes the row."""

    __tablename__ = "voice_opt_outs"

    platform: str = Field(primary_key=True)
    workspace: str = Field(primary_key=True)
    user_id: str = Field(primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


def _table(model: Any) -> Table:
    return cast(Table, model.__table__)


metadata = SQLModel.metadata
CONVERSATIONS = _table(Conversation)
MESSAGES = _table(Message)
TURNS = _table(Turn)
CHANNEL_SETTINGS = _table(ChannelSetting)
SETTING_CHANGES = _table(SettingChangeRow)
PURGE_CLAIMS = _table(PurgeClaim)
USAGE = _table(UsageEntry)
VOICE_OPT_OUTS = _table(VoiceOptOut)


# slack-sdk's OAuth stores (multi-workspace installs) keep their rows here too, in
# tables of slack-sdk's design that our migrations create (0003_slack_oauth). They
# are declared again here, without importing slack-sdk (storage sees only the
# core), so the schema this metadata describes is the whole database;
# tests/slack/test_oauth_tables.py checks both copies against slack-sdk's own.
SLACK_INSTALLATIONS = Table(
    "slack_installations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("client_id", String(32), nullable=False),
    Column("app_id", String(32), nullable=False),
    Column("enterprise_id", String(32)),
    Column("enterprise_name", String(200)),
    Column("enterprise_url", String(200)),
    Column("team_id", String(32)),
    Column("team_name", String(200)),
    Column("bot_token", String(200)),
    Column("bot_id", String(32)),
    Column("bot_user_id", String(32)),
    Column("bot_scopes", String(1000)),
    Column("bot_refresh_token", String(200)),
    Column("bot_token_expires_at", DateTime),
    Column("user_id", String(32), nullable=False),
    Column("user_token", String(200)),
    Column("user_scopes", String(1000)),
    Column("user_refresh_token", String(200)),
    Column("user_token_expires_at", DateTime),
    Column("incoming_webhook_url", String(200)),
    Column("incoming_webhook_channel", String(200)),
    Column("incoming_webhook_channel_id", String(200)),
    Column("incoming_webhook_configuration_url", String(200)),
    Column("is_enterprise_install", Boolean, nullable=False),
    Column("token_type", String(32)),
    Column("installed_at", DateTime, nullable=False),
    Index(
        "slack_installations_idx",
        "client_id",
        "enterprise_id",
        "team_id",
        "user_id",
        "installed_at",
    ),
)
SLACK_BOTS = Table(
    "slack_bots",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("client_id", String(32), nullable=False),
    Column("app_id", String(32), nullable=False),
    Column("enterprise_id", String(32)),
    Column("enterprise_name", String(200)),
    Column("team_id", String(32)),
    Column("team_name", String(200)),
    Column("bot_token", String(200)),
    Column("bot_id", String(32)),
    Column("bot_user_id", String(32)),
    Column("bot_scopes", String(1000)),
    Column("bot_refresh_token", String(200)),
    Column("bot_token_expires_at", DateTime),
    Column("is_enterprise_install", Boolean, nullable=False),
    Column("installed_at", DateTime, nullable=False),
    Index("slack_bots_idx", "client_id", "enterprise_id", "team_id", "installed_at"),
)
SLACK_OAUTH_STATES = Table(
    "slack_oauth_states",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("state", String(200), nullable=False),
    Column("expire_at", DateTime, nullable=False),
)

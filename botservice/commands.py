"""The platform-neutral commands: parsing, and the text each one answers with."""

from __future__ import annotations

import re
from typing import Literal

from botservice.events import Command, IncomingMessage
from botservice.ports import ChannelSettings, Store
from botservice.settings import Settings

MAX_INSTRUCTIONS_CHARS = 8000
MAX_RETENTION_DAYS = 3650
# Model names as OpenAI, Ollama ("llama3.1:8b") and vLLM ("org/model") spell them.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$")

COMMANDS: dict[str, tuple[str, ...]] = {
    "instructions": ("show", "set", "clear"),
    "model": ("show", "set"),
    "retention": ("show", "set"),
    "reset": (),
    "forget-me": (),
    "help": (),
}

HELP_TEXT = """\
Commands:
  instructions show | set <text> | clear   the instructions the model gets in this channel
  model show | set <name>                  the chat model this channel uses
  retention show | set <days>              how long this channel's messages are kept (0 = not at all)
  reset                                    start this conversation afresh (nothing is deleted)
  forget-me                                delete every message and setting of yours
  help                                     this list
Changing instructions, model or retention needs the channel-manager right."""

# Who holds the channel-manager right, as each platform's adapter decides it.
# Plain words only: the core knows platforms by name, never by SDK.
CHANNEL_MANAGERS = {
    "slack": "workspace admins and owners",
    "discord": "members with the Manage Channels permission",
    "console": "the console user",
}


def parse_command(text: str) -> Command | None:
    """`instructions set Be brief.` -> Command("instructions", "set", "Be brief.").

    Returns None for an empty string. An unknown name still parses (the core
    answers it with the list of commands); a missing action means "show".
    """
    head, _, rest = text.strip().partition(" ")
    name = head.lower().replace("_", "-")
    if not name:
        return None
    if name == "forget" and rest.strip().lower() == "me":
        return Command("forget-me")
    actions = COMMANDS.get(name, ())
    if not actions:
        return Command(name, "", rest.strip())
    action, _, argument = rest.strip().partition(" ")
    action = action.lower()
    if not action:
        action = "show"
    elif action not in actions and "set" in actions:
        # "retention 7" and "model gpt-4o" read naturally as a set.
        action, argument = "set", rest.strip()
    return Command(name, action, argument.strip())


def who_may_change(platform: str) -> str:
    managers = CHANNEL_MANAGERS.get(platform, "channel managers")
    return f"{managers}, or people the operator listed as bot admins"


class CommandRunner:
    """Runs one command for one message and returns the sentence to answer with."""

    def __init__(self, *, settings: Settings, store: Store) -> None:
        self._settings = settings
        self._store = store

    async def run(self, message: IncomingMessage, command: Command) -> str:
        match command.name:
            case "instructions":
                return await self._instructions(message, command)
            case "model":
                return await self._model(message, command)
            case "retention":
                return await self._retention(message, command)
            case "reset":
                await self._store.reset_conversation(message.conversation)
                return "Done: the next message here starts a fresh conversation."
            case "forget-me":
                counts = await self._store.forget_user(message.platform, message.user_id)
                return (
                    f"Deleted {counts.messages} message{_s(counts.messages)} and "
                    f"{counts.settings} setting{_s(counts.settings)} of yours."
                )
            case "help":
                return HELP_TEXT
            case _:
                return f"I don't know the command {command.name!r}.\n\n{HELP_TEXT}"

    async def _instructions(self, message: IncomingMessage, command: Command) -> str:
        current = await self._channel(message)
        if command.action == "show":
            if current.instructions:
                return f"This channel's instructions:\n{current.instructions}"
            default = self._settings.conversation.default_instructions
            return f"This channel uses the default instructions:\n{default}"
        if refusal := self._refuse_unless_manager(message, "instructions"):
            return refusal
        if command.action == "clear":
            await self._change(message, "instructions", None)
            return "Instructions cleared; this channel uses the default instructions again."
        text = command.argument.strip()
        if not text:
            return "Give the instructions after `instructions set`."
        if len(text) > MAX_INSTRUCTIONS_CHARS:
            return f"Instructions can be at most {MAX_INSTRUCTIONS_CHARS:,} characters long."
        await self._change(message, "instructions", text)
        return "Instructions updated; they apply from the next message."

    async def _model(self, message: IncomingMessage, command: Command) -> str:
        current = await self._channel(message)
        if command.action == "show":
            model = current.model or self._settings.model.name
            suffix = "" if current.model else " (the default)"
            return f"This channel uses the model {model}{suffix}."
        if refusal := self._refuse_unless_manager(message, "model"):
            return refusal
        name = command.argument.strip()
        if not _MODEL_NAME.match(name):
            return "Give a model name after `model set`, for example `model set gpt-4o-mini`."
        await self._change(message, "model", name)
        return f"This channel now uses the model {name}."

    async def _retention(self, message: IncomingMessage, command: Command) -> str:
        current = await self._channel(message)
        if command.action == "show":
            days = current.retention_days
            if days is None:
                days = self._settings.storage.retention_days
            return f"Messages in this channel are kept for {_days(days)}."
        if refusal := self._refuse_unless_manager(message, "retention"):
            return refusal
        try:
            days = int(command.argument.strip().removesuffix("days").strip())
        except ValueError:
            days = -1
        if not 0 <= days <= MAX_RETENTION_DAYS:
            return f"Give a number of days from 0 to {MAX_RETENTION_DAYS}, e.g. `retention set 7`."
        await self._change(message, "retention_days", days)
        return f"Messages in this channel are now kept for {_days(days)}."

    async def _channel(self, message: IncomingMessage) -> ChannelSettings:
        return await self._store.channel_settings(
            message.platform, message.workspace, message.channel
        )

    def _refuse_unless_manager(self, message: IncomingMessage, what: str) -> str | None:
        if message.is_channel_admin or message.user_id in self._settings.access.admin_user_ids:
            return None
        return f"Only {who_may_change(message.platform)} can change this channel's {what}."

    async def _change(
        self,
        message: IncomingMessage,
        field: Literal["instructions", "model", "retention_days"],
        value: str | int | None,
    ) -> None:
        await self._store.change_setting(
            message.platform,
            message.workspace,
            message.channel,
            field=field,
            value=value,
            changed_by=message.user_id,
        )


def _s(count: int) -> str:
    return "" if count == 1 else "s"


def _days(days: int) -> str:
    if days == 0:
        return "no time at all: each conversation is deleted once answered"
    return f"{days} day{_s(days)}"

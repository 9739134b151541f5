"""The platform-neutral commands: parsing, and the text each one answers with."""

from __future__ import annotations

import fnmatch
import logging
import re
from datetime import UTC, datetime

from botservice.core.channel_policy import ChannelPolicy
from botservice.core.errors import ModelError
from botservice.core.events import Command, IncomingMessage
from botservice.core.hosted_tools import hosted_tools
from botservice.core.ports import (
    ChannelSettings,
    CommandStore,
    ForgetCounts,
    ModelClient,
    SettingField,
)
from botservice.core.settings import Settings
from botservice.core.text import summary_line
from botservice.core.tool_rounds import ToolBox
from botservice.core.tools import ToolPolicy, ToolSpec
from botservice.core.usage import UsageLedger, UsageTotals, start_of_day, start_of_month
from botservice.core.voice_settings import DEFAULT_SPEECH_MODEL
from botservice.core.windows import ContextWindows

log = logging.getLogger(__name__)

MAX_INSTRUCTIONS_CHARS = 8000
MAX_RETENTION_DAYS = 3650
# A refusal names at most this many models (an endpoint may list hundreds).
_MODELS_SHOWN = 40
# Model names as OpenAI, Ollama ("llama3.1:8b") and vLLM ("org/model") spell them.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$")
# Speech endpoint voices ("nova") and espeak-ng voices ("en-gb", "en+f3"). It never
# starts with "-": espeak-ng gets the voice as an argument of its own.
_VOICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,63}$")
# `speech set voice <name> model <name>`: the word, the setting, what a valid value looks like.
_SPEECH_CHOICES: dict[str, tuple[SettingField, re.Pattern[str]]] = {
    "voice": ("speech_voice", _VOICE_NAME),
    "model": ("speech_model", _MODEL_NAME),
}

COMMANDS: dict[str, tuple[str, ...]] = {
    "instructions": ("show", "set", "clear"),
    "model": ("show", "set"),
    "retention": ("show", "set"),
    "speech": ("show", "set", "clear"),
    "tools": ("show", "enable", "disable"),
    "background": ("show", "on", "off", "default"),
    "reset": (),
    "usage": (),
    "forget-me": (),
    "help": (),
}

HELP_TEXT = """\
Commands:
  instructions show | set <text> | clear   the instructions the model gets in this channel
  model show | set <name>                  the chat model this channel uses
  retention show | set <days>              how long this channel's messages are kept (0 = not at all)
  speech show | set voice|model <name> | clear
                                           how answers are spoken in voice channels; without a
                                           speech endpoint the voice is espeak-ng's (e.g. en-gb)
  tools show | enable|disable <name|glob>   the tools the model may use here (e.g. jira__*)
  background show | on | off | default     answers asked for in background mode (Responses API:
                                           long answers survive a dropped stream or a restart)
  reset                                    start this conversation afresh (nothing is deleted)
  usage                                    your tokens and cost today and this month (and the
                                           channel's, for channel managers)
  forget-me                                delete every message of yours and the answers to them
  help                                     this list
Changing instructions, model, retention, speech, tools or background needs the
channel-manager right."""
# What `tools enable|disable` takes: a tool name, or a glob over names (`jira__*`).
_TOOL_PATTERN = re.compile(r"^[A-Za-z0-9_*?\[\]-]{1,64}$")


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


class CommandRunner:
    """Runs one command for one message and returns the sentence to answer with."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: CommandStore,
        model: ModelClient | None = None,
        windows: ContextWindows | None = None,
        policy: ChannelPolicy | None = None,
        usage: UsageLedger | None = None,
        tools: ToolBox | None = None,
    ) -> None:
        self._settings = settings
        self._tools = tools or ToolBox(())
        self._store = store
        self._models = model
        self._windows = windows
        self._policy = policy or ChannelPolicy(settings.access.admin_user_ids)
        self._usage = usage

    async def run(self, message: IncomingMessage, command: Command) -> str:
        match command.name:
            case "instructions":
                return await self._instructions(message, command)
            case "model":
                return await self._model(message, command)
            case "retention":
                return await self._retention(message, command)
            case "speech":
                return await self._speech(message, command)
            case "tools":
                return await self._tool_rules(message, command)
            case "background":
                return await self._background(message, command)
            case "reset":
                await self._store.reset_conversation(message.conversation)
                return "Done: the next message here starts a fresh conversation."
            case "usage":
                return await self._usage_report(message)
            case "forget-me":
                counts = await self._store.forget_user(message.platform, message.user_id)
                reply = _forgotten(counts)
                if self._usage is not None and await self._usage.forget_usage_of(
                    message.platform, message.user_id
                ):
                    reply += " Your usage records (token counts, no text) no longer name you."
                return reply
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
            model = self._settings.chat_model(current.model)
            suffix = "" if current.model == model else " (the default)"
            return f"This channel uses the model {model}{suffix}."
        if refusal := self._refuse_unless_manager(message, "model"):
            return refusal
        if not self._policy.may_choose_model(message):
            return (
                "In direct messages only the bot's admins can change the model "
                "(the operator lists them in access.admin_user_ids)."
            )
        name = command.argument.strip()
        offered = await self._offered_models()
        if not _MODEL_NAME.match(name):
            return f"Give a model name after `model set`; {_choose_from(offered)}"
        if name not in offered:
            return f"The model {name} is not offered here; {_choose_from(offered)}"
        await self._change(message, "model", name)
        if self._windows is not None:
            # The endpoint may serve this model with another window: ask it now, not
            # in the middle of the first answer.
            await self._windows.window(name, fresh=True)
        return f"This channel now uses the model {name}."

    async def _offered_models(self) -> list[str]:
        offered = set(self._settings.configured_models)
        if self._settings.model.allow_discovered and self._models is not None:
            try:
                offered.update(await self._models.list_models())
            except ModelError as error:
                log.warning("could not list the endpoint's models: %s", type(error).__name__)
        return sorted(offered)

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

    async def _speech(self, message: IncomingMessage, command: Command) -> str:
        if command.action == "show":
            return self._speech_summary(await self._channel(message))
        if refusal := self._refuse_unless_manager(message, "speech settings"):
            return refusal
        if command.action == "clear":
            await self._change(message, "speech_voice", None)
            await self._change(message, "speech_model", None)
            # The workspace's own speech settings, if any, show through again.
            return "Speech settings cleared. " + self._speech_summary(await self._channel(message))
        choices = _speech_choices(command.argument)
        if not choices:
            return (
                "Give a voice or a speech model after `speech set`, for example "
                "`speech set voice nova` or `speech set model tts-1`."
            )
        for field, value in choices.items():
            await self._change(message, field, value)
        return "Speech settings updated. " + self._speech_summary(await self._channel(message))

    def _speech_summary(self, current: ChannelSettings) -> str:
        defaults = self._settings.voice
        voice = _or_default(current.speech_voice, defaults.default_voice)
        if not defaults.uses_endpoint:
            later = (
                f"; its speech model {current.speech_model} applies once a speech endpoint is set up"
                if current.speech_model
                else ""
            )
            return f"This channel speaks in the voice {voice} through espeak-ng{later}."
        model = _or_default(current.speech_model, defaults.speech_model or DEFAULT_SPEECH_MODEL)
        return f"This channel speaks in the voice {voice} with the speech model {model}."

    async def _tool_rules(self, message: IncomingMessage, command: Command) -> str:
        policy = ToolPolicy.parse((await self._channel(message)).tools)
        listed = [
            *self._tools.available(),
            *(tool.spec for tool in hosted_tools(self._settings.hosted_tools)),
        ]
        # A remote MCP server needing approval is also a source of the tool loop's.
        available = list({spec.name: spec for spec in listed}.values())
        if command.action == "show":
            return _tools_summary(available, policy)
        if refusal := self._refuse_unless_manager(message, "tools"):
            return refusal
        pattern = command.argument.strip()
        if not _TOOL_PATTERN.match(pattern):
            return (
                f"Give a tool name or a pattern after `tools {command.action}`, for example "
                f"`tools {command.action} current_time` or `tools {command.action} jira__*`."
            )
        enabled = command.action == "enable"
        changed = policy.with_rule(pattern, enabled=enabled)
        await self._change(message, "tools", changed.serialize())
        # The new rule comes last, so it decides for every tool it matches.
        matching = [spec.name for spec in available if fnmatch.fnmatchcase(spec.name, pattern)]
        verb = "enabled" if enabled else "disabled"
        if not matching:
            return (
                f"Tools matching {pattern} are now {verb} here; no tool matches it yet "
                "(it applies when one appears)."
            )
        return f"Now {verb} here: {', '.join(matching)}."

    async def _background(self, message: IncomingMessage, command: Command) -> str:
        if command.action != "show":
            if refusal := self._refuse_unless_manager(message, "background mode"):
                return refusal
            choice = {"on": True, "off": False, "default": None}[command.action]
            await self._change(message, "background", choice)
        return self._background_summary(await self._channel(message))

    def _background_summary(self, current: ChannelSettings) -> str:
        model = self._settings.chat_model(current.model)
        if current.background is None:
            said = "on" if self._settings.model_info(model).background else "off"
            text = f"Background mode here: {said} (the default of the model {model})."
        else:
            said = "on" if current.background else "off"
            text = f"Background mode here: {said} (this channel's setting)."
        if self._settings.model.api != "responses":
            # Accepted all the same, so it holds the day the endpoint changes API.
            text += (
                ' It only applies with `api = "responses"`; this bot speaks Chat '
                "Completions, where every answer is one ordinary request."
            )
        return text

    async def _usage_report(self, message: IncomingMessage) -> str:
        if self._usage is None:
            return "Usage is not recorded here."
        now = datetime.now(UTC)
        day, month = start_of_day(now), start_of_month(now)
        usage = self._usage

        async def totals(since: datetime, **who: str) -> UsageTotals:
            return await usage.usage_totals(platform=message.platform, since=since, **who)

        lines = [
            "Your usage: today "
            + _spent(await totals(day, user_id=message.user_id))
            + "; this month "
            + _spent(await totals(month, user_id=message.user_id))
            + "."
        ]
        if self._policy.may_manage(message):
            place = {"workspace": message.workspace, "channel": message.channel}
            lines.append(
                "This channel: today "
                + _spent(await totals(day, **place))
                + "; this month "
                + _spent(await totals(month, **place))
                + "."
            )
        return "\n".join(lines)

    async def _channel(self, message: IncomingMessage) -> ChannelSettings:
        return await self._store.channel_settings(
            message.platform, message.workspace, message.channel
        )

    def _refuse_unless_manager(self, message: IncomingMessage, what: str) -> str | None:
        if self._policy.may_manage(message):
            return None
        return f"Only {self._policy.managers(message.platform)} can change this channel's {what}."

    async def _change(
        self,
        message: IncomingMessage,
        field: SettingField,
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


def _tools_summary(available: list[ToolSpec], policy: ToolPolicy) -> str:
    if not available:
        return "No tools are set up for this bot."
    lines = ["Tools here (on: the model may use it; asks: the asker approves each call):"]
    for spec in sorted(available, key=lambda spec: spec.name):
        state = "on" if policy.allows(spec) else "off"
        asks = "" if spec.runs_without_asking else ", asks"
        lines.append(f"  {spec.name}: {state}{asks}. {summary_line(spec.description)}")
    lines.append("Change with `tools enable <name|pattern>` or `tools disable <name|pattern>`.")
    return "\n".join(lines)


def _speech_choices(argument: str) -> dict[SettingField, str] | None:
    """`voice nova model tts-1` -> {"speech_voice": "nova", "speech_model": "tts-1"};
    None unless every word pairs up into a known choice with a valid name."""
    words = argument.split()
    if not words or len(words) % 2:
        return None
    choices: dict[SettingField, str] = {}
    for word, value in zip(words[::2], words[1::2], strict=True):
        field, pattern = _SPEECH_CHOICES.get(word.lower(), (None, None))
        if field is None or pattern is None or field in choices or not pattern.match(value):
            return None
        choices[field] = value
    return choices


def _forgotten(counts: ForgetCounts) -> str:
    reply = (
        f"Deleted {counts.messages} message{_s(counts.messages)} of yours and the "
        f"{counts.answers} answer{_s(counts.answers)} to them, in every conversation."
    )
    if counts.settings:
        reply += (
            f" The {counts.settings} setting change{_s(counts.settings)} you made stay in "
            "force but no longer carry your name."
        )
    return reply


def _spent(totals: UsageTotals) -> str:
    text = f"{totals.tokens:,} tokens in {totals.calls:,} answer{_s(totals.calls)}"
    if totals.cost:
        text += f" (${totals.cost:,.4f})"
    return text


def _choose_from(names: list[str]) -> str:
    shown = ", ".join(names[:_MODELS_SHOWN])
    more = len(names) - _MODELS_SHOWN
    if more > 0:
        shown += f" and {more} more"
    return f"choose one of: {shown}."


def _or_default(value: str | None, default: str) -> str:
    return value if value else f"{default} (the default)"


def _s(count: int) -> str:
    return "" if count == 1 else "s"


def _days(days: int) -> str:
    if days == 0:
        return "no time at all: each conversation is deleted once answered"
    return f"{days} day{_s(days)}"

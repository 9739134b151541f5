"""Reply sinks: how one answer appears on Discord.

Two transports share one renderer. A message answer is a reply (or, in threads and DMs,
a plain message) that is edited as the text grows; an interaction answer is the
deferred original response, edited the same way. Text past 2,000 characters continues
in further messages (channel messages, or interaction follow-ups).

The final text carries the 👍 / 👎 feedback buttons on its last message, in the same
edit that shows it (`feedback_buttons`).

The core throttles `update`; nothing here adds a timer, so each reply streams at its
own pace. discord.py's per-route rate limiting still applies underneath.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import discord

from botservice.adapters.discord.confirmation_buttons import (
    confirmation_view,
    decided_text,
    prompt_text,
)
from botservice.adapters.discord.feedback_buttons import feedback_view
from botservice.adapters.discord.split import DISCORD_LIMIT
from botservice.core.message_split import split_message
from botservice.core.ports import GeneratedFile, SinkAbilities
from botservice.core.tools import (
    SESSION_ENDED,
    ClosedOutcome,
    ConfirmationRequest,
    unanswered_text,
)

log = logging.getLogger(__name__)

PLACEHOLDER = "\N{HOURGLASS WITH FLOWING SAND} …"
# The answer's place while its first tool call waits for Approve / Deny (see
# `_InteractionTransport.ask`).
WAITING_FOR_APPROVAL = "\N{HOURGLASS WITH FLOWING SAND} Waiting for approval…"
NO_MENTIONS = discord.AllowedMentions.none()
# How many recent channel messages a resumed turn looks through for its placeholder.
FIND_LIMIT = 50
_NONCE_MAX = 25  # Discord's limit on a message nonce

OnPosted = Callable[[int], None]
View = discord.ui.View


class _Transport(Protocol):
    async def post_first(self) -> int | None: ...

    async def edit(
        self, index: int, message_id: int | None, text: str, *, view: View | None = None
    ) -> None: ...

    async def post_more(self, text: str, *, view: View | None = None) -> int: ...

    async def say(self, text: str, *, private: bool) -> None: ...

    async def ask(self, text: str, *, view: View, mentions: discord.AllowedMentions) -> int: ...

    async def close_question(self, message_id: int, text: str) -> None: ...

    async def attach(self, file: discord.File) -> None: ...


class _Renderer:
    """Keeps the visible messages equal to the split text, editing only what changed."""

    def __init__(self, transport: _Transport, limit: int) -> None:
        self._transport = transport
        self._limit = limit
        # (message id, content shown); the first id is None for an interaction's original.
        self.shown: list[tuple[int | None, str | None]] = []

    async def render(self, text: str, *, view: View | None = None) -> None:
        """`view` (the feedback buttons) goes on the last message, even when its text is
        already shown."""
        chunks = split_message(text, self._limit) if text else [PLACEHOLDER]
        last = len(chunks) - 1
        for index, chunk in enumerate(chunks):
            extra = view if index == last else None
            if index < len(self.shown):
                message_id, content = self.shown[index]
                if content != chunk or extra is not None:
                    await self._transport.edit(index, message_id, chunk, view=extra)
                    self.shown[index] = (message_id, chunk)
            else:
                message_id = await self._transport.post_more(chunk, view=extra)
                self.shown.append((message_id, chunk))
        for index in range(len(chunks), len(self.shown)):
            # The text got shorter at a split point: blank the leftover message.
            message_id, content = self.shown[index]
            if content != "\u200b":
                await self._transport.edit(index, message_id, "\u200b")
                self.shown[index] = (message_id, "\u200b")


class _ReplySinkBase:
    def __init__(self, transport: _Transport, limit: int) -> None:
        self._transport = transport
        self._renderer = _Renderer(transport, limit)
        self.finished = False
        # Set by `begin`: the turn this sink answers, named by the feedback buttons.
        self._turn_tag: str | None = None
        # The questions this answer asked (confirmation id -> message id, request), so
        # one nobody answered can lose its buttons.
        self._questions: dict[int, tuple[int, ConfirmationRequest]] = {}

    async def update(self, text: str) -> None:
        if not self.finished:
            await self._renderer.render(text)

    async def finish(self, text: str) -> None:
        self.finished = True
        view = feedback_view(self._turn_tag) if self._turn_tag and text.strip() else None
        await self._renderer.render(text, view=view)

    async def notice(self, text: str, *, private: bool = True) -> None:
        await self._transport.say(text, private=private)

    @property
    def abilities(self) -> SinkAbilities:
        return SinkAbilities(
            confirm=self.confirm,
            confirmation_closed=self.confirmation_closed,
            post_file=self.post_file,
        )

    async def post_file(self, file: GeneratedFile) -> None:
        """Post a file the model made (an image) below the answer, as an attachment."""
        await self._transport.attach(discord.File(io.BytesIO(file.data), filename=file.name))

    async def confirm(self, request: ConfirmationRequest) -> None:
        """Ask whether the tool call may run: a message of its own with Approve / Deny
        buttons (the adapter hands the click to the core), pinging only the asker."""
        mentions = discord.AllowedMentions.none()
        if request.asker_id.isdigit():
            mentions.users = [discord.Object(int(request.asker_id))]
        message_id = await self._transport.ask(
            prompt_text(request), view=confirmation_view(request), mentions=mentions
        )
        self._questions[request.confirmation_id] = (message_id, request)

    async def confirmation_closed(self, confirmation_id: int, outcome: ClosedOutcome) -> None:
        """Nobody answered the question in time (or its voice session ended first): its
        buttons go, and it says so."""
        asked = self._questions.pop(confirmation_id, None)
        if asked is None:
            return  # asked before a restart, by another sink: its buttons answer clicks
        message_id, request = asked
        why = SESSION_ENDED if outcome == "session_ended" else unanswered_text(request)
        text = decided_text(prompt_text(request), why)
        try:
            await self._transport.close_question(message_id, text)
        except discord.HTTPException as error:
            # The call is declined either way; a late click is told it timed out.
            log.warning("could not close an unanswered question on Discord (%s)", error.status)

    @property
    def message_ids(self) -> list[int]:
        return [mid for mid, _ in self._renderer.shown if mid is not None]


# --- channel messages ----------------------------------------------------------------


class _ChannelTransport:
    def __init__(
        self,
        channel: discord.PartialMessageable,
        reply_to: int | None,
        on_posted: OnPosted | None,
    ) -> None:
        self.channel = channel
        self.reply_to = reply_to
        self.on_posted = on_posted

    async def _send(
        self,
        text: str,
        *,
        reply: bool,
        nonce: str | None = None,
        view: View | None = None,
        mentions: discord.AllowedMentions = NO_MENTIONS,
    ) -> int:
        reference = None
        if reply and self.reply_to is not None:
            reference = discord.MessageReference(
                message_id=self.reply_to, channel_id=self.channel.id, fail_if_not_exists=False
            )
        # discord.py sends every nonce with `enforce_nonce`: Discord then returns the
        # message it already created for this nonce (a few minutes) instead of a second.
        options: dict[str, Any] = {"allowed_mentions": mentions}
        if nonce is not None:
            options["nonce"] = nonce
        if view is not None:
            options["view"] = view
        try:
            message = await self.channel.send(
                text,
                reference=reference,  # type: ignore[arg-type]
                **options,
            )
        except discord.Forbidden:
            if reference is None:
                raise
            # Replies need Read Message History; a plain message only needs Send Messages.
            message = await self.channel.send(text, **options)
        if self.on_posted is not None:
            self.on_posted(message.id)
        return message.id

    async def post_first(self, nonce: str | None = None) -> int | None:
        return await self._send(PLACEHOLDER, reply=True, nonce=nonce)

    async def find_first(self, nonce: str, own_id: int) -> discord.Message | None:
        """The placeholder an earlier run of this turn posted, among recent messages.

        Discord keeps a nonce only briefly, so a message counts as ours when it carries
        the nonce or, failing that, is our placeholder still replying to the same message.
        """
        try:
            async for message in self.channel.history(limit=FIND_LIMIT):
                if message.author.id != own_id:
                    continue
                if message.nonce is not None and str(message.nonce) == nonce:
                    return message
                reference = message.reference
                if (
                    self.reply_to is not None
                    and reference is not None
                    and reference.message_id == self.reply_to
                    and message.content == PLACEHOLDER
                ):
                    return message
        except discord.HTTPException as error:
            # Reading history needs Read Message History; without it the nonce still
            # keeps a repeated post within minutes to one message.
            log.warning(
                "could not look for an earlier placeholder in channel %s (%s)",
                self.channel.id,
                error.status,
            )
        return None

    async def edit(
        self, index: int, message_id: int | None, text: str, *, view: View | None = None
    ) -> None:
        assert message_id is not None
        options: dict[str, Any] = {"view": view} if view is not None else {}
        await self.channel.get_partial_message(message_id).edit(
            content=text, allowed_mentions=NO_MENTIONS, **options
        )

    async def post_more(self, text: str, *, view: View | None = None) -> int:
        return await self._send(text, reply=False, view=view)

    async def say(self, text: str, *, private: bool) -> None:
        # A channel message cannot be private; a short reply is the closest idiom.
        await self._send(text, reply=True)

    async def ask(self, text: str, *, view: View, mentions: discord.AllowedMentions) -> int:
        return await self._send(text, reply=True, view=view, mentions=mentions)

    async def close_question(self, message_id: int, text: str) -> None:
        # `view=None` takes the buttons away.
        await self.channel.get_partial_message(message_id).edit(
            content=text, view=None, allowed_mentions=NO_MENTIONS
        )

    async def attach(self, file: discord.File) -> None:
        await self.channel.send(file=file, allowed_mentions=NO_MENTIONS)


class ChannelReplySink(_ReplySinkBase):
    """An answer posted as a reply to `reply_to` (or plainly, when None) and edited in place."""

    def __init__(
        self,
        channel: discord.PartialMessageable,
        *,
        reply_to: int | None,
        on_posted: OnPosted | None = None,
        own_id: int | None = None,
        limit: int = DISCORD_LIMIT,
    ) -> None:
        self._channel_transport = _ChannelTransport(channel, reply_to, on_posted)
        self._own_id = own_id
        super().__init__(self._channel_transport, limit)

    async def begin(self, existing_ref: str | None, *, turn_tag: str, resumed: bool) -> str | None:
        self._turn_tag = turn_tag
        if existing_ref:
            # Resumed after a restart: keep editing the message we already posted.
            return self._continue(int(existing_ref), None)
        transport = self._channel_transport
        nonce = turn_nonce(turn_tag, transport.channel.id, transport.reply_to)
        if resumed and self._own_id is not None:
            # A stop may have come after Discord created the placeholder and before its id
            # was stored: find it rather than leave it stuck under a second one.
            found = await transport.find_first(nonce, self._own_id)
            if found is not None:
                log.info("found the placeholder of resumed turn %s on Discord", turn_tag)
                return self._continue(found.id, found.content)
        first_id = await transport.post_first(nonce)
        self._renderer.shown = [(first_id, PLACEHOLDER)]
        return str(first_id)

    def _continue(self, first: int, content: str | None) -> str:
        self._renderer.shown = [(first, content)]
        if self._channel_transport.on_posted is not None:
            self._channel_transport.on_posted(first)
        return str(first)


# --- interactions ------------------------------------------------------------------------


# Edits the interaction's original response: its text, and the buttons when given.
EditOriginal = Callable[[str, View | None], Awaitable[int | None]]
Defer = Callable[[], Awaitable[None]]


class _InteractionTransport:
    def __init__(
        self,
        *,
        followup: discord.Webhook,
        edit_original: EditOriginal,
        defer: Defer | None,
        ephemeral: bool,
        on_posted: OnPosted | None,
    ) -> None:
        self.followup = followup
        self.edit_original = edit_original
        self.defer = defer
        self.ephemeral = ephemeral
        self.on_posted = on_posted
        self.original_used = False

    async def post_first(self) -> int | None:
        if self.defer is not None:
            await self.defer()
            self.defer = None
        return None

    async def edit(
        self, index: int, message_id: int | None, text: str, *, view: View | None = None
    ) -> None:
        if index == 0:
            self.original_used = True
            original_id = await self.edit_original(text, view)
            if original_id is not None and self.on_posted is not None:
                self.on_posted(original_id)
            return
        assert message_id is not None
        options: dict[str, Any] = {"view": view} if view is not None else {}
        await self.followup.edit_message(
            message_id, content=text, allowed_mentions=NO_MENTIONS, **options
        )

    async def post_more(self, text: str, *, view: View | None = None) -> int:
        options: dict[str, Any] = {"view": view} if view is not None else {}
        message = await self.followup.send(
            text, ephemeral=self.ephemeral, wait=True, allowed_mentions=NO_MENTIONS, **options
        )
        if self.on_posted is not None:
            self.on_posted(message.id)
        return message.id

    async def say(self, text: str, *, private: bool) -> None:
        await self.post_first()
        if not self.original_used and private == self.ephemeral:
            self.original_used = True
            await self.edit_original(text, None)
            return
        await self.followup.send(text, ephemeral=private, wait=True, allowed_mentions=NO_MENTIONS)

    async def ask(self, text: str, *, view: View, mentions: discord.AllowedMentions) -> int:
        await self.post_first()
        if not self.original_used:
            # After a deferral Discord makes the first follow-up the original response,
            # which the answer then overwrites: the original shows a line of its own first.
            self.original_used = True
            await self.edit_original(WAITING_FOR_APPROVAL, None)
        # As private as the answer: a private /ask asks privately too.
        message = await self.followup.send(
            text, ephemeral=self.ephemeral, wait=True, view=view, allowed_mentions=mentions
        )
        return message.id

    async def close_question(self, message_id: int, text: str) -> None:
        # A follow-up is edited through the interaction's token (valid 15 minutes).
        await self.followup.edit_message(
            message_id, content=text, view=None, allowed_mentions=NO_MENTIONS
        )

    async def attach(self, file: discord.File) -> None:
        # As private as the answer it belongs to.
        await self.followup.send(
            file=file, ephemeral=self.ephemeral, wait=True, allowed_mentions=NO_MENTIONS
        )


class InteractionReplySink(_ReplySinkBase):
    """An answer to a slash command: the deferred original response, then follow-ups."""

    def __init__(
        self,
        *,
        followup: discord.Webhook,
        edit_original: EditOriginal,
        defer: Defer | None = None,
        ephemeral: bool = False,
        on_posted: OnPosted | None = None,
        limit: int = DISCORD_LIMIT,
    ) -> None:
        self._interaction_transport = _InteractionTransport(
            followup=followup,
            edit_original=edit_original,
            defer=defer,
            ephemeral=ephemeral,
            on_posted=on_posted,
        )
        super().__init__(self._interaction_transport, limit)

    @classmethod
    def for_interaction(
        cls,
        interaction: discord.Interaction,
        *,
        ephemeral: bool,
        on_posted: OnPosted | None = None,
    ) -> InteractionReplySink:
        async def edit_original(text: str, view: View | None) -> int | None:
            options: dict[str, Any] = {"view": view} if view is not None else {}
            message = await interaction.edit_original_response(
                content=text, allowed_mentions=NO_MENTIONS, **options
            )
            return message.id

        async def defer() -> None:
            if not interaction.response.is_done():
                await interaction.response.defer(ephemeral=ephemeral, thinking=True)

        return cls(
            followup=interaction.followup,
            edit_original=edit_original,
            defer=defer,
            ephemeral=ephemeral,
            on_posted=on_posted,
        )

    async def begin(self, existing_ref: str | None, *, turn_tag: str, resumed: bool) -> str | None:
        self._turn_tag = turn_tag
        # The interaction's original response is the placeholder; its token finds it again.
        await self._transport.post_first()
        # The deferred original shows "thinking…" until the first edit.
        self._renderer.shown = [(None, None)]
        return existing_ref or "original"


def turn_nonce(turn_tag: str, channel_id: int, reply_to: int | None) -> str:
    """The placeholder's nonce for a turn: the same on every attempt, within Discord's 25
    characters. Discord dedupes nonces per author, not per channel, and turn ids start
    over with a new database: the channel and the message answered keep two turns apart."""
    digest = hashlib.sha256(f"{turn_tag}:{channel_id}:{reply_to}".encode()).hexdigest()
    return "t" + digest[: _NONCE_MAX - 1]

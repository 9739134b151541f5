"""Where a Discord message becomes a reply: mentions, replies to the bot, bot threads, DMs."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import discord

from botservice.adapters.discord import events
from botservice.adapters.discord.context import DiscordContext
from botservice.adapters.discord.sink import ChannelReplySink
from botservice.core.events import ContextMessage
from botservice.core.ports import ReplySink

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Route:
    """The decision for one message: which conversation, what text, answer how."""

    thread: str
    text: str
    reply: bool
    # What the store lacks for a cold reply chain: the message being replied to.
    context: tuple[ContextMessage, ...] = ()


class DiscordMessages:
    def __init__(self, context: DiscordContext) -> None:
        self._context = context

    async def on_message(self, message: discord.Message) -> None:
        if not events.is_person_message(message):
            return
        try:
            await self._answer(message)
        except discord.Forbidden:
            log.warning(
                "missing permission to answer in channel %s (needs View Channel, Send Messages, "
                "Read Message History)",
                message.channel.id,
                exc_info=True,
            )
        except Exception:
            log.exception("could not answer Discord message %s", message.id)

    async def _answer(self, message: discord.Message) -> None:
        context = self._context
        bot_id = context.bot_id
        place = events.place_of(message.channel, message.guild.id if message.guild else None)
        route = await self._route(message, place, bot_id)
        if route is None:
            return
        context.chains.remember(message.id, route.thread)
        admin = context.core.policy.manages(
            events.manager_facts(
                manage_channels=_manage_channels(message),
                user_id=message.author.id,
                owner_ids=context.owner_ids,
                in_dm=message.guild is None,
                guild_owner_id=message.guild.owner_id if message.guild else None,
            )
        )
        incoming = events.incoming_from_message(
            message,
            place=place,
            thread=route.thread,
            text=route.text,
            context=route.context,
            admin=admin,
            reply_target=events.message_reply_target(message, reply=route.reply),
        )
        sink: ReplySink = self.sink(
            message.channel.id,
            reply_to=message.id if route.reply else None,
            thread=route.thread,
        )
        if context.hearing is not None:
            # A voice message is stored like a typed one and heard when it is answered.
            sink = context.hearing.listening(sink)
        sink = await context.spoken(
            sink,
            guild_id=message.guild.id if message.guild else None,
            user=message.author,
            channel_id=message.channel.id,
            place=place,
        )
        submission = await context.core.submit(incoming, sink)
        if submission is None:
            log.debug("Discord message %s was already taken; not answering again", message.id)

    def sink(self, channel_id: int, *, reply_to: int | None, thread: str) -> ChannelReplySink:
        client = self._context.require_client()
        chains = self._context.chains

        def remember(message_id: int) -> None:
            chains.remember(message_id, thread, by_bot=True)

        return ChannelReplySink(
            client.get_partial_messageable(channel_id),
            reply_to=reply_to,
            on_posted=remember,
            own_id=client.user.id if client.user is not None else None,
        )

    async def _route(
        self, message: discord.Message, place: events.Place, bot_id: int
    ) -> _Route | None:
        mentioned = events.mentions_user(message, bot_id)
        own = events.strip_mention(message.content, bot_id) if mentioned else message.content
        # A forward arrives empty: its snapshots are the content, quoted as forwarded.
        text = events.message_text(message, own)
        if place.workspace == events.DM_WORKSPACE:
            return _Route(thread="", text=text, reply=False)
        if place.in_thread:
            # Threads the bot started (/chat) continue without a mention; elsewhere a
            # mention makes the whole thread the conversation.
            if place.thread_owner_id == bot_id or mentioned:
                return _Route(thread=place.thread, text=text, reply=False)
            return None
        if events.is_reply(message):
            return await self._route_reply(message, text, bot_id, mentioned)
        if mentioned:
            return _Route(thread=str(message.id), text=text, reply=True)
        return None

    async def _route_reply(
        self, message: discord.Message, text: str, bot_id: int, mentioned: bool
    ) -> _Route | None:
        chains = self._context.chains
        reference = message.reference
        assert reference is not None and reference.message_id is not None
        known = chains.entry(reference.message_id)
        parent = events.referenced_message(message)
        if parent is not None:
            parent_is_bot = parent.author.id == bot_id
        elif known is not None:
            parent_is_bot = known.by_bot
        else:
            # Discord left the referenced message out of the payload: fetch it, once.
            parent = await _fetch_once(message)
            parent_is_bot = parent is not None and parent.author.id == bot_id
        if not (parent_is_bot or mentioned):
            return None
        if known is not None:
            # A chain this process has seen: same conversation, history from the store.
            return _Route(thread=known.root, text=text, reply=True)
        if parent_is_bot:
            # A chain answered before this process started: the store knows which
            # conversation the bot's answer belongs to.
            stored = await self._context.lookups.thread_of_message(
                events.PLATFORM,
                str(message.guild.id) if message.guild else events.DM_WORKSPACE,
                str(message.channel.id),
                str(reference.message_id),
            )
            if stored is not None:
                chains.remember(reference.message_id, stored, by_bot=True)
                return _Route(thread=stored, text=text, reply=True)
        if parent_is_bot and parent is not None:
            # A cold chain the store does not hold either (expired, or answered by a
            # turn it never recorded). The bot's answer replied
            # to the conversation's root (a conversation the store already holds) or to a
            # later turn (one it cannot find, so it starts afresh); either way the answer
            # being replied to comes along as a quote.
            grand = parent.reference.message_id if parent.reference else None
            root = chains.root_of(grand) if grand else None
            if root is not None:
                return _Route(thread=root, text=text, reply=True)
            return _Route(
                thread=str(grand or parent.id),
                text=text,
                reply=True,
                context=(events.context_of(parent, bot_id),),
            )
        # A mention replying to someone else's message: a new conversation about it, with
        # the chain it replies to read once (the core stores it with the question).
        context = await self._unseen_chain(message, parent, bot_id) if parent is not None else ()
        return _Route(thread=str(message.id), text=text, reply=True, context=context)

    async def _unseen_chain(
        self, message: discord.Message, parent: discord.Message, bot_id: int
    ) -> tuple[ContextMessage, ...]:
        """The message replied to and up to `discord.unseen_chain_fetch` messages before it
        in its reply chain, oldest first. Discord nests each fetched message's parent in it,
        so a chain of n costs about n / 2 calls."""
        budget = self._context.settings.discord.unseen_chain_fetch
        chain = [parent]
        seen = {message.id, parent.id}
        current = parent
        while len(chain) <= budget and events.is_reply(current):
            reference = current.reference
            assert reference is not None and reference.message_id is not None
            if reference.message_id in seen:
                break  # Discord never makes a cycle; a broken payload must not loop
            earlier = events.referenced_message(current)
            if earlier is None:
                earlier = await _fetch(message.channel, reference.message_id)
            if earlier is None:
                break  # deleted, or no Read Message History: quote what was read
            seen.add(earlier.id)
            chain.append(earlier)
            current = earlier
        if len(chain) > budget and events.is_reply(current):
            log.debug(
                "read %d earlier messages of the reply chain in channel %s; older ones left out",
                budget,
                message.channel.id,
            )
        return tuple(events.context_of(item, bot_id) for item in reversed(chain))


async def _fetch_once(message: discord.Message) -> discord.Message | None:
    reference = message.reference
    if reference is None or reference.message_id is None:
        return None
    try:
        return await message.channel.fetch_message(reference.message_id)
    except discord.HTTPException:
        return None


async def _fetch(channel: discord.abc.Messageable, message_id: int) -> discord.Message | None:
    try:
        return await channel.fetch_message(message_id)
    except discord.HTTPException:
        return None


def _manage_channels(message: discord.Message) -> bool:
    author = message.author
    channel = message.channel
    if not isinstance(author, discord.Member) or not hasattr(channel, "permissions_for"):
        return False
    try:
        return bool(channel.permissions_for(author).manage_channels)
    except Exception:  # an uncached channel or role: assume no right, the core refuses
        log.debug("could not resolve permissions in channel %s", channel.id, exc_info=True)
        return False

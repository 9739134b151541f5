"""The hot path on PostgreSQL: a turn's statements through asyncpg itself.

The SQL is compiled once from the SQLAlchemy Core definitions into `compiled.py`;
asyncpg prepares each statement once per connection and keeps it. No transaction is
opened around anything: every statement here is atomic on its own (accepting a
message and finishing a turn with its answer are one statement each), so each costs
one round trip. Exactly-once stays the database's: the partial unique index on
running turns decides claims, finishing checks `claimed_by`, heartbeats renew
`alive_until`.

Connections belong to the event loop that opened them: the home loop has a pool sized
to the configured concurrency and a small one for accepting messages (the platform
waits for that one before it gets its acknowledgement); another loop (the accept
loop, botservice.core.accept_loop) gets a small pool of its own.

History: each turn asks the database which messages make its window (ids only, so a
deletion, a forget-me or a reset by any process shows at once) and builds only the
messages it has not seen, from a cache of message contents by id that this process's
own writes fill; where the window continues the conversation's last one, from that
window as built, looking up only the ids it adds. Imports no SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from botservice.core.errors import StoreUnavailable
from botservice.core.events import ConversationKey, IncomingMessage
from botservice.core.ports import (
    AcceptedTurn,
    ChannelSettings,
    Claim,
    MessageStatus,
    PendingTurn,
    StoredMessage,
    StoredToolCall,
    Usage,
    UsageRecord,
)
from botservice.storage import hot_rows
from botservice.storage.compiled import POSTGRESQL
from botservice.storage.pg_pool import NewestFirstPool

log = logging.getLogger(__name__)

# Conversations whose window start is remembered (all forgotten at once past it).
WINDOW_STARTS = 10_000
# How long the reads made with a turn's accepting claim stand for the turn's own
# (`history`, `channel_settings(for_message=...)`), which follow at once: the turn
# starts as it is claimed, well under a millisecond later on an idle loop. Older, they
# are read again: what a turn is answered from is never older than this.
PREFETCH_SECONDS = 0.2
# Where `claim_next_reading`'s row has the claimed question (the columns of a stored
# message, after the turn's 11) and the window's ids (the settings follow them).
_CLAIMED_QUESTION = 11
_CLAIMED_WINDOW = 20
# Managed PostgreSQL closes idle connections; let a pool close them before that.
IDLE_CONNECTION_SECONDS = 1800.0
# Accepting connections opened as the bot starts: what an ordinary moment keeps busy.
ACCEPTING_CONNECTIONS_AHEAD = 4
_ANSWER_STATEMENTS = {
    (False, False): "answer",
    (False, True): "answer_with_usage",
    (True, False): "held_answer",
    (True, True): "held_answer_with_usage",
}


def _bound(name: str, values: dict[str, Any]) -> tuple[str, list[Any]]:
    statement = POSTGRESQL[name]
    args = [values[p] if p.__class__ is str else p[0] for p in statement.params]
    return statement.sql, args


@contextlib.contextmanager
def _unavailable_as_store_error() -> Iterator[None]:
    """Connection failures become `StoreUnavailable` (callers may retry); errors in the
    statements themselves (integrity and the like) pass through."""
    try:
        yield
    except (
        OSError,
        TimeoutError,
        asyncpg.InterfaceError,
        asyncpg.PostgresConnectionError,
        asyncpg.exceptions.OperatorInterventionError,
        asyncpg.exceptions.InsufficientResourcesError,
        asyncpg.exceptions.CannotConnectNowError,
    ) as error:
        raise StoreUnavailable() from error


class PostgresHotPath:
    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int,
        accept_pool_size: int,
        connect_timeout: float,
        messages: Any,
        home: asyncio.AbstractEventLoop | None,
    ) -> None:
        # `messages`: the store's cache of message contents by id (`base._MessageCache`).
        self._dsn = dsn
        self._pool_size = pool_size
        self._accept_pool_size = accept_pool_size
        self._connect_timeout = connect_timeout
        self._messages = messages
        # The loop the store was made on (else the first it is used on) has the big pool.
        self._home: asyncio.AbstractEventLoop | None = home
        self._pools: dict[tuple[asyncio.AbstractEventLoop, bool], NewestFirstPool] = {}
        self._opening: dict[tuple[asyncio.AbstractEventLoop, bool], asyncio.Lock] = {}
        # Per conversation, the oldest id of its last full history window (see history).
        self._window_starts: dict[int, int] = {}
        # Closed with its store: from then on work is a mistake (as on the closed
        # worker), not an outage to retry, and nothing connects again.
        self._closed = False
        # Conversations' ids by key, for the window start of a message's accept.
        self._conversation_ids: dict[ConversationKey, int] = {}
        # Reads made with accepting claims, oldest first, each with when it was read:
        # the windows (the history limit, the ids in the window's order, ending with the
        # message) by (conversation id, message id), and the settings (the channel's key,
        # the settings rows) by message id. A turn takes its own, on the home loop
        # (maybe accepted on another loop's thread).
        self._prefetched_windows: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self._prefetched_settings: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        # The messages whose turns were claimed (a moment ago) in a conversation that
        # had no tool rounds then: their `tool_calls_for` needs no round trip.
        self._no_tool_rounds: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self._prefetched_lock = threading.Lock()

    @property
    def pool_size(self) -> int:
        return self._pool_size

    # --- connections -----------------------------------------------------------------

    async def _pool(self, *, accepting: bool) -> NewestFirstPool:
        if self._closed:
            raise RuntimeError("the store is closed")
        loop = asyncio.get_running_loop()
        if self._home is None:
            self._home = loop
        # Away from home one small pool does everything.
        home = loop is self._home
        slot = (loop, accepting and home)
        pool = self._pools.get(slot)
        if pool is not None:
            return pool
        lock = self._opening.setdefault(slot, asyncio.Lock())
        async with lock:
            pool = self._pools.get(slot)
            if pool is None:
                size = self._pool_size if home and not accepting else self._accept_pool_size
                pool = NewestFirstPool(
                    self._dsn,
                    max_size=size,
                    connect_timeout=self._connect_timeout,
                    idle_seconds=IDLE_CONNECTION_SECONDS,
                )
                self._pools[slot] = pool
        return pool

    @contextlib.asynccontextmanager
    async def _connection(self, *, accepting: bool = False) -> AsyncIterator[asyncpg.Connection]:
        pool = await self._pool(accepting=accepting)
        with _unavailable_as_store_error():
            # Opening a connection has its timeout; a busy pool is waited for.
            async with pool.acquire() as connection:
                yield connection

    async def _fetchrow(
        self,
        name: str,
        values: dict[str, Any],
        *,
        accepting: bool = False,
        connection: asyncpg.Connection | None = None,
    ) -> Any:
        sql, args = _bound(name, values)
        if connection is not None:
            with _unavailable_as_store_error():
                return await connection.fetchrow(sql, *args)
        async with self._connection(accepting=accepting) as connection:
            return await connection.fetchrow(sql, *args)

    async def _fetch(
        self, name: str, values: dict[str, Any], *, accepting: bool = False
    ) -> list[Any]:
        sql, args = _bound(name, values)
        async with self._connection(accepting=accepting) as connection:
            rows: list[Any] = await connection.fetch(sql, *args)
            return rows

    async def _execute(self, name: str, values: dict[str, Any]) -> int:
        """Run a statement; how many rows it changed."""
        sql, args = _bound(name, values)
        async with self._connection() as connection:
            status: str = await connection.execute(sql, *args)
        return int(status.rsplit(" ", 1)[-1])

    async def open_accept_connections(self) -> None:
        """Open a few accepting connections of the running loop now, not inside the
        first acknowledgements (a burst opens more, up to the pool's size)."""
        pool = await self._pool(accepting=True)
        await pool.open(min(self._accept_pool_size, ACCEPTING_CONNECTIONS_AHEAD))

    async def leave_loop(self) -> None:
        loop = asyncio.get_running_loop()
        for slot in [slot for slot in self._pools if slot[0] is loop]:
            pool = self._pools.pop(slot)
            self._opening.pop(slot, None)
            await pool.close()

    async def aclose(self) -> None:
        self._closed = True
        loop = asyncio.get_running_loop()
        pools, self._pools = self._pools, {}
        self._opening.clear()
        for (owner, _), pool in pools.items():
            if owner is loop:
                await pool.close()
            else:  # its loop is gone or elsewhere: no waiting on it from here
                pool.terminate()

    # --- turns -----------------------------------------------------------------------

    async def accept(
        self,
        message: IncomingMessage,
        *,
        text: str,
        tokens: int,
        claim: Claim | None = None,
        spoken: bool = False,
    ) -> AcceptedTurn | None:
        """One round trip for a message in a known conversation, three for the first
        message of a new one. With `claim`, the turn is claimed in the same statement
        when nothing of its conversation is pending or running (see
        `turns._pg_accept_statement`): no statement of its own for the usual claim."""
        now = hot_rows.utcnow()
        key = hot_rows.key_values(message.conversation)
        stored = hot_rows.user_message_values(message, text=text, tokens=tokens, now=now)
        values = {
            **{f"k_{name}": value for name, value in key.items()},
            **{
                f"t_{name}": value
                for name, value in hot_rows.turn_values(message, now, spoken=spoken).items()
            },
            **{f"m_{name}": value for name, value in stored.items()},
        }
        if spoken:
            claim = None  # a realtime voice session answers it; no worker claims it
        reading = claim is not None and claim.history_limit > 0
        if claim is not None:
            values.update({"b_holder": claim.holder, "b_alive_until": claim.alive_until})
        if claim is not None and reading:
            known = self._conversation_ids.get(message.conversation)
            values.update(
                {
                    "window_limit": claim.history_limit - 1,  # and the message itself
                    "from_id": self._window_starts.get(known, 0) if known else 0,
                    "platform": message.platform,
                    "workspace": message.workspace,
                    "channel": message.channel,
                }
            )
        for attempt in range(3):
            name = "accept" if claim is None else "accept_claimed"
            try:
                if claim is not None and reading:
                    rows = await self._fetch("accept_claimed_reading", values, accepting=True)
                    row = rows[0]
                else:
                    rows, row = [], await self._fetchrow(name, values, accepting=True)
                conversation_id, turn_id, message_id, status = row[:4]
            except asyncpg.UniqueViolationError:
                if claim is None:
                    raise
                # Another process claimed a turn of this conversation at the same
                # moment (`uq_turns_one_running`): nothing was written; accepted
                # without the claim, the turn waits for that one, as any other.
                claim = None
                continue
            except asyncpg.IntegrityConstraintViolationError:
                # The purge deleted the (empty) conversation as the message came in;
                # nothing was written, so taking it again is safe.
                if attempt == 2:
                    raise
                continue
            if conversation_id is None:
                conversation = {
                    **key,
                    "created_at": now,
                    "updated_at": now,
                    "trim_noticed": False,
                }
                await self._fetchrow("create_conversation", conversation, accepting=True)
                continue
            if turn_id is None:
                return None  # a duplicate delivery
            if len(self._conversation_ids) >= WINDOW_STARTS:
                self._conversation_ids.clear()
            self._conversation_ids[message.conversation] = conversation_id
            self._messages.add(
                [
                    StoredMessage(
                        id=message_id,
                        role="user",
                        author_id=stored["author_id"],
                        author_name=stored["author_name"],
                        text=stored["text"],
                        tokens=tokens,
                        created_at=now,
                    )
                ]
            )
            claimed = None
            if status == "running":
                assert claim is not None
                claimed = PendingTurn(
                    turn_id=turn_id,
                    conversation_id=conversation_id,
                    user_message_id=message_id,
                    platform=message.platform,
                    conversation=message.conversation,
                    reply_target=json.loads(values["t_reply_target"]),
                    reply_ref=None,
                    created_at=now,
                    user_id=message.user_id,
                    is_channel_admin=message.is_channel_admin,
                    claims=1,
                    has_audio=stored["audio"] is not None,
                )
                if claim is not None and reading:
                    self._keep_turn_reads(rows, values, claim.history_limit, message_id)
            return AcceptedTurn(
                turn_id=turn_id,
                conversation_id=conversation_id,
                user_message_id=message_id,
                claimed=claimed,
            )
        raise LookupError("the conversation of an incoming message could not be created")

    async def claim_next_turn(
        self,
        conversation_id: int,
        claim: Claim,
        key: ConversationKey | None,
        *,
        connection: asyncpg.Connection | None = None,
    ) -> PendingTurn | None:
        values = {
            "b_conversation_id": conversation_id,
            "b_holder": claim.holder,
            "b_alive_until": claim.alive_until,
        }
        reading = claim.history_limit > 0 and key is not None
        try:
            if reading:
                assert key is not None
                return await self._claim_next_reading(values, claim.history_limit, key, connection)
            row = await self._fetchrow("claim_next", values, connection=connection)
        except asyncpg.UniqueViolationError:
            return None  # another process claimed a turn of this conversation first
        if row is None:
            return None
        if key is None:
            # A conversation's key never changes, so it may be read after the claim.
            found = await self._fetchrow(
                "conversation_key", {"conversation_id": conversation_id}, connection=connection
            )
            key = ConversationKey(*found)
        return hot_rows.pending_turn(row, key, row[6])

    async def _claim_next_reading(
        self,
        values: dict[str, Any],
        history_limit: int,
        key: ConversationKey,
        connection: asyncpg.Connection | None,
    ) -> PendingTurn | None:
        """`claim_next` with the claimed turn's reads (`claim_next_reading`): its question,
        its window's ids and its channel's settings, kept for the turn's `history` and
        `channel_settings` as `accept_claimed_reading`'s are. The turn a process claims
        as it saves an answer was often accepted by another process: without its
        question here it would be one more round trip, and the reads two more."""
        conversation_id = values["b_conversation_id"]
        values = {
            **values,
            "limit": history_limit,
            "from_id": self._window_starts.get(conversation_id, 0),
            "platform": key.platform,
            "workspace": key.workspace,
            "channel": key.channel,
        }
        sql, args = _bound("claim_next_reading", values)
        if connection is not None:
            with _unavailable_as_store_error():
                rows = await connection.fetch(sql, *args)
        else:
            async with self._connection() as connection:
                rows = await connection.fetch(sql, *args)
        if not rows:
            return None
        first = rows[0]
        turn = hot_rows.pending_turn(first, key, first[6])
        if first[_CLAIMED_QUESTION] is not None:  # else deleted (forgotten) as it was claimed
            question = first[_CLAIMED_QUESTION:_CLAIMED_WINDOW]
            self._messages.add([hot_rows.stored_message(question, question[-1])])
        window: list[int] = first[_CLAIMED_WINDOW] or []
        now = time.monotonic()
        with self._prefetched_lock:
            self._forget_old_reads(now)
            # Fewer from the window start than asked: `history` asks again, from 0.
            if len(window) == history_limit or not values["from_id"]:
                self._prefetched_windows[(conversation_id, turn.user_message_id)] = (
                    now,
                    (history_limit, window),
                )
            settings = [tuple(row)[_CLAIMED_WINDOW + 2 :] for row in rows]
            self._prefetched_settings[turn.user_message_id] = (
                now,
                (
                    (key.platform, key.workspace, key.channel),
                    [row for row in settings if row[0] is not None],
                ),
            )
            if not first[_CLAIMED_WINDOW + 1]:
                self._no_tool_rounds[turn.user_message_id] = (now, True)
        return turn

    async def renew_claims(
        self, holder: str, turn_ids: Collection[int], *, alive_until: datetime
    ) -> int:
        values = {"b_holder": holder, "b_turn_ids": list(turn_ids), "b_alive_until": alive_until}
        return await self._execute("renew_claims", values)

    async def set_reply_ref(self, turn_id: int, reply_ref: str) -> None:
        await self._execute("set_reply_ref", {"b_turn_id": turn_id, "b_reply_ref": reply_ref})

    async def fail_turn(self, turn_id: int, *, holder: str | None) -> bool:
        name = "finish_turn" if holder is None else "finish_held_turn"
        values = hot_rows.finish_values(turn_id, holder, None, status="failed")
        return await self._fetchrow(name, values) is not None

    async def store_answer(
        self,
        turn_id: int,
        *,
        holder: str | None,
        text: str,
        tokens: int,
        usage: Usage | None,
        status: MessageStatus,
        model: str,
        reply_ref: str | None,
        ledger: UsageRecord | None,
        claim_next: tuple[Claim, int, ConversationKey] | None = None,
    ) -> tuple[int | None, PendingTurn | None]:
        """The finish, the answer's insert and its usage row: one statement; then, with
        `claim_next` (the claim, conversation id and key), the claim of the
        conversation's next turn on the same connection (a statement of its own: in
        the finish's statement the finished turn would still look running)."""
        answer = hot_rows.answer_values(text, tokens, usage, status, model)
        values = {
            **hot_rows.finish_values(turn_id, holder, reply_ref),
            **{f"a_{name}": value for name, value in answer.items()},
        }
        if ledger is not None:
            values.update(
                {f"u_{name}": value for name, value in hot_rows.usage_values(ledger).items()}
            )
        name = _ANSWER_STATEMENTS[(holder is not None, ledger is not None)]
        claimed = None
        async with self._connection() as connection:
            row = await self._fetchrow(name, values, connection=connection)
            if claim_next is not None:
                claim, conversation_id, key = claim_next
                claimed = await self.claim_next_turn(
                    conversation_id, claim, key, connection=connection
                )
        if row is None:
            return None, claimed
        message_id, question_id = row
        self._messages.add(
            [
                StoredMessage(
                    id=message_id,
                    role="assistant",
                    author_id="",
                    author_name="",
                    text=answer["text"],
                    tokens=tokens,
                    reply_to_id=question_id,
                    status=status,
                    created_at=answer["created_at"],
                )
            ]
        )
        return int(message_id), claimed

    # --- reads -----------------------------------------------------------------------

    async def has_conversation(self, key: ConversationKey) -> bool:
        # Adapters ask this before acknowledging an event: on the accepting connections.
        found = await self._fetchrow("conversation_id", hot_rows.key_values(key), accepting=True)
        return found is not None

    async def was_taken(self, platform: str, message_key: str) -> bool:
        values = {"platform": platform, "message_key": message_key}
        return await self._fetchrow("message_taken", values, accepting=True) is not None

    async def tool_calls_for(self, user_message_ids: Collection[int]) -> list[StoredToolCall]:
        # A turn asks for the rounds of its history's questions, its own among them: all
        # of one conversation, which had none when the turn was claimed (and the turn
        # has stored none since: it asks before its first round).
        with self._prefetched_lock:
            marked = next((id_ for id_ in user_message_ids if id_ in self._no_tool_rounds), None)
        if marked is not None and self._take_prefetched(self._no_tool_rounds, marked):
            return []
        rows = await self._fetch("tool_calls_for_array", {"ids": list(user_message_ids)})
        return [hot_rows.tool_call(row) for row in rows]

    async def channel_settings(
        self, platform: str, workspace: str, channel: str, *, for_message: int | None = None
    ) -> ChannelSettings:
        if for_message is not None:
            read = self._take_prefetched(self._prefetched_settings, for_message)
            if read is not None and read[0] == (platform, workspace, channel):
                # Read as the turn of `for_message` was claimed, a moment ago.
                return hot_rows.merged_settings(list(read[1]), channel)
        values = {"platform": platform, "workspace": workspace, "channel": channel}
        rows = await self._fetch("channel_settings", values)
        return hot_rows.merged_settings(list(rows), channel)

    async def history(
        self, conversation_id: int, *, up_to_message_id: int, limit: int
    ) -> list[StoredMessage]:
        read = self._take_prefetched(self._prefetched_windows, (conversation_id, up_to_message_id))
        if read is not None and read[0] == limit:
            # Read as the turn was claimed, a moment ago: no round trip now (unless the
            # window holds messages this process has not seen).
            ids = read[1]
            self._note_window_start(conversation_id, ids, limit)
            return await self._built_window(conversation_id, ids, None)
        values = self._window_values(conversation_id, up_to_message_id, limit)
        async with self._connection() as connection:
            sql, args = _bound("history_ids", values)
            window = await connection.fetch(sql, *args)
            return await self._window_messages(connection, values, window)

    def _window_values(
        self, conversation_id: int, up_to_message_id: int, limit: int
    ) -> dict[str, Any]:
        # Where the conversation's last full window began: a window of `limit` found
        # from there is the whole answer (every match older than its oldest is older
        # than all of it). Without it the database may read the whole thread to sort
        # it (a generic plan for a prepared statement: a 5,000-message thread took
        # 2.5 ms); with fewer found (deletions, an older `up_to`), it asks again from 0.
        return {
            "conversation_id": conversation_id,
            "up_to": up_to_message_id,
            "limit": limit,
            "from_id": self._window_starts.get(conversation_id, 0),
        }

    async def _window_messages(
        self, connection: asyncpg.Connection, values: dict[str, Any], window: Sequence[Any]
    ) -> list[StoredMessage]:
        """The messages of a window found as (id, the id it answers) rows, from the cache
        of message contents, asking the database only for those not in it."""
        conversation_id, limit = values["conversation_id"], values["limit"]
        if len(window) < limit and values["from_id"]:
            sql, args = _bound("history_ids", {**values, "from_id": 0})
            window = await connection.fetch(sql, *args)
        # Oldest first, each answer right after the question it answers.
        window = sorted(window, key=lambda row: (row[1] or row[0], row[0]))
        ids = [row[0] for row in window]
        self._note_window_start(conversation_id, ids, limit)
        return await self._built_window(conversation_id, ids, connection)

    async def _built_window(
        self, conversation_id: int, ids: list[int], connection: asyncpg.Connection | None
    ) -> list[StoredMessage]:
        """The messages of the window of `ids`: from the conversation's last window where
        this one continues it, else from the cache, asking the database (on `connection`,
        or one taken only then) for those it lacks; kept for the next turn."""
        generation = self._messages.generation
        built = self._messages.window_from(conversation_id, ids)
        if built is None:
            known = self._messages.get_many(ids)
            if len(known) == len(ids):
                built = [known[id_] for id_ in ids]
            elif connection is not None:
                built = await self._messages_of(connection, ids, known)
            else:
                async with self._connection() as taken:
                    built = await self._messages_of(taken, ids, known)
        self._messages.keep_window(conversation_id, ids, built, generation)
        return built

    def _note_window_start(self, conversation_id: int, ids: list[int], limit: int) -> None:
        if len(ids) == limit:
            if len(self._window_starts) >= WINDOW_STARTS:
                self._window_starts.clear()
            self._window_starts[conversation_id] = min(ids)
        else:
            self._window_starts.pop(conversation_id, None)

    async def _messages_of(
        self, connection: asyncpg.Connection, ids: list[int], known: dict[int, StoredMessage]
    ) -> list[StoredMessage]:
        """The window's messages: `known` (from the cache) and the rest from the database."""
        missing = [id_ for id_ in ids if id_ not in known]
        if missing:
            sql, args = _bound("messages_by_ids", {"ids": missing})
            fresh = [
                hot_rows.stored_message(row, row[8]) for row in await connection.fetch(sql, *args)
            ]
            self._messages.add(fresh)
            known.update((message.id, message) for message in fresh)
        # A message deleted between the two reads is left out.
        return [known[id_] for id_ in ids if id_ in known]

    def _keep_turn_reads(
        self, rows: list[Any], values: dict[str, Any], history_limit: int, message_id: int
    ) -> None:
        """Keep what `accept_claimed_reading` read with the claim, for the turn's
        `history`, `channel_settings` and `tool_calls_for`: its window before the
        message, the message, whether its conversation had tool rounds, the settings
        rows."""
        before: list[int] = rows[0][4] or []
        now = time.monotonic()
        with self._prefetched_lock:
            self._forget_old_reads(now)
            # Fewer from the window start than asked: `history` asks again, from 0.
            if len(before) == values["window_limit"] or not values["from_id"]:
                self._prefetched_windows[(rows[0][0], message_id)] = (
                    now,
                    (history_limit, [*before, message_id]),
                )
            channel = (values["platform"], values["workspace"], values["channel"])
            settings = [tuple(row)[6:] for row in rows if row[6] is not None]
            self._prefetched_settings[message_id] = (now, (channel, settings))
            if not rows[0][5]:
                self._no_tool_rounds[message_id] = (now, True)

    def _forget_old_reads(self, now: float) -> None:
        """Drop reads kept longer than a turn takes to ask for them (the lock held)."""
        for kept in (self._prefetched_windows, self._prefetched_settings, self._no_tool_rounds):
            while kept and now - next(iter(kept.values()))[0] >= PREFETCH_SECONDS:
                kept.popitem(last=False)

    def _take_prefetched(self, kept: OrderedDict[Any, tuple[float, Any]], key: Any) -> Any:
        """What was read with a turn's claim, when recent enough to stand for a read now."""
        with self._prefetched_lock:
            found = kept.pop(key, None)
        if found is None or time.monotonic() - found[0] >= PREFETCH_SECONDS:
            return None
        return found[1]

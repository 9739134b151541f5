"""Where a Slack mention becomes a reply: the Bolt app, its listeners, and the Adapter.

Every listener runs with `process_before_response=True`, so Slack is
acknowledged only after the core has stored the message (or decided to drop
it); the answer itself is streamed by the core in a background task.

With `[http] accept_thread` on PostgreSQL (`accept_on`), HTTP events are
served from the accept loop (botservice.core.accept_loop): `message` and
`app_mention` events are acknowledged there by a second Bolt app with a Web API
client of that loop's own; every other request is dispatched on the main loop,
as without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from botservice.adapters.slack.audio import SlackHearing
from botservice.adapters.slack.budget import StreamBudget, UpdateBudget
from botservice.adapters.slack.confirmation import (
    APPROVE_ACTION,
    DENY_ACTION,
    FAILED,
    ConfirmationClick,
    PrivateReply,
    PromptEdit,
    click_outcome,
    read_click,
)
from botservice.adapters.slack.envelope import MalformedBody, odd_field, read_envelope
from botservice.adapters.slack.events import (
    PLATFORM,
    AgentViewOpened,
    AssistantThreadStarted,
    BotIdentity,
    Converse,
    DeleteMessage,
    Ignore,
    ReplyTarget,
    SlackUser,
    ViewChanged,
    WorkspaceGone,
    build_incoming,
    delivered_message_key,
    slash_command,
    translate_event,
)
from botservice.adapters.slack.feedback import GONE, THANKS, feedback_action
from botservice.adapters.slack.files import fetch_attachments
from botservice.adapters.slack.rejections import Rejection, RejectionLog
from botservice.adapters.slack.signature import SignatureCheck
from botservice.adapters.slack.sink import (
    FEEDBACK_ACTION,
    PLACEHOLDER,
    CommandReplySink,
    SlackReplySink,
)
from botservice.adapters.slack.socket_mode import SocketModeRunner
from botservice.adapters.slack.threads import KnownThreads, read_thread_once
from botservice.adapters.slack.users import UserDirectory
from botservice.adapters.slack.viewing import ChannelsInView
from botservice.core.accept_loop import AcceptLoop
from botservice.core.background import BackgroundTasks
from botservice.core.channel_policy import ManagerFacts
from botservice.core.commands import parse_command
from botservice.core.conversation import ConversationCore
from botservice.core.errors import ConfigError, StoreUnavailable
from botservice.core.events import Command, ContextMessage, ConversationKey
from botservice.core.ports import Lookups, PendingTurn, ReplySink
from botservice.core.settings import Settings
from botservice.voice.transcription import Transcriber

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from botservice.adapters.slack.oauth import SlackOAuth

log = logging.getLogger(__name__)

SUGGESTED_PROMPTS = (
    {"title": "Summarize", "message": "Summarize the key points of this text for me:"},
    {"title": "Explain code", "message": "Explain what this code does, step by step:"},
    {"title": "Draft a reply", "message": "Help me write a short, friendly reply to:"},
)
# A command's answer rides on the acknowledgement when it is ready this fast;
# otherwise it follows as an ephemeral message.
COMMAND_ACK_SECONDS = 2.0
# Bolt's name for the app. Bolt gives it a logger of that name and resets that
# logger's level to the root's: never one of our own loggers' names (dotted), such
# as "botservice", whose level the bot sets.
APP_NAME = "botservice-slack"
TITLE_CHARS = 80
# The same body for every refusal: what was wrong is for the operator's log, not the caller.
_REFUSED = {"ok": False, "error": "refused"}
# Event types that may carry a new message: acknowledged on the accept loop.
_ACCEPTED_ON_OWN_LOOP = frozenset({"message", "app_mention"})
_BAD_TOKEN_ERRORS = frozenset(
    {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired"}
)


class SlackAdapter:
    """The Slack platform for `botservice run` (implements `botservice.core.ports.Adapter`)."""

    platform = PLATFORM

    def __init__(
        self,
        settings: Settings,
        core: ConversationCore,
        lookups: Lookups,
        *,
        database: AsyncEngine | None = None,
    ) -> None:
        slack = settings.slack
        self._settings = settings
        self._core = core
        # Asked before an event is acknowledged, and for what Slack says is gone.
        self._lookups = lookups
        self._api_url = slack.api_url
        self._signing_secret = (
            slack.signing_secret.get_secret_value() if slack.signing_secret else ""
        )
        app_token = slack.app_token.get_secret_value() if slack.app_token else None
        bot_token = slack.bot_token.get_secret_value() if slack.bot_token else None
        if not bot_token and not slack.client_id:
            raise ConfigError(
                "SLACK_BOT_TOKEN",
                "set SLACK_BOT_TOKEN (one workspace) or SLACK_CLIENT_ID and "
                "SLACK_CLIENT_SECRET (installs in many workspaces)",
            )
        if not app_token and not self._signing_secret:
            raise ConfigError(
                "SLACK_SIGNING_SECRET",
                "the HTTP Events API needs the app's signing secret (Basic Information > "
                "App Credentials), or set SLACK_APP_TOKEN to use Socket Mode",
            )
        self._client = AsyncWebClient(
            token=bot_token,
            base_url=slack.api_url,
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(max_retry_count=1),
                # Slack's own 429s: wait for Retry-After and try again.
                AsyncRateLimitErrorRetryHandler(max_retry_count=2),
            ],
        )
        self._bot_token = bot_token
        self._signature = SignatureCheck(self._signing_secret)
        self._rejections = RejectionLog()
        self._oauth: SlackOAuth | None = None
        if not bot_token:
            if database is None:
                raise TypeError("multi-workspace installs need the bot's database engine")
            # Imported here: slack-sdk's SQLAlchemy stores, which a bot token never needs.
            from botservice.adapters.slack.oauth import SlackOAuth

            self._oauth = SlackOAuth.from_settings(settings, database)
        self._app = AsyncApp(
            # Named: without a name Bolt reads the caller's file name from
            # inspect.stack(), which reads the source of every frame (0.1-0.3 s of a start).
            name=APP_NAME,
            client=self._client,
            signing_secret=self._signing_secret or "socket-mode-only",
            process_before_response=True,
            oauth_settings=self._oauth.bolt_settings() if self._oauth else None,
            # Assistant threads are handled by our own listener, not Bolt's helper.
            attaching_conversation_kwargs_enabled=False,
        )
        self._budget = UpdateBudget(telemetry=core.telemetry)
        self._streams = StreamBudget()
        self._users = UserDirectory()
        self._known = KnownThreads()
        # Public: what a person is looking at beside the app (agent/assistant view).
        self.in_view = ChannelsInView()
        self._tasks = BackgroundTasks()
        self._session: aiohttp.ClientSession | None = None
        self._socket = SocketModeRunner(self._app, app_token, self._client) if app_token else None
        # Set by `accept_on`: the loop, Bolt app and Web API session that acknowledge
        # message events off the main loop.
        self._accept_loop: AcceptLoop | None = None
        self._accept_app: AsyncApp | None = None
        self._accept_session: aiohttp.ClientSession | None = None
        self._hearing = SlackHearing(
            Transcriber.from_settings(
                settings.voice,
                model_base_url=settings.model.base_url,
                api_key=settings.model.api_key,
            ),
            api_url=slack.api_url,
        )
        self._register()

    # --- Adapter -------------------------------------------------------------------

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
            # Every per-request client Bolt builds reuses this session's pool.
            self._client.session = self._session
        if self._oauth is None:
            await self._check_bot_token()
        if self._socket is not None:
            await self._socket.start()

    async def _check_bot_token(self) -> None:
        """A wrong token is a configuration mistake: say so at start, not on every event."""
        try:
            await self._client.auth_test()
        except SlackApiError as error:
            code = str(error.response.get("error") if error.response is not None else "")
            if code in _BAD_TOKEN_ERRORS:
                raise ConfigError(
                    "SLACK_BOT_TOKEN",
                    f"Slack refused the bot token ({code}); copy the Bot User OAuth Token "
                    "(xoxb-...) from OAuth & Permissions",
                ) from None
            log.warning("Slack auth.test failed (%s); will retry on the first event", code)
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning(
                "Slack is unreachable at start (%s); will retry on the first event",
                type(error).__name__,
            )

    async def stop(self) -> None:
        if self._socket is not None:
            await self._socket.stop()
        await self._tasks.cancel_all()
        if self._session is not None:
            await self._session.close()
            self._session = None
            self._client.session = None
        await self._hearing.aclose()

    def is_connected(self) -> bool:
        # Over HTTP Slack calls in: there is no connection of ours to be down.
        return self._socket is None or self._socket.is_connected()

    def sink_for(self, turn: PendingTurn) -> ReplySink | None:
        target = ReplyTarget.from_dict(turn.reply_target)
        if target is None:
            return None
        if self._oauth is None:
            sink = SlackReplySink(
                client=self._client,
                target=target,
                budget=self._budget,
                telemetry=self._core.telemetry,
                streams=self._streams,
            )
        else:
            sink = SlackReplySink(
                client=None,
                target=target,
                budget=self._budget,
                resolve=lambda: self._client_for(target),
                telemetry=self._core.telemetry,
                streams=self._streams,
            )
        # A clip stored before a stop is heard when its turn resumes.
        return self._hearing.listening(
            sink, session=self._http_session, token=lambda: self._token_for(target)
        )

    def accept_on(self, accept_loop: AcceptLoop) -> bool:
        """Acknowledge HTTP message events on `accept_loop` (`AcceptsOnOwnLoop`): a
        single-workspace app only (an OAuth install's tokens live in tables read
        through the main loop's engine)."""
        if self._oauth is not None or not self._signing_secret or self._bot_token is None:
            return False
        client = AsyncWebClient(
            token=self._bot_token,
            base_url=self._api_url,
            retry_handlers=list(self._client.retry_handlers),
        )
        app = AsyncApp(
            name=APP_NAME,
            client=client,
            signing_secret=self._signing_secret,
            process_before_response=True,
            attaching_conversation_kwargs_enabled=False,
        )
        app.event(re.compile(r".+"))(self._on_event)
        app.error(self._on_error)
        self._accept_app = app
        self._accept_loop = accept_loop
        accept_loop.on_stop(self._close_accept_session)
        return True

    def _off_home(self) -> bool:
        return self._accept_loop is not None and self._accept_loop.is_current()

    async def _close_accept_session(self) -> None:
        if self._accept_session is not None:
            await self._accept_session.close()
            self._accept_session = None

    def http_routes(self) -> list[web.AbstractRouteDef]:
        routes: list[web.AbstractRouteDef] = []
        if self._signing_secret:
            routes.append(web.post("/slack/events", self._handle_events))
        if self._oauth is not None:
            routes.append(web.get(self._oauth.install_path, self._handle_install))
            routes.append(web.get(self._oauth.redirect_path, self._handle_oauth_redirect))
        return routes

    @property
    def bolt_app(self) -> AsyncApp:
        return self._app

    # --- HTTP ------------------------------------------------------------------------

    async def _handle_events(self, request: web.Request) -> web.Response:
        # Verified on the raw bytes first: unsigned input is never parsed, never logged.
        raw = await request.read()
        problem = self._signature.problem(
            raw,
            timestamp=request.headers.get("X-Slack-Request-Timestamp"),
            signature=request.headers.get("X-Slack-Signature"),
        )
        if problem is None:
            try:
                envelope = read_envelope(raw, request.content_type)
            except MalformedBody:
                problem = Rejection.MALFORMED
        if problem is not None:
            self._rejections.count(problem)
            return web.json_response(_REFUSED, status=problem.status)
        if odd := odd_field(envelope.body):
            # Signed, so from Slack (or whoever holds the secret): not worth a warning,
            # and Slack must not redeliver it.
            log.debug("ignored a signed Slack request with an unexpected %s", odd)
            return web.Response(status=200)
        retry = request.headers.get("X-Slack-Retry-Num")
        if retry:
            log.debug(
                "Slack redelivery %s (%s)", retry, request.headers.get("X-Slack-Retry-Reason")
            )
        message_key = delivered_message_key(envelope.body)
        if message_key is not None and self._core.taken_here(PLATFORM, message_key):
            # A message this process has stored (a retry, or the `message` twin of a
            # mention): acknowledged from memory, before Bolt builds a request, a
            # context and a client for it only to drop it.
            self._core.telemetry.message_redelivered(PLATFORM)
            return web.Response(status=200)
        if message_key is not None and retry and await self._taken_elsewhere(message_key):
            # Slack's retry of a message another process stored (several processes
            # behind one URL): one indexed read instead of Bolt's whole way to the
            # accept that would find it taken.
            self._core.telemetry.message_redelivered(PLATFORM)
            return web.Response(status=200)
        bolt_request = AsyncBoltRequest(
            body=envelope.text,
            query=request.query_string,
            headers=request.headers,  # type: ignore[arg-type]
        )
        response: BoltResponse
        if self._accept_loop is not None and self._off_home():
            event = envelope.body.get("event")
            if isinstance(event, dict) and event.get("type") in _ACCEPTED_ON_OWN_LOOP:
                assert self._accept_app is not None
                # The Web API session of this loop, for Bolt's per-request clients.
                self._accept_app.client.session = self._http_session()
                response = await self._accept_app.async_dispatch(bolt_request)
            else:
                response = await self._accept_loop.on_home(self._app.async_dispatch(bolt_request))
        else:
            response = await self._app.async_dispatch(bolt_request)
        return await to_aiohttp_response(response)

    async def _handle_install(self, request: web.Request) -> web.Response:
        assert self._oauth is not None
        flow = self._app.oauth_flow
        assert flow is not None
        return await to_aiohttp_response(
            await flow.handle_installation(await to_bolt_request(request))
        )

    async def _handle_oauth_redirect(self, request: web.Request) -> web.Response:
        flow = self._app.oauth_flow
        assert flow is not None
        return await to_aiohttp_response(await flow.handle_callback(await to_bolt_request(request)))

    # --- listeners ---------------------------------------------------------------------

    def _register(self) -> None:
        self._app.event(re.compile(r".+"))(self._on_event)
        self._app.command(self._settings.slack.command)(self._on_command)
        self._app.action(FEEDBACK_ACTION)(self._on_feedback)
        self._app.action(APPROVE_ACTION)(self._on_confirmation)
        self._app.action(DENY_ACTION)(self._on_confirmation)
        self._app.error(self._on_error)

    async def _on_error(self, error: Exception, body: dict[str, Any]) -> BoltResponse:
        # The adapter's one boundary: the stack goes to the log once; Slack gets
        # a 500 and redelivers, and the stored-message dedupe absorbs the retry.
        event = body.get("event") if isinstance(body, dict) else None
        kind = (
            event.get("type")
            if isinstance(event, dict)
            else body.get("type")
            if isinstance(body, dict)
            else None
        )
        if isinstance(error, StoreUnavailable):
            log.warning("Slack %s not taken: the database is unreachable", kind or "request")
        else:
            log.error("Slack %s failed", kind or "request", exc_info=error)
        return BoltResponse(status=500, body="")

    async def _on_event(self, body: dict[str, Any], context: AsyncBoltContext) -> None:
        bot = BotIdentity(user_id=context.bot_user_id, bot_id=context.bot_id)
        action = translate_event(body, bot)
        client = context.client
        if isinstance(action, Ignore):
            log.debug("ignored Slack event: %s", action.reason)
        elif isinstance(action, Converse):
            await self._converse(action, bot, client, context.bot_token, body)
        elif isinstance(action, DeleteMessage):
            await self._delete(action)
        elif isinstance(action, AssistantThreadStarted):
            self._spawn(self._suggest_prompts(client, action.channel, action.thread_ts))
        elif isinstance(action, AgentViewOpened):
            # The agent view's conversation has no thread to name: Slack drops a
            # `thread_ts` sent for an agent app.
            self._spawn(self._suggest_prompts(client, action.channel, None))
        elif isinstance(action, ViewChanged):
            self.in_view.record(action.team, action.user, action.channel)
        elif isinstance(action, WorkspaceGone):
            await self._forget_workspace(action)

    async def _converse(
        self,
        action: Converse,
        bot: BotIdentity,
        client: AsyncWebClient,
        token: str | None,
        body: dict[str, Any],
    ) -> None:
        draft = action.draft
        key = ConversationKey(PLATFORM, draft.team, draft.channel, draft.thread)
        known = key in self._known
        if not known and _asks_whether_known(action):
            known = await self._core_knows(key)
        if action.only_in_known_thread and not known:
            return
        user = await self._users.lookup(client, draft.team, draft.user)
        context: tuple[ContextMessage, ...] = ()
        if draft.in_thread and not draft.is_direct and not known:
            context = await read_thread_once(
                client, draft, bot=bot, users=self._users, placeholder=PLACEHOLDER
            )
        attachments = await fetch_attachments(
            self._http_session(),
            draft.files,
            token=token,
            api_url=self._api_url,
            limits=self._settings.images,
        )
        message = build_incoming(
            draft,
            user=user,
            is_channel_admin=self._manages(user, direct=draft.is_direct),
            attachments=attachments,
            context=context,
            raw=body,
        )
        sink = SlackReplySink(
            # The answer is shown from the main loop, with its own session.
            client=self._client if self._off_home() else client,
            target=draft.reply_target(),
            budget=self._budget,
            telemetry=self._core.telemetry,
            streams=self._streams,
        )

        async def event_token() -> str | None:
            return token

        # An audio clip is stored like a typed message and heard when it is answered.
        listening = self._hearing.listening(sink, session=self._http_session, token=event_token)
        submission = await self._core.submit(message, listening)
        self._known.add(key)
        if submission is not None and sink.target.assistant and not known and draft.text:
            if self._accept_loop is not None and self._off_home():
                title = self._set_title(self._client, sink.target, draft.text)
                self._accept_loop.home.call_soon_threadsafe(self._spawn, title)
            else:
                self._spawn(self._set_title(client, sink.target, draft.text))

    async def _on_command(
        self, body: dict[str, Any], ack: Callable[..., Awaitable[None]], context: AsyncBoltContext
    ) -> None:
        request = slash_command(body)
        if request is None:
            await ack()
            return
        command = parse_command(request.text) or Command("help")
        client = context.client
        user = await self._users.lookup(client, request.team, request.user)
        message = request.message(
            is_channel_admin=self._manages(user, direct=request.channel_type == "im"),
            user_name=user.name,
        )
        sink = CommandReplySink(
            client=client,
            target=ReplyTarget.from_dict(message.reply_target)
            or ReplyTarget(request.team, request.channel),
            budget=self._budget,
            telemetry=self._core.telemetry,
        )
        task = self._spawn(self._core.run_command(message, command, sink))
        done, _ = await asyncio.wait({task}, timeout=COMMAND_ACK_SECONDS)
        if done and task.exception() is None:
            await ack(text=sink.take_buffered(), response_type="ephemeral")
        else:
            # Slow (or failed): acknowledge now; the answer follows as an
            # ephemeral message, the failure as a short sentence.
            sink.go_direct()
            await ack()
            if done:
                await sink.notice("That command failed on my side; please try again.")

    async def _on_feedback(
        self,
        body: dict[str, Any],
        ack: Callable[..., Awaitable[None]],
        context: AsyncBoltContext,
    ) -> None:
        await ack()
        action = feedback_action(body)
        if action is None:
            log.info("a Slack feedback click that names no answer was ignored")
            return
        click = action.click
        kept = await self._core.record_feedback(click)
        with contextlib.suppress(SlackApiError, aiohttp.ClientError, TimeoutError):
            await context.client.chat_postEphemeral(
                channel=click.channel,
                user=click.user_id,
                text=THANKS[click.verdict] if kept else GONE,
                thread_ts=action.thread_ts,
            )

    async def _on_confirmation(
        self,
        body: dict[str, Any],
        ack: Callable[..., Awaitable[None]],
        context: AsyncBoltContext,
    ) -> None:
        # Acknowledged at once; the decision and the edit follow in the background, so
        # a slow database never shows the clicker Slack's warning triangle.
        await ack()
        click = read_click(body)
        if click is None:
            log.info("a Slack Approve/Deny click that names no confirmation was ignored")
            return
        self._spawn(self._decide(click, context.client))

    async def _decide(self, click: ConfirmationClick, client: AsyncWebClient) -> None:
        try:
            decision = await self._core.decide_tool_call(
                click.confirmation_id,
                platform=PLATFORM,
                user_id=click.user_id,
                approve=click.approve,
            )
        except Exception:
            # The one boundary for these clicks: the stack to the log, one sentence to
            # the person; the buttons stay, so they can click again.
            log.exception("could not decide Slack confirmation %s", click.confirmation_id)
            outcome: PromptEdit | PrivateReply = PrivateReply(FAILED)
        else:
            outcome = click_outcome(click, decision)
        try:
            if isinstance(outcome, PromptEdit):
                await client.chat_update(
                    channel=click.channel,
                    ts=click.message_ts,
                    text=outcome.text,
                    blocks=outcome.blocks,
                )
            else:
                await client.chat_postEphemeral(
                    channel=click.channel,
                    user=click.user_id,
                    text=outcome.text,
                    thread_ts=click.thread_ts,
                )
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as error:
            # The decision is recorded either way; only its display is lost.
            log.warning(
                "could not show the outcome of Slack confirmation %s (%s)",
                click.confirmation_id,
                type(error).__name__,
            )

    # --- the rest of Slack's events -------------------------------------------------------

    async def _delete(self, action: DeleteMessage) -> None:
        await self._lookups.delete_platform_message(
            PLATFORM, action.team, action.channel, action.ts
        )

    async def _forget_workspace(self, action: WorkspaceGone) -> None:
        log.info(
            "Slack workspace %s %s; forgetting it",
            action.team,
            "uninstalled the app" if action.uninstalled else "revoked the bot token",
        )
        if self._oauth is not None:
            await self._oauth.delete_workspace(action.enterprise, action.team)
        self._users.forget_workspace(action.team)
        self._known.forget_workspace(action.team)
        self.in_view.forget_workspace(action.team)
        await self._lookups.forget_workspace(PLATFORM, action.team)

    async def _suggest_prompts(
        self, client: AsyncWebClient, channel: str, thread_ts: str | None
    ) -> None:
        with contextlib.suppress(SlackApiError):
            await client.assistant_threads_setSuggestedPrompts(
                channel_id=channel,
                thread_ts=thread_ts,
                prompts=[dict(prompt) for prompt in SUGGESTED_PROMPTS],
            )

    async def _set_title(self, client: AsyncWebClient, target: ReplyTarget, text: str) -> None:
        if not target.thread_ts:
            return
        title = " ".join(text.split())
        if len(title) > TITLE_CHARS:
            title = title[: TITLE_CHARS - 1].rstrip() + "…"
        with contextlib.suppress(SlackApiError):
            await client.assistant_threads_setTitle(
                channel_id=target.channel, thread_ts=target.thread_ts, title=title
            )

    # --- helpers ---------------------------------------------------------------------

    async def _taken_elsewhere(self, message_key: str) -> bool:
        try:
            return await self._lookups.was_taken(PLATFORM, message_key)
        except StoreUnavailable:
            return False  # the usual way then: the accept says what to answer Slack

    async def _core_knows(self, key: ConversationKey) -> bool:
        # From the store, so it holds across restarts and processes.
        return await self._lookups.has_conversation(key)

    def _manages(self, user: SlackUser, *, direct: bool) -> bool:
        facts = ManagerFacts(
            platform=PLATFORM, user_id=user.id, direct=direct, workspace_admin=user.is_admin
        )
        return self._core.policy.manages(facts)

    async def _token_for(self, target: ReplyTarget) -> str | None:
        if self._oauth is None:
            return self._bot_token
        return await self._oauth.bot_token(target.enterprise, target.team)

    async def _client_for(self, target: ReplyTarget) -> AsyncWebClient | None:
        assert self._oauth is not None
        token = await self._oauth.bot_token(target.enterprise, target.team)
        if token is None:
            return None
        return AsyncWebClient(
            token=token,
            base_url=self._api_url,
            session=self._session,
            retry_handlers=list(self._client.retry_handlers),
        )

    def _http_session(self) -> aiohttp.ClientSession:
        if self._off_home():
            # aiohttp sessions belong to one loop: the accept loop has its own.
            if self._accept_session is None:
                self._accept_session = aiohttp.ClientSession()
            return self._accept_session
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self._client.session = self._session
        return self._session

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return self._tasks.spawn(
            coroutine, name=f"slack-{getattr(coroutine, '__qualname__', 'task')}"
        )


def _asks_whether_known(action: Converse) -> bool:
    """Whether answering `action` depends on the bot being in its thread already: a
    thread reply without a mention (answered only there), a mention in a thread the
    bot joins late (its earlier messages are read once), an assistant thread (titled
    at its first message). A channel mention or a direct message starts or continues
    its conversation either way, so its acknowledgement does not wait for the store."""
    draft = action.draft
    return (
        action.only_in_known_thread
        or (draft.in_thread and not draft.is_direct)
        or draft.reply_target().assistant
    )

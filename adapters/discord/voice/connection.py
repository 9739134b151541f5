"""Where the bot joins, speaks in and leaves Discord voice channels.

One voice connection per guild, each with its own speech queue (`VoiceSpeaker`). While
connected, answers to people in that voice channel (or written in its text chat) are
also spoken there; `/voice ask` answers aloud only. The bot leaves by itself when
nobody is left in the channel, or after `voice.idle_leave_seconds` without speech.
Reconnects after network trouble are discord.py's own.

Listening (`/voice listen`, by a channel manager) is off until asked for: then what the
members say is heard (`listening.VoiceListener`), transcribed, shown in the channel's
text chat as `🎤 Name: "…"`, stored as that member's message in the voice channel's
conversation and answered aloud like any message. A member who talks while the bot
speaks interrupts it, and the stored answer marks what was left unsaid. While it
listens, the voice channel's status says so (`LISTENING_STATUS`). `/voice ignore-me`
drops a member's audio before it is decoded; it is stored (every process, every restart
sees it) and forget-me removes it; while listening, the opt-outs are read again every
`OPT_OUT_REFRESH_SECONDS`, so one made through another process is honoured within
seconds. `/voice stop` or leaving ends listening.

Whether listening runs the pipeline or a realtime session is the server's voice mode
(`/voice mode`, a setting of the server kept on its workspace row of the channel
settings), else `[voice] mode`; it is read when listening starts, so a change applies
at the next `/voice listen`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import discord

from botservice.adapters.discord import events
from botservice.adapters.discord.context import DiscordContext
from botservice.adapters.discord.events import PLATFORM, Place, place_of_interaction
from botservice.adapters.discord.interactions import DiscordInteractions, defer_response
from botservice.adapters.discord.sink import ChannelReplySink
from botservice.adapters.discord.voice.dependencies import check_discord_voice
from botservice.adapters.discord.voice.playback import DiscordPlayback
from botservice.core.conversation import SpokenTurn, Submission
from botservice.core.errors import BotServiceError, StoreUnavailable, TranscriptionError
from botservice.core.events import ConversationKey, IncomingMessage
from botservice.core.limits import SpentBudget
from botservice.core.ports import (
    ChannelSettings,
    ReplySink,
    SinkAbilities,
    Usage,
    abilities_of,
)
from botservice.core.tools import ToolPolicy
from botservice.core.voice_settings import VoiceMode, realtime_unavailable, voice_mode_of
from botservice.voice.barge_in import mark_unspoken
from botservice.voice.pipeline import SpeakingSink, SpokenAnswer, VoiceSpeaker, VoiceSpeakers
from botservice.voice.speech import SpeechEngine, create_speech_engine
from botservice.voice.transcription import NothingHeard, Transcriber

# Listening and realtime sessions bring numpy, the VAD model and the realtime client:
# imported when a manager first turns listening on, not at start (a bot that never
# listens starts about a tenth of a second sooner).
if TYPE_CHECKING:
    from botservice.adapters.discord.voice.listening import VoiceListener
    from botservice.adapters.discord.voice.realtime import ChatTranscripts, Heard, Told
    from botservice.voice.endpointing import UtteranceEnded, VoiceActivity
    from botservice.voice.realtime import RealtimeSession
    from botservice.voice.realtime_tools import ChannelVoiceTools, HeardTurn

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 20.0
NOT_IN_VOICE = "Join a voice channel first, then use /voice join."
NOT_CONNECTED = "I am not in a voice channel in this server; use /voice join first."
CONNECT_TIMED_OUT = "I could not connect to {channel} in time; please try again."
SPOKEN_NOTE = "\N{SPEAKER WITH THREE SOUND WAVES} Answered aloud in {channel}."
NOT_A_MANAGER = "Only people who manage this channel can turn listening on."
LISTEN_ELSEWHERE = "I am in {channel}; run /voice listen there (in it, or in its text chat)."
LISTENING_NOTICE = (
    "\N{STUDIO MICROPHONE} Listening in {channel}, as {manager} asked: what people say "
    "here is transcribed, written in this chat and answered aloud. The audio itself is "
    "never kept. /voice ignore-me leaves you out; /voice stop ends listening."
)
STOPPED_LISTENING = "Stopped listening in {channel}."
# The voice channel's status while the bot listens (Discord shows it under the channel's
# name, to everyone, in and out of it); cleared when listening ends.
LISTENING_STATUS = (
    "\N{STUDIO MICROPHONE}\N{VARIATION SELECTOR-16} Listening \N{EM DASH} /voice stop to end"
)
OPTED_OUT = (
    "I will not listen to you in this server's voice channels: your audio is "
    "dropped before it is decoded. /voice ignore-me again undoes it; /forget-me does too."
)
OPTED_OUT_UNSTORED = (
    "I will not listen to you in this server's voice channels while I run, but I could "
    "not store that, so a restart forgets it; please run /voice ignore-me again later."
)
OPTED_IN = "I will hear you again when I listen in a voice channel here."
REALTIME_ENDED = "The speech-to-speech session for {channel} ended; /voice listen starts a new one."
# `/voice listen` (realtime) in a channel whose budget is spent: its sentence, then this.
NOT_LISTENING_SPENT = "{spent} I will listen in {channel} once it renews."
BUDGET_UNREADABLE = "I cannot read this channel's budget just now; please try again."
HEARD = '\N{MICROPHONE} {name}: "{text}"'
MAX_HEARD_CHARS = 1800
# While listening, the server's opt-outs are read again this often: a `/voice ignore-me`
# made through another process (one PostgreSQL, several bot processes) is honoured
# within about this long. One indexed read per listening server.
OPT_OUT_REFRESH_SECONDS = 2.0
# A server-wide setting lives on the workspace's row of the channel settings.
SERVER_WIDE = ""
NOT_A_SERVER_MANAGER = "Only {managers} can change this server's voice mode."
MODE_UNREADABLE = "I cannot read this server's voice mode just now; please try again."
MODE_DESCRIPTIONS: dict[VoiceMode, str] = {
    "pipeline": "what each member says is transcribed, answered by the chat model and spoken",
    "realtime": "one speech-to-speech session for the voice channel answers aloud",
}


class VoiceConnection(Protocol):
    """What the adapter uses of a `discord.VoiceClient` (a test passes a fake `VoiceProtocol`)."""

    channel: Any

    def play(self, source: discord.AudioSource, *, after: Any = None) -> None: ...

    def stop(self) -> None: ...

    def is_playing(self) -> bool: ...

    def is_connected(self) -> bool: ...

    async def disconnect(self, *, force: bool) -> None: ...

    async def move_to(self, channel: Any) -> None: ...


@dataclass
class _Session:
    connection: VoiceConnection
    speaker: VoiceSpeaker
    watcher: asyncio.Task[None] | None = None
    listener: VoiceListener | None = None
    # Answers to what members said aloud, while they are spoken: a barge-in marks them.
    answers: list[tuple[ListenedAnswerSink, Submission]] | None = None
    # Whether the voice channel's status says the bot listens (to clear it at the end).
    status_shown: bool = False
    # Realtime mode: the channel's speech-to-speech session while listening.
    realtime: RealtimeSession | None = None
    realtime_transcripts: ChatTranscripts | None = None
    realtime_tools: ChannelVoiceTools | None = None
    # While listening: reads the server's opt-outs again every OPT_OUT_REFRESH_SECONDS.
    opt_out_refresher: asyncio.Task[None] | None = None

    @property
    def listening_mode(self) -> VoiceMode | None:
        if self.listener is None:
            return None
        return "realtime" if self.realtime is not None else "pipeline"


class DiscordVoice:
    """The `/voice` commands, the voice connections, and speaking along with text answers."""

    def __init__(
        self,
        context: DiscordContext,
        interactions: DiscordInteractions,
        *,
        connect_cls: type[discord.VoiceProtocol] = discord.VoiceClient,
        engine: SpeechEngine | None = None,
        transcriber: Transcriber | None = None,
        activity: Callable[[], VoiceActivity] | None = None,
    ) -> None:
        settings = context.settings
        self._context = context
        self._interactions = interactions
        self._settings = settings.voice
        self._connect_cls = connect_cls
        engine = engine or create_speech_engine(
            settings.voice, model_base_url=settings.model.base_url, api_key=settings.model.api_key
        )
        self.speakers = VoiceSpeakers(
            engine,
            ffmpeg=settings.voice.ffmpeg_executable,
            max_sentence_chars=settings.voice.max_sentence_chars,
        )
        self._sessions: dict[int, _Session] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._transcriber = transcriber
        self._activity = activity
        # Members who said /voice ignore-me, per guild: the store's rows, cached here (the
        # receiver asks for every packet, synchronously) and read again on every change.
        self._ignored: dict[int, set[int]] = {}
        # Opt-outs made here that could not be stored: kept while this process runs, so
        # reading the store again does not hear those members after all.
        self._unstored_opt_outs: dict[int, set[int]] = {}
        # Opt-out writes made here, per guild: those under way, and a count of those done.
        # A read of the store that overlapped one is not applied (it may predate the
        # write and bring back a member who just opted out); the next read is.
        self._opt_out_writes: dict[int, int] = {}
        self._opt_out_changes: dict[int, int] = {}
        # Per guild: which members were told that a budget of theirs (or the channel's) is
        # spent, until it renews, so a realtime session says it once, not every turn.
        self._budget_told: dict[int, Told] = {}
        # Voice channels where setting the status was refused: logged once, not each time.
        self._status_refused: set[int] = set()
        # When the latest utterances ended (time.monotonic()), as (turn id, time): where
        # bench_voice starts its clock. Bounded: only the last few are kept.
        self.utterance_ends: deque[tuple[int, float]] = deque(maxlen=32)
        self._marking: set[asyncio.Task[None]] = set()

    # --- start and stop -----------------------------------------------------------------

    def report_dependencies(self) -> bool:
        """Log once, at start-up, what voice lacks (text features work regardless)."""
        check = check_discord_voice(self._settings)
        if not check.ok:
            log.warning("%s", check.summary())
        return check.ok

    async def aclose(self) -> None:
        for guild_id in list(self._sessions):
            await self._leave(guild_id, "shutting down")
        await self.speakers.aclose()

    def connection(self, guild_id: int) -> VoiceConnection | None:
        session = self._sessions.get(guild_id)
        return session.connection if session else None

    # --- /voice join, leave, stop, ask ------------------------------------------------------

    async def join(self, interaction: discord.Interaction) -> None:
        if not await defer_response(interaction, ephemeral=True):
            return
        guild = interaction.guild
        member = interaction.user
        if guild is None or not isinstance(member, discord.Member):
            await _reply(interaction, "Voice works in servers, not in direct messages.")
            return
        check = check_discord_voice(self._settings)
        if not check.ok:
            await _reply(interaction, check.summary())
            return
        channel = member.voice.channel if member.voice is not None else None
        if channel is None:
            await _reply(interaction, NOT_IN_VOICE)
            return
        permissions = channel.permissions_for(guild.me)
        missing = [
            name
            for name, granted in (("Connect", permissions.connect), ("Speak", permissions.speak))
            if not granted
        ]
        if missing:
            names = " and ".join(missing)
            plural = "s" if len(missing) > 1 else ""
            await _reply(
                interaction,
                f"I cannot speak in {channel.mention}: I need the {names} permission{plural} there.",
            )
            return
        async with self._lock(guild.id):
            session = self._sessions.get(guild.id)
            if session is not None:
                if session.connection.channel.id == channel.id:
                    await _reply(interaction, f"I am already in {channel.mention}.")
                    return
                # Listening was allowed for the old channel only.
                await self._stop_listening(guild.id, session)
                await session.connection.move_to(channel)
                await _reply(interaction, f"Moved to {channel.mention}.")
                return
            try:
                connection = await channel.connect(
                    cls=self._connect_cls, timeout=CONNECT_TIMEOUT_SECONDS, self_deaf=True
                )
            except TimeoutError:
                await _reply(interaction, CONNECT_TIMED_OUT.format(channel=channel.mention))
                return
            # discord.VoiceClient (or a test's VoiceProtocol) has everything VoiceConnection names.
            self._open(guild.id, connection, notice_channel_id=interaction.channel_id)  # type: ignore[arg-type]
        log.info("joined voice channel %s in guild %s", channel.id, guild.id)
        await _reply(
            interaction,
            f"Joined {channel.mention}. I will speak my answers to people there; "
            "/voice stop cuts one short, /voice leave sends me away.",
        )

    async def leave(self, interaction: discord.Interaction) -> None:
        if not await defer_response(interaction, ephemeral=True):
            return
        guild_id = interaction.guild_id
        session = self._sessions.get(guild_id) if guild_id is not None else None
        if guild_id is None or session is None:
            await _reply(interaction, NOT_CONNECTED)
            return
        mention = session.connection.channel.mention
        await self._leave(guild_id, "asked to leave")
        await _reply(interaction, f"Left {mention}.")

    async def stop(self, interaction: discord.Interaction) -> None:
        if not await defer_response(interaction, ephemeral=True):
            return
        session = self._sessions.get(interaction.guild_id or 0)
        if session is None:
            await _reply(interaction, NOT_CONNECTED)
            return
        speaking = session.speaker.speaking
        await session.speaker.interrupt()
        if session.listener is not None:
            await self._stop_listening(interaction.guild_id or 0, session)
            await _reply(interaction, "Stopped listening" + (" and speaking." if speaking else "."))
            return
        await _reply(interaction, "Stopped." if speaking else "I was not saying anything.")

    async def listen(self, interaction: discord.Interaction) -> None:
        if not await defer_response(interaction, ephemeral=True):
            return
        guild = interaction.guild
        member = interaction.user
        session = self._sessions.get(interaction.guild_id or 0)
        if guild is None or session is None or not isinstance(member, discord.Member):
            await _reply(interaction, NOT_CONNECTED)
            return
        channel = session.connection.channel
        in_channel = member.voice is not None and getattr(member.voice.channel, "id", None) == (
            channel.id
        )
        if not (in_channel or interaction.channel_id == channel.id):
            await _reply(interaction, LISTEN_ELSEWHERE.format(channel=channel.mention))
            return
        if not self._manages(member, channel):
            await _reply(interaction, NOT_A_MANAGER)
            return
        try:
            mode = (await self._server_mode(guild.id))[0]
        except StoreUnavailable:
            await _reply(interaction, MODE_UNREADABLE)
            return
        realtime_mode = mode == "realtime"
        if realtime_mode and (problem := self._realtime_problem()) is not None:
            await _reply(interaction, problem)
            return
        if self._transcriber is None and not realtime_mode:
            await _reply(interaction, "Listening needs the transcription endpoint, which is off.")
            return
        if session.listener is not None:
            await _reply(interaction, f"I am already listening in {channel.mention}.")
            return
        from botservice.adapters.discord.voice.listening import VoiceListener
        from botservice.voice.endpointing import EndpointingSettings, silero_activity
        from botservice.voice.realtime import RealtimeError

        realtime: RealtimeSession | None = None
        if realtime_mode:
            # A realtime session answers every member through one channel's budgets: with
            # the channel's spent, it would answer nobody.
            place = events.place_of(channel, guild.id)
            try:
                spent = await self._spent_budget(place, None)
            except StoreUnavailable:
                await _reply(interaction, BUDGET_UNREADABLE)
                return
            if spent is not None:
                await _reply(
                    interaction,
                    NOT_LISTENING_SPENT.format(spent=spent.sentence, channel=channel.mention),
                )
                return
            try:
                realtime = await self._open_realtime(session, guild.id, channel)
            except RealtimeError as error:
                log.warning("realtime session for guild %s failed to open: %s", guild.id, error)
                await _reply(interaction, error.user_message)
                return
        # A bot joins deafened; Discord sends a deafened member no audio.
        await guild.change_voice_state(channel=channel, self_deaf=False)
        guild_id = guild.id
        try:
            ignored = await self._opt_outs(guild_id)
        except StoreUnavailable:
            await _reply(interaction, "I cannot read who opted out just now; please try again.")
            return
        listener = VoiceListener(
            session.connection,
            settings=EndpointingSettings.of(self._settings),
            activity=self._activity or silero_activity,
            ignored=ignored.__contains__,
            on_speech=lambda user_id: self._member_started_speaking(guild_id, user_id),
            on_utterance=lambda user_id, heard: self._member_said(guild_id, user_id, heard),
            on_pcm=realtime.feed if realtime is not None else None,
        )
        listener.start()
        session.listener = listener
        session.answers = []
        session.opt_out_refresher = asyncio.create_task(
            self._refresh_opt_outs(guild_id, session), name=f"voice-opt-outs-{guild_id}"
        )
        log.info("listening in voice channel %s in guild %s (%s)", channel.id, guild_id, mode)
        session.status_shown = await self._show_status(channel, LISTENING_STATUS)
        await self._post(
            channel.id,
            LISTENING_NOTICE.format(channel=channel.mention, manager=member.display_name),
        )
        await _reply(interaction, f"Listening in {channel.mention}.")

    async def ignore_me(self, interaction: discord.Interaction) -> None:
        if not await defer_response(interaction, ephemeral=True):
            return
        guild_id = interaction.guild_id
        if guild_id is None:
            await _reply(interaction, "Voice works in servers, not in direct messages.")
            return
        user_id = interaction.user.id
        try:
            ignored = await self._opt_outs(guild_id)
        except StoreUnavailable:
            ignored = self._ignored.setdefault(guild_id, set())
        opting_out = user_id not in ignored
        if opting_out:
            # At once, before storing: not one more packet of theirs is decoded.
            ignored.add(user_id)
            session = self._sessions.get(guild_id)
            if session is not None and session.listener is not None:
                session.listener.forget_member(user_id)
            if session is not None and session.realtime is not None:
                session.realtime.forget_member(user_id)
        stored = await self._store_opt_out(guild_id, user_id, opted_out=opting_out)
        if not stored:
            if opting_out:
                await _reply(interaction, OPTED_OUT_UNSTORED)
            else:
                await _reply(interaction, "I could not change that just now; please try again.")
            return
        if not opting_out:
            ignored.discard(user_id)
            self._unstored_opt_outs.get(guild_id, set()).discard(user_id)
        await _reply(interaction, OPTED_OUT if opting_out else OPTED_IN)

    async def mode(self, interaction: discord.Interaction, value: str | None) -> None:
        """`/voice mode`: show the server's voice mode and why; with a value, a manager of
        the server changes it (audited like every setting)."""
        if not await defer_response(interaction, ephemeral=True):
            return
        guild = interaction.guild
        member = interaction.user
        if guild is None or not isinstance(member, discord.Member):
            await _reply(interaction, "Voice works in servers, not in direct messages.")
            return
        try:
            if value is None:
                await _reply(interaction, await self._describe_mode(guild.id))
            else:
                await _reply(interaction, await self._change_mode(guild.id, member, value))
        except StoreUnavailable:
            await _reply(interaction, MODE_UNREADABLE)

    async def ask(self, interaction: discord.Interaction, prompt: str) -> None:
        session = self._sessions.get(interaction.guild_id or 0)
        if session is None:
            await interaction.response.send_message(NOT_CONNECTED, ephemeral=True)
            return
        note = SPOKEN_NOTE.format(channel=session.connection.channel.mention)
        interrupt = self._settings.interrupt_on_new_question

        async def spoken_only(sink: ReplySink) -> ReplySink:
            speech = await self._speech_settings(place_of_interaction(interaction))
            return VoiceOnlySink(
                sink,
                session.speaker,
                note=note,
                interrupt=interrupt,
                voice=speech.speech_voice,
                model=speech.speech_model,
            )

        await self._interactions.ask(interaction, prompt, True, wrap=spoken_only)

    # --- speaking along with text answers ------------------------------------------------

    async def speaking_sink(
        self,
        sink: ReplySink,
        *,
        guild_id: int | None,
        user: Any,
        channel_id: int | None,
        place: Place,
    ) -> ReplySink:
        """`sink`, also spoken when the bot is in a voice channel of this guild and the person
        is in it too (or writes in its text chat), in the voice and speech model set for
        `place`'s channel (`/speech set`)."""
        session = self._sessions.get(guild_id) if guild_id is not None else None
        if session is None or session.realtime is not None:
            # A realtime session holds the player: typed answers are written only.
            return sink
        voice_channel_id = session.connection.channel.id
        state = user.voice if isinstance(user, discord.Member) else None
        heard_there = state is not None and getattr(state.channel, "id", None) == voice_channel_id
        if not (heard_there or channel_id == voice_channel_id):
            return sink
        speech = await self._speech_settings(place)
        return SpeakingSink(
            sink,
            session.speaker,
            voice=speech.speech_voice,
            model=speech.speech_model,
            interrupt=self._settings.interrupt_on_new_question,
        )

    async def _speech_settings(self, place: Place) -> ChannelSettings:
        return await self._context.lookups.channel_settings(
            PLATFORM, place.workspace, place.channel
        )

    # --- listening --------------------------------------------------------------------------

    def _manages(self, member: discord.Member, channel: Any) -> bool:
        return self._context.core.policy.manages(
            events.manager_facts(
                manage_channels=channel.permissions_for(member).manage_channels,
                user_id=member.id,
                owner_ids=self._context.owner_ids,
                guild_owner_id=member.guild.owner_id,
            )
        )

    async def _opt_outs(self, guild_id: int) -> set[int]:
        """The guild's opt-outs as stored, read into the cached set in place (the listener
        holds that set)."""
        changes = self._opt_out_changes.get(guild_id, 0)
        stored = await self._context.lookups.voice_opt_outs(PLATFORM, str(guild_id))
        ignored = self._ignored.setdefault(guild_id, set())
        if self._opt_out_writes.get(guild_id, 0) or self._opt_out_changes.get(guild_id, 0) != (
            changes
        ):
            # A /voice ignore-me here ran while reading: this read may predate its write.
            return ignored
        members = {int(user_id) for user_id in stored}
        members |= self._unstored_opt_outs.get(guild_id, set())
        ignored.intersection_update(members)
        ignored.update(members)
        return ignored

    async def _store_opt_out(self, guild_id: int, user_id: int, *, opted_out: bool) -> bool:
        """Store a member's choice; False when the store is away (an opt-out is then kept
        in this process only)."""
        writes = self._opt_out_writes
        writes[guild_id] = writes.get(guild_id, 0) + 1
        try:
            await self._context.lookups.set_voice_opt_out(
                PLATFORM, str(guild_id), str(user_id), opted_out=opted_out
            )
        except StoreUnavailable:
            log.warning("could not store a voice opt-out in guild %s", guild_id)
            if opted_out:
                self._unstored_opt_outs.setdefault(guild_id, set()).add(user_id)
            return False
        finally:
            writes[guild_id] -= 1
            self._opt_out_changes[guild_id] = self._opt_out_changes.get(guild_id, 0) + 1
        return True

    async def _refresh_opt_outs(self, guild_id: int, session: _Session) -> None:
        """While listening: an opt-out stored by another process is honoured within
        `OPT_OUT_REFRESH_SECONDS` (the receiver checks the set before decoding), and what
        was heard of that member so far is dropped."""
        while session.listener is not None:
            await asyncio.sleep(OPT_OUT_REFRESH_SECONDS)
            before = set(self._ignored.get(guild_id, ()))
            try:
                ignored = await self._opt_outs(guild_id)
            except StoreUnavailable:
                continue  # the opt-outs known so far stay in force
            for user_id in ignored - before:
                if session.listener is not None:
                    session.listener.forget_member(user_id)
                if session.realtime is not None:
                    session.realtime.forget_member(user_id)

    # --- the server's voice mode ----------------------------------------------------------

    async def _server_mode(self, guild_id: int) -> tuple[VoiceMode, bool]:
        """The voice mode that applies in the server, and whether its managers chose it
        (else it is `[voice] mode`)."""
        stored = await self._context.lookups.channel_settings(PLATFORM, str(guild_id), SERVER_WIDE)
        chosen = voice_mode_of(stored.voice_mode)
        if chosen is not None:
            return chosen, True
        return self._settings.mode, False

    def _realtime_problem(self) -> str | None:
        return realtime_unavailable(self._settings, self._context.settings.model.base_url)

    def _manages_server(self, member: discord.Member) -> bool:
        """A server-wide setting is for those who manage channels in the whole server,
        not in one channel only."""
        return self._context.core.policy.manages(
            events.manager_facts(
                manage_channels=member.guild_permissions.manage_channels,
                user_id=member.id,
                owner_ids=self._context.owner_ids,
                guild_owner_id=member.guild.owner_id,
            )
        )

    async def _describe_mode(self, guild_id: int) -> str:
        mode, chosen = await self._server_mode(guild_id)
        text = f"Voice mode in this server: {mode} ({MODE_DESCRIPTIONS[mode]})."
        if chosen:
            text += " " + await self._who_chose_mode(guild_id)
            text += f" `/voice mode default` goes back to the bot's default, {self._settings.mode}."
        else:
            text += (
                " No one chose one for this server, so it is the bot's default (`[voice] mode`);"
                " people who manage channels here can choose with `/voice mode`."
            )
        if mode == "realtime" and (problem := self._realtime_problem()) is not None:
            text += " " + problem
        session = self._sessions.get(guild_id)
        listening = session.listening_mode if session is not None else None
        if session is not None and listening is not None and listening != mode:
            text += " " + _applies_next_time(session, listening, mode)
        return text

    async def _who_chose_mode(self, guild_id: int) -> str:
        changes = await self._context.lookups.setting_changes(PLATFORM, str(guild_id), SERVER_WIDE)
        chosen = [change for change in changes if change.field == "voice_mode"]
        if not chosen:
            return "A manager of this server chose it."
        last = chosen[-1]
        when = f"<t:{int(last.changed_at.timestamp())}:f>"
        if last.changed_by.isdigit():
            return f"<@{last.changed_by}> chose it on {when}."
        return f"A manager of this server chose it on {when}."

    async def _change_mode(self, guild_id: int, member: discord.Member, value: str) -> str:
        if not self._manages_server(member):
            managers = self._context.core.policy.managers(PLATFORM)
            return NOT_A_SERVER_MANAGER.format(managers=managers)
        chosen = voice_mode_of(value)
        if chosen is None and value != "default":
            return "The voice mode is pipeline, realtime or default."
        if chosen == "realtime" and (problem := self._realtime_problem()) is not None:
            return problem
        before = await self._context.lookups.channel_settings(PLATFORM, str(guild_id), SERVER_WIDE)
        mode = chosen or self._settings.mode
        if before.voice_mode == chosen:
            text = f"Voice mode in this server already is {value}"
            text += "." if chosen is not None else f" ({mode})."
        else:
            await self._context.lookups.change_setting(
                PLATFORM,
                str(guild_id),
                SERVER_WIDE,
                field="voice_mode",
                value=chosen,
                changed_by=str(member.id),
            )
            log.info("voice mode of guild %s set to %s", guild_id, value)
            text = f"Voice mode in this server is now {mode}"
            text += "." if chosen is not None else " (the bot's default)."
        if mode == "realtime" and (problem := self._realtime_problem()) is not None:
            text += " " + problem
        session = self._sessions.get(guild_id)
        listening = session.listening_mode if session is not None else None
        if session is not None and listening is not None and listening != mode:
            text += " " + _applies_next_time(session, listening, mode)
        return text

    async def _show_status(self, channel: Any, status: str | None) -> bool:
        """Set (or clear, None) the voice channel's status. Never stops listening: without
        the permission it is logged once per channel and the text chat still says so."""
        try:
            await channel.edit(status=status)
        # TypeError: a stage channel's `edit` takes no status (it has none).
        except (discord.HTTPException, TypeError) as error:
            if channel.id not in self._status_refused:
                self._status_refused.add(channel.id)
                log.warning(
                    "could not set the status of voice channel %s (%s); the text chat "
                    "still says when the bot listens",
                    channel.id,
                    getattr(error, "status", type(error).__name__),
                )
            return False
        self._status_refused.discard(channel.id)
        return True

    async def _clear_status(self, session: _Session) -> None:
        if session.status_shown:
            session.status_shown = False
            await self._show_status(session.connection.channel, None)

    async def _member_started_speaking(self, guild_id: int, user_id: int) -> None:
        """Barge-in: a member talking over the bot stops it at once."""
        session = self._sessions.get(guild_id)
        if session is None or not session.speaker.speaking:
            return
        interrupted = [entry for entry in session.answers or [] if _unfinished(*entry)]
        session.answers = []
        await session.speaker.interrupt()
        log.info("a member interrupted the bot's speech in guild %s", guild_id)
        for sink, submission in interrupted:
            task = asyncio.create_task(self._mark_unspoken(sink, submission))
            self._marking.add(task)
            task.add_done_callback(self._marking.discard)

    async def _mark_unspoken(self, sink: ListenedAnswerSink, submission: Submission) -> None:
        # The answer may still be being written: mark it once it is stored.
        await asyncio.shield(submission.answered)
        answer = sink.answer
        if answer is None or sink.final_text is None:
            return
        marked = mark_unspoken(sink.final_text, answer.spoken)
        if marked != sink.final_text:
            await self._context.lookups.mark_answer_unspoken(submission.turn_id, marked)

    async def _member_said(self, guild_id: int, user_id: int, heard: UtteranceEnded) -> None:
        from botservice.voice.endpointing import wav_bytes

        session = self._sessions.get(guild_id)
        if session is None or session.listener is None or self._transcriber is None:
            return
        if user_id in self._ignored.get(guild_id, set()):
            return
        channel = session.connection.channel
        member = channel.guild.get_member(user_id)
        if member is None or member.bot:
            return
        try:
            text = await self._transcriber.transcribe(
                wav_bytes(heard.pcm), filename="speech.wav", content_type="audio/wav"
            )
        except NothingHeard:
            return
        except TranscriptionError as error:
            log.warning("transcribing a member in voice channel %s failed: %s", channel.id, error)
            await self._post(channel.id, error.user_message)
            return
        shown = text if len(text) <= MAX_HEARD_CHARS else text[:MAX_HEARD_CHARS] + "…"
        posted = await self._post(channel.id, HEARD.format(name=member.display_name, text=shown))
        if posted is None:
            return
        place = events.place_of(channel, guild_id)
        incoming = IncomingMessage(
            platform=PLATFORM,
            workspace=place.workspace,
            channel=place.channel,
            thread="",
            user_id=str(user_id),
            user_name=member.display_name,
            text=text,
            message_key=f"voice:{posted}",
            is_channel_admin=self._manages(member, channel),
            platform_message_id=str(posted),
            reply_target={"kind": "message", "channel_id": str(channel.id)},
        )
        client = self._context.require_client()
        written = ChannelReplySink(
            client.get_partial_messageable(channel.id),
            reply_to=posted,
            own_id=client.user.id if client.user is not None else None,
        )
        speech = await self._speech_settings(place)
        sink = ListenedAnswerSink(
            written,
            session.speaker,
            voice=speech.speech_voice,
            model=speech.speech_model,
            interrupt=self._settings.interrupt_on_new_question,
        )
        submission = await self._context.core.submit(incoming, sink)
        if submission is None:
            return
        self.utterance_ends.append((submission.turn_id, heard.ended_at))
        # Kept until spoken to the end (the text is often complete long before that).
        answers = [entry for entry in session.answers or [] if _unfinished(*entry)]
        session.answers = [*answers, (sink, submission)]

    async def _spent_budget(self, place: Place, user_id: int | None) -> SpentBudget | None:
        """The budget that keeps `user_id` (None: anyone) from being answered in the voice
        channel at `place`, by the rules text messages are refused by."""
        member = None
        if user_id is not None:
            guild = self._context.require_client().get_guild(int(place.workspace))
            member = guild.get_member(user_id) if guild is not None else None
        subject = IncomingMessage(
            platform=PLATFORM,
            workspace=place.workspace,
            channel=place.channel,
            thread="",
            user_id=str(user_id) if user_id is not None else "",
            user_name=member.display_name if member is not None else "",
            text="",
            message_key="",
        )
        return await self._context.core.spent_budget(subject, person=user_id is not None)

    async def _open_realtime(
        self, session: _Session, guild_id: int, channel: Any
    ) -> RealtimeSession:
        """The channel's speech-to-speech session, playing through the connection."""
        from botservice.adapters.discord.voice.realtime import (
            ChatBudget,
            ChatTranscripts,
            RealtimeSource,
        )
        from botservice.voice.realtime import RealtimePlayback, RealtimeSession, RealtimeSettings
        from botservice.voice.realtime_tools import ChannelVoiceTools, HeardTurn, HeardTurns

        settings = self._context.settings
        core = self._context.core
        place = events.place_of(channel, guild_id)
        key = ConversationKey(PLATFORM, place.workspace, place.channel, "")
        channel_settings = await self._speech_settings(place)
        model = self._settings.realtime_model
        turns = HeardTurns()
        tools = ChannelVoiceTools(
            core.tools,
            ToolPolicy.parse(channel_settings.tools),
            turns=turns,
            turn_tools=core.spoken_turn_tools,
            end_turns=core.end_spoken_turns,
        )

        def member_name(user_id: int) -> str | None:
            if user_id in self._ignored.get(guild_id, set()):
                return None
            member = channel.guild.get_member(user_id)
            return None if member is None or member.bot else str(member.display_name)

        async def hear(heard: Heard) -> HeardTurn | None:
            member = channel.guild.get_member(heard.user_id)
            incoming = IncomingMessage(
                platform=PLATFORM,
                workspace=place.workspace,
                channel=place.channel,
                thread="",
                user_id=str(heard.user_id),
                user_name=heard.name,
                text=heard.text,
                message_key=f"voice:{heard.posted_id}",
                is_channel_admin=member is not None and self._manages(member, channel),
                platform_message_id=str(heard.posted_id),
                reply_target={"kind": "message", "channel_id": str(channel.id)},
            )
            turn = await core.hear_spoken_turn(incoming)
            if turn is None:
                return None
            client = self._context.require_client()
            # Approve / Deny for this turn's calls: asked under the member's words.
            asking = ChannelReplySink(
                client.get_partial_messageable(channel.id),
                reply_to=heard.posted_id,
                own_id=client.user.id if client.user is not None else None,
            )
            return HeardTurn(turn, abilities_of(asking))

        async def answer(
            turn: SpokenTurn, text: str, interrupted: bool, usage: Usage | None
        ) -> None:
            await core.answer_spoken_turn(
                turn, text, model=model, interrupted=interrupted, usage=usage
            )

        async def spend(usage: Usage, turn: SpokenTurn | None, author: int | None) -> None:
            user_id = turn.user_id if turn is not None else str(author or "")
            await core.record_spoken_usage(
                key,
                user_id=user_id,
                turn_id=turn.turn_id if turn is not None else None,
                model=model,
                usage=usage,
            )

        transcripts = ChatTranscripts(
            lambda text: self._post(channel.id, text),
            member_name,
            hear=hear,
            answer=answer,
            spend=spend,
            turns=turns,
        )

        budget = ChatBudget(
            lambda user_id: self._spent_budget(place, user_id),
            lambda text: self._post(channel.id, text),
            self._budget_told.setdefault(guild_id, {}),
        )

        api_key = settings.model.api_key
        silence_ms = self._settings.realtime_silence_ms
        realtime = RealtimeSession(
            RealtimeSettings(
                base_url=self._settings.realtime_base_url or settings.model.base_url,
                api_key=api_key.get_secret_value() if api_key is not None else None,
                model=self._settings.realtime_model,
                voice=self._settings.realtime_voice,
                transcription_model=self._settings.transcription_model,
                silence_duration_ms=silence_ms,
                padding_ms=silence_ms + 300,
            ),
            playback=RealtimePlayback(),
            transcripts=transcripts,
            tools=tools,
            budget=budget,
        )
        await realtime.start()
        await session.speaker.interrupt()
        session.connection.stop()
        session.connection.play(RealtimeSource(realtime.playback))
        session.realtime = realtime
        session.realtime_transcripts = transcripts
        session.realtime_tools = tools
        watcher = asyncio.create_task(self._watch_realtime(guild_id, session, realtime))
        self._marking.add(watcher)
        watcher.add_done_callback(self._marking.discard)
        return realtime

    async def _watch_realtime(
        self, guild_id: int, session: _Session, realtime: RealtimeSession
    ) -> None:
        """The server ended the session (or the network did): listening ends, and says so."""
        await realtime.closed.wait()
        if session.realtime is not realtime:
            return  # closed by /voice stop or leaving
        channel = session.connection.channel
        log.warning("the realtime session in guild %s ended; listening stops", guild_id)
        await self._post(channel.id, REALTIME_ENDED.format(channel=channel.mention))
        await self._stop_listening(guild_id, session)

    async def _close_realtime(self, session: _Session) -> None:
        realtime, session.realtime = session.realtime, None
        if realtime is not None:
            await realtime.aclose()
            session.connection.stop()
        transcripts, session.realtime_transcripts = session.realtime_transcripts, None
        if transcripts is not None:
            await transcripts.flush()
        tools, session.realtime_tools = session.realtime_tools, None
        if tools is not None:
            # Its calls were stopped with it: their questions would wait for nothing.
            await tools.close()

    async def _stop_listening(self, guild_id: int, session: _Session) -> None:
        listener, session.listener = session.listener, None
        await _cancel(session.opt_out_refresher)
        session.opt_out_refresher = None
        await self._close_realtime(session)
        if listener is None:
            return
        await listener.stop()
        channel = session.connection.channel
        log.info("stopped listening in voice channel %s in guild %s", channel.id, guild_id)
        await self._clear_status(session)
        with contextlib.suppress(discord.HTTPException):
            if session.connection.is_connected():
                await channel.guild.change_voice_state(channel=channel, self_deaf=True)
        await self._post(channel.id, STOPPED_LISTENING.format(channel=channel.mention))

    async def _post(self, channel_id: int, text: str) -> int | None:
        client = self._context.client
        if client is None:
            return None
        try:
            message = await client.get_partial_messageable(channel_id).send(
                text, allowed_mentions=discord.AllowedMentions.none()
            )
        except discord.HTTPException:
            log.warning("could not post in the text chat of voice channel %s", channel_id)
            return None
        return message.id

    # --- leaving by itself ------------------------------------------------------------------

    async def on_voice_state_update(
        self, member: discord.Member, before: discord.VoiceState, after: discord.VoiceState
    ) -> None:
        guild_id = member.guild.id
        session = self._sessions.get(guild_id)
        if session is None:
            return
        if member.id == self._context.bot_id:
            if after.channel is None:
                # Disconnected from outside (kicked, or the channel was deleted).
                await self._leave(guild_id, "disconnected by Discord")
            return
        channel = session.connection.channel
        if not _has_people(channel, self._context.bot_id):
            await self._leave(guild_id, "the channel emptied")
            return
        entered = (
            getattr(after.channel, "id", None) == channel.id != getattr(before.channel, "id", None)
        )
        if entered and session.listener is not None:
            # Someone may have opted out through another process since listening began.
            with contextlib.suppress(StoreUnavailable):
                await self._opt_outs(guild_id)

    async def _watch_idle(self, guild_id: int, speaker: VoiceSpeaker) -> None:
        limit = self._settings.idle_leave_seconds
        interval = min(10.0, max(0.05, limit / 4))
        while True:
            await asyncio.sleep(interval)
            if speaker.idle_seconds >= limit:
                await self._leave(guild_id, f"idle for {limit:g} seconds")
                return

    # --- connections ------------------------------------------------------------------------

    def _open(
        self, guild_id: int, connection: VoiceConnection, *, notice_channel_id: int | None
    ) -> None:
        speaker = self.speakers.open(
            str(guild_id),
            DiscordPlayback(connection, self._context.core.telemetry),
            on_error=self._reporter(notice_channel_id),
        )
        session = _Session(connection, speaker)
        if self._settings.idle_leave_seconds > 0:
            session.watcher = asyncio.create_task(
                self._watch_idle(guild_id, speaker), name=f"voice-idle-{guild_id}"
            )
        self._sessions[guild_id] = session
        self._context.core.telemetry.voice_session(PLATFORM, +1)

    async def _leave(self, guild_id: int, reason: str) -> None:
        session = self._sessions.pop(guild_id, None)
        if session is None:
            return
        self._context.core.telemetry.voice_session(PLATFORM, -1)
        if session.listener is not None:
            listener, session.listener = session.listener, None
            await listener.stop()
            await self._clear_status(session)
        await _cancel(session.opt_out_refresher)
        session.opt_out_refresher = None
        await self._close_realtime(session)
        watcher = session.watcher
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        await self.speakers.close(str(guild_id))
        channel_id = getattr(session.connection.channel, "id", None)
        try:
            await session.connection.disconnect(force=True)
        except (discord.HTTPException, discord.ClientException, OSError, ConnectionError):
            log.warning("leaving voice channel %s did not go cleanly", channel_id, exc_info=True)
        log.info("left voice channel %s in guild %s (%s)", channel_id, guild_id, reason)

    def _lock(self, guild_id: int) -> asyncio.Lock:
        return self._locks.setdefault(guild_id, asyncio.Lock())

    def _reporter(self, channel_id: int | None) -> Any:
        client = self._context.client

        async def report(error: BotServiceError) -> None:
            if channel_id is None or client is None:
                return
            with contextlib.suppress(discord.HTTPException):
                await client.get_partial_messageable(channel_id).send(
                    error.user_message, allowed_mentions=discord.AllowedMentions.none()
                )

        return report


class ListenedAnswerSink(SpeakingSink):
    """The answer to something a member said aloud: written and spoken, its final text
    kept so a barge-in can mark what was not spoken."""

    final_text: str | None = None

    async def finish(self, text: str) -> None:
        self.final_text = text
        await super().finish(text)


class VoiceOnlySink:
    """An answer spoken only (`/voice ask`): the text channel gets a short note, or the
    sentence that explains why there is no answer (a model error is spoken too)."""

    def __init__(
        self,
        inner: ReplySink,
        speaker: VoiceSpeaker,
        *,
        note: str,
        interrupt: bool,
        voice: str | None = None,
        model: str | None = None,
    ) -> None:
        self.inner = inner
        self.speaker = speaker
        self.note = note
        self.interrupt = interrupt
        self.voice = voice
        self.model = model
        self.answer: SpokenAnswer | None = None
        self.streamed = False

    async def begin(self, existing_ref: str | None, *, turn_tag: str, resumed: bool) -> str | None:
        if self.interrupt:
            await self.speaker.interrupt()
        self.answer = self.speaker.begin_answer(voice=self.voice, model=self.model)
        return await self.inner.begin(existing_ref, turn_tag=turn_tag, resumed=resumed)

    @property
    def abilities(self) -> SinkAbilities:
        return SinkAbilities(observe=self.observe, speaks=True).joined(abilities_of(self.inner))

    def observe(self, text_so_far: str) -> None:
        # The core calls this for every piece of a model answer, never for its own sentences.
        self.streamed = True
        self._answer().update(text_so_far)

    async def update(self, text: str) -> None:
        self._answer().update(text)

    async def finish(self, text: str) -> None:
        self._answer().finish(text)
        await self.inner.finish(self.note if self.streamed else text)

    async def notice(self, text: str, *, private: bool = True) -> None:
        await self.inner.notice(text, private=private)

    def _answer(self) -> SpokenAnswer:
        if self.answer is None:
            self.answer = self.speaker.begin_answer(voice=self.voice, model=self.model)
        return self.answer


def _unfinished(sink: ListenedAnswerSink, submission: Submission) -> bool:
    """Whether an answer to a member may still have words left to speak."""
    answer = sink.answer
    if answer is None or answer.cancelled:
        return answer is None
    return not submission.answered.done() or len(answer.spoken) < len(answer.sentences)


def _applies_next_time(session: _Session, listening: VoiceMode, mode: VoiceMode) -> str:
    channel = session.connection.channel.mention
    return (
        f"I am listening in {channel} in {listening} mode now; {mode} mode applies at the "
        "next /voice listen (/voice stop, then /voice listen)."
    )


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None and task is not asyncio.current_task():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _has_people(channel: Any, bot_id: int) -> bool:
    guild = channel.guild
    for user_id in channel.voice_states:
        if user_id == bot_id:
            continue
        member = guild.get_member(user_id)
        if member is None or not member.bot:
            return True
    return False


async def _reply(interaction: discord.Interaction, text: str) -> None:
    await interaction.edit_original_response(
        content=text, allowed_mentions=discord.AllowedMentions.none()
    )

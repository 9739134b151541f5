"""The `botservice` command line."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from botservice import __version__
from botservice.app.preflight import check_model_endpoint
from botservice.core.errors import ConfigError

# Imported where they are needed, after the quick configuration check: a mistake in
# the endpoint is answered before asyncio, logging, the settings models, the database
# and the platform libraries load (seconds on a small machine; see
# bench/bench_cold_start.py).
if TYPE_CHECKING:
    from botservice.core.ports import Adapter
    from botservice.core.settings import Settings

EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    # A small module of its own: listing the formats loads none of the voice machinery.
    from botservice.voice.formats import OUTPUT_FORMATS, describe_formats

    # Each subcommand has `help` (its line in `botservice --help`) and `description`
    # (the top of its own `--help`), which argparse keeps apart.
    parser = argparse.ArgumentParser(
        prog="botservice",
        description="A language model in Slack and Discord: threaded memory, "
        "per-channel instructions, exactly-once replies. Settings come from "
        "config/botservice.toml and the environment (see the README, Configuration).",
    )
    parser.add_argument("--version", action="version", version=f"botservice {__version__}")
    commands = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="`botservice COMMAND --help` says more",
    )
    commands.add_parser(
        "run",
        help="start every adapter whose credentials are set (the console when none are), "
        "the HTTP server and the expiry scheduler",
        description="Start the bot: Slack when SLACK_BOT_TOKEN, SLACK_APP_TOKEN or "
        "SLACK_CLIENT_ID is set, Discord when DISCORD_TOKEN is set, the HTTP server "
        "(/slack/events, /healthz, /readyz on [http] host and port, or PORT) and the "
        "expiry scheduler; runs until SIGTERM or Ctrl-C. With no platform credentials it "
        "is a terminal conversation (as `botservice chat`) when there is a terminal or "
        "piped input, and otherwise serves only the health checks, logging that no "
        "platform is configured.",
    )
    commands.add_parser(
        "chat",
        help="talk to the bot in this terminal (reads piped input too)",
        description="A conversation in this terminal, through the same core as Slack and "
        "Discord. With piped input each line is one message and each answer is printed; "
        "end of input exits 0. Lines starting with / are the channel commands "
        "(/help lists them).",
    )

    db = commands.add_parser(
        "db",
        help="database maintenance",
        description="Database maintenance (DATABASE_URL names the database).",
    )
    db_commands = db.add_subparsers(
        dest="db_command", required=True, metavar="ACTION", help="what to do"
    )
    db_commands.add_parser(
        "upgrade",
        help="apply the database migrations",
        description="Apply the database migrations. SQLite is brought up to date by `run` "
        "and `chat` themselves; PostgreSQL needs this once per release, before the "
        "processes start.",
    )

    purge = commands.add_parser(
        "purge",
        help="delete expired data once and print the counts",
        description="Run the expiry job once: delete messages past their channel's "
        "retention, conversations left empty and old answered-markers, then print the "
        "counts. The scheduler in `run` does this every [storage] purge_interval_minutes.",
    )
    purge.add_argument("--dry-run", action="store_true", help="count what would go, delete nothing")

    usage = commands.add_parser(
        "usage",
        help="tokens and cost from the usage records",
        description="Tokens and cost per person, channel or model from the usage rows "
        "(one per answer, no text), as a table with a total line or as CSV.",
    )
    usage.add_argument(
        "--since",
        default="30d",
        type=_since,
        help="a span back from now (30d, 12h, 2w) or a date (2026-11-01); default 30d",
    )
    usage.add_argument(
        "--by", choices=("user", "channel", "model"), default="user", help="group by; default user"
    )
    usage.add_argument("--csv", action="store_true", help="CSV on stdout, one line per group")

    feedback = commands.add_parser(
        "feedback",
        help="print 👍 / 👎 counts per channel and model, and the latest 👎 answers",
        description="Print the 👍 / 👎 clicks on answers per channel and model since a "
        "period, and the latest 👎 answers (turn, channel, answer message id, when).",
    )
    feedback.add_argument(
        "--since",
        type=_period,
        default=_period("7d"),
        metavar="PERIOD",
        help="how far back: 7d, 12h, 30m (default 7d)",
    )

    discord = commands.add_parser(
        "discord",
        help="Discord maintenance",
        description="Discord maintenance (needs DISCORD_TOKEN).",
    )
    discord_commands = discord.add_subparsers(
        dest="discord_command", required=True, metavar="ACTION", help="what to do"
    )
    sync = discord_commands.add_parser(
        "sync-commands",
        help="register the slash commands with Discord",
        description="Register the bot's slash commands with Discord: once per install or "
        "upgrade, never on start (Discord rate-limits it). Global commands may take up to "
        "an hour to show; --guild shows them in one server at once.",
    )
    sync.add_argument(
        "--guild",
        type=int,
        metavar="ID",
        help="register in this server only (instant, for testing)",
    )

    voice = commands.add_parser(
        "voice",
        help="voice tools",
        description="Voice tools, to check the voice set-up without Discord.",
    )
    voice_commands = voice.add_subparsers(
        dest="voice_command", required=True, metavar="ACTION", help="what to do"
    )
    render = voice_commands.add_parser(
        "render",
        help="write what the bot would say to an audio file",
        description="Write what the bot would say to an audio file, through the same path "
        "as an answer in a voice channel (sentences, the [voice] speech engine, ffmpeg). "
        f"Output formats, chosen by the file's extension: {describe_formats()}.",
    )
    render.add_argument("text", help="the text to speak (Markdown, as the model writes it)")
    render.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help=f"audio file to write; its folder must exist; one of {', '.join(OUTPUT_FORMATS)}",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # httpx imports its own command-line tool when click, rich and pygments are
    # installed (a third of httpx's import time); the service never runs it.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    try:
        check_model_endpoint(needs_endpoint=args.command in ("run", "chat"))
        from botservice.app.config import load_settings
        from botservice.app.logs import configure_logging

        settings = load_settings()
        configure_logging(_log_level(args, settings), log_format=settings.log_format)
        import asyncio

        return asyncio.run(_dispatch(args, settings))
    except ConfigError as error:
        print(f"botservice: {error.setting}: {error.problem}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


def _log_level(args: argparse.Namespace, settings: Settings) -> str:
    # In a terminal conversation, routine INFO lines would interleave with the
    # answers; the console shows warnings only unless asked for more.
    console = args.command == "chat" or (
        args.command == "run" and not (settings.slack.configured or settings.discord.configured)
    )
    if console and "BOTSERVICE_LOG_LEVEL" not in os.environ:
        return "WARNING"
    return settings.log_level


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    match args.command:
        case "run":
            return await _run(settings)
        case "chat":
            return await _chat(settings)
        case "db":
            from botservice.storage.migrate import upgrade

            await upgrade(settings.database_url)
            print("database is up to date")
            return 0
        case "purge":
            return await _purge(settings, dry_run=args.dry_run)
        case "usage":
            return await _usage(settings, args)
        case "feedback":
            return await _feedback(settings, args.since)
        case "discord":
            return await _discord_sync(settings, args.guild)
        case "voice":
            return await _voice_render(settings, args.text, args.output)
    raise AssertionError(args.command)


async def _run(settings: Settings) -> int:
    import logging

    from botservice.app.runtime import open_services, require_model_endpoint, serve

    no_platform = not (settings.slack.configured or settings.discord.configured)
    if no_platform and _has_input():
        return await _chat(settings)
    require_model_endpoint(settings)
    if settings.slack.configured:
        _require_extra("slack_bolt", extra="slack", setting="SLACK_BOT_TOKEN")
    if settings.discord.configured:
        _require_extra("discord", extra="discord", setting="DISCORD_TOKEN")
    async with open_services(settings, metrics=True, traces=True, tools=True) as services:
        adapters: list[Adapter] = []
        if settings.slack.configured:
            from botservice.adapters.slack import create_adapter as create_slack

            # Only multi-workspace installs (OAuth, no bot token) keep installations in
            # the database, through slack-sdk's SQLAlchemy stores; a bot token's start
            # leaves SQLAlchemy unimported (storage/sqlite_file.py).
            database = None if settings.slack.bot_token else services.database
            adapters.append(
                create_slack(settings, services.core, services.store, database=database)
            )
        if settings.discord.configured:
            from botservice.adapters.discord import create_adapter as create_discord

            adapters.append(create_discord(settings, services.core, services.store))
        if no_platform:
            # A platform's process (a Procfile `web:`) has no terminal: stay up and
            # answer health checks instead of exiting, which would only be restarted.
            logging.getLogger("botservice").warning(
                "no platform is configured (set SLACK_BOT_TOKEN or DISCORD_TOKEN); "
                "serving health checks only"
            )
        await serve(services, adapters, with_http=True)
    return 0


def _has_input() -> bool:
    """Whether someone can type or pipe messages in: a terminal, a pipe or a file.
    Not /dev/null or a closed stdin, which is how platforms start a `web` process."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    return sys.stdin.isatty() or stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def _require_extra(module: str, *, extra: str, setting: str) -> None:
    """A platform's token is set but its libraries are not installed: say which extra."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            setting,
            f"is set, but the {extra} extra is not installed; run "
            f'`python -m pip install -e ".[{extra}]"` (or unset {setting})',
        )


async def _chat(settings: Settings) -> int:
    from botservice.adapters.console import ConsoleAdapter
    from botservice.app.expiry import start_expiry_soon
    from botservice.app.runtime import open_services, require_model_endpoint

    require_model_endpoint(settings)
    console: ConsoleAdapter | None = None
    stopping = False

    def stop() -> None:
        nonlocal stopping
        stopping = True
        if console is not None:
            console.close_input()

    # Held until the services are closed: closing them finishes the answers in flight.
    with _stop_on_interrupt(stop):
        async with open_services(settings, traces=True, tools=True, console=True) as services:
            console = ConsoleAdapter(services.core)
            if stopping:
                console.close_input()
            stop_expiry = start_expiry_soon(services.store, settings.storage, usage=services.usage)
            try:
                await services.core.resume_pending(console.sink_for)
                await console.serve()
            finally:
                stop_expiry()
    return 0


@contextlib.contextmanager
def _stop_on_interrupt(stop: Callable[[], None]) -> Iterator[None]:
    """The first Ctrl-C (or SIGTERM) calls `stop`: no more input is read, the answer in
    flight finishes, and the command exits 0. A second Ctrl-C exits at once with 130;
    the unfinished turn is stored as taken and is answered on the next start."""
    import asyncio

    loop = asyncio.get_running_loop()
    interrupted = False

    def on_signal() -> None:
        nonlocal interrupted
        if interrupted:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
            print(
                "\nbotservice: stopped at once; an unfinished answer is kept and resumes "
                "on the next start",
                file=sys.stderr,
                flush=True,
            )
            # At once means no clean-up that could wait on the model or the database;
            # what was stored is committed, and the next start takes the turn back.
            os._exit(130)
        interrupted = True
        print(
            "\nbotservice: finishing the answer in flight, then quitting "
            "(Ctrl-C again quits at once)",
            file=sys.stderr,
            flush=True,
        )
        stop()

    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, on_signal)
    try:
        yield
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


async def _purge(settings: Settings, *, dry_run: bool) -> int:
    from botservice.app.expiry import purge_once
    from botservice.app.runtime import open_services

    async with open_services(settings) as services:
        counts = await purge_once(
            services.store,
            settings.storage,
            claim_period=False,
            dry_run=dry_run,
            usage=services.usage,
        )
    verb = "would delete" if dry_run else "deleted"
    usage = f", {counts.usage} usage rows" if not dry_run else ""
    print(
        f"{verb}: {counts.messages} messages, {counts.conversations} conversations, "
        f"{counts.turns} dedupe markers{usage}"
    )
    return 0


def _since(text: str) -> object:
    from botservice.app.usage_report import since_argument

    return since_argument(text)


async def _usage(settings: Settings, args: argparse.Namespace) -> int:
    from botservice.app.runtime import open_services
    from botservice.app.usage_report import usage_report

    async with open_services(settings) as services:
        report = await usage_report(services.usage, since=args.since, by=args.by, as_csv=args.csv)
    sys.stdout.write(report)
    return 0


def _period(value: str) -> timedelta:
    units = {"d": "days", "h": "hours", "m": "minutes"}
    number, unit = value[:-1], value[-1:]
    if unit not in units or not number.isdigit() or len(number) > 6:
        raise argparse.ArgumentTypeError(f"{value!r} is not a period like 7d, 12h or 30m")
    return timedelta(**{units[unit]: int(number)})


async def _feedback(settings: Settings, since: timedelta) -> int:
    from botservice.app.runtime import open_services

    async with open_services(settings) as services:
        summary = await services.store.feedback_summary(datetime.now(UTC) - since)
    print(f"feedback since {since.days}d {since.seconds // 3600}h")
    if not summary.counts:
        print("no feedback yet")
        return 0
    print(f"{'platform':<9} {'channel':<14} {'model':<22} {'👍':>5} {'👎':>5}")
    for row in summary.counts:
        print(
            f"{row.platform:<9} {row.channel:<14} {row.model or '?':<22} {row.up:>5} {row.down:>5}"
        )
    if summary.latest_down:
        print()
        print("latest 👎 (turn, platform, channel, answer message id, when)")
        for vote in summary.latest_down:
            print(
                f"  turn {vote.turn_id} {vote.platform} {vote.channel} {vote.answer_ref or '-'} "
                f"{vote.at:%Y-%m-%d %H:%M}"
            )
    return 0


async def _discord_sync(settings: Settings, guild: int | None) -> int:
    if settings.discord.token is None:
        raise ConfigError("DISCORD_TOKEN", "set the bot token to register its slash commands")
    from botservice.adapters.discord.sync import sync_commands

    names = await sync_commands(settings, guild)
    where = f"server {guild}" if guild else "every server (may take up to an hour to show)"
    print(f"registered {len(names)} commands in {where}: {', '.join(sorted(names))}")
    return 0


async def _voice_render(settings: Settings, text: str, output: str) -> int:
    from botservice.core.errors import BotServiceError
    from botservice.voice.render import render_to_file

    try:
        result = await render_to_file(settings, text, output)
    except BotServiceError as error:
        print(f"botservice: {error.user_message}", file=sys.stderr)
        return EXIT_CONFIG
    print(result.describe())
    return 0

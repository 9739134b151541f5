"""Every `botservice … --help` page says what the command does and what each argument
means; `voice render` lists its formats and refuses a missing folder in one sentence."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from botservice.app.cli import build_parser, main
from botservice.voice.formats import OUTPUT_FORMATS

ROOT = Path(__file__).resolve().parent.parent


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str | None]]:
    """(words, parser, its line in the parent's list) for every command, nested ones too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), sub, listed.get(name)
                yield from commands(sub, (*path, name))


COMMANDS = list(commands(build_parser()))
IDS = [" ".join(words) for words, _, _ in COMMANDS]


def help_page(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*words, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_every_command_is_covered() -> None:
    assert set(IDS) >= {
        "run",
        "chat",
        "db",
        "db upgrade",
        "purge",
        "discord",
        "discord sync-commands",
        "voice",
        "voice render",
    }


@pytest.mark.parametrize(("words", "parser", "listed"), COMMANDS, ids=IDS)
def test_each_help_page_says_what_the_command_does_and_what_each_argument_is(
    capsys: pytest.CaptureFixture[str],
    words: tuple[str, ...],
    parser: argparse.ArgumentParser,
    listed: str | None,
) -> None:
    assert listed, f"`botservice {' '.join(words[:-1])} --help` lists {words[-1]} with no help"
    assert parser.description, f"`botservice {' '.join(words)} --help` has no description"
    page = help_page(capsys, *words)
    # argparse re-wraps the description: compare words, not lines.
    assert " ".join(parser.description.split()) in " ".join(page.split())
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help, f"`botservice {' '.join(words)}`: {name} has no help"
        assert " ".join(action.help.split()) in " ".join(page.split())


def test_voice_render_help_lists_every_output_format(capsys: pytest.CaptureFixture[str]) -> None:
    page = " ".join(help_page(capsys, "voice", "render").split())
    for suffix, (name, _) in OUTPUT_FORMATS.items():
        assert f"{suffix} ({name})" in page


def test_rendering_into_a_missing_folder_says_so_and_exits_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BOTSERVICE_"))}
    done = subprocess.run(
        [sys.executable, "-m", "botservice", "voice", "render", "Hi.", "-o", "missing/hi.wav"],
        cwd=tmp_path,
        env={
            **env,
            "PYTHONPATH": str(ROOT),
            "BOTSERVICE_CONFIG": str(ROOT / "config" / "botservice.toml"),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "botservice: cannot write 'missing/hi.wav': the folder 'missing' does not exist; "
        "create it first"
    ]
    assert done.stdout == ""
    assert not (tmp_path / "missing").exists()

"""`config/botservice.toml` lists every setting of the settings model, each with a
comment, so the file an operator reads cannot drift from the code.

The file is read line by line, commented-out keys included (`# key = value`):
a commented-out key shows the default that lives in the code, so its value must
be that default; one whose default is "unset" shows an example, which must be
valid; a secret shows the environment variable it comes from (`$NAME`).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from botservice.app.config import _ENV_OVERRIDES, _SECRET_KEYS, load_settings
from botservice.core.settings import ModelInfo, Settings

CONFIG = Path(__file__).resolve().parent.parent / "config" / "botservice.toml"

_HEADER = re.compile(r"^(?P<commented>#\s*)?\[(?P<name>[^\[\]]+)\]\s*(#.*)?$")
_KEY = re.compile(r"^(?P<commented>#\s*)?(?P<key>[a-z_][a-z0-9_]*)\s*=\s*(?P<value>.*)$")


@dataclass(frozen=True)
class Entry:
    """One setting as the file shows it."""

    section: str  # "" for the keys before the first table
    key: str
    commented: bool
    value: str  # the text after `=`, trailing comment included
    comment: str  # the prose comment just above, and the trailing one
    line: int


def read_entries(text: str) -> tuple[list[Entry], list[tuple[str, str]]]:
    """Every key line (live or commented out) and every table header with the comment above it."""
    entries: list[Entry] = []
    headers: list[tuple[str, str]] = []
    section = ""
    above: list[str] = []  # prose comment lines just above the current line
    multiline: str | None = None  # the closing quotes of a multi-line string being skipped
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if multiline is not None:
            if multiline in line:
                multiline = None
            continue
        if not line:
            above = []
            continue
        if header := _HEADER.match(line):
            section = header["name"].strip()
            headers.append((section, " ".join(above)))
            above = []
            continue
        if key := _KEY.match(line):
            value = key["value"]
            entries.append(
                Entry(
                    section=section,
                    key=key["key"],
                    commented=bool(key["commented"]),
                    value=value,
                    comment=" ".join([*above, trailing_comment(value)]).strip(),
                    line=number,
                )
            )
            for quotes in ('"""', "'''"):
                if value.lstrip().startswith(quotes) and value.count(quotes) == 1:
                    multiline = quotes
            above = []
            continue
        if line.startswith("#"):
            above.append(line.lstrip("#").strip())
            continue
        raise AssertionError(f"line {number} is neither a setting, a table nor a comment: {raw}")
    return entries, headers


def trailing_comment(value: str) -> str:
    """The comment after a value (`20971520   # 20 MB`): the text after the first `#`
    before which the value still parses."""
    for position in (match.start() for match in re.finditer("#", value)):
        try:
            tomllib.loads(f"x = {value[:position]}")
        except tomllib.TOMLDecodeError:
            continue
        return value[position + 1 :].strip()
    return ""


def parse_value(value: str) -> Any:
    return tomllib.loads(f"x = {value}")["x"]


def settings_fields() -> list[tuple[str, str, type[BaseModel]]]:
    """(section, key, model of the section) for every leaf setting; "" is the top level."""
    fields: list[tuple[str, str, type[BaseModel]]] = []
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields.extend((name, key, annotation) for key in annotation.model_fields)
        elif name != "models":  # a table per model name, checked on its own
            fields.append(("", name, Settings))
    return fields


ENTRIES, HEADERS = read_entries(CONFIG.read_text())
FIELDS = settings_fields()
_ENV_BY_SETTING = {
    (path[0] if len(path) == 2 else "", path[-1]): name for name, path in _ENV_OVERRIDES.items()
}


def test_the_file_is_what_the_service_loads() -> None:
    live = tomllib.loads(CONFIG.read_text())
    assert load_settings({"BOTSERVICE_CONFIG": str(CONFIG)}) == Settings.model_validate(live)


@pytest.mark.parametrize(
    ("section", "key", "model"), FIELDS, ids=[f"{s}.{k}" for s, k, _ in FIELDS]
)
def test_every_setting_is_listed_once_with_a_comment(
    section: str, key: str, model: type[BaseModel]
) -> None:
    where = f"[{section}] {key}" if section else key
    found = [entry for entry in ENTRIES if (entry.section, entry.key) == (section, key)]
    assert found, f"{where} is missing from {CONFIG.name}"
    assert len(found) == 1, f"{where} is listed {len(found)} times"
    (entry,) = found
    assert entry.comment, f"{where} (line {entry.line}) has no comment above it or after it"
    env = _ENV_BY_SETTING.get((section, key))
    if key in _SECRET_KEYS:
        assert entry.commented, f"{where} is a secret: the file may only name its variable"
        assert entry.value.strip() == f"${env}", f"{where}: write `# {key} = ${env}`"
        return
    if env is not None:
        assert env in entry.comment, f"{where}: its comment should name {env}"
    if not entry.commented:
        return  # a live value: test_the_file_is_what_the_service_loads validates it
    try:
        shown = model.model_validate({key: parse_value(entry.value)})
    except (tomllib.TOMLDecodeError, ValidationError) as error:
        raise AssertionError(
            f"{where} (line {entry.line}): {entry.value!r} is not valid"
        ) from error
    default = getattr(model(), key)
    if default is not None:
        assert getattr(shown, key) == default, (
            f"{where} is commented out, so it should show the code's default {default!r}"
        )


def test_the_file_lists_nothing_the_settings_model_lacks() -> None:
    known = {(section, key) for section, key, _ in FIELDS}
    model_keys = set(ModelInfo.model_fields)
    for entry in ENTRIES:
        if entry.section.startswith("models."):
            assert entry.key in model_keys, f"[{entry.section}] {entry.key} is not a model fact"
        else:
            assert (entry.section, entry.key) in known, (
                f"line {entry.line}: {entry.key} is not a setting of [{entry.section}]"
            )


def test_every_table_of_models_and_every_section_is_explained() -> None:
    model_tables = [name for name, _ in HEADERS if name.startswith("models.")]
    assert model_tables, 'no [models."<name>"] table shows how per-model facts are written'
    first = next(comment for name, comment in HEADERS if name.startswith("models."))
    assert first, 'the first [models."<name>"] table has no comment saying what it holds'
    sections = {name for name, _ in HEADERS}
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            assert name in sections, f"[{name}] is missing"

"""MkDocs hook: the reference pages are generated from the code, never written by hand.

- ``on_config`` puts the built-in commands on the ``forge`` click group, so that ``mkdocs-click``
  documents every command: the group imports them only when one is named (``cli.BUILTIN_COMMANDS``),
  and ``mkdocs-click`` reads ``group.commands``. Plugins are not loaded: the pages show the
  commands cryoet-forge itself ships.
- ``on_page_markdown`` replaces a line ``<!-- hookspecs -->`` with every hook of
  ``cryoet_forge.hookspecs`` (imported, so hooks made at import time are there too): its signature
  and documentation. It also replaces a line ``<!-- config-keys: MODULE:CLASS [skip=a,b] -->`` with one
  table per section of that configuration dataclass: every key with its type, its default (the
  value a fresh instance holds) and its meaning: the ``#:`` comment lines above the field, or, for a
  field that has none yet, its entry in ``meanings.toml`` beside this file.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import math
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

#: meanings of the keys whose field has no ``#:`` comment: {class name: {dotted key: meaning}}
FALLBACK: dict[str, dict[str, str]] = tomllib.loads((Path(__file__).with_name("meanings.toml")).read_text())

MARKER = re.compile(r"^<!-- config-keys: (?P<target>[\w.]+:\w+)(?: skip=(?P<skip>[\w,]+))? -->$", re.M)


def on_config(config: Any) -> Any:
    import click

    from cryoet_forge.cli import cli

    context = click.Context(cli)
    for name in cli.list_commands(context):
        command = cli.get_command(context, name)
        if command is not None and name not in cli.commands:
            cli.add_command(command, name)
    cli.commands = dict(sorted(cli.commands.items()))
    return config


def on_page_markdown(markdown: str, **_: Any) -> str:
    markdown = MARKER.sub(lambda m: config_markdown(m["target"], tuple(filter(None, (m["skip"] or "").split(",")))),
                          markdown)
    return markdown.replace("<!-- hookspecs -->", hookspecs_markdown())


# --- the hooks ----------------------------------------------------------------------------------

def hookspecs_markdown() -> str:
    """One section per ``forge_register_*`` hook, in the order the module defines them."""
    from cryoet_forge import hookspecs

    out = []
    for name, hook in vars(hookspecs).items():
        if not (name.startswith("forge_register_") and callable(hook)):
            continue
        parameters = ", ".join(inspect.signature(hook).parameters)
        doc = re.sub(r"``(.+?)``", r"`\1`", inspect.getdoc(hook) or "")
        out += [f"### `{name}({parameters})`", "", doc, ""]
    return "\n".join(out)


# --- the configuration tables -------------------------------------------------------------------

def load(target: str) -> type:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def field_meanings(cls: type) -> dict[str, str]:
    """Field name -> its ``#:`` comment (lines joined), from the class and its dataclass bases."""
    meanings: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        lines = textwrap.dedent(inspect.getsource(klass)).splitlines()[1:]
        pending: list[str] = []
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("#:"):
                pending.append(stripped[2:].strip())
                continue
            field = re.match(r"^    (\w+)\s*:", line)
            if field and pending:
                meanings[field[1]] = " ".join(pending)
            if stripped and not stripped.startswith("#"):
                pending = []
    return meanings


def toml_value(value: Any) -> str:
    """A default as it is written in a TOML file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if value != value else ("inf" if value > 0 else "-inf"))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return str(value)


def _markdown_text(text: str) -> str:
    """A ``#:`` comment as table-cell Markdown: reST literals as code, pipes outside code escaped."""
    text = re.sub(r"``(.+?)``", r"`\1`", text)
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(p if p.startswith("`") else p.replace("|", "\\|") for p in parts)


def _code(text: str) -> str:
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def sections(cls: type, skip: tuple[str, ...] = (),
             fallback: bool = True) -> list[tuple[str, str, list[tuple[str, str, str, str]]]]:
    """``(section, intro, rows)`` of a configuration dataclass, depth first; a row is
    ``(key, type, default, meaning)``. A field holding a dataclass is its own ``[section]``.
    ``fallback``: take a meaning from ``meanings.toml`` where the field has no ``#:`` comment."""
    found: list[tuple[str, str, list[tuple[str, str, str, str]]]] = []

    def walk(instance: Any, prefix: str) -> None:
        klass = type(instance)
        meanings = field_meanings(klass)
        rows, nested = [], []
        for field in dataclasses.fields(klass):
            if not prefix and field.name in skip:
                continue
            value = getattr(instance, field.name)
            if dataclasses.is_dataclass(value):
                nested.append((field.name, value))
                continue
            kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
            rows.append((field.name, kind, toml_value(value), meanings.get(field.name, "")))
        doc = inspect.getdoc(klass) or ""
        own = klass.__doc__ is not None and not doc.startswith(klass.__name__ + "(")
        intro = doc.split("\n\n")[0].replace("\n", " ") if own else ""
        if rows:
            found.append((prefix, intro, rows))
        for name, value in nested:
            walk(value, f"{prefix}.{name}" if prefix else name)

    walk(cls(), "")
    extra = FALLBACK.get(cls.__name__, {}) if fallback else {}
    return [(section, intro, [(key, kind, default, meaning or extra.get(f"{section}.{key}" if section else key, ""))
                              for key, kind, default, meaning in rows])
            for section, intro, rows in found]


def config_markdown(target: str, skip: tuple[str, ...] = ()) -> str:
    """The generated Markdown of one configuration dataclass."""
    out = []
    for section, intro, rows in sections(load(target), skip):
        out.append(f"### `[{section}]`" if section else "### Top level")
        out.append("")
        if intro:
            out += [_markdown_text(intro), ""]
        out.append("| key | type | default | meaning |")
        out.append("|---|---|---|---|")
        for key, kind, default, meaning in rows:
            out.append(f"| `{key}` | {_code(kind)} | {_code(default)} | {_markdown_text(meaning)} |")
        out.append("")
    return "\n".join(out)

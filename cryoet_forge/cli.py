"""The ``forge`` command.

This is the only place that turns a ForgeError (or a usage error) into a one-line
message on stderr and a non-zero exit code. Sub-commands come from plugins through
the ``forge_register_commands`` hook, built-in ones included.

Building the command group imports nothing heavy: the built-in commands are found through
:data:`BUILTIN_COMMANDS` (the same objects their plugin modules register) and imported only
when named, and the plugins (whose modules import torch) are loaded only when a command that
is not built in is named, when ``forge plugins`` runs, or when a command uses the registry.
So ``forge --help`` and ``forge NAME --help`` stay fast.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys

import click

from cryoet_forge import __version__, progress
from cryoet_forge.errors import ForgeError
from cryoet_forge.io import files as input_files
from cryoet_forge.io.atomic import release_output_locks
from cryoet_forge.registry import KIND_HOOKS, get_registry, normalize_kind

#: the commands of cryoet-forge's own plugin modules (their ``forge_register_commands``): name ->
#: (module, attribute). The modules import their heavy dependencies inside the command functions.
BUILTIN_COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("cryoet_forge.simulate.commands", "simulate_command"),
    "fetch-structures": ("cryoet_forge.simulate.commands", "fetch_structures_command"),
    "density": ("cryoet_forge.simulate.commands", "density_command"),
    "simulate-tomogram": ("cryoet_forge.simulate.tomogram_command", "simulate_tomogram_command"),
    "extract": ("cryoet_forge.data.extract_command", "extract_command"),
    "metrics": ("cryoet_forge.metrics.command", "metrics_command"),
    "train": ("cryoet_forge.train.commands", "train_command"),
    "generate": ("cryoet_forge.train.commands", "generate_command"),
    "uncertainty": ("cryoet_forge.train.commands", "uncertainty_command"),
    "refine-tomogram": ("cryoet_forge.train.commands", "refine_tomogram_command"),
    "classify": ("cryoet_forge.evaluate.commands", "classify_group"),
    "evaluate": ("cryoet_forge.evaluate.commands", "evaluate_command"),
    "quickstart": ("cryoet_forge.evaluate.commands", "quickstart_command"),
    "evaluate-picking": ("cryoet_forge.evaluate.commands", "evaluate_picking_command"),
    "pick": ("cryoet_forge.picking.commands", "pick_group"),
}


class ForgeGroup(click.Group):
    """The ``forge`` group: built-in commands imported when named, plugin commands loaded on demand."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.plugins_loaded = False

    def load_plugins(self) -> None:
        """Let every plugin add its commands (once per invocation; see :func:`main`)."""
        if not self.plugins_loaded:
            self.plugins_loaded = True
            get_registry().register_commands(self)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = self.commands.get(cmd_name)
        if command is not None:
            return command
        if cmd_name in BUILTIN_COMMANDS and not self.plugins_loaded:
            module_name, attribute = BUILTIN_COMMANDS[cmd_name]
            return getattr(importlib.import_module(module_name), attribute)
        self.load_plugins()
        return self.commands.get(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(BUILTIN_COMMANDS))


@click.group(cls=ForgeGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Installed plugins may add commands; `forge plugins` lists the plugins, and a plugin's "
                    "command runs as `forge NAME`.")
@click.version_option(__version__, "--version", prog_name="forge")
@click.option("--quiet", "-q", is_flag=True, help="No progress output in any command (results still print).")
@click.option("--allow-outside-paths", is_flag=True,
              help="Let paths named in tables (rlnImageName, tomogram paths, copick tomograms) lead outside "
                   "the table's or project's folder.")
def cli(quiet: bool, allow_outside_paths: bool) -> None:
    """cryoet-forge: realistic cryo-ET training data and how realistic it is.

    Long stages show a progress bar with an ETA in a terminal and a plain line every 10 s
    otherwise (FORGE_PROGRESS=bar|lines|off, FORGE_PROGRESS_INTERVAL=seconds).
    """
    if quiet:
        progress.configure(quiet=True)
    input_files.configure_paths(allow_outside_paths)


def option_lines(factory) -> list[str]:
    """The keyword options of a component's factory, read from its signature: ``name = default
    (type)``; the options a config passes in ``options = {...}`` (``[data.*]``, ``--option``...)."""
    target = getattr(factory, "options_from", None)  # a lazy factory names the class it builds
    if isinstance(target, str):
        module, _, attribute = target.partition(":")
        factory = getattr(importlib.import_module(module), attribute)
    try:
        parameters = [p for p in inspect.signature(factory).parameters.values() if p.name != "self"]
    except (TypeError, ValueError):
        return ["(options not introspectable)"]

    made = {f.name: f.default_factory() for f in dataclasses.fields(factory)
            if f.default_factory is not dataclasses.MISSING} if dataclasses.is_dataclass(factory) else {}
    lines = []
    for p in parameters:
        if p.name in made:  # a dataclass field's default_factory: show what it makes, not <factory>
            p = p.replace(default=made[p.name])
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            lines.append(f"**{p.name} (further options passed on)" if p.kind is p.VAR_KEYWORD else f"*{p.name}")
            continue
        default = "required" if p.default is p.empty else f"= {p.default!r}"
        kind = "" if p.annotation is p.empty else f"  ({p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, '__name__', p.annotation)})"
        lines.append(f"{p.name} {default}{kind}")
    return lines or ["(no options)"]


@cli.command("list")
@click.argument("kind", required=False)
@click.option("--options", "show_options", is_flag=True,
              help="Also list each component's options (from its factory's signature), e.g. the keys of a "
                   "dataset's options table.")
def list_command(kind: str | None, show_options: bool) -> None:
    """List registered components (all kinds, or one KIND such as 'generator')."""
    registry = get_registry()
    kinds = [normalize_kind(kind)] if kind is not None else list(KIND_HOOKS)
    for key in kinds:
        components = registry.components(key)
        click.echo(f"{key}:")
        if not components:
            click.echo("  (none)")
        width = max((len(c.name) for c in components), default=0)
        origin_width = max((len(c.origin) for c in components), default=0)
        for c in components:
            click.echo(f"  {c.name:<{width}}  {c.origin:<{origin_width}}  {c.description}")
            if show_options:
                for line in option_lines(c.factory):
                    click.echo(f"      {line}")


@cli.command("plugins")
def plugins_command() -> None:
    """Show every plugin with its version, the hooks it implements and any load error."""
    cli.load_plugins()  # a plugin's command clashes are recorded while its commands are added
    for report in get_registry().plugin_reports():
        status = "error" if report.error else "ok"
        click.echo(f"{report.name} {report.version} [{status}] ({report.module})")
        if report.hooks:
            click.echo(f"  hooks: {', '.join(report.hooks)}")
        if report.error:
            click.echo(f"  error: {report.error}")


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``forge`` console script; returns the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get("FORGE_DEBUG") == "1"
    progress.configure(quiet=False)  # each invocation starts from the defaults
    input_files.configure_paths(False)
    cli.plugins_loaded = False  # each invocation lets the plugins add their commands again, when needed
    try:
        return _run(args, debug)
    finally:
        release_output_locks()


def _run(args: list[str], debug: bool) -> int:
    try:
        cli.main(args=args, prog_name="forge", standalone_mode=False)
    except ForgeError as exc:
        if debug:
            raise
        click.echo(f"forge: error: {_one_line(exc)}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("forge: aborted", err=True)
        return 130
    except click.ClickException as exc:
        if debug:
            raise
        message = exc.format_message()
        ctx = getattr(exc, "ctx", None)
        if ctx is not None and isinstance(ctx.command, click.Group) and "No such command" in message:
            message += f" Choose from: {', '.join(sorted(ctx.command.list_commands(ctx)))}."
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        click.echo(f"forge: error: {_one_line(message)}{where}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("forge: interrupted", err=True)
        return 130
    except OSError as exc:  # an unwritable output folder, a full disk: the user's to fix
        if debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        click.echo(f"forge: error: {_one_line(exc.strerror or exc)}{where}", err=True)
        return 1
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()

"""The ``forge`` command.

This is the only place that turns a ForgeError (or a usage error) into a one-line
message on stderr and a non-zero exit code. Sub-commands come from plugins through
the ``forge_register_commands`` hook, built-in ones included.
"""

from __future__ import annotations

import os
import sys

import click

from cryoet_forge import __version__, progress
from cryoet_forge.errors import ForgeError
from cryoet_forge.io import files as input_files
from cryoet_forge.registry import KIND_HOOKS, get_registry, normalize_kind


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


@cli.command("list")
@click.argument("kind", required=False)
def list_command(kind: str | None) -> None:
    """List registered components (all kinds, or one KIND such as 'generator')."""
    registry = get_registry()
    kinds = [normalize_kind(kind)] if kind else list(KIND_HOOKS)
    for key in kinds:
        components = registry.components(key)
        click.echo(f"{key}:")
        if not components:
            click.echo("  (none)")
        width = max((len(c.name) for c in components), default=0)
        origin_width = max((len(c.origin) for c in components), default=0)
        for c in components:
            click.echo(f"  {c.name:<{width}}  {c.origin:<{origin_width}}  {c.description}")


@cli.command("plugins")
def plugins_command() -> None:
    """Show every plugin with its version, the hooks it implements and any load error."""
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
    try:
        get_registry().register_commands(cli)
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

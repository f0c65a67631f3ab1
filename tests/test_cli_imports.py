"""``forge --help`` and every ``forge NAME --help`` build the command group without the heavy libraries."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from cryoet_forge.cli import BUILTIN_COMMANDS, ForgeGroup

HEAVY = ("torch", "scipy", "pandas", "matplotlib", "faiss", "sklearn")

PROBE = """
import json, sys
from cryoet_forge.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)

HELP_ARGS = [["--help"]] + [[name, "--help"] for name in sorted(BUILTIN_COMMANDS)] + [
    ["list", "--help"], ["plugins", "--help"], ["classify", "train", "--help"]]


@pytest.mark.parametrize("args", HELP_ARGS, ids=lambda a: " ".join(a))
def test_help_imports_no_heavy_library(args):
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["code"] == 0
    assert last["heavy"] == [], f"forge {' '.join(args)} imported {last['heavy']}"
    assert "Usage: forge" in result.stdout


def test_top_level_help_lists_every_built_in_command():
    result = subprocess.run([sys.executable, "-m", "cryoet_forge.cli", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split("Commands:")[1].split()
    for name in [*BUILTIN_COMMANDS, "list", "plugins"]:
        assert name in listed, name


def test_the_built_in_table_is_what_the_built_in_plugins_register():
    """BUILTIN_COMMANDS names the very command objects the plugin hooks add (so both paths agree)."""
    from cryoet_forge.registry import Registry

    group = ForgeGroup(name="forge")
    Registry(load_entry_points=False).register_commands(group)
    registered = {name: command for name, command in group.commands.items()}
    assert set(registered) == set(BUILTIN_COMMANDS)
    ctx = click.Context(ForgeGroup(name="forge"))
    for name in BUILTIN_COMMANDS:
        assert ForgeGroup(name="forge").get_command(ctx, name) is registered[name], name

"""The `forge` command: version, listing, and one-line errors without tracebacks."""

from __future__ import annotations

import subprocess

import pytest

from cryoet_forge import __version__
from cryoet_forge.cli import main
from tests_support import forge_executable


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([forge_executable(), *args], capture_output=True, text=True, timeout=120)


def test_version():
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"forge, version {__version__}"


def test_list_shows_every_kind_with_origin_and_description():
    result = run("list")
    assert result.returncode == 0, result.stderr
    for kind in ("generator:", "critic:", "loss:", "simulator:", "dataset:", "feature-extractor:", "knn-backend:"):
        assert kind in result.stdout
    exact = next(line for line in result.stdout.splitlines() if line.split()[:1] == ["exact"])
    assert exact.split()[1] == "cryoet-forge"
    assert "Rust" in exact


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["list", "gizmo"], "forge: error: unknown component kind 'gizmo'; choose from: generator, critic, loss"),
        (["frobnicate"], "forge: error: No such command 'frobnicate'. Choose from: "),
        (["list", "--colour"], "forge: error: No such option '--colour'"),
        (["plugins", "extra-arg"], "forge: error: Got unexpected extra argument (extra-arg)"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(args, expected):
    result = run(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(expected), lines[0]
    assert "Traceback" not in result.stderr


def test_main_returns_exit_codes_in_process(capsys):
    assert main(["list", "knn-backend"]) == 0
    assert "exact" in capsys.readouterr().out
    assert main(["list", "gizmo"]) == 3
    assert capsys.readouterr().err.startswith("forge: error: unknown component kind 'gizmo'")


def test_os_error_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main(["simulate", "--phantoms", "--n-per-class", "1", "--box", "16", "--out", str(blocker / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("forge: error: "), err

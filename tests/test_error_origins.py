"""Errors name the user's input and where a value came from, never forge's temporary folder."""

from __future__ import annotations

import pytest

from cryoet_forge.cli import main as forge
from cryoet_forge.config import load_config
from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.io.atomic import atomic_folder


def test_an_error_inside_an_output_folder_names_the_output_not_the_temporary_folder(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(InputError) as error:
        with atomic_folder(target) as work:
            raise InputError(f"{work}/volumes/000001.mrc: 12 voxel(s) are NaN")
    assert str(error.value) == f"{target}/volumes/000001.mrc: 12 voxel(s) are NaN"
    assert not target.exists() and not list(tmp_path.iterdir())


def test_an_absurd_voxel_size_is_named_before_any_work(tmp_path, capsys):
    assert forge(["simulate", "--phantoms", "--box", "16", "--n-per-class", "1", "--voxel-size", "1e-30",
                  "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == (
        "forge: error: --voxel-size 1e-30 A is outside 0.01-1000 A; expected Angstrom between 0.01 and 1000")
    assert not (tmp_path / "x").exists()


def test_a_bad_value_from_the_command_line_is_not_blamed_on_the_config_file(tmp_path):
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text("[train]\nsteps = 2\n")
    bad.write_text("[train]\nsteps = -2\n")
    with pytest.raises(ConfigError) as error:
        load_config(good, {"train.steps": -5})
    assert str(error.value) == f"train.steps must be >= 0, got -5 (from the command line, over {good})"
    with pytest.raises(ConfigError, match=rf"^{bad}: train.steps must be >= 0, got -2$"):
        load_config(bad, {})

"""Seeds, devices and option values that used to raise a traceback or pass silently: one line, no work."""

from __future__ import annotations

import subprocess

import pytest

from cryoet_forge.config import load_config
from cryoet_forge.devices import SEED_MAX, check_device, check_seed
from cryoet_forge.errors import ConfigError
from cryoet_forge.models.generators import CryoETGANGenerator
from tests_support import assert_one_line_error, forge_executable


@pytest.mark.parametrize("args, fragments", [
    (["simulate", "--phantoms", "--n-per-class", "1", "--box", "16", "--seed", "-1"],
     ["Invalid value for '--seed': -1 is not in the range 0<=x<=4294967295"]),
    (["simulate", "--phantoms", "--n-per-class", "1", "--box", "16", "--device", "tpu"],
     ["--device 'tpu': expected cpu, cuda, cuda:N or auto"]),
    (["classify", "train", "--data", "missing", "--device", "tpu"], ["--device 'tpu'"]),
    (["train", "--set", "train.seed=99999999999"], ["train.seed 99999999999: expected an integer in 0..4294967295"]),
    (["train", "--set", "data.density_noise_std=nan"], ["data.density_noise_std must be a number >= 0, got nan"]),
])
def test_bad_values_are_one_line_and_nothing_is_written(tmp_path, args, fragments):
    out = tmp_path / "out"
    proc = subprocess.run([forge_executable(), *args, "--out", str(out)], capture_output=True, text=True, check=False)
    assert_one_line_error(proc.returncode, proc.stderr, *fragments)
    assert not out.exists()


def test_seed_and_device_checks():
    assert check_seed(0) == 0 and check_seed(SEED_MAX) == SEED_MAX
    for bad in (-1, SEED_MAX + 1, 1.5, True, "3"):
        with pytest.raises(ConfigError, match="expected an integer in 0..4294967295"):
            check_seed(bad)
    assert str(check_device("cpu")) == "cpu" and str(check_device("CPU ")) == "cpu"
    for bad in ("tpu", "cuda:x", "gpu", ""):
        with pytest.raises(ConfigError, match="expected cpu, cuda, cuda:N or auto"):
            check_device(bad)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device 'cuda:1' asked for, but no CUDA device is visible"):
            check_device("cuda:1")
    with pytest.raises(ConfigError, match="train.seed -1"):
        load_config(None, {"train.seed": -1})


@pytest.mark.parametrize("options, message", [
    ({"n_residual": -1}, "cryoetgan n_residual must be an integer >= 0, got -1"),
    ({"base": 0}, "cryoetgan base must be an integer >= 1, got 0"),
    ({"base": 2.5}, "cryoetgan base must be an integer >= 1, got 2.5"),
])
def test_generator_sizes_are_checked(options, message):
    with pytest.raises(ConfigError, match=message):
        CryoETGANGenerator(**options)

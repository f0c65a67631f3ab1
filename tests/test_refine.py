"""Whole tomograms refined by a tiny run's generator, tile by tile (forge refine-tomogram)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_generate_uncertainty import TINY_RUN  # the same tiny run (its dropout is off in eval mode)

from cryoet_forge.cli import main as forge
from cryoet_forge.config import load_config
from cryoet_forge.io.mrc import read_mrc, write_mrc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from cryoet_forge.train import train

    folder = tmp_path_factory.mktemp("run") / "tiny"
    train(load_config(None, TINY_RUN), folder)
    return folder


def test_refined_tomogram_keeps_shape_and_seed(run_dir):
    from cryoet_forge.refine import refine_tomogram

    volume = np.random.default_rng(0).standard_normal((24, 40, 36)).astype(np.float32)
    first = refine_tomogram(run_dir, volume, seed=3, tile=32, overlap=8)
    assert first.shape == volume.shape and first.dtype == np.float32 and np.isfinite(first).all()
    np.testing.assert_array_equal(first, refine_tomogram(run_dir, volume, seed=3, tile=32, overlap=8))
    assert not np.allclose(first, volume)


def test_one_tile_is_the_generator_and_blended_tiles_show_no_seams(run_dir):
    """A tomogram that fits one tile is one pass of the generator with the tomogram's noise. Over
    many tiles, the step between neighbouring x planes of a noise input's output is as large at
    the tile faces as anywhere inside (within 1.6x the median step) with blending, while tiles
    that merely abut show their faces (above 2x)."""
    from cryoet_forge.contracts import noise_shape, run_generator, takes_noise
    from cryoet_forge.generate import load_generator
    from cryoet_forge.refine import refine_volume

    model, _ = load_generator(run_dir)
    volume = np.random.default_rng(1).standard_normal((32, 32, 32)).astype(np.float32)
    whole = refine_volume(model, volume, seed=0, tile=32, overlap=0)
    assert takes_noise(model)  # the built-in generator: one noise volume serves every tile
    with torch.no_grad():
        noise = torch.randn(noise_shape(model, (1, 1, 32, 32, 32)), generator=torch.Generator().manual_seed(0))
        direct = run_generator(model, torch.from_numpy(volume)[None, None], noise)[0, 0].numpy()
    np.testing.assert_allclose(whole, direct, rtol=1e-5, atol=1e-5)

    volume = np.random.default_rng(2).standard_normal((40, 48, 80)).astype(np.float32)

    def worst_inner_step(out: np.ndarray) -> float:
        step = np.abs(np.diff(out, axis=2)).mean(axis=(0, 1))[2:-2]  # the volume's own faces apart
        return float(step.max() / np.median(step))

    assert worst_inner_step(refine_volume(model, volume, seed=0, tile=32, overlap=8)) < 1.6
    assert worst_inner_step(refine_volume(model, volume, seed=0, tile=32, overlap=0)) > 2.0


def test_refine_command_writes_each_tomogram_and_refuses_overwrites(run_dir, tmp_path, capsys):
    inputs = []
    for i in range(2):
        path = tmp_path / f"TS_0{i + 1}.mrc"
        write_mrc(path, np.random.default_rng(i).standard_normal((20, 24, 28)).astype(np.float32), 10.0)
        inputs += ["--tomogram", str(path)]
    out = tmp_path / "refined"
    args = ["refine-tomogram", "--run", str(run_dir), *inputs, "--out", str(out), "--tile", "16", "--overlap", "4"]
    assert forge(args) == 0
    for name in ("TS_01.mrc", "TS_02.mrc"):
        refined, voxel = read_mrc(out / name)
        assert refined.shape == (20, 24, 28) and voxel == pytest.approx(10.0)
    capsys.readouterr()
    assert forge(args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds refined tomograms (TS_01.mrc, TS_02.mrc)" in err[0]
    assert forge([*args, "--overwrite"]) == 0
    write_mrc(tmp_path / "other.mrc", np.zeros((8, 8, 8), np.float32), 12.0)
    capsys.readouterr()
    assert forge(["refine-tomogram", "--run", str(run_dir), "--tomogram", str(tmp_path / "other.mrc"),
                  "--out", str(tmp_path / "o2")]) != 0
    assert "trained at 10 A" in capsys.readouterr().err

"""``tomogram-crops``: a GAN domain from random crops of unlabelled tomograms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoet_forge import registry
from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.io.mrc import write_mrc


@pytest.fixture
def tomograms(tmp_path):
    rng = np.random.default_rng(0)
    write_mrc(tmp_path / "TS_01.mrc", rng.standard_normal((20, 40, 30)).astype(np.float32) + 3.0, 10.0)
    write_mrc(tmp_path / "TS_02.mrc", rng.standard_normal((24, 24, 24)).astype(np.float32), 10.0)
    return tmp_path


def test_crops_are_seeded_normalised_and_where_they_say(tomograms):
    data = registry.create("dataset", "tomogram-crops", root=str(tomograms), box=16, length=50, seed=3)
    assert len(data) == 50 and data.voxel_size == pytest.approx(10.0) and data.class_names == ["unlabelled"]
    item = data[7]
    assert item["volume"].shape == (1, 16, 16, 16) and item["volume"].dtype == torch.float32
    assert float(item["volume"].mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(item["volume"].std()) == pytest.approx(1.0, abs=1e-3)
    again = registry.create("dataset", "tomogram-crops", root=str(tomograms), box=16, length=50, seed=3)
    assert torch.equal(again[7]["volume"], item["volume"])
    other = registry.create("dataset", "tomogram-crops", root=str(tomograms), box=16, length=50, seed=4)
    assert not torch.equal(other[7]["volume"], item["volume"])
    # the crop is the tomogram's voxels at the recorded start
    raw = registry.create("dataset", "tomogram-crops", root=str(tomograms), box=16, length=50, seed=3,
                          normalize="none")
    where = raw.parameters(7)
    from cryoet_forge.io.mrc import read_mrc

    volume, _ = read_mrc(where["tomogram"])
    z, y, x = where["start_zyx"]
    np.testing.assert_array_equal(raw[7]["volume"][0].numpy(), volume[z:z + 16, y:y + 16, x:x + 16])
    # both tomograms are used, in proportion to their volumes (24000 and 13824 voxels)
    used = [raw.crop_start(i)[0] for i in range(50)]
    assert 0 in used and 1 in used


def test_z_margin_keeps_crops_off_the_faces(tomograms):
    data = registry.create("dataset", "tomogram-crops", root=str(tomograms / "TS_01.mrc"), box=8, length=40,
                           z_margin=5)
    starts = [data.crop_start(i)[1][0] for i in range(40)]
    assert min(starts) >= 5 and max(starts) + 8 <= 20 - 5


def test_bad_crop_settings_are_one_line(tomograms):
    with pytest.raises(InputError, match=r"holds no 32\^3 crop"):
        registry.create("dataset", "tomogram-crops", root=str(tomograms), box=32)
    with pytest.raises(InputError, match="no tomograms"):
        registry.create("dataset", "tomogram-crops", root=str(tomograms / "empty"), box=8) if (
            (tomograms / "empty").mkdir() or True) else None
    with pytest.raises(ConfigError, match="box >= 2, length >= 1"):
        registry.create("dataset", "tomogram-crops", root=str(tomograms), box=8, length=0)
    write_mrc(tomograms / "TS_03.mrc", np.zeros((24, 24, 24), np.float32), 12.0)
    with pytest.raises(InputError, match="different voxel sizes"):
        registry.create("dataset", "tomogram-crops", root=str(tomograms), box=8)


def test_a_gan_trains_with_domain_s_from_unlabelled_tomograms(tomograms, tmp_path):
    """forge train's domain S from crops of tomograms, domain D simulated: no pick anywhere."""
    from cryoet_forge.config import load_config
    from cryoet_forge.train import train

    cfg = load_config(None, {
        "model.generator_options": {"base": 4, "n_residual": 1}, "model.critic_options": {"base": 4},
        "data.density.options": {"simulator": "fourier", "box": 16, "length": 8, "seed": 1, "voxel_size": 10.0},
        "data.subtomograms.dataset": "tomogram-crops",
        "data.subtomograms.options": {"root": str(tomograms / "TS_02.mrc"), "box": 16, "length": 8},
        "data.polarity": "off",
        "train.steps": 2, "train.batch_size": 2, "train.n_critic": 1, "train.device": "cpu",
        "log.every": 1, "log.image_every": 2, "log.checkpoint_every": 2, "log.progress": False,
    })
    train(cfg, tmp_path / "run")
    assert (tmp_path / "run/checkpoints/step-00000002").is_dir()


def test_crops_of_a_copick_projects_runs_are_the_crops_of_its_tomograms(tmp_path):
    """A copick project as ``root``: every run's tomogram, in run order, gives the same crops as the
    MRC files the project was written beside."""
    pytest.importorskip("copick")
    from cryoet_forge.cli import main

    out = tmp_path / "sim"
    assert main(["simulate-tomogram", "--structures", "globule,two-lobe", "--size", "32,40,40", "--voxel-size", "20",
                 "--n-per-class", "2", "--tilt-step", "15", "--n-tomograms", "2", "--copick", "--quiet",
                 "--out", str(out)]) == 0
    config = out / "copick" / "copick.json"
    options = {"box": 16, "length": 6, "seed": 3}
    from_copick = registry.create("dataset", "tomogram-crops", root=str(config), **options)
    from_files = registry.create("dataset", "tomogram-crops", root=str(out / "tomograms"), **options)
    assert [t.name for t in from_copick.tomograms] == ["TS_01", "TS_02"]
    for i in range(len(from_copick)):
        assert from_copick.crop_start(i) == from_files.crop_start(i)
        torch.testing.assert_close(from_copick[i]["volume"], from_files[i]["volume"], atol=1e-3, rtol=0)
    only = registry.create("dataset", "tomogram-crops", root=str(config), runs=["TS_02"], **options)
    assert [t.name for t in only.tomograms] == ["TS_02"]
    with pytest.raises(InputError, match=r"no run 'TS_09'; the project has TS_01, TS_02"):
        registry.create("dataset", "tomogram-crops", root=str(config), runs=["TS_09"], **options)
    with pytest.raises(ConfigError, match="voxel_spacing and runs choose the tomograms of a copick project"):
        registry.create("dataset", "tomogram-crops", root=str(out / "tomograms"), runs=["TS_01"], **options)

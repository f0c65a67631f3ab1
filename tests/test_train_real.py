"""forge train --real PARTICLES --maps DIR | --structures: a user's particles into training in one command."""

from __future__ import annotations

import numpy as np
import pytest

from cryoet_forge.cli import main as forge
from cryoet_forge.config import load_config
from cryoet_forge.errors import ConfigError
from cryoet_forge.io.mrc import write_mrc
from cryoet_forge.simulate.phantoms import make_phantom
from cryoet_forge.train.data_options import real_data_overrides


@pytest.fixture(scope="module")
def particles(tmp_path_factory):
    """A labelled particle set as forge extract writes it (STAR + MRC), 16^3 at 12 A, protein dark,
    and a folder of the two classes' clean maps."""
    import torch

    from cryoet_forge.classify import LabelledVolumes
    from cryoet_forge.evaluate.datasets import write_labelled_folder
    from cryoet_forge.registry import create

    root = tmp_path_factory.mktemp("own")
    maps = root / "maps"
    maps.mkdir()
    templates = np.stack([make_phantom(c, 16, 12.0, 0) for c in ("ring", "barrel")]).astype(np.float32)
    for name, volume in zip(("ring", "barrel"), templates):
        write_mrc(maps / f"{name}.mrc", volume, 12.0)
    volumes, _ = create("simulator", "fourier", snr=1.0).simulate(
        torch.as_tensor(templates).repeat_interleave(6, 0), 12.0, torch.Generator().manual_seed(0))
    data = LabelledVolumes(volumes.numpy(), np.repeat([0, 1], 6), ["ring", "barrel"], 12.0, "own")
    star = write_labelled_folder(root / "extracted", data)
    return star, maps


def test_real_and_maps_become_both_domains_with_one_normalisation(particles):
    star, maps = particles
    overrides = real_data_overrides(star, maps, ())
    cfg = load_config(None, overrides)
    assert cfg.data.subtomograms.dataset == "volume-folder"
    assert cfg.data.subtomograms.options == {"root": str(star), "normalize": "minmax"}
    density = cfg.data.density.options
    assert cfg.data.density.dataset == "simulated" and density["classes"] == str(maps)
    assert (density["box"], density["voxel_size"], density["normalize"]) == (16, 12.0, "minmax")
    assert density["simulator"] == "fourier"  # refinement, the measured default
    assert real_data_overrides(star, None, ("ring", "barrel"), "density")["data.density.options"]["simulator"] == \
        "posed-map"
    assert real_data_overrides(None, None, ()) == {}
    with pytest.raises(ConfigError, match="needs the clean maps of its classes: --maps DIR or --structures"):
        real_data_overrides(star, None, ())
    with pytest.raises(ConfigError, match="give --real too"):
        real_data_overrides(None, maps, ())


def test_forge_train_real_maps_trains_a_run_on_the_users_particles(particles, tmp_path, capsys):
    star, maps = particles
    run = tmp_path / "run"
    code = forge(["-q", "train", "--real", str(star), "--maps", str(maps), "--out", str(run), "--steps", "1",
                  "--set", "train.batch_size=2", "--set", "train.n_critic=1",
                  "--set", "model.generator_options={base=4, n_residual=1}", "--set", "model.critic_options={base=4}"])
    assert code == 0, capsys.readouterr().err
    saved = load_config(run / "config.toml", {})
    assert saved.data.subtomograms.options["root"] == str(star)
    assert saved.data.density.options["classes"] == str(maps) and saved.data.density.options["box"] == 16
    assert (run / "checkpoints" / "step-00000001").is_dir()
    assert forge(["train", "--real", str(star), "--out", str(tmp_path / "r2")]) == 2
    assert "--real PARTICLES needs the clean maps" in capsys.readouterr().err


def test_forge_list_dataset_options_come_from_the_factories(capsys):
    import inspect

    from cryoet_forge.data.copick import CopickDataset
    from cryoet_forge.data.simulated import SimulatedDataset

    assert forge(["list", "dataset", "--options"]) == 0
    out = capsys.readouterr().out
    sections: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        if not line.startswith("   "):  # a component's line; its options are indented further
            name = line.split()[0]
        sections[name] = sections.get(name, "") + line + "\n"
    assert "root required" in sections["volume-folder"] and "normalize = 'zscore'" in sections["volume-folder"]
    for cls, name in ((SimulatedDataset, "simulated"), (CopickDataset, "copick")):
        for p in inspect.signature(cls).parameters.values():
            shown = "required" if p.default is p.empty else f"= {p.default!r}"
            assert f"{p.name} {shown}" in sections[name], (name, p.name)
    assert forge(["list", "dataset"]) == 0 and "root required" not in capsys.readouterr().out

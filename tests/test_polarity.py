"""The contrast convention: simulators write protein dark, forge extract keeps a tomogram's
contrast, and the polarity check of forge train / forge evaluate stops (or inverts) protein-bright
subtomograms."""

from __future__ import annotations

import subprocess
import sys

import mrcfile
import numpy as np
import pandas as pd
import pytest
import torch

from cryoet_forge.classify import ClassifierOptions, LabelledVolumes, evaluate_cb3d, train_cb3d
from cryoet_forge.data.polarity import apply_polarity, measure_polarity
from cryoet_forge.errors import InputError
from cryoet_forge.registry import create
from cryoet_forge.simulate.phantoms import make_phantom

BOX, VOXEL = 24, 10.0
CLASSES = ("barrel", "ring")


def _maps() -> torch.Tensor:
    return torch.as_tensor(np.stack([make_phantom(c, BOX, VOXEL, 0) for c in CLASSES]).astype(np.float32))


def _simulate(simulator: str, n_per_class: int, seed: int, **options) -> tuple[np.ndarray, np.ndarray]:
    maps = _maps().repeat_interleave(n_per_class, 0)
    out, _ = create("simulator", simulator, **options).simulate(maps, VOXEL, torch.Generator().manual_seed(seed))
    return out.numpy(), np.repeat(np.arange(len(CLASSES)), n_per_class)


@pytest.mark.parametrize("simulator, options", [("fourier", {"snr": 0.1}), ("tilt-series", {"dose": 60.0})])
def test_every_simulator_writes_protein_dark_and_maps_are_bright(simulator, options):
    volumes, _ = _simulate(simulator, 20, 0, **options)
    measured = measure_polarity(volumes)
    assert measured.contrast == "dark" and measured.t < -3 and measured.n == 40
    posed, _ = _simulate("posed-map", 20, 0)
    assert measure_polarity(posed).contrast == "bright"
    assert measure_polarity(-volumes).contrast == "bright"


def test_noise_is_undetermined_and_nothing_is_stopped():
    noise = np.random.default_rng(0).normal(size=(60, BOX, BOX, BOX)).astype(np.float32)
    measured = measure_polarity(noise)
    assert measured.contrast == "undetermined" and measured.p >= 1e-3
    volumes, polarity, line = apply_polarity(noise, "check", "noise.star", "data.polarity")
    assert volumes is noise and polarity == measured and "undetermined" in line


def test_check_stops_on_protein_bright_auto_inverts_off_skips():
    bright, _ = _simulate("posed-map", 10, 1)
    with pytest.raises(InputError) as error:
        apply_polarity(bright, "check", "picks.star", "data.polarity")
    text = str(error.value)
    assert "\n" not in text and text.startswith("picks.star: the subtomograms show protein bright")
    assert "without --invert" in text and 'data.polarity = "auto"' in text
    inverted, polarity, line = apply_polarity(bright, "auto", "picks.star", "data.polarity")
    np.testing.assert_array_equal(inverted, -bright)
    assert polarity is not None and polarity.contrast == "bright" and "inverted to protein dark" in line
    same, none, line = apply_polarity(bright, "off", "picks.star", "data.polarity")
    assert same is bright and none is None and "not checked" in line


def _dark_tomogram(folder, rng):
    """A tomogram made with the documented convention (protein dark): particles simulated by the
    ``fourier`` simulator (other seeds than the training set's) on a grid, in noise."""
    per_row = 6
    particles, labels = _simulate("fourier", per_row * per_row // 2, 11, snr=2.0)
    order = rng.permutation(len(labels))
    shape = (BOX + 8, per_row * BOX, per_row * BOX)
    tomo = rng.normal(scale=0.2 * particles.std(), size=shape)
    rows = []
    for k, n in enumerate(order):
        z0, y0, x0 = 4, (k // per_row) * BOX, (k % per_row) * BOX
        tomo[z0:z0 + BOX, y0:y0 + BOX, x0:x0 + BOX] += particles[n]
        rows.append({"tomogram": "TS_01", "x": x0 + BOX // 2, "y": y0 + BOX // 2, "z": z0 + BOX // 2,
                     "class": CLASSES[labels[n]]})
    with mrcfile.new(folder / "TS_01.mrc") as mrc:
        mrc.set_data(tomo.astype(np.float32))
        mrc.voxel_size = VOXEL
    pd.DataFrame(rows).to_csv(folder / "picks.csv", index=False)


def _extract(folder, out, *extra):
    result = subprocess.run([sys.executable, "-m", "cryoet_forge.cli", "extract", "--picks", str(folder / "picks.csv"),
                             "--unit", "px", "--tomograms", str(folder / "TS_01.mrc"), "--box", str(BOX), "-q",
                             "--out", str(out), *extra], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    from cryoet_forge.classify import load_labelled

    return load_labelled(out / "particles.star")


def test_a_classifier_trained_on_simulations_reads_extracted_particles_of_the_convention(tmp_path):
    _dark_tomogram(tmp_path, np.random.default_rng(3))
    extracted = _extract(tmp_path, tmp_path / "kept")
    assert measure_polarity(extracted.volumes).contrast == "dark"  # forge extract keeps the contrast
    inverted = _extract(tmp_path, tmp_path / "inverted", "--invert")
    assert measure_polarity(inverted.volumes).contrast == "bright"
    with pytest.raises(InputError, match="protein bright"):
        apply_polarity(inverted.volumes, "check", "inverted", "data.polarity")

    volumes, labels = _simulate("fourier", 40, 5, snr=2.0)
    train = LabelledVolumes(volumes, labels, list(CLASSES), VOXEL, "simulated")
    options = ClassifierOptions(channels=[8, 16, 16, 16], fc_width=32, dropout=0.0, epochs=12)
    model, _ = train_cb3d(train, options, seed=0)
    kept, flipped = (evaluate_cb3d(model, s.relabelled(list(CLASSES)), list(CLASSES), options.normalize).accuracy
                     for s in (extracted, inverted))
    assert kept >= 0.8, kept  # chance 0.5
    assert flipped < kept - 0.2, (flipped, kept)  # the trap the convention removes: inverted boxes read badly


def test_forge_train_stops_on_protein_bright_domain_s_and_auto_inverts_it(tmp_path):
    from cryoet_forge.data.simulated import SimulatedDataset
    from cryoet_forge.train.loop import InvertedVolumes, check_polarity

    bright = "{simulator='posed-map', box=32, seed=2}"
    result = subprocess.run([sys.executable, "-m", "cryoet_forge.cli", "train", "--out", str(tmp_path / "run"),
                             "--steps", "1", "--set", f"data.subtomograms.options={bright}"],
                            capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "(domain S): the subtomograms show protein bright" in lines[0] and "data.polarity" in lines[0]
    assert not (tmp_path / "run").exists()
    dataset = SimulatedDataset(simulator="posed-map", box=24, seed=2, length=32)
    logged = []
    wrapped = check_polarity(dataset, "auto", log=logged.append)
    assert isinstance(wrapped, InvertedVolumes) and len(wrapped) == 32 and wrapped.box == dataset.box
    np.testing.assert_array_equal(wrapped[3]["volume"], -dataset[3]["volume"])
    assert wrapped[3]["label"] == dataset[3]["label"] and "inverted to protein dark" in logged[0]
    dark = SimulatedDataset(simulator="fourier", box=24, seed=2, length=32)
    assert check_polarity(dark, "check") is dark and check_polarity(dataset, "off") is dataset


def test_forge_evaluate_checks_the_real_training_split_and_inverts_both_splits_on_auto():
    from cryoet_forge.errors import ConfigError
    from cryoet_forge.evaluate.config import config_from_dict, quickstart_table
    from cryoet_forge.evaluate.datasets import _apply_polarity

    volumes, labels = _simulate("posed-map", 12, 4)
    train = LabelledVolumes(volumes, labels, list(CLASSES), VOXEL, "real_train.star")
    test = LabelledVolumes(volumes[::2] * 0.5, labels[::2], list(CLASSES), VOXEL, "real_test.star")
    with pytest.raises(InputError, match=r"^real_train.star \(data.real_train\): the subtomograms show protein "
                                         r"bright .*data.polarity = \"auto\""):
        _apply_polarity(train, test, "check", print)
    lines: list[str] = []
    new_train, new_test, inverted = _apply_polarity(train, test, "auto", lines.append)
    assert inverted and "inverted to protein dark (data.polarity = auto)" in lines[0]
    np.testing.assert_array_equal(new_train.volumes, -train.volumes)
    np.testing.assert_array_equal(new_test.volumes, -test.volumes)
    np.testing.assert_array_equal(new_test.labels, test.labels)
    assert _apply_polarity(train, test, "off", lines.append)[2] is False
    with pytest.raises(ConfigError, match="data.polarity 'sometimes'; choose from: check, auto, off"):
        config_from_dict(quickstart_table(), {"data.polarity": "sometimes"})

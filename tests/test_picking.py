"""The segmentation picker's parts: sphere targets, class peaks, the U-Net, training and picking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.models.cb3d import lowpass_sigma_voxels
from cryoet_forge.picking.peaks import class_peaks
from cryoet_forge.picking.score import score_picks
from cryoet_forge.picking.segmentation import PickerOptions, SegmentationPicker, prepare_volume, zscore
from cryoet_forge.picking.tomograms import LabelledTomogram, sphere_labels
from cryoet_forge.picking.unet import SegmentationUNet


def blob(shape, centre_xyz, sigma):
    z, y, x = np.indices(shape)
    cx, cy, cz = centre_xyz
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma ** 2))


def test_sphere_labels_mark_the_class_around_each_centre():
    picks = {"b": np.array([[10.0, 5.0, 3.0]]), "a": np.array([[2.0, 2.0, 2.0], [30.0, 1.0, 1.0]])}
    labels = sphere_labels((8, 12, 32), picks, {"a": 4.0, "b": 6.0}, ["a", "b"], fraction=0.5)
    assert labels.dtype == np.uint8 and labels.shape == (8, 12, 32)
    assert labels[3, 5, 10] == 2 and labels[2, 2, 2] == 1 and labels[1, 1, 30] == 1
    # radius 0.5 x 6 = 3 voxels for b: (x + 3) is in, (x + 4) is not
    assert labels[3, 5, 13] == 2 and labels[3, 5, 14] == 0
    assert labels[2, 2, 4] == 1 and labels[2, 2, 5] == 0  # 0.5 x 4 = 2 for a
    assert labels[7, 11, 20] == 0
    with pytest.raises(InputError, match="class 'c', not among the classes a, b"):
        sphere_labels((8, 8, 8), {"c": np.zeros((1, 3))}, {"c": 1.0}, ["a", "b"])
    with pytest.raises(ConfigError, match="fraction must be in"):
        sphere_labels((8, 8, 8), {}, {}, ["a"], fraction=0.0)


def test_class_peaks_are_separated_thresholded_and_in_xyz():
    shape = (16, 20, 24)
    a = 0.9 * blob(shape, (5, 6, 7), 0.8) + 0.7 * blob(shape, (18, 14, 8), 0.8) + 0.85 * blob(shape, (8, 6, 7), 0.8)
    b = 0.8 * blob(shape, (12, 3, 12), 0.8) + 0.3 * blob(shape, (20, 17, 3), 0.8)  # the second is too weak
    background = np.clip(1.0 - a - b, 0.0, None)
    p = np.stack([background, a, b]).astype(np.float32)
    found = class_peaks(p, ["a", "b"], min_distance=[3.0, 3.0], threshold=0.5)
    points, scores = found["a"]
    # the peak at x = 8 lies within 3 voxels of the stronger one at x = 5: suppressed
    np.testing.assert_allclose(points, [[5, 6, 7], [18, 14, 8]])
    assert scores[0] > scores[1]
    np.testing.assert_allclose(found["b"][0], [[12, 3, 12]])
    # with a smaller distance both close peaks of a stay
    assert len(class_peaks(p, ["a", "b"], min_distance=1.0, threshold=0.5)["a"][0]) == 3
    with pytest.raises(InputError, match=r"must be shaped \(1 \+ 3, Z, Y, X\)"):
        class_peaks(p, ["a", "b", "c"], 1.0)
    with pytest.raises(ConfigError, match="threshold must be in"):
        class_peaks(p, ["a", "b"], 1.0, threshold=2.0)


def test_unet_shapes_and_size_check():
    net = SegmentationUNet(3, channels=(4, 8, 8))
    assert net(torch.zeros(2, 1, 16, 16, 16)).shape == (2, 3, 16, 16, 16)
    with pytest.raises(InputError, match="S a multiple of 4"):
        net(torch.zeros(1, 1, 18, 18, 18))
    with pytest.raises(ConfigError, match=">= 2 outputs"):
        SegmentationUNet(1)


def test_picker_options_are_checked():
    with pytest.raises(ConfigError, match="picker patch must be a positive multiple of 4"):
        PickerOptions(patch=30)
    with pytest.raises(ConfigError, match="picker threshold must be in"):
        PickerOptions(threshold=1.5)
    with pytest.raises(InputError, match="not trained"):
        SegmentationPicker().pick(np.zeros((8, 8, 8)), 10.0)
    for bad in (-1.0, True, "60"):
        with pytest.raises(ConfigError, match=r"picker lowpass_A must be a number >= 0 \(Angstrom; 0 = none\), got"):
            PickerOptions(lowpass_A=bad)


def test_the_low_pass_is_the_classifier_s_gaussian_before_z_scoring():
    from scipy import ndimage

    volume = np.random.default_rng(0).standard_normal((12, 14, 16)).astype(np.float32) * 3 + 2
    np.testing.assert_array_equal(prepare_volume(volume, 0.0, None), zscore(volume))
    sigma = lowpass_sigma_voxels(60.0, 10.0)
    assert sigma == pytest.approx(1.124, abs=1e-3)  # the transfer is 1/2 at 1/60 A^-1
    expected = zscore(ndimage.gaussian_filter(volume, sigma, mode="mirror"))
    np.testing.assert_allclose(prepare_volume(volume, 60.0, 10.0), expected, rtol=1e-6, atol=1e-6)
    smoothed = prepare_volume(volume, 60.0, 10.0)
    assert smoothed.mean() == pytest.approx(0.0, abs=1e-5) and smoothed.std() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(InputError, match="picker lowpass_A 60 A needs the tomogram's voxel size, got None"):
        prepare_volume(volume, 60.0, None)


def toy_tomogram(seed: int, n: int = 6, shape=(32, 48, 48), noise: float = 0.3) -> LabelledTomogram:
    """Bright balls of two sizes (radius 40 A and 20 A at 10 A voxels) in Gaussian noise."""
    rng = np.random.default_rng(seed)
    volume = np.zeros(shape, np.float32)
    radii = {"big": 40.0, "small": 20.0}
    picks: dict[str, list] = {"big": [], "small": []}
    z, y, x = np.indices(shape)
    placed: list[np.ndarray] = []
    while len(placed) < 2 * n:
        name = "big" if len(picks["big"]) < n else "small"
        p = rng.uniform(6, np.array(shape[::-1]) - 6)
        if any(np.linalg.norm(p - q) < 12 for q in placed):
            continue
        placed.append(p)
        picks[name].append(p)
        volume += (np.sqrt((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) <= radii[name] / 10).astype(np.float32)
    volume += noise * rng.standard_normal(shape).astype(np.float32)
    return LabelledTomogram(f"toy{seed}", volume, 10.0, {k: np.array(v) for k, v in picks.items()}, radii)


def test_the_picker_learns_to_find_balls_in_another_tomogram():
    train, test = toy_tomogram(0), toy_tomogram(1)
    options = PickerOptions(channels=[8, 16], patch=24, steps=60, batch_size=4, tile=32, overlap=8, lr=3e-3)
    picker = SegmentationPicker(options).fit([train], seed=0)
    assert picker.class_names == ["big", "small"]
    assert np.mean(picker.history["loss"][-10:]) < np.mean(picker.history["loss"][:10])
    found = picker.pick(test.volume, test.voxel_size)
    assert set(found) == {"big", "small"} and all(p.shape[1] == 3 for p in found.values())
    result = score_picks(test.picks, found, test.radii_A)
    assert result["classes"]["big"]["recall"] >= 0.8, result


def test_a_low_pass_carries_a_picker_from_quiet_to_noisy_tomograms():
    # trained where fine noise is weak (0.3), applied where it is five times stronger: z-scored as a
    # whole, the balls are then much fainter than in training. A low-pass to 60 A (balls 40 A and
    # 20 A in radius) removes most of that noise and keeps the balls, so the big ones are found.
    train, test = toy_tomogram(0), toy_tomogram(1, noise=1.5)
    found = {}
    for lowpass in (0.0, 60.0):
        options = PickerOptions(channels=[8, 16], patch=24, steps=60, batch_size=4, tile=32, overlap=8, lr=3e-3,
                                lowpass_A=lowpass)
        picker = SegmentationPicker(options).fit([train], seed=0)
        found[lowpass] = score_picks(test.picks, picker.pick(test.volume, test.voxel_size), test.radii_A)
    assert found[60.0]["classes"]["big"]["recall"] >= 0.8, found[60.0]
    assert found[0.0]["classes"]["big"]["recall"] <= 0.5, found[0.0]


def test_the_same_seed_trains_the_same_picker():
    train = toy_tomogram(0)
    options = PickerOptions(channels=[4, 8], patch=16, steps=3, batch_size=2, tile=16, overlap=4)
    first = SegmentationPicker(options).fit([train], seed=5)
    second = SegmentationPicker(options).fit([train], seed=5)
    assert first.history["loss"] == second.history["loss"]
    other = SegmentationPicker(options).fit([train], seed=6)
    assert other.history["loss"] != first.history["loss"]
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)

"""The ``tilt-series`` simulator: geometry, wedge, dose, crowding, ice, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoet_forge import registry
from cryoet_forge.errors import ConfigError
from cryoet_forge.simulate import ctf as ctf_model
from cryoet_forge.simulate.phantoms import PHANTOM_CLASSES, make_phantom
from cryoet_forge.simulate.poses import PoseSimulator
from cryoet_forge.simulate.tilt_series import dose_symmetric_order, tilt_angles

BOX = 24


@pytest.fixture(scope="module")
def maps():
    return torch.from_numpy(np.stack([make_phantom(n, BOX, 10.0) for n in PHANTOM_CLASSES]))


def tilt_series(**options):
    return registry.create("simulator", "tilt-series", **options)


def run(sim, maps, seed=0):
    return sim.simulate(maps, 10.0, torch.Generator().manual_seed(seed))


def wedge_filtered(volumes, tilt_range=(-60, 60)):
    mask = ctf_model.missing_wedge_mask(volumes.shape[-1], *tilt_range).to(torch.float32)
    return torch.fft.irfftn(torch.fft.rfftn(volumes, dim=(-3, -2, -1)) * mask, s=volumes.shape[-3:], dim=(-3, -2, -1))


def correlation(a, b):
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def test_tilt_scheme_defaults():
    angles = tilt_angles((-60, 60), 3)
    assert len(angles) == 41 and angles[0] == -60 and angles[-1] == 60
    rank = dose_symmetric_order(angles)
    assert rank[20] == 0 and sorted(rank) == list(range(41))
    assert rank[0] >= 39 and rank[-1] >= 39  # the highest tilts are recorded last


def test_reconstruction_geometry_matches_the_recorded_pose(maps):
    """Without CTF, noise, ice and crowding, WBP gives back the posed map through the wedge."""
    sim = tilt_series(ctf=False, shot_noise="none", ice=0.0, crowding=0, mtf=False, bfactor=0.0)
    out, records = run(sim, maps, seed=2)
    posed, pose_records = PoseSimulator(max_shift=2.0).simulate(maps, 10.0, torch.Generator().manual_seed(2))
    assert [r["rlnAngleRot"] for r in records] == [r["rlnAngleRot"] for r in pose_records]
    reference = -wedge_filtered(posed)  # negative contrast: density appears dark
    for i in range(len(maps)):
        assert correlation(out[i], reference[i]) > 0.9, PHANTOM_CLASSES[i]
        # the wrong pose (another particle's) does not fit
        assert correlation(out[i], reference[(i + 1) % len(maps)]) < 0.6


def test_output_has_a_missing_wedge(maps):
    sampled = ctf_model.missing_wedge_mask(BOX, -55, 55)  # margins for interpolation
    missing = ~ctf_model.missing_wedge_mask(BOX, -65, 65)
    # the signal keeps out of the wedge; back-projected noise leaks a little, as in real WBP
    for noise, bound in (("none", 0.03), ("gaussian", 0.1)):
        out, _ = run(tilt_series(ice=0.0, crowding=0, shot_noise=noise), maps)
        power = torch.fft.rfftn(out, dim=(-3, -2, -1)).abs() ** 2
        assert power[:, missing].mean() < bound * power[:, sampled].mean(), noise


def test_shot_noise_scales_with_dose(maps):
    clean, _ = run(tilt_series(shot_noise="none"), maps, seed=4)
    snr = {}
    for dose in (30.0, 300.0):
        noisy, records = run(tilt_series(dose=dose), maps, seed=4)
        assert records[0]["forgeDose"] == dose
        snr[dose] = (clean.var(dim=(1, 2, 3)) / (noisy - clean).var(dim=(1, 2, 3))).mean().item()
    assert 7.0 < snr[300.0] / snr[30.0] < 13.0  # Poisson variance ~ 1 / dose
    assert snr[30.0] < 0.2  # realistically low


def test_poisson_and_gaussian_noise_agree_in_level(maps):
    clean, _ = run(tilt_series(shot_noise="none"), maps, seed=5)
    levels = []
    for mode in ("poisson", "gaussian"):
        noisy, _ = run(tilt_series(shot_noise=mode), maps, seed=5)
        levels.append((noisy - clean).var().item())
    assert levels[0] == pytest.approx(levels[1], rel=0.1)


def test_crowding_puts_neighbours_into_the_box(maps):
    quiet = dict(shot_noise="none", ice=0.0, ctf=False, mtf=False)
    alone, _ = run(tilt_series(crowding=0, **quiet), maps, seed=6)
    crowded, records = run(tilt_series(crowding=3, crowding_distance=(0.6, 0.7), **quiet), maps, seed=6)
    shell = torch.ones(BOX, BOX, BOX, dtype=torch.bool)
    shell[3:-3, 3:-3, 3:-3] = False
    extra = (crowded - alone)[:, shell].abs().mean() / alone[:, ~shell].abs().mean()
    assert extra > 0.05
    assert records[0]["forgeNeighbours"] == 3 and records[0]["forgeNeighbourOffsetsAngst"].count(";") == 2


def test_ice_adds_low_frequency_background(maps):
    quiet = dict(shot_noise="none", crowding=0)
    plain, _ = run(tilt_series(ice=0.0, **quiet), maps, seed=7)
    icy, records = run(tilt_series(ice=0.3, **quiet), maps, seed=7)
    diff = torch.fft.rfftn(icy - plain, dim=(-3, -2, -1)).abs() ** 2
    s2 = ctf_model.rfft_s2(BOX, 10.0)
    low, high = diff[:, (s2 > 0) & (s2 < (1 / 100) ** 2)].mean(), diff[:, s2 > (1 / 30) ** 2].mean()
    assert low > 20 * high and records[0]["forgeIceStd"] == 0.3


def test_deterministic_and_records_every_random_value(maps):
    a, ra = run(tilt_series(), maps[:2], seed=9)
    b, rb = run(tilt_series(), maps[:2], seed=9)
    torch.testing.assert_close(a, b)
    assert ra == rb
    for key in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "forgeShiftXAngst", "forgeDefocusUm",
                "forgeHeightAngst", "forgeFieldXAngst", "forgeNeighbourOffsetsAngst", "forgeDose"):
        assert key in ra[0]
    c, _ = run(tilt_series(), maps[:2], seed=10)
    assert not torch.allclose(a, c)


def test_bad_options():
    with pytest.raises(ConfigError, match="defocus_um"):
        tilt_series(defocus_um=(1.0, 2.0))
    with pytest.raises(ConfigError, match="shot_noise 'loud'"):
        tilt_series(shot_noise="loud")
    with pytest.raises(ConfigError, match="tilt_range"):
        tilt_series(tilt_range=(-90, 90))
    with pytest.raises(ConfigError, match="amplitude_contrast < 1"):
        tilt_series(amplitude_contrast=1.5)
    with pytest.raises(ConfigError, match="max_shift -1"):
        tilt_series(max_shift=-1)
    with pytest.raises(ConfigError, match="max_shift 'abc'"):
        PoseSimulator(max_shift="abc")


def _band(volumes, low, high, voxel_size=10.0):
    """Volumes band-passed to spatial frequencies low..high (1/A)."""
    size = volumes.shape[-1]
    k = torch.fft.fftfreq(size) / voxel_size
    kx = torch.fft.rfftfreq(size) / voxel_size
    radius = torch.sqrt(k.reshape(-1, 1, 1) ** 2 + k.reshape(1, -1, 1) ** 2 + kx.reshape(1, 1, -1) ** 2)
    mask = ((radius >= low) & (radius <= high)).to(torch.float32)
    return torch.fft.irfftn(torch.fft.rfftn(volumes, dim=(-3, -2, -1)) * mask, s=volumes.shape[-3:], dim=(-3, -2, -1))


def test_phase_flipping_restores_the_contrast_beyond_the_first_ctf_zero(maps):
    """At 4 um underfocus the CTF's first zero is near 1/28 A: beyond it an uncorrected reconstruction
    has the density's contrast reversed, a phase-flipped one keeps it (protein dark at every frequency)."""
    options = dict(shot_noise="none", ice=0.0, crowding=0, mtf=False, bfactor=0.0, defocus_um=-4.0,
                   ice_thickness_A=0.0, field_of_view_A=0.0, amplitude_contrast=0.07)
    first_zero = ctf_model.ctf_first_zero(4e4)
    second_band = (first_zero * 1.08, 0.048)  # between the first zero and the 10 A Nyquist (the second zero is beyond)
    plain, _ = run(tilt_series(**options), maps, seed=3)
    flipped, records = run(tilt_series(phase_flip=True, **options), maps, seed=3)
    posed, _ = PoseSimulator(max_shift=2.0).simulate(maps, 10.0, torch.Generator().manual_seed(3))
    dark = -_band(wedge_filtered(posed), *second_band)
    low = -_band(wedge_filtered(posed), 0.0, first_zero * 0.8)
    for i in range(len(maps)):
        assert correlation(_band(plain[i], *second_band), dark[i]) < -0.3, PHANTOM_CLASSES[i]
        assert correlation(_band(flipped[i], *second_band), dark[i]) > 0.3, PHANTOM_CLASSES[i]
        # below the first zero nothing changes sign
        assert correlation(_band(flipped[i], 0.0, first_zero * 0.8), low[i]) > 0.3
    assert records[0]["forgePhaseFlip"] == 1
    with pytest.raises(ConfigError, match="phase_flip needs ctf"):
        tilt_series(phase_flip=True, ctf=False)

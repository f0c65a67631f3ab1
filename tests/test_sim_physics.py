"""Physics of the ``fourier`` simulator: CTF zeros, missing wedge, SNR and pose sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from cryoet_forge import registry
from cryoet_forge.simulate import ctf as ctf_model
from cryoet_forge.simulate.phantoms import PHANTOM_CLASSES, make_phantom
from cryoet_forge.simulate.poses import PoseSimulator
from cryoet_forge.simulate.rotations import (
    euler_zyz_to_matrices,
    matrices_to_euler_zyz,
    quaternions_to_matrices,
    random_quaternions,
)

LAMBDA_300KV = 0.019687  # Angstrom, tabulated relativistic wavelength at 300 kV


def textbook_first_zero(defocus_A: float, cs_mm=2.7, amplitude=0.07) -> float:
    """First zero of -(sqrt(1-A^2) sin chi + A cos chi), solved with numpy.roots."""
    lam, cs = LAMBDA_300KV, cs_mm * 1e7
    phase = math.pi - math.atan(amplitude / math.sqrt(1 - amplitude**2))
    roots = np.roots([-0.5 * math.pi * cs * lam**3, math.pi * lam * defocus_A, -phase])
    return math.sqrt(min(r.real for r in roots if r.real > 0))


def test_electron_wavelength_matches_table():
    assert ctf_model.electron_wavelength_A(300) == pytest.approx(LAMBDA_300KV, rel=1e-4)
    assert ctf_model.electron_wavelength_A(200) == pytest.approx(0.025079, rel=1e-4)


@pytest.mark.parametrize("defocus_um", [-2.0, -4.0, -6.0])
def test_ctf_first_zero_where_defocus_predicts(defocus_um):
    expected = textbook_first_zero(-defocus_um * 1e4)
    # the 1D profile of the simulator's CTF function: first sign change within 2 %
    s = torch.linspace(1e-4, 2 * expected, 200001, dtype=torch.float64)
    values = ctf_model.ctf(s**2, torch.tensor([-defocus_um * 1e4], dtype=torch.float64))[0]
    assert values[0] < 0  # density is dark at low frequency
    first = s[torch.nonzero(torch.sign(values[1:]) != torch.sign(values[:-1]))[0, 0]].item()
    assert first == pytest.approx(expected, rel=0.02)
    assert ctf_model.ctf_first_zero(-defocus_um * 1e4) == pytest.approx(expected, rel=1e-3)
    # without Cs and amplitude contrast the zero is the textbook 1/sqrt(lambda dz)
    assert ctf_model.ctf_first_zero(-defocus_um * 1e4, cs_mm=0, amplitude_contrast=0) == pytest.approx(
        1 / math.sqrt(LAMBDA_300KV * -defocus_um * 1e4), rel=1e-4)


def test_simulator_3d_transfer_changes_sign_at_the_first_zero():
    sim = registry.create("simulator", "fourier", bfactor=0.0, mtf=False, tilt_range=(-90, 90))
    size, voxel, defocus_A = 96, 3.0, 20000.0
    transfer, _ = sim.filters(size, voxel, torch.tensor([defocus_A]), "cpu")
    s = torch.sqrt(ctf_model.rfft_s2(size, voxel)).expand_as(transfer[0])
    zero = textbook_first_zero(defocus_A)
    before = transfer[0][(s > 0) & (s < 0.98 * zero)]
    after = transfer[0][(s > 1.02 * zero) & (s < 1.15 * zero)]
    assert before.numel() > 100 and after.numel() > 100
    assert (before < 0).all() and (after > 0).all()


def independent_wedge(size: int, tilt_min: float, tilt_max: float) -> np.ndarray:
    """Sampled region on the full FFT grid, by folding onto k_x >= 0 with Friedel symmetry."""
    k = np.fft.fftfreq(size)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    flip = kx < 0
    kx_f, kz_f = np.where(flip, -kx, kx), np.where(flip, -kz, kz)
    angle = np.degrees(np.arctan2(kz_f, kx_f))
    keep = (angle >= tilt_min - 1e-9) & (angle <= tilt_max + 1e-9)
    return keep | ((kx == 0) & (kz == 0))


@pytest.mark.parametrize(("size", "tilts"), [(24, (-60, 60)), (17, (-50, 40))])
def test_missing_wedge_mask_is_exactly_the_unsampled_region(size, tilts):
    mask = ctf_model.missing_wedge_mask(size, *tilts).numpy()
    expected = independent_wedge(size, *tilts)[:, :, : size // 2 + 1]
    np.testing.assert_array_equal(mask, expected)
    if tilts == (-60, 60):
        # symmetric +-60: missing iff |k_z| > tan(60) |k_x|
        k = np.fft.fftfreq(size)
        kz, _, kx = np.meshgrid(k, k, np.fft.rfftfreq(size), indexing="ij")
        np.testing.assert_array_equal(mask, (np.abs(kz) <= np.tan(np.radians(60)) * kx + 1e-12)
                                      | ((kx == 0) & (kz == 0)))


def test_fourier_output_has_no_power_in_the_wedge():
    sim = registry.create("simulator", "fourier", snr=0.5)
    maps = torch.from_numpy(np.stack([make_phantom(n, 24, 10.0) for n in PHANTOM_CLASSES]))
    out, _ = sim.simulate(maps, 10.0, torch.Generator().manual_seed(0))
    power = torch.fft.rfftn(out.double(), dim=(-3, -2, -1)).abs() ** 2
    mask = ctf_model.missing_wedge_mask(24, -60, 60)
    missing = power[:, ~mask]
    kept = power[:, mask]
    assert missing.max() < 1e-9 * kept.mean()
    assert (kept > 1e-6 * kept.mean()).float().mean() > 0.95  # noise fills the sampled region


@pytest.mark.parametrize("snr", [0.5, 0.1, 2.0])
def test_measured_snr_within_ten_percent(snr):
    maps = torch.from_numpy(np.stack([make_phantom(n, 24, 10.0) for n in PHANTOM_CLASSES] * 2))
    clean, _ = registry.create("simulator", "fourier", snr=None).simulate(maps, 10.0, torch.Generator().manual_seed(7))
    noisy, records = registry.create("simulator", "fourier", snr=snr).simulate(maps, 10.0, torch.Generator().manual_seed(7))
    measured = clean.var(dim=(1, 2, 3)) / (noisy - clean).var(dim=(1, 2, 3))
    assert torch.all((measured / snr - 1).abs() < 0.10), measured
    assert all(r["forgeSnr"] == snr for r in records)


def test_snr_range_is_drawn_and_recorded_per_particle():
    maps = torch.from_numpy(np.stack([make_phantom("ring", 16, 10.0)] * 8))
    _, records = registry.create("simulator", "fourier", snr=(0.05, 0.5)).simulate(maps, 10.0, torch.Generator().manual_seed(1))
    values = [r["forgeSnr"] for r in records]
    assert all(0.05 <= v <= 0.5 for v in values) and len(set(values)) == 8
    defocus = [r["forgeDefocusUm"] for r in records]
    assert all(-6.0 <= d <= -2.0 for d in defocus) and len(set(defocus)) == 8
    assert all(r["rlnDefocusU"] == pytest.approx(-1e4 * r["forgeDefocusUm"]) for r in records)


def test_rotations_are_uniform_on_so3():
    q = random_quaternions(20000, torch.Generator().manual_seed(123))
    r = quaternions_to_matrices(q).numpy()
    # the rotated z axis is uniform on the sphere: its z component is uniform on [-1, 1]
    assert stats.kstest(r[:, 2, 2], stats.uniform(loc=-1, scale=2).cdf).pvalue > 0.01
    # its azimuth is uniform
    azimuth = np.arctan2(r[:, 1, 2], r[:, 0, 2])
    assert stats.kstest(azimuth, stats.uniform(loc=-np.pi, scale=2 * np.pi).cdf).pvalue > 0.01
    # the rotation angle has the Haar density (1 - cos t) / pi, cdf (t - sin t) / pi
    theta = np.arccos(np.clip((np.trace(r, axis1=1, axis2=2) - 1) / 2, -1, 1))
    assert stats.kstest(theta, lambda t: (t - np.sin(t)) / np.pi).pvalue > 0.01
    # and the same test rejects the classic mistake of uniform Euler angles
    rng = np.random.default_rng(0)
    naive = euler_zyz_to_matrices(*(torch.from_numpy(rng.uniform(0, 360 if i != 1 else 180, 20000))
                                     for i in range(3))).numpy()
    naive_theta = np.arccos(np.clip((np.trace(naive, axis1=1, axis2=2) - 1) / 2, -1, 1))
    assert stats.kstest(naive_theta, lambda t: (t - np.sin(t)) / np.pi).pvalue < 1e-6


def test_euler_angles_round_trip():
    r = quaternions_to_matrices(random_quaternions(500, torch.Generator().manual_seed(5)))
    angles = matrices_to_euler_zyz(r)
    np.testing.assert_allclose(euler_zyz_to_matrices(*angles.T).numpy(), r.numpy(), atol=1e-9)


def test_recorded_pose_is_the_applied_pose():
    size = 24
    volume = np.zeros((size, size, size), np.float32)
    q = np.array([5.0, 1.0, -2.0])  # (x, y, z) offset of a blob from the centre
    zz, yy, xx = np.meshgrid(*[np.arange(size) - size // 2] * 3, indexing="ij")
    volume += np.exp(-((xx - q[0]) ** 2 + (yy - q[1]) ** 2 + (zz - q[2]) ** 2) / 2.0)
    volume += 0.5 * np.exp(-(xx**2 + yy**2 + zz**2) / 2.0)  # a second blob at the centre
    maps = torch.from_numpy(np.stack([volume] * 6))
    posed, records = PoseSimulator(max_shift=2.0).simulate(maps, 10.0, torch.Generator().manual_seed(3))
    for out, rec in zip(posed.numpy(), records):
        rot = euler_zyz_to_matrices(*(torch.tensor([rec[k]], dtype=torch.float64)
                                      for k in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")))[0].numpy()
        shift = np.array([rec["forgeShiftXAngst"], rec["forgeShiftYAngst"], rec["forgeShiftZAngst"]]) / 10.0
        target = rot @ q + shift
        near = ((xx - target[0]) ** 2 + (yy - target[1]) ** 2 + (zz - target[2]) ** 2) < 9
        weights = out * near
        found = np.array([(weights * xx).sum(), (weights * yy).sum(), (weights * zz).sum()]) / weights.sum()
        np.testing.assert_allclose(found, target, atol=0.3)
        assert out[near].max() > 0.6  # the blob is really there, not just its tail

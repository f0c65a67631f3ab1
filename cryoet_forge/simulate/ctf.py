"""Contrast transfer function, envelopes, detector MTF and missing-wedge masks (torch).

Units: spatial frequency ``s`` in 1/Angstrom, defocus in Angstrom with *underfocus
positive* (RELION's rlnDefocusU convention; the user-facing options take micrometres
with underfocus negative, as in the paper), Cs in millimetres, voltage in kV.

    chi(s) = pi * lambda * dz * s^2 - pi/2 * Cs * lambda^3 * s^4
    CTF(s) = -( sqrt(1 - A^2) * sin(chi) + A * cos(chi) )

so that density (positive potential) appears dark at low frequency, as in cryo-EM images.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch


def electron_wavelength_A(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Angstrom (0.0197 A at 300 kV)."""
    v = voltage_kv * 1e3
    return 12.2642598 / math.sqrt(v * (1.0 + 0.97848e-6 * v))


def phase_aberration(s2: torch.Tensor, defocus_A: torch.Tensor, cs_mm: float, voltage_kv: float) -> torch.Tensor:
    """chi(s) for squared frequencies ``s2`` (..., broadcast against defocus (B, 1, ...))."""
    lam = electron_wavelength_A(voltage_kv)
    cs_A = cs_mm * 1e7
    return math.pi * lam * defocus_A * s2 - 0.5 * math.pi * cs_A * lam**3 * s2 * s2


def ctf(s2: torch.Tensor, defocus_A: torch.Tensor, cs_mm: float = 2.7, voltage_kv: float = 300.0,
        amplitude_contrast: float = 0.07) -> torch.Tensor:
    """CTF at squared frequencies ``s2`` (1/A^2). ``defocus_A`` (B,) gives a (B, *s2.shape) result."""
    dz = torch.as_tensor(defocus_A, dtype=s2.dtype, device=s2.device)
    dz = dz.reshape(dz.shape + (1,) * s2.dim())
    chi = phase_aberration(s2.unsqueeze(0) if dz.dim() > s2.dim() else s2, dz, cs_mm, voltage_kv)
    a = amplitude_contrast
    return -(math.sqrt(1.0 - a * a) * torch.sin(chi) + a * torch.cos(chi))


def ctf_first_zero(defocus_A: float, cs_mm: float = 2.7, voltage_kv: float = 300.0,
                   amplitude_contrast: float = 0.07) -> float:
    """Analytic frequency (1/A) of the CTF's first zero: chi(s) = pi - atan(A / sqrt(1 - A^2))."""
    lam = electron_wavelength_A(voltage_kv)
    cs_A = cs_mm * 1e7
    target = math.pi - math.atan2(amplitude_contrast, math.sqrt(1.0 - amplitude_contrast**2))
    a = 0.5 * math.pi * cs_A * lam**3
    b = math.pi * lam * defocus_A
    if a == 0:
        return math.sqrt(target / b)
    disc = b * b - 4 * a * target
    if disc < 0:
        raise ValueError("the CTF has no zero for these parameters")
    u = (b - math.sqrt(disc)) / (2 * a)  # smaller root of a u^2 - b u + target = 0, u = s^2
    return math.sqrt(u)


def bfactor_envelope(s2: torch.Tensor, bfactor: float) -> torch.Tensor:
    """Gaussian envelope exp(-B s^2 / 4) (B in A^2): temporal/spatial coherence and motion."""
    return torch.exp(-0.25 * bfactor * s2)


def detector_mtf(s_cycles_per_pixel: torch.Tensor) -> torch.Tensor:
    """Detector MTF modelled as the pixel aperture sinc(f) (f in cycles/pixel; 0.64 at Nyquist).

    This is the MTF of an ideal counting detector; real detectors fall somewhat faster.
    """
    return torch.special.sinc(s_cycles_per_pixel)


@lru_cache(maxsize=16)
def _rfft_axes(size: int, device_str: str):
    device = torch.device(device_str)
    kz = torch.fft.fftfreq(size, device=device).reshape(-1, 1, 1)
    ky = torch.fft.fftfreq(size, device=device).reshape(1, -1, 1)
    kx = torch.fft.rfftfreq(size, device=device).reshape(1, 1, -1)
    return kz, ky, kx


def rfft_frequencies(size: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frequencies (cycles/voxel) of an rfftn grid of a (size,)*3 volume, broadcastable (z, y, x)."""
    device = torch.device(device if device is not None else "cpu")
    return _rfft_axes(int(size), str(device))


def rfft_s2(size: int, voxel_size: float, device=None) -> torch.Tensor:
    """Squared spatial frequency (1/A^2) on the rfftn grid of a cubic volume."""
    kz, ky, kx = rfft_frequencies(size, device)
    return (kz**2 + ky**2 + kx**2) / (voxel_size**2)


def missing_wedge_mask(size: int, tilt_min: float = -60.0, tilt_max: float = 60.0,
                       device=None) -> torch.Tensor:
    """Boolean rfftn-grid mask of the Fourier region a tilt series about y samples.

    A projection at tilt alpha samples the central plane containing k_y and the direction
    (k_x, k_z) = (cos alpha, sin alpha). A frequency (k_x >= 0 half-space of the rfft grid,
    its Friedel mate implied) is sampled iff its angle atan2(k_z, k_x) lies within
    [tilt_min, tilt_max]; the k_y axis (k_x = k_z = 0) is always sampled. With +-60 degrees
    this removes a wedge of half-angle 30 degrees around k_z (the beam axis).
    """
    if not (-90.0 <= tilt_min <= tilt_max <= 90.0):
        raise ValueError(f"tilt range ({tilt_min}, {tilt_max}) must satisfy -90 <= min <= max <= 90")
    kz, ky, kx = rfft_frequencies(size, device)
    kz_full = kz.expand(size, size, size // 2 + 1)
    kx_full = kx.expand(size, size, size // 2 + 1)
    angle = torch.rad2deg(torch.atan2(kz_full, kx_full))
    eps = 1e-6
    sampled = (angle >= tilt_min - eps) & (angle <= tilt_max + eps)
    on_y_axis = (kz_full == 0) & (kx_full == 0)
    return sampled | on_y_axis


def rfft_weights(size: int, device=None) -> torch.Tensor:
    """Multiplicity of each rfftn bin in the full spectrum (1 on the k_x = 0 and Nyquist planes, else 2)."""
    n = size // 2 + 1
    w = torch.full((n,), 2.0, device=device)
    w[0] = 1.0
    if size % 2 == 0:
        w[-1] = 1.0
    return w.reshape(1, 1, n)

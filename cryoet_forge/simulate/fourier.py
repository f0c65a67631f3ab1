"""The ``fourier`` simulator: the traditional fast subtomogram simulation (the paper's baseline).

For every map of a batch, in one pass of batched torch operations:

1. a rotation drawn uniformly on SO(3) (random unit quaternion) and a random shift
   (uniform in +-``max_shift`` voxels per axis), applied in one trilinear ``grid_sample``;
2. in Fourier space: the CTF (defocus drawn uniformly from ``defocus_um``, underfocus
   negative), a B-factor envelope, the detector MTF and the missing wedge of the tilt range
   about y;
3. additive Gaussian noise that went through the same detector MTF and missing wedge,
   scaled to the particle's target SNR.

SNR definition (used everywhere in cryoet-forge): ``SNR = var(signal) / var(noise)`` over
the whole box of one particle, where ``signal`` is the noise-free simulated subtomogram
(after CTF, MTF and wedge) and ``noise = output - signal``. The noise scale uses the
expected variance of the filtered noise, so a measured SNR scatters around the target.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Sequence

import torch

from cryoet_forge.errors import ConfigError
from cryoet_forge.simulate import ctf as ctf_model
from cryoet_forge.simulate.parameters import as_range, check_maps, uniform
from cryoet_forge.simulate.poses import draw_poses, pose_records, posed_maps


def spectrum_variance(spectrum: torch.Tensor, size: int) -> torch.Tensor:
    """Variance over the box of the real volumes whose rfftn is ``spectrum`` (B, S, S, S//2+1)."""
    w = ctf_model.rfft_weights(size, device=spectrum.device)
    power = (spectrum.real**2 + spectrum.imag**2) * w
    total = power.sum(dim=(-3, -2, -1)) - power[..., 0, 0, 0]
    return total / float(size) ** 6


@lru_cache(maxsize=16)
def _static_filters(size: int, voxel_size: float, tilt_range: tuple[float, float], mtf: bool, bfactor: float,
                    device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The defocus-independent parts of the filters, built once per (size, voxel, ..., device).

    Returns (s2, noise transfer = wedge * MTF, B-factor envelope * noise transfer, noise gain
    sum |H|^2 over the full spectrum). The tensors are shared: never modify them in place.
    """
    s2 = ctf_model.rfft_s2(size, voxel_size, device)
    common = ctf_model.missing_wedge_mask(size, *tilt_range, device=device).to(s2.dtype)
    if mtf:
        common = common * ctf_model.detector_mtf(torch.sqrt(s2) * voxel_size)
    envelope = ctf_model.bfactor_envelope(s2, bfactor) * common
    w = ctf_model.rfft_weights(size, device=device)
    gain = (common**2 * w).sum() - common[0, 0, 0] ** 2
    return s2, common, envelope, gain


class FourierSimulator:
    """Fast traditional simulation: rotation, shift, CTF, MTF, missing wedge, noise to an SNR."""

    name = "fourier"

    def __init__(self, snr: float | Sequence[float] = 0.5,
                 defocus_um: float | Sequence[float] = (-6.0, -2.0),
                 voltage_kv: float = 300.0, cs_mm: float = 2.7, amplitude_contrast: float = 0.07,
                 bfactor: float = 100.0, mtf: bool = True,
                 tilt_range: Sequence[float] = (-60.0, 60.0), max_shift: float = 2.0,
                 rotate: bool = True):
        self.snr = None if snr is None else as_range(snr, "snr", positive=True)
        self.defocus_um = as_range(defocus_um, "defocus_um")
        if self.defocus_um[1] >= 0:
            raise ConfigError(f"defocus_um {defocus_um!r}: expected underfocus, i.e. values < 0 micrometres")
        if voltage_kv <= 0 or cs_mm < 0 or not (0 <= amplitude_contrast < 1) or bfactor < 0:
            raise ConfigError("voltage_kv > 0, cs_mm >= 0, 0 <= amplitude_contrast < 1, bfactor >= 0 expected")
        self.voltage_kv = float(voltage_kv)
        self.cs_mm = float(cs_mm)
        self.amplitude_contrast = float(amplitude_contrast)
        self.bfactor = float(bfactor)
        self.mtf = bool(mtf)
        self.tilt_range = as_range(tilt_range, "tilt_range")
        if not (-90 <= self.tilt_range[0] and self.tilt_range[1] <= 90):
            raise ConfigError(f"tilt_range {tilt_range!r}: expected angles within -90..90 degrees")
        if max_shift < 0:
            raise ConfigError(f"max_shift {max_shift!r}: expected >= 0 voxels")
        self.max_shift = float(max_shift)
        self.rotate = bool(rotate)

    def constant_records(self) -> dict[str, Any]:
        return {
            "forgeSimulator": self.name, "rlnVoltage": self.voltage_kv,
            "rlnSphericalAberration": self.cs_mm, "rlnAmplitudeContrast": self.amplitude_contrast,
            "rlnCtfBfactor": self.bfactor, "forgeTiltMin": self.tilt_range[0],
            "forgeTiltMax": self.tilt_range[1], "forgeMtf": int(self.mtf),
        }

    def filters(self, size: int, voxel_size: float, defocus_A: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(signal transfer (B, S, S, S//2+1), noise transfer (S, S, S//2+1)) on the rfftn grid.

        The noise transfer is cached and shared between calls: do not modify it in place.
        """
        s2, common, envelope, _ = self._static(size, voxel_size, device)
        signal = ctf_model.ctf(s2, defocus_A.to(device=device, dtype=s2.dtype), self.cs_mm,
                               self.voltage_kv, self.amplitude_contrast)
        return signal * envelope, common

    def _static(self, size: int, voxel_size: float, device):
        return _static_filters(int(size), float(voxel_size), tuple(self.tilt_range), self.mtf, self.bfactor,
                               str(torch.device(device)))

    @torch.no_grad()
    def simulate(self, maps: torch.Tensor, voxel_size: float,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[dict]]:
        """Simulate subtomograms from density maps (B, S, S, S) -> ((B, S, S, S), parameters)."""
        maps = check_maps(maps, voxel_size)
        b, s = maps.shape[0], maps.shape[-1]
        device = maps.device
        rotations, shifts = draw_poses(b, self.max_shift, generator, self.rotate)
        defocus_um = uniform(b, self.defocus_um, generator)
        snr = uniform(b, self.snr, generator) if self.snr is not None else None

        posed = posed_maps(maps, rotations, shifts, self.rotate, self.max_shift)
        spectrum = torch.fft.rfftn(posed, dim=(-3, -2, -1))
        signal_tf, noise_tf = self.filters(s, voxel_size, -defocus_um.float() * 1e4, device)
        spectrum = spectrum * signal_tf
        if snr is not None:
            noise = torch.randn(b, s, s, s, generator=generator,
                                device=generator.device if generator is not None else "cpu").to(device)
            signal_var = spectrum_variance(spectrum, s)
            gain = self._static(s, voxel_size, device)[3]  # sum |H|^2 over the full spectrum
            noise_var_per_sigma2 = gain / float(s) ** 3
            sigma = torch.sqrt(signal_var / (snr.to(device).float() * noise_var_per_sigma2))
            spectrum = spectrum + torch.fft.rfftn(noise, dim=(-3, -2, -1)) * noise_tf * sigma.reshape(b, 1, 1, 1)
        out = torch.fft.irfftn(spectrum, s=(s, s, s), dim=(-3, -2, -1))

        records = pose_records(rotations, shifts, voxel_size)
        constants = self.constant_records()
        for i, rec in enumerate(records):
            dz = float(defocus_um[i])
            rec.update({"forgeDefocusUm": dz, "rlnDefocusU": -dz * 1e4, "rlnDefocusV": -dz * 1e4,
                        "forgeSnr": float(snr[i]) if snr is not None else math.inf})
            rec.update(constants)
        return out.contiguous(), records

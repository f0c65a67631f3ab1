"""The ``tilt-series`` simulator: per-tilt projections, per-tilt CTF, shot noise, WBP.

This is the higher-fidelity ("experimental-looking") simulation. For a batch of maps:

1. each map gets a uniform SO(3) rotation and a random shift, and is normalised so that its
   peak density is 1 (= protein relative to ice);
2. it is placed at the centre of a ``pad``-times larger canvas; with ``crowding`` > 0 that
   many neighbouring particles (other maps of the batch in random cube orientations) are
   placed at ``crowding_distance`` box widths from the centre, so they reach into the box,
   as in a crowded cytoplasm; a low-frequency Gaussian random field of std ``ice``
   (relative to protein) and correlation length ``ice_correlation_A`` models uneven ice;
3. all tilts are projected at once by the projection-slice theorem: one 3D FFT of the canvas
   (pre-divided by the trilinear kernel's apodisation, as in gridding) and one batched
   ``grid_sample`` of every central slice;
4. per tilt: weak-phase image contrast ``2 * CTF * phase`` with the defocus of the particle's
   height in the tilted specimen (mid-plane defocus from ``defocus_um``, particle height
   ``z0`` in an ice layer of ``ice_thickness_A``, field position ``x0``), a B-factor
   envelope, the dose-dependent exposure filter of Grant & Grigorieff (2015) for a
   dose-symmetric order, a per-tilt electron count ``dose * voxel^2 * exp(-t / (mfp cos a))``
   (thicker ice at high tilt lets fewer elastic electrons through), shot noise (Poisson, or
   its Gaussian approximation for speed), and the detector MTF;
5. with ``phase_flip``, CTF correction by phase flipping of each tilt image at the particle's own
   defocus (as reconstructions that correct the CTF do: IMOD's ctfphaseflip, Parakeet's 3D
   correction), the low frequencies keeping their sign;
6. R-weighted (ramp-filtered) back-projection of the tilt images into the box.

The phase shift of protein is ``phase_per_A`` radians per Angstrom of projected protein
(sigma * dV: 6.5e-4 rad/(V A) at 300 kV times ~3 V between protein and vitreous ice, about 2e-3 rad/A). Every random value is recorded.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cryoet_forge.errors import ConfigError
from cryoet_forge.simulate import ctf as ctf_model
from cryoet_forge.simulate.parameters import as_range, check_maps, uniform
from cryoet_forge.simulate.poses import draw_poses, pose_records, posed_maps

INELASTIC_MFP_A = 3500.0  # inelastic mean free path in vitreous ice at 300 kV (zero-loss imaging)


def tilt_angles(tilt_range: Sequence[float], tilt_step: float) -> np.ndarray:
    low, high = tilt_range
    n = int(math.floor((high - low) / tilt_step + 1e-6)) + 1
    return low + tilt_step * np.arange(n)


def dose_symmetric_order(angles: np.ndarray) -> np.ndarray:
    """Rank of each tilt in a dose-symmetric acquisition (0 first, then +-step alternating)."""
    keys = [(abs(a), 0 if a >= 0 else 1) for a in angles]
    order = sorted(range(len(angles)), key=lambda i: keys[i])
    rank = np.empty(len(angles), dtype=np.int64)
    rank[order] = np.arange(len(angles))
    return rank


def critical_exposure(s: torch.Tensor) -> torch.Tensor:
    """Critical exposure (e/A^2) per spatial frequency s (1/A), Grant & Grigorieff 2015, 300 kV."""
    return 0.245 * s.clamp_min(1e-6) ** -1.665 + 2.81


@lru_cache(maxsize=8)
def _backprojection_matrix(size: int, canvas: int, angles: tuple[float, ...],
                           device: str = "cpu") -> tuple[torch.Tensor, int, int]:
    """Dense (T * width, size * size) linear-interpolation back-projector for (z, x) planes.

    Only detector columns [lo, lo + width) of the canvas-wide tilt images reach the box;
    returns (matrix on ``device``, lo, width). The cached matrix is shared: never modify it.
    """
    t_count = len(angles)
    axis = np.arange(size) - size // 2
    zz, xx = np.meshgrid(axis, axis, indexing="ij")  # (z, x)
    matrix = np.zeros((t_count, canvas, size * size), dtype=np.float32)
    cols = np.arange(size * size)
    for t, a in enumerate(angles):
        r = math.radians(a)
        position = (xx * math.cos(r) + zz * math.sin(r)).ravel() + canvas // 2
        i0 = np.floor(position).astype(np.int64)
        w = (position - i0).astype(np.float32)
        for idx, weight in ((i0, 1.0 - w), (i0 + 1, w)):
            ok = (idx >= 0) & (idx < canvas)
            np.add.at(matrix[t], (idx[ok], cols[ok]), weight[ok])
    used = np.nonzero(matrix.any(axis=(0, 2)))[0]
    lo, hi = int(used.min()), int(used.max()) + 1
    matrix = np.ascontiguousarray(matrix[:, lo:hi])
    return torch.from_numpy(matrix.reshape(t_count * (hi - lo), size * size)).to(device), lo, hi - lo


@lru_cache(maxsize=8)
def _slice_grid(canvas: int, angles: tuple[float, ...], device: str = "cpu") -> torch.Tensor:
    """grid_sample coordinates (T, P, P//2+1, 3) of each tilt's central slice.

    The slice is sampled on the half plane u >= 0 (the other half is its Hermitian mirror),
    with v in FFT order, from a spectrum whose k_z and k_y axes are centred (DC at P//2) and
    whose k_x axis is the rfft half (DC at 0). For |tilt| < 90, k_x = u cos(tilt) >= 0.
    """
    half = canvas // 2 + 1
    v = torch.fft.fftfreq(canvas, d=1.0 / canvas, dtype=torch.float64)
    u = torch.arange(half, dtype=torch.float64)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    grids = []
    for a in angles:
        r = math.radians(a)
        kx, ky, kz = uu * math.cos(r), vv, uu * math.sin(r)
        grids.append(torch.stack([(2.0 * kx + 1.0) / half - 1.0,
                                  (2.0 * (ky + canvas // 2) + 1.0) / canvas - 1.0,
                                  (2.0 * (kz + canvas // 2) + 1.0) / canvas - 1.0], dim=-1))
    return torch.stack(grids).float().to(device)


@lru_cache(maxsize=8)
def _spectrum_sign(canvas: int, device: str = "cpu") -> torch.Tensor:
    """(-1)^(j_z + j_y + k_x): moves the phase origin of the rfft spectrum to the canvas centre."""
    j = torch.arange(canvas)
    k = torch.arange(canvas // 2 + 1)
    parity = j.reshape(-1, 1, 1) + j.reshape(1, -1, 1) + k.reshape(1, 1, -1)
    return (1 - 2 * (parity % 2)).float().to(device)


@lru_cache(maxsize=8)
def _apodisation_correction(canvas: int, device: str = "cpu") -> torch.Tensor:
    """1 / sinc^2 per axis (undoes trilinear interpolation in Fourier space), times (-1)^(z+y),
    which centres the k_z and k_y axes of the canvas spectrum without an fftshift copy."""
    index = torch.arange(canvas)
    x = (index.double() - canvas // 2) / canvas
    c = 1.0 / torch.sinc(x) ** 2
    sign = (1 - 2 * (index % 2)).double()
    return ((c * sign).reshape(-1, 1, 1) * (c * sign).reshape(1, -1, 1) * c.reshape(1, 1, -1)).float().to(device)


@lru_cache(maxsize=8)
def _tilt_filters(size: int, canvas: int, voxel_size: float, angles: tuple[float, ...], dose: float,
                  bfactor: float, phase_per_A: float, mtf: bool,
                  device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The defocus-independent per-tilt filters, built once per geometry and device (shared: never
    modify them in place).

    Returns (s2 (P, P//2+1) in 1/A^2 on the (v, u) half grid of the tilt images; the B-factor
    envelope x exposure filter x centring parity x 2 * phase per voxel, (T, P, P//2+1); the detector
    MTF x R-weighting filter (S, P//2+1) over (y, x') of the cropped images).
    """
    p, half = canvas, canvas // 2 + 1
    kv = torch.fft.fftfreq(p, device=device) / voxel_size
    ku = torch.arange(half, device=device, dtype=torch.float32) / (p * voxel_size)
    s2 = kv.reshape(-1, 1) ** 2 + ku.reshape(1, -1) ** 2  # 1/A^2
    dose_per_tilt = dose / len(angles)
    rank = dose_symmetric_order(np.asarray(angles))
    prior = torch.tensor(rank * dose_per_tilt + 0.5 * dose_per_tilt, dtype=torch.float32, device=device)
    exposure = torch.exp(-prior.reshape(-1, 1, 1) / (2.0 * critical_exposure(s2.sqrt()).unsqueeze(0)))
    # (-1)^(v + u) puts the projection centre at pixel (p//2, p//2) instead of (0, 0)
    parity = (torch.arange(p, device=device).reshape(-1, 1) + torch.arange(half, device=device)) % 2
    envelope = ctf_model.bfactor_envelope(s2, bfactor) * (1 - 2 * parity) * exposure  # (T, P, half)
    envelope = envelope.unsqueeze(0) * (2.0 * (phase_per_A * voxel_size))
    fy = torch.fft.fftfreq(size, device=device).reshape(-1, 1)
    fx = torch.fft.rfftfreq(p, device=device).reshape(1, -1)
    weight = fx.clamp_min(0.5 / p) * 2.0  # ramp, 1 at Nyquist; a small DC term keeps the mean
    if mtf:
        weight = weight * ctf_model.detector_mtf(torch.sqrt(fx**2 + fy**2))
    return s2, envelope, weight


def _cube_orientation(volume: torch.Tensor, code: int) -> torch.Tensor:
    """One of the 24 proper rotations of a cube (axis permutation + flips with det +1)."""
    perms = [(0, 1, 2), (1, 2, 0), (2, 0, 1), (0, 2, 1), (2, 1, 0), (1, 0, 2)]
    perm = perms[code % 6]
    flips = [(code // 6) & 1, (code // 12) & 1, 0]
    odd = code % 6 >= 3
    if (sum(flips) + odd) % 2 == 1:
        flips[2] = 1
    out = volume.permute(perm)
    dims = [d for d, f in enumerate(flips) if f]
    return torch.flip(out, dims) if dims else out


class TiltSeriesSimulator:
    """Tilt-series simulation: per-tilt projection, CTF, dose, shot noise, MTF, crowding, ice, WBP."""

    name = "tilt-series"

    def __init__(self, tilt_range: Sequence[float] = (-60.0, 60.0), tilt_step: float = 3.0,
                 dose: float = 120.0, defocus_um: float | Sequence[float] = (-6.0, -2.0),
                 voltage_kv: float = 300.0, cs_mm: float = 2.7, amplitude_contrast: float = 0.07,
                 bfactor: float = 100.0, mtf: bool = True, phase_per_A: float = 2e-3,
                 crowding: int = 2, crowding_distance: Sequence[float] = (0.55, 0.85),
                 ice: float = 0.15, ice_correlation_A: float = 150.0, ice_thickness_A: float = 1500.0,
                 field_of_view_A: float = 4000.0, shot_noise: str = "gaussian", pad: int = 2,
                 max_shift: float = 2.0, rotate: bool = True, ctf: bool = True, phase_flip: bool = False):
        self.tilt_range = as_range(tilt_range, "tilt_range")
        if not (-90 < self.tilt_range[0] and self.tilt_range[1] < 90):
            raise ConfigError(f"tilt_range {tilt_range!r}: expected angles strictly within -90..90 degrees")
        if not tilt_step > 0:
            raise ConfigError(f"tilt_step {tilt_step!r}: expected > 0 degrees")
        self.angles = tilt_angles(self.tilt_range, float(tilt_step))
        self.tilt_step = float(tilt_step)
        self.defocus_um = as_range(defocus_um, "defocus_um")
        if self.defocus_um[1] >= 0:
            raise ConfigError(f"defocus_um {defocus_um!r}: expected underfocus, i.e. values < 0 micrometres")
        if shot_noise not in ("poisson", "gaussian", "none"):
            raise ConfigError(f"shot_noise {shot_noise!r}: choose from poisson, gaussian, none")
        if dose <= 0 or phase_per_A < 0 or ice < 0 or ice_thickness_A < 0 or int(crowding) < 0:
            raise ConfigError("dose > 0, phase_per_A >= 0, ice >= 0, ice_thickness_A >= 0, crowding >= 0 expected")
        if voltage_kv <= 0 or cs_mm < 0 or not (0 <= amplitude_contrast < 1) or bfactor < 0:
            raise ConfigError("voltage_kv > 0, cs_mm >= 0, 0 <= amplitude_contrast < 1, bfactor >= 0 expected")
        if max_shift < 0:
            raise ConfigError(f"max_shift {max_shift!r}: expected >= 0 voxels")
        if int(pad) < 1 or (int(crowding) > 0 and int(pad) < 2):
            raise ConfigError(f"pad {pad!r}: expected an integer >= 1 (>= 2 with crowding)")
        self.dose = float(dose)
        self.voltage_kv, self.cs_mm = float(voltage_kv), float(cs_mm)
        self.amplitude_contrast, self.bfactor, self.mtf = float(amplitude_contrast), float(bfactor), bool(mtf)
        self.phase_per_A = float(phase_per_A)
        self.crowding = int(crowding)
        self.crowding_distance = as_range(crowding_distance, "crowding_distance", positive=True)
        self.ice, self.ice_correlation_A = float(ice), float(ice_correlation_A)
        self.ice_thickness_A, self.field_of_view_A = float(ice_thickness_A), float(field_of_view_A)
        self.shot_noise, self.pad = shot_noise, int(pad)
        self.max_shift, self.rotate = float(max_shift), bool(rotate)
        self.use_ctf = bool(ctf)  # False: plain negative contrast (for checking the geometry)
        if phase_flip and not ctf:
            raise ConfigError("phase_flip needs ctf = true: there is no CTF to correct")
        self.phase_flip = bool(phase_flip)

    # -- pieces -----------------------------------------------------------------------------
    def _canvas(self, posed: torch.Tensor, generator, records: list[dict], voxel_size: float) -> torch.Tensor:
        b, s = posed.shape[0], posed.shape[-1]
        p = s * self.pad
        canvas = posed.new_zeros(b, p, p, p)
        start = p // 2 - s // 2
        canvas[:, start:start + s, start:start + s, start:start + s] = posed
        if self.crowding == 0:
            for rec in records:
                rec.update({"forgeNeighbours": 0, "forgeNeighbourOffsetsAngst": "", "forgeNeighbourSources": ""})
            return canvas
        device = generator.device if generator is not None else "cpu"
        direction = torch.randn(b, self.crowding, 3, generator=generator, device=device, dtype=torch.float64).cpu()
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        distance = uniform(b * self.crowding, self.crowding_distance, generator).reshape(b, self.crowding) * s
        codes = torch.randint(0, 24, (b, self.crowding), generator=generator, device=device).cpu()
        offsets = torch.round(direction * distance.unsqueeze(-1)).long()  # (x, y, z) voxels
        for i in range(b):
            texts, sources = [], []
            for k in range(self.crowding):
                source = (i + k + 1) % b
                neighbour = _cube_orientation(posed[source], int(codes[i, k]))
                ox, oy, oz = offsets[i, k].tolist()
                lo = [start + oz, start + oy, start + ox]
                src = [slice(max(0, -e), min(s, p - e)) for e in lo]
                dst = [slice(max(0, e), min(p, e + s)) for e in lo]
                if all(d.stop > d.start for d in dst):
                    canvas[i, dst[0], dst[1], dst[2]] += neighbour[src[0], src[1], src[2]]
                texts.append(f"{ox * voxel_size:.1f},{oy * voxel_size:.1f},{oz * voxel_size:.1f}")
                sources.append(f"{source}:{int(codes[i, k])}")
            records[i].update({"forgeNeighbours": self.crowding,
                               "forgeNeighbourOffsetsAngst": ";".join(texts),
                               "forgeNeighbourSources": ";".join(sources)})
        return canvas

    def _add_ice(self, spectrum: torch.Tensor, generator, voxel_size: float, records: list[dict]) -> None:
        """Add a low-pass Gaussian random field (std ``ice``) to a centred canvas spectrum, in place."""
        b, p = spectrum.shape[0], spectrum.shape[-2]  # rfft layout: (B, P, P, P // 2 + 1)
        for rec in records:
            rec["forgeIceStd"] = self.ice
        if self.ice == 0:
            return
        cutoff = p * voxel_size / self.ice_correlation_A  # 1/correlation length in FFT bins
        m = min(int(math.ceil(3 * cutoff)), p // 2 - 1)
        k = torch.arange(-m, m + 1, dtype=torch.float32)
        k2 = k.reshape(-1, 1, 1) ** 2 + k.reshape(1, -1, 1) ** 2 + k.reshape(1, 1, -1) ** 2
        envelope = torch.exp(-0.5 * k2 / cutoff**2)
        envelope[m, m, m] = 0.0  # no DC: ice thickness itself only shifts the mean
        device = generator.device if generator is not None else "cpu"
        noise = torch.randn(b, 2, 2 * m + 1, 2 * m + 1, 2 * m + 1, generator=generator, device=device).cpu()
        field = torch.complex(noise[:, 0], noise[:, 1]) * envelope
        field = 0.5 * (field + torch.conj(torch.flip(field, dims=(-3, -2, -1))))  # Hermitian: a real field
        variance = (field.abs() ** 2).sum(dim=(-3, -2, -1)) / float(p) ** 6
        field = field * (self.ice / variance.clamp_min(1e-30).sqrt()).reshape(b, 1, 1, 1)
        c = p // 2  # k_z, k_y centred at p // 2; k_x is the rfft half starting at DC
        spectrum[:, c - m:c + m + 1, c - m:c + m + 1, 0:m + 1] += field[..., m:].to(spectrum.device)

    def _central_slices(self, posed: torch.Tensor, generator, records: list[dict], voxel_size: float,
                        angle_key: tuple[float, ...], device_key: str) -> torch.Tensor:
        """The central slice of every particle's canvas (neighbours and ice added) at every tilt, all in
        one grid_sample: (B, T, P, P//2+1), v in FFT order."""
        b, p = posed.shape[0], posed.shape[-1] * self.pad
        canvas = self._canvas(posed, generator, records, voxel_size)
        canvas = canvas * _apodisation_correction(p, device_key)
        spectrum = torch.fft.rfftn(canvas, dim=(-3, -2, -1))
        del canvas
        spectrum *= _spectrum_sign(p, device_key)
        self._add_ice(spectrum, generator, voxel_size, records)
        grid = _slice_grid(p, angle_key, device_key)
        parts = torch.view_as_real(spectrum).permute(0, 4, 1, 2, 3)
        sampled = F.grid_sample(parts, grid.unsqueeze(0).expand(b, -1, -1, -1, -1), mode="bilinear",
                                padding_mode="zeros", align_corners=False)  # (B, 2, T, P_v, P_u half)
        del spectrum, parts
        return torch.complex(sampled[:, 0], sampled[:, 1])

    def _underfocus(self, defocus_um: torch.Tensor, height: torch.Tensor, field_x: torch.Tensor,
                    device: torch.device) -> torch.Tensor:
        """(B, T) underfocus in Angstrom: each particle's defocus and its height in the tilted ice."""
        radians = torch.tensor(np.radians(self.angles), dtype=torch.float64)
        tilt_height = (-field_x.reshape(-1, 1) * torch.sin(radians) + height.reshape(-1, 1) * torch.cos(radians))
        return (-defocus_um.reshape(-1, 1) * 1e4 - tilt_height).float().to(device)

    def _contrast(self, slices: torch.Tensor, s2: torch.Tensor, envelope: torch.Tensor, underfocus: torch.Tensor,
                  s: int) -> torch.Tensor:
        """The per-tilt transfer (CTF and envelope) on the central slices' (v, u) half grid, back in real
        space: the images' contrast on the rows of the box along the tilt axis, (B, T, S, P)."""
        b, t_count = slices.shape[0], len(self.angles)
        p = s * self.pad
        half = p // 2 + 1
        if self.use_ctf:
            transfer = ctf_model.ctf(s2, underfocus.reshape(-1), self.cs_mm, self.voltage_kv,
                                     self.amplitude_contrast).reshape(b, t_count, p, half)
        else:
            transfer = torch.full((b, t_count, p, half), -1.0, device=slices.device)
        transfer *= envelope
        contrast = torch.fft.irfft2(slices * transfer, s=(p, p))  # (B, T, P_y, P_x)
        del transfer
        y0 = p // 2 - s // 2
        return contrast[:, :, y0:y0 + s, :]

    def _detect(self, contrast: torch.Tensor, voxel_size: float, generator) -> torch.Tensor:
        """The detected images relative to the mean count, (B, T, S, P): electrons per pixel per tilt
        (thicker ice at high tilt removes elastic electrons) with shot noise."""
        device = contrast.device
        dose_per_tilt = self.dose / len(self.angles)
        path = self.ice_thickness_A / np.cos(np.radians(self.angles))
        counts = dose_per_tilt * voxel_size**2 * np.exp(-path / INELASTIC_MFP_A)
        n0 = torch.tensor(counts, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
        expected = n0 * (1.0 + contrast).clamp_min(0.0)
        if self.shot_noise == "poisson":
            noise_device = generator.device if generator is not None else "cpu"
            detected = torch.poisson(expected.to(noise_device), generator=generator).to(device)
        elif self.shot_noise == "gaussian":
            noise_device = generator.device if generator is not None else "cpu"
            normal = torch.randn(expected.shape, generator=generator, device=noise_device).to(device)
            detected = expected + expected.sqrt() * normal
        else:
            detected = expected
        return detected / n0 - 1.0

    def _flip_phases(self, images: torch.Tensor, underfocus: torch.Tensor, voxel_size: float) -> torch.Tensor:
        """CTF correction by phase flipping, as before a reconstruction (IMOD's ctfphaseflip; Parakeet's
        3D correction): each detected image (B, T, S, P) times the sign of its own CTF at the particle's
        defocus in that tilt, signed so that the low frequencies keep their contrast (protein dark)."""
        b, t_count, s, p = images.shape
        fy = torch.fft.fftfreq(s, device=images.device).reshape(-1, 1) / voxel_size
        fx = torch.fft.rfftfreq(p, device=images.device).reshape(1, -1) / voxel_size
        transfer = ctf_model.ctf(fy**2 + fx**2, underfocus.reshape(-1), self.cs_mm, self.voltage_kv,
                                 self.amplitude_contrast).reshape(b, t_count, s, p // 2 + 1)
        flip = torch.where(transfer > 0, -1.0, 1.0)  # the CTF is negative at low frequency here
        return torch.fft.irfft2(torch.fft.rfft2(images) * flip, s=(s, p))

    def _reconstruct(self, images: torch.Tensor, weight: torch.Tensor, angle_key: tuple[float, ...],
                     device_key: str) -> torch.Tensor:
        """Weighted back-projection of the images (B, T, S, P) into volumes (B, S, S, S): the detector MTF
        and R-weighting in one 2D filter over (y, x') (from _tilt_filters), then one matrix product."""
        b, t_count, s, p = images.shape
        filtered = torch.fft.irfft2(torch.fft.rfft2(images) * weight, s=(s, p))  # (B, T, S, P)
        matrix, lo, width = _backprojection_matrix(s, p, angle_key, device_key)
        used = filtered[..., lo:lo + width]
        stacked = used.permute(0, 2, 1, 3).reshape(b * s, t_count * width)  # rows (b, y), cols (t, x')
        volume = (stacked @ matrix).reshape(b, s, s, s).permute(0, 2, 1, 3)  # (b, y, z, x) -> (b, z, y, x)
        return volume / t_count

    def _record_parameters(self, records: list[dict], defocus_um: torch.Tensor, height: torch.Tensor,
                           field_x: torch.Tensor) -> None:
        """Each particle's defocus and position in the ice, and the simulator's settings, into ``records``."""
        angles = self.angles
        constants: dict[str, Any] = {"forgeSimulator": self.name, "rlnVoltage": self.voltage_kv,
                     "rlnSphericalAberration": self.cs_mm, "rlnAmplitudeContrast": self.amplitude_contrast,
                     "rlnCtfBfactor": self.bfactor, "forgeTiltMin": float(angles[0]),
                     "forgeTiltMax": float(angles[-1]), "forgeTiltStep": self.tilt_step,
                     "forgeDose": self.dose, "forgePhasePerAngst": self.phase_per_A,
                     "forgeIceThicknessAngst": self.ice_thickness_A, "forgeShotNoise": self.shot_noise,
                     "forgeMtf": int(self.mtf), "forgeCtf": int(self.use_ctf),
                     "forgePhaseFlip": int(self.phase_flip)}
        for i, rec in enumerate(records):
            dz = float(defocus_um[i])
            rec.update({"forgeDefocusUm": dz, "rlnDefocusU": -dz * 1e4 - float(height[i]),
                        "rlnDefocusV": -dz * 1e4 - float(height[i]),
                        "forgeHeightAngst": float(height[i]), "forgeFieldXAngst": float(field_x[i])})
            rec.update(constants)

    # -- main ---------------------------------------------------------------------------------
    @torch.no_grad()
    def simulate(self, maps: torch.Tensor, voxel_size: float,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[dict]]:
        """Simulate subtomograms from density maps (B, S, S, S) -> ((B, S, S, S), parameters)."""
        maps = check_maps(maps, voxel_size)
        b, s = maps.shape[0], maps.shape[-1]
        p = s * self.pad
        device = maps.device
        device_key = str(device)  # the cached grids and filters below live on this device
        angle_key = tuple(float(a) for a in self.angles)
        rotations, shifts = draw_poses(b, self.max_shift, generator, self.rotate)
        defocus_um = uniform(b, self.defocus_um, generator)
        height = uniform(b, (-self.ice_thickness_A / 2, self.ice_thickness_A / 2), generator)
        field_x = uniform(b, (-self.field_of_view_A / 2, self.field_of_view_A / 2), generator)
        records = pose_records(rotations, shifts, voxel_size)

        posed = posed_maps(maps, rotations, shifts, self.rotate, self.max_shift)
        posed = posed / posed.flatten(1).amax(dim=1).clamp_min(1e-12).reshape(b, 1, 1, 1)
        slices = self._central_slices(posed, generator, records, voxel_size, angle_key, device_key)
        s2, envelope, weight = _tilt_filters(s, p, float(voxel_size), angle_key, self.dose, self.bfactor,
                                             self.phase_per_A, self.mtf, device_key)
        underfocus = self._underfocus(defocus_um, height, field_x, device)
        contrast = self._contrast(slices, s2, envelope, underfocus, s)
        del slices
        images = self._detect(contrast, voxel_size, generator)
        if self.phase_flip:
            images = self._flip_phases(images, underfocus, float(voxel_size))
        volume = self._reconstruct(images, weight, angle_key, device_key)
        self._record_parameters(records, defocus_um, height, field_x)
        return volume.contiguous(), records

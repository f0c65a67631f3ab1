"""Labelled synthetic tomograms: particles placed without overlap in a volume, imaged as a tilt series.

A tomogram of ``(nz, ny, nx)`` voxels of ``voxel_size`` Angstrom is built in five steps:

1. **Templates.** Each class map (phantom, MRC map or atomic model, loaded as ``forge simulate``
   loads them) has its background (the median of its box faces) removed, negative values
   dropped and its peak scaled to 1: density 1 is protein relative to ice, as in the
   ``tilt-series`` simulator. Its radius is the largest distance from the box centre of a voxel
   above ``RADIUS_FRACTION`` of the peak, plus one voxel (room for the interpolation of a
   rotation); the box is cut to that radius.
2. **Layout.** The sample fills the central slab of ``ice_thickness_A`` (the whole z range when
   none is given; vacuum above and below). Optional vesicles (spherical shells of a lipid bilayer,
   ``MembraneSpec``) are drawn first, then the particles by random sequential addition, the largest
   class first: a particle is a sphere of its class's radius that lies wholly inside the volume
   and the slab, keeps ``gap`` voxels from every other sphere and from every membrane shell, and
   is centred anywhere (not on the voxel grid). When no place is left, the layout stops with one
   line saying how many of the particles asked were placed.
3. **Density.** Every particle gets a rotation uniform on SO(3) (``rotations.random_quaternions``;
   the density at ``q`` moves to ``R q``, ZYZ Euler angles ``rlnAngleRot/Tilt/Psi`` as everywhere in
   the project) and its sub-voxel shift, one batched trilinear ``grid_sample`` per class
   (``rotations.rigid_transform``), and is added to the volume. The label map holds the class
   index + 1 where a particle's posed map exceeds ``label_fraction`` of its peak (0 elsewhere;
   membranes ``n_classes + 1`` within half the bilayer thickness of the shell's mid-surface).
   A low-frequency Gaussian random field of std ``ice`` (relative to protein, correlation length
   ``ice_correlation_A``) models uneven ice inside the slab.
4. **Tilt series** (``TomogramPhysics``, the ``tilt-series`` simulator's physics applied to the
   whole volume): tilts about y; per tilt, line integrals along the beam through the slab with
   bilinear interpolation, one voxel per step (a detector column ``u`` sees the points
   ``x cos a + z sin a = u`` about the volume centre, as the back-projection below). The beam
   path is cut into depth slabs (``defocus_step_A``; by default as deep as keeps the CTF phase
   error at Nyquist within 0.2 rad); each slab's projection gets the CTF of its
   own defocus (nominal underfocus at the volume centre minus the height along the beam), so
   particles high in a tilted specimen are less underfocused. Then the B-factor envelope, the
   dose-symmetric exposure filter, weak-phase contrast ``2 * phase * CTF``, an electron count per
   pixel ``dose / T * voxel^2 * exp(-t / (mfp cos a))`` for the slab thickness ``t``, shot noise
   and the detector MTF, exactly as ``tilt_series``.
5. **Reconstruction**: R-weighted back-projection (ramp filter with a small DC term, as
   ``tilt_series``), divided by the number of tilts.

**Contrast:** density is positive and the CTF's first lobe negative under underfocus, so the
tomogram shows **protein dark**, the project's convention (``cryoet_forge.data.polarity``).
Every random value comes from ``seed`` (and the tomogram's index): the same seed gives the same
tomogram, labels and picks on any device.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy import sparse
from scipy.fft import next_fast_len

from cryoet_forge import progress
from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.io.mrc import read_mrc
from cryoet_forge.io.structures import PDB_ID, fetch_structure, read_structure
from cryoet_forge.simulate import ctf as ctf_model
from cryoet_forge.simulate.phantoms import PHANTOM_CLASSES
from cryoet_forge.simulate.rotations import (
    matrices_to_euler_zyz,
    quaternions_to_matrices,
    random_quaternions,
    rigid_transform,
)
from cryoet_forge.simulate.templates import MAP_SUFFIXES
from cryoet_forge.simulate.tilt_series import (
    INELASTIC_MFP_A,
    TiltSeriesSimulator,
    critical_exposure,
    dose_symmetric_order,
)

#: a voxel above this fraction of a template's peak lies within the class's radius
RADIUS_FRACTION = 0.05
#: width (std, Angstrom) of each leaflet's head-group peak in a membrane's density profile
LEAFLET_SIGMA_A = 5.0
#: candidate positions drawn at once, and batches in a row without a placement before giving up
CANDIDATES = 256
GIVE_UP_AFTER = 200


# -- templates ---------------------------------------------------------------------------------------

@dataclass
class ClassTemplate:
    """A class's map ready for placement: (b, b, b) float32, peak 1, centre at index b // 2."""

    name: str
    density: np.ndarray
    #: voxels: every voxel above RADIUS_FRACTION of the peak lies within it (plus one voxel)
    radius: float


def prepare_template(name: str, volume: np.ndarray) -> ClassTemplate:
    """Background removed (median of the box faces), negatives dropped, peak 1, box cut to the radius."""
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise InputError(f"class {name}: expected a cubic map, got shape {vol.shape}")
    faces = np.concatenate([vol[0].ravel(), vol[-1].ravel(), vol[:, 0].ravel(), vol[:, -1].ravel(),
                            vol[:, :, 0].ravel(), vol[:, :, -1].ravel()])
    vol = vol - float(np.median(faces))
    peak = float(vol.max())
    if not (math.isfinite(peak) and peak > 0):
        raise InputError(f"class {name}: the map has no density above its background")
    vol = np.clip(vol / peak, 0.0, None)
    b = vol.shape[0]
    c = b // 2
    index = np.indices(vol.shape, dtype=np.float32) - c
    distance = np.sqrt((index**2).sum(axis=0))
    radius = float(distance[vol > RADIUS_FRACTION].max()) + 1.0
    vol[distance > radius] = 0.0
    n = int(math.ceil(radius)) + 1
    out = np.zeros((2 * n + 1,) * 3, dtype=np.float32)
    lo, hi = c - n, c + n + 1
    src = slice(max(lo, 0), min(hi, b))
    dst = slice(src.start - lo, src.stop - lo)
    out[dst, dst, dst] = vol[src, src, src]
    return ClassTemplate(name, out, radius)


def auto_template_box(spec: str, voxel_size: float, assembly: int | None = None) -> int:
    """A box (voxels) that holds the whole class ``spec`` at ``voxel_size``: a phantom's 20 nm, an
    MRC map's own extent, an atomic model's reach from its centre of mass (plus the blur)."""
    if spec in PHANTOM_CLASSES:
        return max(16, int(math.ceil(300.0 / voxel_size)))  # characteristic radius 100 A <= 0.35 box
    path = Path(spec)
    if path.suffix.lower() in MAP_SUFFIXES:
        volume, voxel_in = read_mrc(path)
        return max(16, int(math.ceil(max(volume.shape) * voxel_in / voxel_size)) + 2)
    if not path.exists() and PDB_ID.match(spec):
        path = fetch_structure(spec)
    structure = read_structure(path, assembly=assembly)
    model = structure[0]
    com = model.calculate_center_of_mass()
    reach = max(max(abs(a.pos.x - com.x), abs(a.pos.y - com.y), abs(a.pos.z - com.z))
                for a in (cra.atom for cra in model.all()))
    return max(16, 2 * (int(math.ceil(reach / voxel_size)) + 4))


# -- layout ------------------------------------------------------------------------------------------

@dataclass
class MembraneSpec:
    """Vesicles: ``count`` spherical shells of a lipid bilayer, radius drawn uniformly in
    ``radius_A`` (to the bilayer's mid-surface), ``thickness_A`` head group to head group."""

    count: int = 0
    radius_A: tuple[float, float] = (150.0, 400.0)
    thickness_A: float = 40.0


@dataclass
class Layout:
    """Where everything goes, in voxels (z, y, x) of the volume."""

    shape: tuple[int, int, int]
    slab: tuple[int, int]
    centres: np.ndarray  # (N, 3) float64, z y x
    classes: np.ndarray  # (N,) int64, index into the templates
    radii: np.ndarray  # (N,) float64, voxels
    vesicles: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))  # z, y, x, radius, half thickness


def slab_of(shape: Sequence[int], voxel_size: float, thickness_A: float | None) -> tuple[int, int]:
    """The z range [lo, hi) of the sample: the central ``thickness_A`` (whole volume when None)."""
    nz = int(shape[0])
    if thickness_A is None:
        return 0, nz
    n = int(round(thickness_A / voxel_size))
    if n < 1 or n > nz:
        raise ConfigError(f"--ice-thickness {thickness_A:g} A: expected between one voxel ({voxel_size:g} A) and "
                          f"the volume's z extent ({nz} x {voxel_size:g} = {nz * voxel_size:g} A)")
    lo = (nz - n) // 2
    return lo, lo + n


def _bounds(shape, slab, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest centre (z, y, x) of a sphere of ``reach`` voxels inside the volume and slab."""
    lo = np.array([slab[0] + reach, reach, reach], dtype=np.float64)
    hi = np.array([slab[1] - 1 - reach, shape[1] - 1 - reach, shape[2] - 1 - reach], dtype=np.float64)
    return lo, hi


def describe_space(shape, slab, voxel_size: float) -> str:
    sz = "x".join(str(int(n)) for n in shape)
    thick = (slab[1] - slab[0]) * voxel_size
    return f"the {sz} volume (z y x) with a sample slab of {thick:g} A"


def draw_vesicles(rng: np.random.Generator, shape, slab, voxel_size: float, spec: MembraneSpec,
                  gap: float) -> np.ndarray:
    """(count, 5) vesicles (z, y, x, radius, half thickness in voxels), wholly inside the slab, apart."""
    out = np.zeros((0, 5))
    if spec.count <= 0:
        return out
    half = 0.5 * spec.thickness_A / voxel_size
    r_lo, r_hi = (r / voxel_size for r in spec.radius_A)
    lo, hi = _bounds(shape, slab, r_lo + half)
    if (hi < lo).any():
        raise ConfigError(f"--membrane-radius {spec.radius_A[0]:g}: a vesicle of that radius and a "
                          f"{spec.thickness_A:g} A bilayer does not fit in {describe_space(shape, slab, voxel_size)}")
    lo, hi = _bounds(shape, slab, 0.0)
    failures = 0
    while len(out) < spec.count:
        radius = rng.uniform(r_lo, r_hi, CANDIDATES)
        reach = (radius + half)[:, None]
        low, high = lo + reach, hi - reach
        centre = low + rng.uniform(0.0, 1.0, (CANDIDATES, 3)) * (high - low)
        ok = (high >= low).all(axis=1)  # this radius fits in the slab
        if len(out):
            ok &= _apart(centre, out[:, :3], radius[:, None] + out[None, :, 3] + half + out[None, :, 4] + gap)
        chosen = np.flatnonzero(ok)
        if len(chosen):
            i = int(chosen[0])
            out = np.vstack([out, [*centre[i], radius[i], half]])
            failures = 0
        else:
            failures += 1
            if failures >= GIVE_UP_AFTER:
                raise ConfigError(f"--membranes {spec.count}: placed {len(out)} of {spec.count} vesicles asked in "
                                  f"{describe_space(shape, slab, voxel_size)}; ask for fewer or smaller vesicles "
                                  "(--membrane-radius) or a larger --size")
    return out


def _apart(points: np.ndarray, others: np.ndarray, limit: np.ndarray | float) -> np.ndarray:
    """Per point (K, 3): whether every one of ``others`` (M, 3) is at least ``limit`` (K, M) away."""
    d2 = (points**2).sum(1)[:, None] + (others**2).sum(1)[None, :] - 2.0 * points @ others.T
    return (d2 >= np.square(limit + 1e-6)).all(axis=1)  # the margin covers rounding of the expansion


def counts_for_fraction(fraction: float, radii: Sequence[float], shape, slab) -> int:
    """Particles per class so that all spheres together fill ``fraction`` of the sample slab."""
    sample = (slab[1] - slab[0]) * shape[1] * shape[2]
    per_set = sum(4.0 / 3.0 * math.pi * r**3 for r in radii)
    return int(fraction * sample / per_set)


def place_particles(rng: np.random.Generator, shape, slab, voxel_size: float, radii: Sequence[float],
                    counts: Sequence[int], names: Sequence[str], gap: float,
                    vesicles: np.ndarray | None = None) -> Layout:
    """Random sequential addition of non-overlapping spheres (largest class first); ConfigError
    saying how many were placed when the volume is too crowded for the counts asked."""
    vesicles = np.zeros((0, 5)) if vesicles is None else vesicles
    asked = int(sum(counts))
    centres = np.zeros((0, 3))
    sphere = np.zeros(0)
    classes: list[int] = []
    for c in sorted(range(len(radii)), key=lambda k: (-radii[k], k)):
        r, n = float(radii[c]), int(counts[c])
        if n == 0:
            continue
        lo, hi = _bounds(shape, slab, r)
        if (hi < lo).any():
            raise ConfigError(f"class {names[c]} (radius {r * voxel_size:.0f} A) does not fit in "
                              f"{describe_space(shape, slab, voxel_size)}; give a larger --size or --ice-thickness")
        placed, failures = 0, 0
        while placed < n:
            candidates = lo + rng.uniform(0.0, 1.0, (CANDIDATES, 3)) * (hi - lo)
            ok = _apart(candidates, centres, r + sphere[None] + gap) if len(centres) else np.ones(CANDIDATES, bool)
            if len(vesicles):
                d = np.sqrt(((candidates[:, None, :] - vesicles[None, :, :3]) ** 2).sum(-1))
                ok &= (np.abs(d - vesicles[None, :, 3]) >= r + vesicles[None, :, 4] + gap).all(axis=1)
            accepted: list[int] = []
            for i in np.flatnonzero(ok):
                if accepted:
                    d = np.sqrt(((candidates[accepted] - candidates[i]) ** 2).sum(-1))
                    if (d < 2 * r + gap).any():
                        continue
                accepted.append(int(i))
                if placed + len(accepted) == n:
                    break
            if accepted:
                centres = np.vstack([centres, candidates[accepted]])
                sphere = np.concatenate([sphere, np.full(len(accepted), r)])
                classes += [c] * len(accepted)
                placed += len(accepted)
                failures = 0
            else:
                failures += 1
                if failures >= GIVE_UP_AFTER:
                    raise ConfigError(
                        f"crowding too high: placed {len(classes)} of {asked} particles asked ({names[c]}: {placed} of "
                        f"{n}) in {describe_space(shape, slab, voxel_size)} with a {gap * voxel_size:g} A gap; ask for "
                        "fewer particles (--n-per-class, --volume-fraction) or a larger --size or --ice-thickness")
    return Layout((int(shape[0]), int(shape[1]), int(shape[2])), slab, centres, np.asarray(classes, dtype=np.int64), sphere,
                  vesicles)


# -- density and labels ------------------------------------------------------------------------------

def draw_rotations(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 3, 3) float64 rotations uniform on SO(3), on the CPU."""
    return quaternions_to_matrices(random_quaternions(n, generator)).cpu()


def _clip_box(anchor: np.ndarray, box: int, shape) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """(volume slices, box slices) of a box at ``anchor`` (its first voxel) cut to the volume."""
    dst, src = [], []
    for a, n in zip(anchor, shape):
        lo, hi = max(int(a), 0), min(int(a) + box, int(n))
        if hi <= lo:
            return None
        dst.append(slice(lo, hi))
        src.append(slice(lo - int(a), hi - int(a)))
    return tuple(dst), tuple(src)


def render_particles(density: torch.Tensor, labels: torch.Tensor, templates: Sequence[ClassTemplate],
                     layout: Layout, rotations: torch.Tensor, label_fraction: float, batch_size: int = 32,
                     bar: Any = None) -> None:
    """Add every particle's posed map to ``density`` and its class + 1 to ``labels``, in place."""
    device = density.device
    shape = tuple(density.shape)
    for c, template in enumerate(templates):
        members = np.flatnonzero(layout.classes == c)
        if not len(members):
            continue
        volume = torch.from_numpy(template.density).to(device)
        box = volume.shape[-1]
        half = box // 2
        for start in range(0, len(members), batch_size):
            chosen = members[start:start + batch_size]
            centre = layout.centres[chosen]
            anchor = np.round(centre).astype(np.int64)
            shift = torch.from_numpy(np.ascontiguousarray((centre - anchor)[:, ::-1]))  # (x, y, z) voxels
            posed = rigid_transform(volume.expand(len(chosen), box, box, box), rotations[chosen].float(),
                                    shift.float())
            for i in range(len(chosen)):
                cut = _clip_box(anchor[i] - half, box, shape)
                if cut is None:
                    continue
                dst, src = cut
                part = posed[i][src]
                density[dst] += part
                region = labels[dst]
                region[part > label_fraction] = c + 1
            if bar is not None:
                bar.advance(len(chosen))


def render_membranes(density: torch.Tensor, labels: torch.Tensor, vesicles: np.ndarray, voxel_size: float,
                     label: int) -> None:
    """Add each vesicle's bilayer (two head-group peaks of height 1, ``LEAFLET_SIGMA_A`` wide, at
    +-(half thickness - sigma) from the mid-surface) and label its shell, in place."""
    sigma = math.sqrt(LEAFLET_SIGMA_A**2 + voxel_size**2 / 12.0) / voxel_size  # a voxel-wide box blur added
    shape = tuple(density.shape)
    for z, y, x, radius, half in vesicles:
        offset = max(half - LEAFLET_SIGMA_A / voxel_size, 0.5)
        reach = radius + half + 3 * sigma
        lo = np.maximum(np.floor([z - reach, y - reach, x - reach]).astype(int), 0)
        hi = np.minimum(np.ceil([z + reach, y + reach, x + reach]).astype(int) + 1, shape)
        zz, yy, xx = np.meshgrid(*(np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi)), indexing="ij")
        d = np.sqrt((zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2) - radius
        profile = np.exp(-0.5 * ((d - offset) / sigma) ** 2) + np.exp(-0.5 * ((d + offset) / sigma) ** 2)
        region = tuple(slice(a, b) for a, b in zip(lo, hi))
        density[region] += torch.from_numpy(profile.astype(np.float32)).to(density.device)
        shell = torch.from_numpy(np.abs(d) <= half).to(labels.device)
        cut = labels[region]
        cut[shell & (cut == 0)] = label


def ice_field(shape: Sequence[int], voxel_size: float, std: float, correlation_A: float,
              generator: torch.Generator) -> torch.Tensor:
    """A Gaussian random field (CPU, float32) of standard deviation ``std`` whose spectrum falls as
    exp(-f^2 L^2 / 2) (f in 1/A, L the correlation length), no mean."""
    noise = torch.randn(tuple(int(s) for s in shape), generator=generator)
    spectrum = torch.fft.rfftn(noise)
    fz = torch.fft.fftfreq(int(shape[0])).reshape(-1, 1, 1)
    fy = torch.fft.fftfreq(int(shape[1])).reshape(1, -1, 1)
    fx = torch.fft.rfftfreq(int(shape[2])).reshape(1, 1, -1)
    f2 = (fz**2 + fy**2 + fx**2) / voxel_size**2
    envelope = torch.exp(-0.5 * f2 * correlation_A**2)
    envelope[0, 0, 0] = 0.0
    field = torch.fft.irfftn(spectrum * envelope, s=tuple(int(s) for s in shape))
    spread = float(field.std())
    return field * (std / spread) if spread > 0 else field


# -- imaging -----------------------------------------------------------------------------------------

def _csr(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int], device) -> torch.Tensor:
    """A torch CSR matrix (float32) from COO triplets, duplicates summed."""
    matrix = sparse.csr_matrix((values.astype(np.float32), (rows, cols)), shape=shape)
    matrix.sum_duplicates()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch calls its CSR support beta
        return torch.sparse_csr_tensor(torch.from_numpy(matrix.indptr.astype(np.int64)),
                                       torch.from_numpy(matrix.indices.astype(np.int64)),
                                       torch.from_numpy(matrix.data), size=shape).to(device)


def ray_projector(plane: tuple[int, int], slab: tuple[int, int], angle: float, width: int, chunk: int,
                  device) -> tuple[torch.Tensor, np.ndarray]:
    """Line integrals through the slab's (z, x) planes at tilt ``angle`` (degrees), one voxel per
    step, bilinear: a (depth slabs x detector columns, slab voxels (z, x)) CSR matrix and the mean
    depth (voxels along the beam from the volume centre) of each depth slab of ``chunk`` steps.
    Detector column ``j`` sees ``x cos a + z sin a = j - width // 2`` about the centre (z // 2, x // 2)."""
    nz, nx = plane
    z_lo, z_hi = slab
    nzs = z_hi - z_lo
    a = math.radians(angle)
    ca, sa = math.cos(a), math.sin(a)
    cx, cz, cu = nx // 2, nz // 2, width // 2
    corners = [-(x - cx) * sa + (z - cz) * ca for x in (0, nx - 1) for z in (z_lo, z_hi - 1)]
    s = np.arange(math.floor(min(corners)) - 1, math.ceil(max(corners)) + 2, dtype=np.float64)
    n_slabs = -(-len(s) // chunk)
    u = np.arange(width, dtype=np.float64) - cu
    x = cx + u[:, None] * ca - s[None, :] * sa  # (u, s)
    z = cz + u[:, None] * sa + s[None, :] * ca - z_lo
    row = ((np.arange(len(s)) // chunk)[None, :] * width + np.arange(width)[:, None]).ravel()
    x, z = x.ravel(), z.ravel()
    x0, z0 = np.floor(x).astype(np.int64), np.floor(z).astype(np.int64)
    wx, wz = x - x0, z - z0
    rows, cols, values = [], [], []
    for dz, dx, w in ((0, 0, (1 - wz) * (1 - wx)), (0, 1, (1 - wz) * wx), (1, 0, wz * (1 - wx)), (1, 1, wz * wx)):
        zi, xi = z0 + dz, x0 + dx
        ok = (zi >= 0) & (zi < nzs) & (xi >= 0) & (xi < nx) & (w > 0)
        rows.append(row[ok])
        cols.append(zi[ok] * nx + xi[ok])
        values.append(w[ok])
    depth = np.array([s[k * chunk:(k + 1) * chunk].mean() for k in range(n_slabs)])
    return _csr(np.concatenate(rows), np.concatenate(cols), np.concatenate(values),
                (n_slabs * width, nzs * nx), device), depth


def back_projector(plane: tuple[int, int], angle: float, width: int, device) -> torch.Tensor:
    """The (volume (z, x) voxels, detector columns) CSR matrix that spreads a tilt image's columns
    back along the beam at ``angle``: voxel (z, x) reads column ``x cos a + z sin a`` about the
    centre, linearly interpolated (the geometry of ``ray_projector``)."""
    nz, nx = plane
    a = math.radians(angle)
    zz, xx = np.meshgrid(np.arange(nz) - nz // 2, np.arange(nx) - nx // 2, indexing="ij")
    position = (xx * math.cos(a) + zz * math.sin(a)).ravel() + width // 2
    i0 = np.floor(position).astype(np.int64)
    w = position - i0
    voxel = np.arange(nz * nx)
    rows, cols, values = [], [], []
    for index, weight in ((i0, 1.0 - w), (i0 + 1, w)):
        ok = (index >= 0) & (index < width) & (weight > 0)
        rows.append(voxel[ok])
        cols.append(index[ok])
        values.append(weight[ok])
    return _csr(np.concatenate(rows), np.concatenate(cols), np.concatenate(values), (nz * nx, width), device)


class TomogramPhysics:
    """The ``tilt-series`` simulator's imaging applied to a whole volume (see the module docstring).

    Options and defaults are the ``tilt-series`` simulator's (``defocus_um`` underfocus negative, as
    there; one value is drawn per tomogram), plus ``defocus_step_A``: the depth along the beam
    over which one CTF applies.
    """

    name = "simulate-tomogram"

    def __init__(self, tilt_range: Sequence[float] = (-60.0, 60.0), tilt_step: float = 3.0, dose: float = 120.0,
                 defocus_um: float | Sequence[float] = (-6.0, -2.0), voltage_kv: float = 300.0, cs_mm: float = 2.7,
                 amplitude_contrast: float = 0.07, bfactor: float = 100.0, mtf: bool = True,
                 phase_per_A: float = 2e-3, ice: float = 0.15, ice_correlation_A: float = 150.0,
                 shot_noise: str = "gaussian", ctf: bool = True, defocus_step_A: float | None = None):
        # the tilt-series simulator checks every value it shares with this one, with its messages
        base = TiltSeriesSimulator(tilt_range=tilt_range, tilt_step=tilt_step, dose=dose, defocus_um=defocus_um,
                                   voltage_kv=voltage_kv, cs_mm=cs_mm, amplitude_contrast=amplitude_contrast,
                                   bfactor=bfactor, mtf=mtf, phase_per_A=phase_per_A, crowding=0, ice=ice,
                                   shot_noise=shot_noise, pad=1, ctf=ctf)
        try:
            step = None if defocus_step_A is None else float(defocus_step_A)
            correlation = float(ice_correlation_A)
        except (TypeError, ValueError):
            raise ConfigError(f"defocus_step_A {defocus_step_A!r} and ice_correlation_A {ice_correlation_A!r}: "
                              "expected numbers > 0 (Angstrom)") from None
        if step is not None and not (math.isfinite(step) and step > 0):
            raise ConfigError(f"defocus_step_A {defocus_step_A!r}: expected a depth > 0 Angstrom")
        if not (math.isfinite(correlation) and correlation > 0):
            raise ConfigError(f"ice_correlation_A {ice_correlation_A!r}: expected a length > 0 Angstrom")
        self.angles = base.angles
        self.tilt_range, self.tilt_step, self.dose = base.tilt_range, base.tilt_step, base.dose
        self.defocus_um = base.defocus_um
        self.voltage_kv, self.cs_mm, self.amplitude_contrast = base.voltage_kv, base.cs_mm, base.amplitude_contrast
        self.bfactor, self.mtf, self.phase_per_A = base.bfactor, base.mtf, base.phase_per_A
        self.ice, self.ice_correlation_A = base.ice, correlation
        self.shot_noise, self.use_ctf, self.defocus_step_A = base.shot_noise, base.use_ctf, step

    def depth_step(self, voxel_size: float) -> int:
        """Voxels along the beam that share one CTF: ``defocus_step_A``, or by default the depth over
        which the CTF phase at Nyquist moves by at most 0.2 rad (pi lambda dz s^2 with dz half the
        step, s = 1 / (2 voxel)): 1300 A at 10 A voxels, 52 A at 2 A."""
        if self.defocus_step_A is not None:
            step = self.defocus_step_A
        else:
            step = 0.8 * voxel_size**2 / (math.pi * ctf_model.electron_wavelength_A(self.voltage_kv))
        return max(1, int(round(step / voxel_size)))

    def describe(self) -> dict[str, Any]:
        """The options, as simulation.json records them (defocus underfocus positive, micrometres)."""
        return {"tilt_range_deg": [float(self.angles[0]), float(self.angles[-1])], "tilt_step_deg": self.tilt_step,
                "tilts": len(self.angles), "dose_e_per_A2": self.dose,
                "defocus_underfocus_um": sorted(-v for v in self.defocus_um), "voltage_kv": self.voltage_kv,
                "cs_mm": self.cs_mm, "amplitude_contrast": self.amplitude_contrast, "bfactor_A2": self.bfactor,
                "mtf": self.mtf, "phase_per_A": self.phase_per_A, "ice_std": self.ice,
                "ice_correlation_A": self.ice_correlation_A, "shot_noise": self.shot_noise, "ctf": self.use_ctf,
                "defocus_step_A": self.defocus_step_A if self.defocus_step_A is not None else "auto"}

    def detector_width(self, shape: Sequence[int]) -> int:
        """Detector columns that see every voxel of the volume at every tilt."""
        nz, _, nx = (int(s) for s in shape)
        rad = np.radians(self.angles)
        reach = (nx / 2 + 1) * np.abs(np.cos(rad)) + (nz / 2 + 1) * np.abs(np.sin(rad))
        return 2 * int(math.ceil(float(reach.max()))) + 4

    def work_bytes(self, shape: Sequence[int], voxel_size: float) -> int:
        """An upper estimate of the memory the imaging holds besides the input volume."""
        nz, ny, nx = (int(s) for s in shape)
        width = self.detector_width(shape)
        images = len(self.angles) * ny * width * 4
        slabs = -(-int(math.hypot(nz, nx)) // self.depth_step(voxel_size)) + 1
        padded = (ny + 32) * 2 * width * 8
        matrices = 12 * 6 * nz * nx  # the projector's and back-projector's entries (value, column, row)
        return 3 * nz * ny * nx * 4 + images + (slabs + 6) * padded + slabs * ny * width * 4 + matrices

    @torch.no_grad()
    def image(self, density: torch.Tensor, voxel_size: float, slab: tuple[int, int], underfocus_A: float,
              generator: torch.Generator, keep_images: bool = False, bar: Any = None
              ) -> tuple[torch.Tensor, np.ndarray | None, dict[str, Any]]:
        """Tilt series and reconstruction of ``density`` (z, y, x; protein 1 relative to ice, zero
        outside the slab). Returns (tomogram (z, y, x) on the CPU, the tilt images (T, y, u) when
        ``keep_images``, per-tilt records)."""
        device = density.device
        nz, ny, nx = (int(s) for s in density.shape)
        z_lo, z_hi = slab
        nzs = z_hi - z_lo
        angles = [float(a) for a in self.angles]
        t_count = len(angles)
        width = self.detector_width(density.shape)
        # the CTF acts on images padded by a margin; the ramp filter on images padded to twice their width
        n_y, n_c, n_u = next_fast_len(ny + 32), next_fast_len(width + 32), next_fast_len(2 * width)
        half = n_c // 2 + 1

        fy = torch.fft.fftfreq(n_y, device=device).reshape(-1, 1)
        fc = torch.fft.rfftfreq(n_c, device=device).reshape(1, -1)
        fu = torch.fft.rfftfreq(n_u, device=device).reshape(1, -1)
        s2 = (fy**2 + fc**2) / voxel_size**2
        dose_per_tilt = self.dose / t_count
        rank = dose_symmetric_order(np.asarray(angles))
        critical = critical_exposure(s2.sqrt())
        base_envelope = ctf_model.bfactor_envelope(s2, self.bfactor) * (2.0 * self.phase_per_A * voxel_size)
        weight = fu.clamp_min(0.5 / n_u) * 2.0
        if self.mtf:
            weight = weight * ctf_model.detector_mtf(torch.sqrt(fu**2 + fy**2))
        thickness_A = nzs * voxel_size

        # (z, x) planes as rows, y as columns: every tilt is one sparse matrix product for all y
        source = density[z_lo:z_hi].permute(0, 2, 1).reshape(nzs * nx, ny)
        chunk = self.depth_step(voxel_size)
        tomogram = torch.zeros(nz * nx, ny, device=device)
        images = np.empty((t_count, ny, width), dtype=np.float32) if keep_images else None
        records = []
        for t, angle in enumerate(angles):
            ca = math.cos(math.radians(angle))
            projector, depths = ray_projector((nz, nx), slab, angle, width, chunk, device)
            projections = (projector @ source).reshape(len(depths), width, ny).permute(0, 2, 1)  # (slab, y, u)
            spectra = torch.fft.rfft2(projections, s=(n_y, n_c))
            del projections
            if self.use_ctf:
                defocus = torch.tensor(underfocus_A - depths * voxel_size, dtype=s2.dtype, device=device)
                spectrum = torch.zeros(n_y, half, dtype=spectra.dtype, device=device)
                for k in range(0, len(depths), 16):  # the CTFs of 16 depth slabs at a time
                    transfer = ctf_model.ctf(s2, defocus[k:k + 16], self.cs_mm, self.voltage_kv,
                                             self.amplitude_contrast)
                    spectrum += (spectra[k:k + 16] * transfer).sum(dim=0)
            else:
                spectrum = -spectra.sum(dim=0)  # plain negative contrast (for checking the geometry)
            del spectra
            prior = float(rank[t]) * dose_per_tilt + 0.5 * dose_per_tilt
            envelope = base_envelope * torch.exp(-prior / (2.0 * critical))
            contrast = torch.fft.irfft2(spectrum * envelope, s=(n_y, n_c))[:ny, :width]

            electrons = dose_per_tilt * voxel_size**2 * math.exp(-thickness_A / (abs(ca) * INELASTIC_MFP_A))
            expected = electrons * (1.0 + contrast).clamp_min(0.0)
            if self.shot_noise == "poisson":
                detected = torch.poisson(expected.cpu(), generator=generator).to(device)
            elif self.shot_noise == "gaussian":
                normal = torch.randn(expected.shape, generator=generator).to(device)
                detected = expected + expected.sqrt() * normal
            else:
                detected = expected
            image = detected / electrons - 1.0
            if images is not None:
                images[t] = image.cpu().numpy()
            filtered = torch.fft.irfft2(torch.fft.rfft2(image, s=(n_y, n_u)) * weight, s=(n_y, n_u))[:ny, :width]

            tomogram += back_projector((nz, nx), angle, width, device) @ filtered.T.contiguous()
            records.append({"angle": angle, "pre_exposure": float(rank[t]) * dose_per_tilt,
                            "underfocus_A": underfocus_A, "electrons_per_pixel": electrons})
            if bar is not None:
                bar.advance(1)
        volume = (tomogram / t_count).reshape(nz, nx, ny).permute(0, 2, 1).contiguous().cpu()  # (z, y, x)
        return volume, images, {"tilts": records, "detector_width": width}


# -- one tomogram --------------------------------------------------------------------------------------

@dataclass
class TomogramResult:
    """One simulated tomogram and everything known about it."""

    name: str
    tomogram: np.ndarray  # (z, y, x) float32
    labels: np.ndarray  # (z, y, x) int16: 0 background, class + 1, membranes n_classes + 1
    layout: Layout
    angles: np.ndarray  # (N, 3) rlnAngleRot/Tilt/Psi, degrees
    rotations: np.ndarray  # (N, 3, 3)
    underfocus_A: float
    tilts: list[dict[str, Any]]
    images: np.ndarray | None = None
    detector_width: int = 0


def tomogram_seeds(seed: int, index: int) -> tuple[np.random.Generator, torch.Generator]:
    """The random streams of tomogram ``index`` of a run seeded with ``seed``: NumPy for the layout
    and defocus, torch (CPU) for the rotations, the ice and the shot noise."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    generator = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    return rng, generator


def simulate_tomogram(name: str, templates: Sequence[ClassTemplate], shape: Sequence[int], voxel_size: float,
                      physics: TomogramPhysics, counts: Sequence[int], slab: tuple[int, int], gap_A: float = 10.0,
                      membranes: MembraneSpec | None = None, label_fraction: float = 0.2, seed: int = 0,
                      index: int = 0, device: str = "cpu", batch_size: int = 32, keep_images: bool = False,
                      quiet: bool = True) -> TomogramResult:
    """Lay out, render, image and reconstruct one labelled tomogram (see the module docstring)."""
    shape = tuple(int(s) for s in shape)
    rng, generator = tomogram_seeds(seed, index)
    low, high = (-v for v in physics.defocus_um[::-1])  # underfocus, micrometres
    underfocus_A = float(rng.uniform(low, high)) * 1e4
    gap = gap_A / voxel_size
    spec = membranes or MembraneSpec()
    vesicles = draw_vesicles(rng, shape, slab, voxel_size, spec, gap)
    layout = place_particles(rng, shape, slab, voxel_size, [t.radius for t in templates], counts,
                             [t.name for t in templates], gap, vesicles)
    rotations = draw_rotations(len(layout.classes), generator)
    density = torch.zeros(shape, device=device)
    labels = torch.zeros(shape, dtype=torch.int16, device=device)
    with progress.stage(f"{name}: place particles", len(layout.classes), "particles", enabled=not quiet) as bar:
        render_particles(density, labels, templates, layout, rotations, label_fraction, batch_size, bar)
    render_membranes(density, labels, vesicles, voxel_size, len(templates) + 1)
    if physics.ice > 0:
        field = ice_field((slab[1] - slab[0], shape[1], shape[2]), voxel_size, physics.ice,
                          physics.ice_correlation_A, generator)
        density[slab[0]:slab[1]] += field.to(device)
        del field
    with progress.stage(f"{name}: tilt series", len(physics.angles), "tilts", enabled=not quiet) as bar:
        tomogram, images, info = physics.image(density, voxel_size, slab, underfocus_A, generator, keep_images, bar)
    del density
    angles = matrices_to_euler_zyz(rotations).numpy() if len(rotations) else np.zeros((0, 3))
    return TomogramResult(name, tomogram.numpy(), labels.cpu().numpy(), layout, angles, rotations.numpy(),
                          underfocus_A, info["tilts"], images, info["detector_width"])

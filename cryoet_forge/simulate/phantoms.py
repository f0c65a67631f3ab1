"""Procedural density phantoms that differ the way macromolecules do, for offline use.

Every class is built in a canonical (unrotated) orientation, centred in the box, with a
characteristic radius of ``min(100 A / voxel_size, 0.35 * box)`` voxels: a ~20 nm particle
when the box allows it, shrunk to fit small boxes. ``seed`` perturbs proportions (about
+-10 %) and adds a faint smooth surface texture so two seeds give two distinct instances
of the same class. Values are >= 0 with a maximum of 1 (background 0).

- ``barrel``: a hollow cylinder of four stacked rings (proteasome-like).
- ``two-lobe``: a large and a small lobe joined by a neck (ribosome-like).
- ``ring``: a seven-fold lumpy torus with an open centre (chaperonin seen end-on).
- ``globule``: a compact dense particle made of a few fused blobs.
- ``membrane``: a curved lipid bilayer patch (two dense leaflets) with an embedded protein.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cryoet_forge.errors import InputError
from cryoet_forge.io.mrc import check_voxel_size

PHANTOM_CLASSES: list[str] = ["barrel", "two-lobe", "ring", "globule", "membrane"]

_CHARACTERISTIC_RADIUS_A = 100.0


def characteristic_radius(box: int, voxel_size: float) -> float:
    """Radius (voxels) of the phantoms for this box and voxel size."""
    return float(min(_CHARACTERISTIC_RADIUS_A / voxel_size, 0.35 * box))


def _coordinates(box: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # voxel centres relative to the box centre (index box // 2), in (z, y, x) order
    axis = np.arange(box, dtype=np.float32) - box // 2
    return np.meshgrid(axis, axis, axis, indexing="ij")


def _soft(distance_inside: np.ndarray, width: float = 0.6) -> np.ndarray:
    """Smooth step: 1 well inside (positive), 0 well outside, over ``width`` voxels."""
    return 0.5 * (1.0 + np.tanh(distance_inside / max(width, 1e-3)))


def _barrel(z, y, x, r, rng):
    outer = r * 0.62 * rng.uniform(0.92, 1.08)
    inner = outer * rng.uniform(0.45, 0.55)
    half_height = r * 0.95 * rng.uniform(0.92, 1.08)
    radial = np.sqrt(x**2 + y**2)
    wall = np.minimum(outer - radial, radial - inner)
    body = _soft(wall) * _soft(half_height - np.abs(z))
    # four stacked rings separated by shallow grooves, as in the 20S proteasome
    period = 2 * half_height / 4
    grooves = 1.0 - 0.45 * np.exp(-0.5 * ((np.mod(z + half_height, period) - 0) / (0.12 * period + 0.3)) ** 2)
    return body * grooves


def _two_lobe(z, y, x, r, rng):
    big_r = r * 0.62 * rng.uniform(0.92, 1.08)
    small_r = big_r * rng.uniform(0.62, 0.72)
    big_c = np.array([0.0, 0.0, -0.28 * r])
    small_c = np.array([0.12 * r, 0.0, big_r * 0.55 + small_r * 0.55 - 0.28 * r])
    squash = rng.uniform(0.75, 0.85)  # lobes are flattened, like ribosomal subunits
    big = big_r - np.sqrt(((z - big_c[0]) / squash) ** 2 + (y - big_c[1]) ** 2 + (x - big_c[2]) ** 2)
    small = small_r - np.sqrt(((z - small_c[0]) / 0.9) ** 2 + ((y - small_c[1]) / squash) ** 2
                              + (x - small_c[2]) ** 2)
    return np.maximum(_soft(big), 0.85 * _soft(small))


def _ring(z, y, x, r, rng):
    major = r * 0.68 * rng.uniform(0.92, 1.08)
    minor = r * 0.22 * rng.uniform(0.9, 1.1)
    radial = np.sqrt(x**2 + y**2)
    phi = np.arctan2(y, x)
    lumps = 1.0 + 0.22 * np.cos(7 * phi + rng.uniform(0, 2 * np.pi))  # seven subunits
    tube = minor * lumps - np.sqrt((radial - major) ** 2 + (z / 1.3) ** 2)
    return _soft(tube)


def _globule(z, y, x, r, rng):
    density = np.zeros_like(z)
    centre_r = r * 0.58 * rng.uniform(0.92, 1.08)
    density = np.maximum(density, _soft(centre_r - np.sqrt(z**2 + y**2 + x**2)))
    for _ in range(4):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        c = direction * centre_r * 0.75
        blob_r = centre_r * rng.uniform(0.5, 0.65)
        d = blob_r - np.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2)
        density = np.maximum(density, _soft(d))
    return density


def _membrane(z, y, x, r, rng, voxel_size):
    # bilayer: two head-group leaflets ~40 A apart, curved with radius ~4r, cut to a disc
    curvature_r = r * rng.uniform(3.5, 4.5)
    separation = max(40.0 / voxel_size, 1.2)
    height = z + (x**2 + y**2) / (2 * curvature_r)  # distance from a paraboloid sheet
    leaflet_sigma = max(0.22 * separation, 0.5)
    leaflets = (np.exp(-0.5 * ((height - separation / 2) / leaflet_sigma) ** 2)
                + np.exp(-0.5 * ((height + separation / 2) / leaflet_sigma) ** 2))
    disc = _soft(r * 1.1 - np.sqrt(x**2 + y**2), width=1.0)
    protein_r = r * 0.28 * rng.uniform(0.9, 1.1)
    offset = r * 0.3 * rng.uniform(-1, 1)
    protein = _soft(protein_r - np.sqrt(((height - protein_r * 0.6) / 1.4) ** 2 + y**2 + (x - offset) ** 2))
    return np.maximum(0.8 * leaflets * disc, protein)


def make_phantom(name: str, box: int, voxel_size: float = 10.0, seed: int = 0) -> np.ndarray:
    """A (box, box, box) float32 phantom of class ``name`` (see PHANTOM_CLASSES), max 1."""
    if name not in PHANTOM_CLASSES:
        raise InputError(f"unknown phantom class {name!r}; choose from: {', '.join(PHANTOM_CLASSES)}")
    if int(box) != box or box < 8:
        raise InputError(f"phantom box {box!r} is too small; expected an integer >= 8")
    voxel_size = check_voxel_size(voxel_size)
    box = int(box)
    rng = np.random.default_rng([int(seed), PHANTOM_CLASSES.index(name)])
    z, y, x = _coordinates(box)
    r = characteristic_radius(box, voxel_size)
    if name == "barrel":
        density = _barrel(z, y, x, r, rng)
    elif name == "two-lobe":
        density = _two_lobe(z, y, x, r, rng)
    elif name == "ring":
        density = _ring(z, y, x, r, rng)
    elif name == "globule":
        density = _globule(z, y, x, r, rng)
    else:
        density = _membrane(z, y, x, r, rng, voxel_size)
    # faint smooth texture: internal density is never perfectly uniform in a real complex
    texture = ndimage.gaussian_filter(rng.normal(size=density.shape).astype(np.float32), sigma=1.5)
    texture /= max(float(np.abs(texture).max()), 1e-6)
    density = density * (1.0 + 0.15 * texture)
    # band-limit to about two voxels so the map is not sharper than its sampling allows
    density = ndimage.gaussian_filter(density.astype(np.float32), sigma=0.7)
    density = np.clip(density, 0.0, None)
    peak = float(density.max())
    if peak > 0:
        density /= peak
    return density.astype(np.float32)

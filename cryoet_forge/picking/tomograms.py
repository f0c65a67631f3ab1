"""Labelled tomograms: a volume, its particles (class, centre) and the per-voxel targets a
segmentation picker trains on.

Coordinates follow RELION: (x, y, z) in voxels of the tomogram, 0-based, integer values at voxel
centres, so the voxel ``volume[k, j, i]`` has its centre at (x, y, z) = (i, j, k). Radii are in
Angstrom, as in picking scores; ``radius_voxels`` converts them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryoet_forge.data.copick import copick_jobs, open_project
from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.extract import to_voxels
from cryoet_forge.io.picks import read_picks
from cryoet_forge.io.tomograms import open_tomogram


@dataclass
class LabelledTomogram:
    """A (Z, Y, X) float32 ``volume``, its particles per class as (N, 3) (x, y, z) voxel centres
    and each class's particle radius in Angstrom."""

    name: str
    volume: np.ndarray
    voxel_size: float
    picks: dict[str, np.ndarray] = field(default_factory=dict)
    radii_A: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.volume = np.asarray(self.volume, dtype=np.float32)
        if self.volume.ndim != 3:
            raise InputError(f"tomogram {self.name}: expected a 3-D (Z, Y, X) volume, got shape {self.volume.shape}")
        if not self.voxel_size > 0:
            raise InputError(f"tomogram {self.name}: voxel size must be > 0 A, got {self.voxel_size}")
        self.picks = {str(k): np.asarray(v, dtype=np.float64).reshape(-1, 3) for k, v in self.picks.items()}
        missing = sorted(set(self.picks) - set(self.radii_A))
        if missing:
            raise ConfigError(f"tomogram {self.name}: no particle radius (A) for class(es) {', '.join(missing)}")

    @property
    def class_names(self) -> list[str]:
        return sorted(self.picks)

    def radius_voxels(self, name: str) -> float:
        return float(self.radii_A[name]) / self.voxel_size


def sphere_labels(shape: tuple[int, int, int], picks: Mapping[str, np.ndarray], radii_voxels: Mapping[str, float],
                  class_names: Sequence[str], fraction: float = 0.5) -> np.ndarray:
    """(Z, Y, X) uint8 targets: 0 background, ``class_names.index(c) + 1`` within ``fraction`` x the
    class's radius of each of its particle centres (DeepFinder's sphere targets; a small fraction
    keeps close neighbours apart). Where spheres overlap, the later particle wins."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"label sphere fraction must be in (0, 1], got {fraction}")
    if len(class_names) > 254:
        raise ConfigError(f"at most 254 classes fit uint8 labels, got {len(class_names)}")
    labels = np.zeros(shape, dtype=np.uint8)
    for name, points in picks.items():
        if name not in class_names:
            raise InputError(f"picks of class {name!r}, not among the classes {', '.join(class_names)}")
        value = class_names.index(name) + 1
        r = max(float(radii_voxels[name]) * fraction, 0.5)
        reach = int(np.ceil(r))
        offsets = np.arange(-reach, reach + 1)
        for x, y, z in np.asarray(points, dtype=np.float64).reshape(-1, 3):
            centre = np.rint([z, y, x]).astype(int)
            lo = np.maximum(centre - reach, 0)
            hi = np.minimum(centre + reach + 1, shape)
            if np.any(hi <= lo):
                continue  # outside the volume
            zz, yy, xx = (offsets[(lo[a] - centre[a] + reach):(hi[a] - centre[a] + reach)] + centre[a]
                          for a in range(3))
            d2 = ((zz[:, None, None] - z) ** 2 + (yy[None, :, None] - y) ** 2 + (xx[None, None, :] - x) ** 2)
            block = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            block[d2 <= r * r] = value
    return labels


def tomogram_names(picks_path: str | os.PathLike, unit: str | None = None, class_column: str | None = None) -> list[str]:
    """The tomogram names of a pick table, sorted."""
    table = read_picks(picks_path, unit=unit, class_column=class_column).table
    return sorted(set(table["tomogram"].astype(str)))


def read_radii(picks_path: str | os.PathLike, column: str, class_column: str | None = None) -> dict[str, float]:
    """class -> the median of a per-particle radius column (Angstrom) of a pick table (CSV/TSV or
    STAR, e.g. ``radius_A`` of a coordinate list or ``forgeRadiusAngst`` of ``forge simulate-tomogram``)."""
    path = Path(picks_path)
    picks = read_picks(path, class_column=class_column, unit="px" if path.suffix.lower() != ".star" else None)
    if path.suffix.lower() == ".star":
        blocks = starfile.read(path, always_dict=True)
        raw = next((b for b in blocks.values() if isinstance(b, pd.DataFrame) and column in b.columns), None)
    else:
        raw = pd.read_csv(path, sep=None, engine="python")
    if raw is None or column not in raw.columns:
        raise InputError(f"{path}: no radius column {column!r}")
    values = pd.to_numeric(raw[column], errors="coerce").to_numpy()
    if len(values) != len(picks.table) or not (np.isfinite(values) & (values > 0)).all():
        raise InputError(f"{path}: radius column {column!r} must hold a number > 0 (Angstrom) on every row")
    names = picks.table["class_name"].astype(str).to_numpy()
    return {c: float(np.median(values[names == c])) for c in sorted(set(names))}


def load_labelled_tomograms(picks_path: str | os.PathLike, tomograms: str | os.PathLike, names: Sequence[str],
                            radii_A: Mapping[str, float], unit: str | None = None, voxel_size: float | None = None,
                            class_column: str | None = None) -> list[LabelledTomogram]:
    """The tomograms ``names`` (files NAME.mrc, .rec or .zarr in the folder ``tomograms``) with
    their picks from ``picks_path`` (any table ``forge extract`` reads) converted to voxels."""
    picks = read_picks(picks_path, unit=unit, class_column=class_column)
    table = picks.table
    folder = Path(tomograms)
    out = []
    for name in names:
        rows = table[table["tomogram"].astype(str) == str(name)]
        if rows.empty:
            raise InputError(f"{picks.source}: no picks of tomogram {name!r} "
                             f"(tomograms there: {', '.join(sorted(set(table['tomogram'].astype(str))))})")
        candidates = sorted(p for p in folder.glob(f"{name}.*") if p.suffix.lower() in (".mrc", ".rec", ".zarr"))
        if not candidates:
            raise InputError(f"{folder}: no tomogram file {name}.mrc (or .rec, .zarr) for the picks of {name}")
        with open_tomogram(candidates[0], name=str(name), voxel_size=voxel_size) as tomogram:
            volume = np.asarray(tomogram.data[:], dtype=np.float32)
            size = float(tomogram.voxel_size)
        out.append(_labelled(str(name), volume, size, rows, picks.unit, radii_A, picks.source))
    return out


def _labelled(name: str, volume: np.ndarray, voxel_size: float, rows: pd.DataFrame, unit: str,
              radii_A: Mapping[str, float], source: str, hint: str = "") -> LabelledTomogram:
    """One labelled tomogram from its volume and its pick rows (``x, y, z, shift_*, class_name`` in ``unit``)."""
    xyz = to_voxels(rows, unit, voxel_size)[:, ::-1]  # (z, y, x) -> (x, y, z)
    classes = rows["class_name"].astype(str).to_numpy()
    per_class = {c: xyz[classes == c] for c in sorted(set(classes))}
    unknown = sorted(set(per_class) - set(radii_A))
    if unknown:
        raise ConfigError(f"no particle radius (A) for class(es) {', '.join(unknown)} of {source}{hint}")
    return LabelledTomogram(name, volume, voxel_size, per_class, {c: float(radii_A[c]) for c in per_class})


def copick_radii(config: str | os.PathLike) -> dict[str, float]:
    """object name -> particle radius (Angstrom) of a copick project's pickable particle objects
    that state one."""
    objects = open_project(config).pickable_objects
    return {o.name: float(o.radius) for o in objects
            if getattr(o, "is_particle", True) and getattr(o, "radius", None) and float(o.radius) > 0}


def copick_run_names(config: str | os.PathLike) -> list[str]:
    """The run names of a copick project, sorted."""
    return sorted(r.name for r in open_project(config).runs)


def load_copick_tomograms(config: str | os.PathLike, runs: Sequence[str], radii_A: Mapping[str, float] | None = None,
                          tomo_type: str = "wbp", voxel_spacing: float | None = None, user_id: str | None = None,
                          session_id: str | None = None) -> list[LabelledTomogram]:
    """The runs ``runs`` of a copick project as labelled tomograms: each run's ``tomo_type`` tomogram
    at ``voxel_spacing`` (the run's only one when None) and its particle picks (``user_id``,
    ``session_id`` select a pick set), converted from Angstrom to voxels. ``radii_A`` defaults to the
    radii the project's objects state."""
    radii = dict(radii_A) if radii_A is not None else copick_radii(config)
    jobs = copick_jobs(config, None, voxel_spacing, tomo_type, runs=list(runs), user_id=user_id,
                       session_id=session_id)
    by_run = {tomogram.name: (tomogram, table) for tomogram, table, _ in jobs}
    out = []
    for name in runs:
        if name not in by_run:
            raise InputError(f"{config}: run {name!r} has no particle picks"
                             + (f" of user {user_id!r}" if user_id else "") + (f", session {session_id!r}" if session_id else ""))
        tomogram, table = by_run[name]
        try:
            volume = np.asarray(tomogram.data[:], dtype=np.float32)
            size = float(tomogram.voxel_size)
        finally:
            tomogram.close()
        out.append(_labelled(str(name), volume, size, table, "angstrom", radii, str(config),
                             "; the project states none: give --radius CLASS=A"))
    return out

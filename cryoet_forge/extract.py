"""Subtomograms cut out of tomograms around picks: ``forge extract`` and the copick dataset.

For each pick at tomogram position ``p`` (voxels, float) a box of ``box`` voxels of
``voxel_size`` Angstrom is made with the particle centre at voxel ``box // 2`` (the project's
convention) on every axis:

1. a region of ``M`` tomogram voxels around ``round(p)`` is read (a memory-mapped MRC or an
   OME-Zarr level: only that region); ``M`` is chosen so that ``M * tomogram voxel / voxel_size``
   is an integer ``L >= box + 2 * MARGIN`` (or within 0.5% of one; the voxel size written is then
   the exact ``M * tomogram voxel / L``);
2. its spectrum is cropped (finer tomogram) or zero-padded (coarser) from ``M`` to ``L``: Fourier
   rescaling, not nearest-neighbour, so no aliasing beyond the new Nyquist frequency;
3. the fractional part of the position is removed by a Fourier phase shift (sub-voxel centring);
4. the central ``box`` voxels are kept (the margin absorbs the wrap-around of the shift).

When the tomogram already has the wanted voxel size and a pick sits on a voxel centre, steps 2-3
are skipped (a plain copy). Voxels outside the tomogram read as the mean of the inside part;
picks whose box leaves the tomogram are skipped and counted (``edge = "skip"``, the default) or
kept with that padding (``edge = "pad"``). ``invert`` multiplies by -1 (only for tomograms that show
protein bright: the product's convention is protein dark, cryoet_forge.data.polarity); ``normalize = "zscore"`` subtracts the mean and divides by the standard deviation of the
voxels outside a sphere of radius ``0.4 * box`` (the background, as RELION's bg_radius).
``background > 0`` adds that many boxes per tomogram (class ``background``) centred at least
``min_distance`` Angstrom from every pick and inside the tomogram.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import fft as sfft
from scipy.fft import next_fast_len
from scipy.spatial import cKDTree

from cryoet_forge import progress
from cryoet_forge.errors import InputError
from cryoet_forge.io.mrc import check_voxel_size
from cryoet_forge.io.picks import ANGLE_COLUMNS
from cryoet_forge.io.tomograms import Tomogram

MARGIN = 3
NORMALIZATIONS = ("none", "zscore")
EDGES = ("skip", "pad")
BACKGROUND = "background"


@dataclass
class ExtractOptions:
    box: int = 32
    #: Angstrom per voxel of the output; None keeps each tomogram's own
    voxel_size: float | None = None
    invert: bool = False
    normalize: str = "zscore"
    edge: str = "skip"
    background: int = 0
    min_distance: float = 0.0
    seed: int = 0

    def check(self) -> ExtractOptions:
        if int(self.box) < 4:
            raise InputError(f"--box {self.box}: expected an integer >= 4 voxels")
        self.box = int(self.box)
        if self.voxel_size is not None and not (math.isfinite(self.voxel_size) and self.voxel_size > 0):
            raise InputError(f"--voxel-size {self.voxel_size}: expected Angstrom > 0")
        if self.voxel_size is not None:
            check_voxel_size(self.voxel_size, "--voxel-size")
        if self.normalize not in NORMALIZATIONS:
            raise InputError(f"--normalize {self.normalize!r}: expected one of {', '.join(NORMALIZATIONS)}")
        if self.edge not in EDGES:
            raise InputError(f"edge {self.edge!r}: expected one of {', '.join(EDGES)}")
        if self.background < 0:
            raise InputError(f"--background {self.background}: expected a number of boxes >= 0")
        if not (math.isfinite(self.min_distance) and self.min_distance >= 0):
            raise InputError(f"--min-distance {self.min_distance}: expected a finite distance >= 0 (Angstrom)")
        if self.background and not self.min_distance > 0:
            raise InputError("--background needs --min-distance > 0 (Angstrom from every pick)")
        return self


@dataclass
class ExtractResult:
    volumes: np.ndarray
    table: pd.DataFrame
    class_names: list[str]
    voxel_size: float
    #: per class: extracted, skipped at the edge
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        return summary_lines(self.class_names, self.counts, self.notes)


def summary_lines(class_names: list[str], counts: dict[str, dict[str, int]], notes: list[str]) -> list[str]:
    """One line per class: extracted, skipped at the edge (and why), padded; then the notes."""
    lines = []
    for name in class_names:
        c = counts.get(name, {})
        extra = []
        if c.get("skipped_edge", 0):
            extra.append(f"{c['skipped_edge']} skipped (box leaves the tomogram; --pad-edge keeps them)")
        if c.get("padded_edge", 0):
            extra.append(f"{c['padded_edge']} padded at the edge")
        lines.append(f"{name}: {c.get('extracted', 0)} extracted" + (", " + ", ".join(extra) if extra else ""))
    return lines + list(notes)


def region_plan(box: int, tomo_voxel: float, voxel: float) -> tuple[int, int]:
    """(M, L): read M tomogram voxels, resample to L >= box + 2 MARGIN output voxels, with
    M * tomo_voxel / L as close to ``voxel`` as the search finds (exact when the ratio allows)."""
    ratio = tomo_voxel / voxel  # output voxels per tomogram voxel
    need = box + 2 * MARGIN
    start = max(4, math.ceil(need / ratio))
    best = None
    for m in range(start, start + max(16, start)):
        ell = round(m * ratio)
        if ell < need:
            continue
        err = abs(m * tomo_voxel / ell - voxel) / voxel
        if best is None or err < best[0] - 1e-12:
            best = (err, m, ell)
        if err < 1e-9:
            break
    assert best is not None
    if best[0] > 5e-3:
        raise InputError(f"--voxel-size {voxel}: cannot resample {tomo_voxel} A voxels to it within 0.5% "
                         f"(best {best[1] * tomo_voxel / best[2]:.4g} A); choose a voxel size closer to a "
                         "ratio of small integers")
    return best[1], best[2]


def _centred_resize(spectrum: np.ndarray, size: int, axes: tuple[int, ...]) -> np.ndarray:
    """Crop or zero-pad full (not half) frequency axes of an unshifted spectrum to ``size``."""
    m = spectrum.shape[axes[0]]
    keep = min(m, size)
    shifted = np.fft.fftshift(spectrum, axes=axes)
    shape = list(spectrum.shape)
    for a in axes:
        shape[a] = size
    out = np.zeros(shape, dtype=spectrum.dtype)
    src = slice(m // 2 - keep // 2, m // 2 - keep // 2 + keep)
    dst = slice(size // 2 - keep // 2, size // 2 - keep // 2 + keep)
    index_src = tuple(src if a in axes else slice(None) for a in range(spectrum.ndim))
    index_dst = tuple(dst if a in axes else slice(None) for a in range(spectrum.ndim))
    out[index_dst] = shifted[index_src]
    return np.fft.ifftshift(out, axes=axes)


def _resample_shift(region: np.ndarray, size: int, shift: np.ndarray) -> np.ndarray:
    """Fourier-resample a cube from its size to ``size`` and move its content by ``-shift``
    output voxels (out[k] = in at k + shift), in one pass of real FFTs (single precision)."""
    m = region.shape[0]
    spectrum = sfft.rfftn(region.astype(np.float32, copy=False))
    if size != m:
        spectrum = _centred_resize(spectrum, size, (0, 1))
        half = size // 2 + 1
        last = np.zeros(spectrum.shape[:2] + (half,), dtype=spectrum.dtype)
        keep = min(half, spectrum.shape[2])
        last[..., :keep] = spectrum[..., :keep]
        spectrum = last
    if np.any(shift):
        f, fx = np.fft.fftfreq(size), np.fft.rfftfreq(size)
        phase = (np.exp(2j * np.pi * f * shift[0]).astype(np.complex64)[:, None, None]
                 * np.exp(2j * np.pi * f * shift[1]).astype(np.complex64)[None, :, None]
                 * np.exp(2j * np.pi * fx * shift[2]).astype(np.complex64)[None, None, :])
        spectrum = spectrum * phase
    out = sfft.irfftn(spectrum, s=(size,) * 3)
    return (out * (size / m) ** 3).astype(np.float32, copy=False)


def background_mask(box: int) -> np.ndarray:
    axis = (np.arange(box) - box // 2) ** 2
    return (axis[:, None, None] + axis[None, :, None] + axis[None, None, :]) > (0.4 * box) ** 2


class Extractor:
    """Cuts boxes out of one tomogram (see the module docstring)."""

    def __init__(self, tomogram: Tomogram, options: ExtractOptions):
        self.tomo, self.opt = tomogram, options
        self.voxel = options.voxel_size or tomogram.voxel_size
        extent = options.box * self.voxel / tomogram.voxel_size  # the box in tomogram voxels
        if extent > max(tomogram.shape):
            z, y, x = tomogram.shape
            scaled = "" if extent == options.box else f" ({extent:.4g} tomogram voxels)"
            raise InputError(f"--box {options.box}{scaled} is larger than every dimension of tomogram "
                             f"{tomogram.source} (x, y, z size {x}, {y}, {z}); expected a box that fits in it")
        self.same = abs(self.voxel - tomogram.voxel_size) <= 1e-6 * self.voxel
        if self.same:  # a fast FFT length (2^a 3^b 5^c) for the sub-voxel shift

            self.m = self.ell = next_fast_len(options.box + 2 * MARGIN, real=True)
        else:
            self.m, self.ell = region_plan(options.box, tomogram.voxel_size, self.voxel)
        self.effective_voxel = self.m * tomogram.voxel_size / self.ell
        self.mask = background_mask(options.box)

    def leaves(self, p: np.ndarray) -> bool:
        """Whether the output box around ``p`` (z, y, x tomogram voxels) reaches outside the tomogram."""
        half = self.opt.box / 2 * self.voxel / self.tomo.voxel_size
        shape = np.asarray(self.tomo.shape)
        return bool(np.any(p - half < -0.5) or np.any(p + half > shape - 0.5))

    def box_at(self, p: np.ndarray) -> np.ndarray:
        n = self.opt.box
        centre = np.round(p).astype(int)
        start = centre - self.m // 2
        z, y, x = (int(s) for s in start)
        region, _ = self.tomo.region((z, y, x), (self.m,) * 3)
        frac = p - centre  # in [-0.5, 0.5]
        if self.same and not np.any(np.abs(frac) > 1e-6):
            o = self.m // 2 - n // 2
            out = region[o:o + n, o:o + n, o:o + n]
        else:
            ratio = self.tomo.voxel_size / self.effective_voxel
            q = (self.m // 2 + frac) * ratio  # the particle centre in resampled voxels
            o = np.floor(q).astype(int) - n // 2
            vol = _resample_shift(region, self.ell, q - np.floor(q))
            o = np.clip(o, 0, self.ell - n)
            out = vol[o[0]:o[0] + n, o[1]:o[1] + n, o[2]:o[2] + n]
        out = np.array(out, dtype=np.float32)
        if self.opt.invert:
            out = -out
        if self.opt.normalize == "zscore":
            bg = out[self.mask]
            std = float(bg.std())
            out = (out - float(bg.mean())) / (std if std > 0 else 1.0)
        return out


def to_voxels(picks: pd.DataFrame, unit: str, tomo_voxel: float) -> np.ndarray:
    """(N, 3) positions in (z, y, x) tomogram voxels of rows in ``unit``."""
    xyz = picks[["x", "y", "z"]].to_numpy(float)
    shift = picks[["shift_x", "shift_y", "shift_z"]].to_numpy(float)
    if unit == "angstrom":
        vox = (xyz - shift) / tomo_voxel
    else:
        vox = xyz - shift / tomo_voxel
    return vox[:, ::-1].copy()


def sample_background(tomogram: Tomogram, extractor: Extractor, picks_vox: np.ndarray, n: int,
                      min_distance: float, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` centres (z, y, x voxels) inside the tomogram, >= ``min_distance`` A from every pick."""
    half = extractor.opt.box / 2 * extractor.voxel / tomogram.voxel_size
    shape = np.asarray(tomogram.shape, dtype=float)
    lo, hi = np.full(3, half - 0.5), shape - 0.5 - half
    if np.any(hi < lo):
        return np.zeros((0, 3))
    radius = min_distance / tomogram.voxel_size
    tree = cKDTree(picks_vox) if len(picks_vox) else None
    found: list[np.ndarray] = []
    for _ in range(50):
        candidates = rng.uniform(lo, hi, size=(max(4 * n, 64), 3)).round()
        if tree is not None:
            distance, _ = tree.query(candidates)
            candidates = candidates[distance >= radius]
        found.extend(candidates[: n - len(found)])
        if len(found) >= n:
            break
    return np.asarray(found[:n]).reshape(-1, 3)


@dataclass
class ExtractPlan:
    """Which boxes to cut, before any is cut: one row per box (its table row), the extractor of its
    tomogram and its centre; what ``extract`` cuts at once and the copick dataset cuts on access."""

    extractors: list[Extractor]
    #: (extractor index, centre (z, y, x) tomogram voxels) per box
    items: list[tuple[int, np.ndarray]]
    table: pd.DataFrame
    class_names: list[str]
    voxel_size: float
    counts: dict[str, dict[str, int]]
    notes: list[str]

    def cut(self, i: int) -> np.ndarray:
        k, p = self.items[i]
        return self.extractors[k].box_at(p)


def plan_extraction(jobs: list[tuple[Tomogram, pd.DataFrame, str]], options: ExtractOptions) -> ExtractPlan:
    """The boxes for every pick of ``jobs``: (tomogram, its picks, their unit). Raises InputError,
    naming the pick, for a pick whose centre lies outside its tomogram."""
    options.check()
    rng = np.random.default_rng(options.seed)
    extractors: list[Extractor] = []
    items: list[tuple[int, np.ndarray]] = []
    rows: list[dict[str, Any]] = []
    counts: dict[str, Counter] = {}
    notes: list[str] = []
    voxels = set()
    by_tomogram: dict[int, int] = {}
    for tomo, picks, unit in jobs:
        if id(tomo) not in by_tomogram:
            by_tomogram[id(tomo)] = len(extractors)
            extractors.append(Extractor(tomo, options))
        k = by_tomogram[id(tomo)]
        ex = extractors[k]
        voxels.add(round(ex.effective_voxel, 6))
        positions = to_voxels(picks, unit, tomo.voxel_size)
        shape = np.asarray(tomo.shape)
        outside = np.flatnonzero(np.any((positions < -0.5) | (positions > shape - 0.5), axis=1))
        if len(outside):
            i = int(outside[0])
            z, y, x = positions[i]
            raise InputError(f"{picks.attrs.get('source', 'picks')}: pick {int(picks.index[i]) + 1} "
                             f"(class {picks['class_name'].iloc[i]}) at x={x:.1f} y={y:.1f} z={z:.1f} voxels "
                             f"is outside tomogram {tomo.source} (x, y, z size {shape[2]}, {shape[1]}, {shape[0]})")
        for i, p in enumerate(positions):
            name = str(picks["class_name"].iloc[i])
            count = counts.setdefault(name, Counter())
            edge = ex.leaves(p)
            if edge and options.edge == "skip":
                count["skipped_edge"] += 1
                continue
            count["padded_edge"] += int(edge)
            count["extracted"] += 1
            items.append((k, p))
            row = {"forgeClassName": name, "rlnTomoName": tomo.name, "forgeTomogram": tomo.source,
                   "rlnCoordinateX": p[2], "rlnCoordinateY": p[1], "rlnCoordinateZ": p[0], "forgeEdge": int(edge)}
            for column in ANGLE_COLUMNS:
                if column in picks.columns:
                    row[column] = float(picks[column].iloc[i])
            rows.append(row)
    if options.background:
        for k, ex in enumerate(extractors):
            tomo = ex.tomo
            mine = [to_voxels(picks, unit, tomo.voxel_size) for t, picks, unit in jobs if t is tomo]
            centres = sample_background(tomo, ex, np.concatenate(mine), options.background,
                                        options.min_distance, rng)
            count = counts.setdefault(BACKGROUND, Counter())
            for p in centres:
                items.append((k, p))
                count["extracted"] += 1
                rows.append({"forgeClassName": BACKGROUND, "rlnTomoName": tomo.name, "forgeTomogram": tomo.source,
                             "rlnCoordinateX": p[2], "rlnCoordinateY": p[1], "rlnCoordinateZ": p[0], "forgeEdge": 0})
            if len(centres) < options.background:
                notes.append(f"{tomo.name}: only {len(centres)} of {options.background} background boxes fit "
                             f"{options.min_distance:g} A from every pick")
    if len(voxels) > 1:
        raise InputError(f"the tomograms give different voxel sizes {sorted(voxels)}; pass --voxel-size")
    names = list(dict.fromkeys(str(p["class_name"].iloc[i]) for _, p, _ in jobs for i in range(len(p))))
    if options.background:
        names.append(BACKGROUND)
    if not rows:
        raise InputError("no particle could be extracted: every box leaves its tomogram "
                         f"({sum(c['skipped_edge'] for c in counts.values())} skipped); try --pad-edge or a smaller --box")
    table = pd.DataFrame(rows)
    table.insert(0, "rlnClassNumber", [names.index(n) + 1 for n in table["forgeClassName"]])
    keys = ("extracted", "skipped_edge", "padded_edge")
    return ExtractPlan(extractors, items, table, names, voxels.pop(),
                       {k: {key: int(v[key]) for key in keys} for k, v in counts.items()}, notes)


def iter_boxes(plan: ExtractPlan, threads: int | None = None, chunk: int = 16):
    """(index, box) for every box of ``plan`` in order, cut ``chunk`` at a time on ``threads``
    threads (default: every core; the FFTs and copies release the GIL). At most two chunks per
    thread are held at once, so memory stays bounded however many boxes there are."""
    workers = max(1, min(threads or (os.cpu_count() or 1), 32))
    starts = list(range(0, len(plan.items), chunk))

    def cut(start: int) -> list[np.ndarray]:
        return [plan.cut(i) for i in range(start, min(start + chunk, len(plan.items)))]

    with ThreadPoolExecutor(workers) as pool:
        pending = [pool.submit(cut, s) for s in starts[:2 * workers]]
        for k, start in enumerate(starts):
            boxes = pending[k].result()
            pending[k] = None  # type: ignore[call-overload]
            if k + 2 * workers < len(starts):
                pending.append(pool.submit(cut, starts[k + 2 * workers]))
            for j, box in enumerate(boxes):
                yield start + j, box


def extract(jobs: list[tuple[Tomogram, pd.DataFrame, str]], options: ExtractOptions,
            progress_label: str = "extract", quiet: bool = True, threads: int | None = None) -> ExtractResult:
    """Plan and cut every box of ``jobs`` into one array (see ``plan_extraction``, ``iter_boxes``)."""
    plan = plan_extraction(jobs, options)
    volumes = np.empty((len(plan.items),) + (options.box,) * 3, dtype=np.float32)
    with progress.stage(progress_label, len(plan.items), "particles", enabled=not quiet) as bar:
        for i, box in iter_boxes(plan, threads):
            volumes[i] = box
            bar.advance(1)
    return ExtractResult(volumes, plan.table, plan.class_names, plan.voxel_size, plan.counts, plan.notes)

"""Templates: clean, centred density maps per class, from phantoms, MRC maps or atomic models.

A class spec is one of: a phantom class name (``barrel``), a path to an MRC map, a path to a
PDB/mmCIF file (plain or .gz), or a PDB id (fetched into the cache). MRC maps are resampled
to the target voxel size and box with their centre of mass at the box centre (index S//2).
If a map's density reaches beyond the box it is cropped with a warning (a map is often
padded generously, so a little density at the edge is common); atomic models that do not
fit are an error unless ``crop=True`` (see ``density_from_structure``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
from scipy import ndimage

from cryoet_forge.errors import InputError
from cryoet_forge.io.mrc import check_voxel_size, read_mrc
from cryoet_forge.io.structures import PDB_ID, fetch_structure
from cryoet_forge.simulate.density import density_from_structure
from cryoet_forge.simulate.phantoms import PHANTOM_CLASSES, make_phantom

STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".ent.gz", ".cif.gz", ".mmcif.gz")
MAP_SUFFIXES = (".mrc", ".map", ".mrcs")


def is_structure_file(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in STRUCTURE_SUFFIXES)


def class_name_of(path: Path) -> str:
    name = path.name
    for suffix in sorted(STRUCTURE_SUFFIXES + MAP_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def fit_map(volume: np.ndarray, voxel_in: float, voxel_out: float, box: int,
            source: str = "map", edge_warning: float = 0.02) -> np.ndarray:
    """Resample ``volume`` to ``voxel_out`` in a ``box``^3 grid, centre of mass at index box//2.

    Coarsening low-passes first (Gaussian, sigma 0.5 output voxels) to avoid aliasing.
    Warns when more than ``edge_warning`` of the positive density falls outside the box.
    """
    volume = np.asarray(volume, dtype=np.float32)
    positive = np.clip(volume - np.median(volume), 0, None)
    total = float(positive.sum())
    if total <= 0:
        raise InputError(f"{source}: the map has no density above its median")
    com = np.array(ndimage.center_of_mass(positive))  # (z, y, x) in input voxels
    factor = voxel_out / voxel_in
    if factor > 1.0:
        volume = ndimage.gaussian_filter(volume, sigma=0.5 * factor)
    axis = (np.arange(box, dtype=np.float64) - box // 2) * factor
    zz, yy, xx = np.meshgrid(axis + com[0], axis + com[1], axis + com[2], indexing="ij")
    background = float(np.median(volume))
    out = ndimage.map_coordinates(volume, [zz, yy, xx], order=1, mode="constant", cval=background)
    kept = float(np.clip(out - background, 0, None).sum()) * factor**3
    if kept < (1.0 - edge_warning) * total:
        warnings.warn(f"{source}: {100 * (1 - kept / total):.0f}% of the density lies outside the "
                      f"{box}^3 box at {voxel_out:g} A and was cropped", stacklevel=2)
    return out.astype(np.float32)


def load_template(spec: str, box: int, voxel_size: float, seed: int = 0,
                  resolution: float | None = None, crop: bool = False,
                  assembly: int | None = None) -> tuple[str, np.ndarray]:
    """One class spec -> (class name, (box, box, box) float32 map)."""
    voxel_size = check_voxel_size(voxel_size)
    if spec in PHANTOM_CLASSES:
        return spec, make_phantom(spec, box, voxel_size, seed)
    path = Path(spec)
    if path.suffix.lower() in MAP_SUFFIXES:
        volume, voxel_in = read_mrc(path)
        return class_name_of(path), fit_map(volume, voxel_in, voxel_size, box, str(path))
    if is_structure_file(path) or path.exists():
        return class_name_of(path), density_from_structure(path, voxel_size, box, resolution, crop=crop,
                                                           assembly=assembly)
    if PDB_ID.match(spec):
        return spec.lower(), density_from_structure(fetch_structure(spec), voxel_size, box, resolution,
                                                    crop=crop, assembly=assembly)
    raise InputError(f"{spec!r} is neither a phantom class ({', '.join(PHANTOM_CLASSES)}), "
                     f"an existing map/structure file, nor a PDB id")


def expand_specs(specs: str | Iterable[str]) -> list[str]:
    """A comma-separated string, a folder (its maps and structures) or a list -> class specs."""
    if isinstance(specs, str):
        path = Path(specs)
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and (is_structure_file(p) or p.suffix.lower() in MAP_SUFFIXES))
            if not found:
                raise InputError(f"{path}: no structure (.pdb/.cif[.gz]) or map (.mrc) files in this folder")
            return [str(p) for p in found]
        specs = [s.strip() for s in specs.split(",") if s.strip()]
    specs = list(specs)
    if not specs:
        raise InputError("no classes given; expected phantom names, files, a folder or PDB ids")
    return specs


def check_specs(specs: Iterable[str], option: str = "--structures") -> None:
    """Before any work: each class spec is a phantom class, a PDB id, or an existing map (.mrc) or
    structure (.pdb/.cif[.gz]) file; else an InputError naming ``option`` and the spec."""
    for spec in specs:
        if not spec.strip():
            raise InputError(f"{option} {spec!r} is empty; expected a phantom class, a map or structure file, "
                             "or a PDB id")
        path = Path(spec)
        known = path.suffix.lower() in MAP_SUFFIXES or is_structure_file(path)
        if spec in PHANTOM_CLASSES or (not known and not path.exists() and PDB_ID.match(spec)):
            continue
        if not path.exists() and not known:
            raise InputError(f"{option} {spec!r} is neither a phantom class ({', '.join(PHANTOM_CLASSES)}), "
                             f"an existing map/structure file, nor a PDB id")
        if not path.is_file():
            raise InputError(f"{option} {spec}: {'a folder' if path.is_dir() else 'no such file'}; expected a map "
                             f"({', '.join(MAP_SUFFIXES)}) or structure ({', '.join(STRUCTURE_SUFFIXES)}) file")
        if not known:
            raise InputError(f"{option} {spec}: not a map ({', '.join(MAP_SUFFIXES)}) or structure "
                             f"({', '.join(STRUCTURE_SUFFIXES)}) file name")


def load_templates(specs: str | Iterable[str] | None, box: int, voxel_size: float, seed: int = 0,
                   resolution: float | None = None, crop: bool = False,
                   assembly: int | None = None) -> tuple[list[str], np.ndarray]:
    """Class specs (None = all phantom classes) -> (class names, (C, box, box, box) float32)."""
    if int(box) != box or box < 8:
        raise InputError(f"box {box!r}: expected an integer >= 8 voxels")
    names, maps = [], []
    for spec in expand_specs(PHANTOM_CLASSES if specs is None else specs):
        name, volume = load_template(spec, int(box), voxel_size, seed, resolution, crop, assembly)
        if name in names:
            raise InputError(f"two classes are both named {name!r}")
        names.append(name)
        maps.append(volume)
    return names, np.stack(maps).astype(np.float32)

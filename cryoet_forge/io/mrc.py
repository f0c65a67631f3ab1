"""MRC volumes: float32 arrays in (z, y, x) order with their voxel size in Angstrom."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import mrcfile
import numpy as np

from cryoet_forge.errors import InputError
from cryoet_forge.io.atomic import atomic_path
from cryoet_forge.io.files import check_input_file

#: voxel sizes (Angstrom) accepted anywhere: from sub-Angstrom maps to binned overview tomograms
VOXEL_RANGE = (0.01, 1000.0)


def check_voxel_size(voxel_size: float, what: str = "voxel size") -> float:
    """Return ``voxel_size`` as a float, or raise InputError unless it is finite and > 0."""
    try:
        value = float(voxel_size)
    except (TypeError, ValueError):
        raise InputError(f"{what} {voxel_size!r} is not a number; expected Angstrom > 0") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{what} {voxel_size!r} is invalid; expected a finite value in Angstrom > 0")
    if not VOXEL_RANGE[0] <= value <= VOXEL_RANGE[1]:
        raise InputError(f"{what} {voxel_size!r} A is outside {VOXEL_RANGE[0]:g}-{VOXEL_RANGE[1]:g} A; "
                         f"expected Angstrom between {VOXEL_RANGE[0]:g} and {VOXEL_RANGE[1]:g}")
    return value


def check_volume(volume: np.ndarray, source: str) -> np.ndarray:
    """A cubic-or-not 3D float32 array with finite values, or InputError naming ``source``."""
    array = np.asarray(volume)
    if array.ndim != 3:
        raise InputError(f"{source}: expected a 3D volume (z, y, x), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise InputError(f"{source}: expected real-valued voxels, got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise InputError(f"{source}: {bad} voxel(s) are NaN or infinite; expected finite values")
    return array


class _Complex(Exception):
    """A complex-valued MRC (its own message, not "not a readable MRC file")."""


def read_mrc(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read an MRC volume -> (float32 array (z, y, x), voxel size in Angstrom).

    Raises InputError naming the file when it is missing, unreadable, truncated, not 3D,
    contains NaN/inf voxels, or has no positive voxel size in its header.
    """
    path = check_input_file(path, "MRC file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mrcfile warns about odd headers; we check ourselves
            with mrcfile.open(path, mode="r", permissive=False) as mrc:
                if mrc.data is not None and np.iscomplexobj(mrc.data):
                    raise _Complex(f"{path}: complex voxels (MRC mode {int(mrc.header.mode)}); expected a "
                                   "real-valued volume (mode 0, 1, 2, 6 or 12)")
                data = np.array(mrc.data, dtype=np.float32, copy=True)
                voxel = mrc.voxel_size
                voxel_size = float(voxel.x)
                sizes = (float(voxel.x), float(voxel.y), float(voxel.z))
    except _Complex as exc:
        raise InputError(str(exc)) from None
    except Exception as exc:  # mrcfile raises ValueError/OSError/... on broken files
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"{path}: not a readable MRC file ({reason})") from None
    if data.ndim == 2:
        data = data[np.newaxis]
    data = check_volume(data, str(path))
    if not all(math.isfinite(s) and s > 0 for s in sizes):
        raise InputError(f"{path}: header voxel size {sizes} is not positive; expected Angstrom > 0")
    if not (np.isclose(sizes[0], sizes[1]) and np.isclose(sizes[0], sizes[2])):
        raise InputError(f"{path}: voxel size {sizes} is anisotropic; expected equal x, y, z sizes")
    return data, voxel_size


def write_mrc(path: str | os.PathLike, volume: np.ndarray, voxel_size: float) -> Path:
    """Write ``volume`` (z, y, x) as float32 MRC with ``voxel_size`` (Angstrom), atomically."""
    path = Path(path)
    voxel_size = check_voxel_size(voxel_size)
    data = check_volume(volume, str(path))
    # mrcfile's header statistics (RMS) of values beyond ~1e19 overflow float32: the header says
    # Inf there, the voxels are exact, and no RuntimeWarning leaks to the user
    with atomic_path(path) as tmp, np.errstate(over="ignore"):
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(data, dtype=np.float32))
            mrc.voxel_size = voxel_size
            mrc.update_header_stats()
    return path

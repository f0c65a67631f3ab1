"""Tomograms opened for reading regions: MRC memory-mapped (mrcfile) and OME-Zarr (zarr).

A ``Tomogram`` holds an array-like in (z, y, x) order that is sliced, never read whole: an MRC
file is memory-mapped (its header and size checked by mrcfile) and its regions read plane by
plane with ``os.pread`` (``PlaneReader``), an OME-Zarr scale level reads only the chunks a region
touches. Its
voxel size is in Angstrom (MRC header; OME-Zarr ``coordinateTransformations`` of the chosen
scale level, converted from nm when the axes say so).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np

from cryoet_forge.errors import ConfigError, InputError

MRC_SUFFIXES = (".mrc", ".map", ".rec", ".mrcs")
UNIT_TO_ANGSTROM = {"angstrom": 1.0, "nanometer": 10.0, "micrometer": 1e4, None: 1.0}


@dataclass
class Tomogram:
    name: str
    #: (z, y, x) array-like supporting slicing (numpy memmap, zarr array)
    data: Any
    voxel_size: float
    source: str
    _handle: Any = field(default=None, repr=False)
    #: reads [z0, z1) x [y0, y1) x [x0, x1) without a memory map (MRC: ``PlaneReader``), or None
    reader: Any = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    def region(self, start: tuple[int, int, int], size: tuple[int, int, int]) -> tuple[np.ndarray, bool]:
        """float32 voxels [start, start + size) per axis; parts outside the tomogram are filled with
        the mean of the inside part. Returns (region, whether any part was outside)."""
        lo = [max(0, s) for s in start]
        hi = [min(n, s + k) for s, k, n in zip(start, size, self.shape)]
        if any(h <= low for low, h in zip(lo, hi)):
            raise InputError(f"{self.source}: region at {start} of size {size} is outside the tomogram {self.shape}")
        if self.reader is not None:
            inside = self.reader.read(lo, hi)
        else:
            inside = np.asarray(self.data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float32)
        if tuple(inside.shape) == tuple(size):
            return np.array(inside, copy=True), False
        out = np.full(size, float(inside.mean()), dtype=np.float32)
        at = [low - s for low, s in zip(lo, start)]
        out[at[0]:at[0] + inside.shape[0], at[1]:at[1] + inside.shape[1], at[2]:at[2] + inside.shape[2]] = inside
        return out, True

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> Tomogram:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class PlaneReader:
    """Regions of an MRC file read with ``os.pread``, one call per z plane (the rows y0..y1 whole,
    then cut to x0..x1). Unlike slicing a memory map, the pages read never count towards this
    process's resident set: the kernel maps whole blocks around each touched row of a map
    (fault-around), so a few thousand boxes made the RSS reach the size of the tomogram."""

    def __init__(self, path: Path, offset: int, shape: tuple[int, int, int], dtype: np.dtype):
        self.path, self.offset, self.shape, self.dtype = path, int(offset), shape, np.dtype(dtype)
        self.fd: int | None = os.open(path, os.O_RDONLY)

    def read(self, lo, hi) -> np.ndarray:
        _, ny, nx = self.shape
        row = nx * self.dtype.itemsize
        rows = hi[1] - lo[1]
        out = np.empty((hi[0] - lo[0], rows, hi[2] - lo[2]), dtype=np.float32)
        for k, z in enumerate(range(lo[0], hi[0])):
            want = rows * row
            if self.fd is None:
                raise InputError(f"{self.path}: read after the tomogram was closed")
            buf = os.pread(self.fd, want, self.offset + (z * ny + lo[1]) * row)
            if len(buf) != want:
                raise InputError(f"{self.path}: file ends inside plane z={z}; the MRC is truncated")
            out[k] = np.frombuffer(buf, dtype=self.dtype).reshape(rows, nx)[:, lo[2]:hi[2]]
        return out

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def open_mrc_tomogram(path: Path, name: str | None = None, voxel_size: float | None = None) -> Tomogram:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            handle = mrcfile.mmap(path, mode="r", permissive=False)
    except Exception as exc:  # truncated, not an MRC, unreadable
        raise InputError(f"{path}: not a readable MRC tomogram ({_reason(exc)})") from None
    data = handle.data
    if data is None or data.ndim != 3:
        shape = None if data is None else data.shape
        handle.close()
        raise InputError(f"{path}: expected a 3D tomogram (z, y, x), got shape {shape}")
    voxel = handle.voxel_size
    sizes = (float(voxel.x), float(voxel.y), float(voxel.z))
    if voxel_size is not None:
        sizes = (float(voxel_size),) * 3
    if not all(math.isfinite(s) and s > 0 for s in sizes):
        handle.close()
        raise InputError(f"{path}: header voxel size {sizes} is not positive; expected Angstrom > 0 "
                         "(set it with mrcfile or pass --tomogram-voxel-size)")
    offset = int(handle.header.nbytes + int(handle.header.nsymbt))
    nz, ny, nx = (int(n) for n in data.shape)
    reader = PlaneReader(path, offset, (nz, ny, nx), data.dtype)
    return Tomogram(name or path.stem, data, sizes[0], str(path), handle, reader)


def open_zarr_tomogram(path: Any, scale: str | int = 0, name: str | None = None,
                       source: str | None = None) -> Tomogram:
    """An OME-Zarr tomogram: a folder path or a zarr store (copick's ``tomogram.zarr()``)."""
    where = source or str(path)
    try:
        import zarr  # optional dependency (the copick extra)
    except ImportError:
        raise ConfigError(f"{where}: an OME-Zarr tomogram needs the zarr library: "
                          "pip install 'cryoet-forge[copick]'") from None
    try:
        group = zarr.open_group(str(path) if isinstance(path, Path) else path, mode="r")
        multiscales = group.attrs["multiscales"][0]
        datasets = multiscales["datasets"]
    except Exception as exc:
        raise InputError(f"{where}: not a readable OME-Zarr tomogram ({_reason(exc)}); "
                         "expected a group with 'multiscales' metadata") from None
    paths = [d["path"] for d in datasets]
    level = str(scale)
    if level not in paths:
        if level.isdigit() and int(level) < len(paths):
            level = paths[int(level)]
        else:
            raise InputError(f"{where}: no scale level {scale!r}; it has {', '.join(paths)}")
    entry = datasets[paths.index(level)]
    scales = [t["scale"] for t in entry.get("coordinateTransformations", []) if t.get("type") == "scale"]
    axes = multiscales.get("axes", [])
    unit = None
    if axes and isinstance(axes[-1], dict):
        unit = axes[-1].get("unit")
    if not scales or unit not in UNIT_TO_ANGSTROM:
        raise InputError(f"{where}: scale level {level} has no usable voxel size (scale {scales}, unit {unit!r})")
    voxel = float(scales[0][-1]) * UNIT_TO_ANGSTROM[unit]
    array = group[level]
    if array.ndim != 3:
        raise InputError(f"{where}: scale level {level} is not 3D (shape {array.shape})")
    if name is None:
        name = Path(str(path)).name.removesuffix(".zarr")
    return Tomogram(name, array, voxel, f"{where} (scale {level})")


def open_tomogram(path: str | os.PathLike, scale: str | int = 0, name: str | None = None,
                  voxel_size: float | None = None) -> Tomogram:
    """An MRC file or an OME-Zarr folder (level ``scale``), by its path; ``voxel_size`` (A)
    replaces the file's own."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such tomogram")
    if path.is_dir() or path.suffix == ".zarr":
        tomo = open_zarr_tomogram(path, scale, name)
        if voxel_size is not None:
            tomo.voxel_size = float(voxel_size)
        return tomo
    if path.suffix.lower() in MRC_SUFFIXES:
        return open_mrc_tomogram(path, name, voxel_size)
    raise InputError(f"{path}: expected an MRC tomogram ({', '.join(MRC_SUFFIXES)}) or an OME-Zarr folder")

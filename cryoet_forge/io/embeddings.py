"""Feature (embedding) files: ``.npy``, ``.npz`` and ``.safetensors`` holding an (N, D) matrix, and the
checks every feature matrix passes before the metrics engine sees it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from cryoet_forge.errors import InputError
from cryoet_forge.io.atomic import atomic_path
from cryoet_forge.io.files import check_input_file

FEATURE_SUFFIXES = (".npy", ".npz", ".safetensors")
FEATURE_KEY = "features"


_FINITE_CHECK_ROWS = 4096


def as_feature_matrix(x: Any, name: str = "features") -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 (N, D) array, or raise InputError saying why."""
    try:
        array = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise InputError(f"{name}: cannot be read as an array ({exc})") from None
    if array.ndim != 2:
        raise InputError(f"{name} must be a 2-D array (N, D), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"{name} must be non-empty, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"{name} must be real numbers, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and array.dtype.itemsize > 4:
        # finite values beyond float32's range would turn into Inf below and be called "non-finite"
        limit = float(np.finfo(np.float32).max)
        big = np.isfinite(array) & (np.abs(array) > limit)
        if big.any():
            row, col = (int(i) for i in np.argwhere(big)[0])
            raise InputError(f"{name}: value {float(array[row, col]):.3g} at row {row}, column {col} is beyond "
                             f"the float32 range (|x| <= {limit:.3g}); rescale the features")
    return np.ascontiguousarray(array, dtype=np.float32)


def check_finite(x: np.ndarray, name: str = "features") -> None:
    """Raise InputError naming the first row with a NaN or Inf (checked in row chunks)."""
    for start in range(0, x.shape[0], _FINITE_CHECK_ROWS):
        chunk = x[start : start + _FINITE_CHECK_ROWS]
        ok = np.isfinite(chunk).all(axis=1)
        if not ok.all():
            row = start + int(np.argmin(ok))
            col = int(np.argmin(np.isfinite(x[row])))
            raise InputError(
                f"{name} has a non-finite value (NaN or Inf) at row {row}, column {col}; "
                "remove or fix such rows"
            )


def _as_matrix(array: Any, path: Path) -> np.ndarray:
    return as_feature_matrix(array, name=f"{path}: features")


#: how each feature format begins (NumPy's format magic; a zip archive)
_MAGIC = {".npy": (b"\x93NUMPY", "a NumPy .npy header"), ".npz": (b"PK", "a zip (.npz) archive")}


def _check_magic(p: Path, suffix: str) -> None:
    """InputError when a .npy/.npz file does not start as that format does (NumPy would call a
    text file "pickled data", which it is not)."""
    if suffix not in _MAGIC:
        return
    magic, what = _MAGIC[suffix]
    with open(p, "rb") as fh:
        head = fh.read(len(magic))
    if head != magic:
        if not head:
            raise InputError(f"{p}: the file is empty; expected {what}")
        kind = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "binary data"
        if head.startswith(b"\x80"):
            kind = "a Python pickle (never loaded)"
        raise InputError(f"{p}: not a {suffix} file (starts with {kind}, not {what})")


def load_features(path: str | os.PathLike) -> np.ndarray:
    """Read an (N, D) feature matrix as C-contiguous float32.

    ``.npy``: the array; ``.npz``: key ``features`` or else the first array;
    ``.safetensors``: key ``features`` or else the only tensor.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in FEATURE_SUFFIXES:
        raise InputError(
            f"{p}: unsupported feature file type {p.suffix or '(none)'!r}; expected one of {', '.join(FEATURE_SUFFIXES)}"
        )
    check_input_file(p, "feature file")
    _check_magic(p, suffix)
    try:
        if suffix == ".npy":
            with open(p, "rb") as fh:  # our handle: closed even when numpy fails half-way
                array = np.load(fh, allow_pickle=False)
        elif suffix == ".npz":
            with open(p, "rb") as fh, np.load(fh, allow_pickle=False) as archive:
                keys = list(archive.keys())
                if not keys:
                    raise InputError(f"{p}: the .npz archive holds no arrays")
                array = archive[FEATURE_KEY if FEATURE_KEY in keys else keys[0]]
        else:
            from safetensors.numpy import load_file

            tensors = load_file(str(p))
            if FEATURE_KEY in tensors:
                array = tensors[FEATURE_KEY]
            elif len(tensors) == 1:
                array = next(iter(tensors.values()))
            else:
                raise InputError(
                    f"{p}: no tensor named {FEATURE_KEY!r} among {sorted(tensors)}; save the matrix under that key"
                )
    except InputError:
        raise
    except Exception as exc:  # corrupt or foreign files (ValueError, OSError, BadZipFile, ...)
        raise InputError(f"{p}: cannot read features ({type(exc).__name__}: {exc})") from None
    return _as_matrix(array, p)


def save_features(path: str | os.PathLike, array: Any) -> Path:
    """Write an (N, D) matrix as float32 to ``.npy``, ``.npz`` or ``.safetensors`` (atomically)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in FEATURE_SUFFIXES:
        raise InputError(f"{p}: unsupported feature file type {p.suffix or '(none)'!r}; expected one of {', '.join(FEATURE_SUFFIXES)}")
    matrix = _as_matrix(array, p)
    with atomic_path(p) as tmp:
        if suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, matrix, allow_pickle=False)
        elif suffix == ".npz":
            with open(tmp, "wb") as fh:
                np.savez(fh, **{FEATURE_KEY: matrix})  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
        else:
            from safetensors.numpy import save_file

            save_file({FEATURE_KEY: matrix}, str(tmp))
    return p

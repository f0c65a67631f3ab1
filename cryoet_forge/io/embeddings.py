"""Feature (embedding) files: ``.npy``, ``.npz`` and ``.safetensors`` holding an (N, D) matrix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from cryoet_forge.errors import InputError
from cryoet_forge.io.atomic import atomic_path

FEATURE_SUFFIXES = (".npy", ".npz", ".safetensors")
FEATURE_KEY = "features"


def _as_matrix(array: Any, path: Path) -> np.ndarray:
    from cryoet_forge.metrics.knn import as_feature_matrix

    return as_feature_matrix(array, name=f"{path}: features")


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
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    try:
        if suffix == ".npy":
            array = np.load(p, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as archive:
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
                np.savez(fh, **{FEATURE_KEY: matrix})
        else:
            from safetensors.numpy import save_file

            save_file({FEATURE_KEY: matrix}, str(tmp))
    return p

"""``.npz`` bundles: many volumes with labels, class names, voxel size and parameters in one file.

Keys: ``volumes`` (N, S, S, S) float32, ``labels`` (N,) int64 (0-based), ``class_names``
(C,) str, ``voxel_size`` () float64, and one ``param:<column>`` array per recorded parameter.
Loading an MRC folder costs one file open per volume; a bundle is one read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from cryoet_forge.errors import InputError
from cryoet_forge.io.atomic import atomic_path
from cryoet_forge.io.files import check_input_file
from cryoet_forge.io.mrc import check_voxel_size

PARAM_PREFIX = "param:"


def save_bundle(path: str | os.PathLike, volumes: np.ndarray, labels: Sequence[int] | np.ndarray,
                class_names: Sequence[str], voxel_size: float,
                parameters: pd.DataFrame | None = None) -> Path:
    """Write a bundle atomically (uncompressed: reading speed matters more than size)."""
    volumes = np.asarray(volumes, dtype=np.float32)
    label_array = np.asarray(labels, dtype=np.int64)
    if volumes.ndim != 4 or len(label_array) != len(volumes):
        raise InputError(f"{path}: expected volumes (N, S, S, S) and N labels, got {volumes.shape} and "
                         f"{label_array.shape}")
    if not np.isfinite(volumes).all():
        raise InputError(f"{path}: volumes contain NaN or infinite voxels")
    arrays: dict[str, Any] = {
        "volumes": volumes, "labels": labels,
        "class_names": np.asarray(list(class_names), dtype=str),
        "voxel_size": np.float64(check_voxel_size(voxel_size)),
    }
    if parameters is not None:
        for column in parameters.columns:
            values = parameters[column].to_numpy()
            arrays[PARAM_PREFIX + str(column)] = values.astype(str) if values.dtype == object else values
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return Path(path)


def load_bundle(path: str | os.PathLike) -> dict[str, Any]:
    """Read a bundle -> dict(volumes, labels, class_names (list), voxel_size (float), parameters (DataFrame))."""
    path = check_input_file(path, ".npz bundle")
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as data:
            content = {k: data[k] for k in data.files}
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"{path}: not a readable .npz bundle ({reason})") from None
    missing = [k for k in ("volumes", "labels", "class_names", "voxel_size") if k not in content]
    if missing:
        raise InputError(f"{path}: bundle lacks key(s) {', '.join(missing)}")
    volumes = content["volumes"].astype(np.float32, copy=False)
    if volumes.ndim != 4:
        raise InputError(f"{path}: volumes have shape {volumes.shape}; expected (N, S, S, S)")
    if not np.isfinite(volumes).all():
        raise InputError(f"{path}: volumes contain NaN or infinite voxels")
    labels = content["labels"]
    n_classes = len(content["class_names"])
    if labels.shape != (len(volumes),) or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{path}: labels have shape {labels.shape} and dtype {labels.dtype}; "
                         f"expected {len(volumes)} integers")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise InputError(f"{path}: labels must lie in 0..{n_classes - 1} (one per class name)")
    params = {k[len(PARAM_PREFIX):]: v for k, v in content.items() if k.startswith(PARAM_PREFIX)}
    if any(np.shape(v) != (len(volumes),) for v in params.values()):
        raise InputError(f"{path}: every {PARAM_PREFIX}<column> array must hold one value per volume")
    return {
        "volumes": volumes,
        "labels": labels.astype(np.int64),
        "class_names": [str(c) for c in content["class_names"].tolist()],
        "voxel_size": check_voxel_size(content["voxel_size"].tolist(), f"{path}: voxel size"),
        "parameters": pd.DataFrame(params),
    }

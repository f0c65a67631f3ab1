"""Picks from per-voxel class probabilities: for each class, the local maxima of its probability
at least ``min_distance`` voxels apart that reach ``threshold`` where the class is the most
likely one."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from cryoet_forge.errors import ConfigError, InputError


def class_peaks(probabilities: np.ndarray, class_names: Sequence[str], min_distance: Sequence[float] | float,
                threshold: float = 0.5) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``probabilities`` (1 + n_classes, Z, Y, X), channel 0 the background -> class -> ((N, 3) (x, y, z)
    voxel centres, (N,) their probabilities), highest first.

    A peak is a voxel whose class probability is the largest within a cube of half-width
    ``min_distance`` (per class, voxels) and at least ``threshold``, and whose most likely channel is
    that class. Of equal neighbouring maxima (a plateau) the first in array order is kept.
    """
    p = np.asarray(probabilities, dtype=np.float32)
    if p.ndim != 4 or p.shape[0] != len(class_names) + 1:
        raise InputError(f"class probabilities must be shaped (1 + {len(class_names)}, Z, Y, X), got {p.shape}")
    if not 0 <= threshold <= 1:
        raise ConfigError(f"pick threshold must be in [0, 1], got {threshold}")
    distances = ([float(min_distance)] * len(class_names) if isinstance(min_distance, (int, float))
                 else [float(d) for d in min_distance])
    if len(distances) != len(class_names) or min(distances, default=1.0) < 0:
        raise ConfigError(f"min_distance: one value >= 0 per class ({len(class_names)}), got {min_distance}")
    winner = p.argmax(0)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for index, name in enumerate(class_names):
        channel = p[index + 1]
        size = 2 * int(np.floor(distances[index])) + 1
        local_max = ndimage.maximum_filter(channel, size=size, mode="constant", cval=-1.0)
        mask = (channel == local_max) & (channel >= threshold) & (winner == index + 1)
        labels, n = ndimage.label(mask)  # plateaus: one peak each
        if n == 0:
            out[name] = (np.zeros((0, 3)), np.zeros(0))
            continue
        first = ndimage.minimum_position(np.arange(mask.size).reshape(mask.shape), labels, range(1, n + 1))
        zyx = np.asarray(first, dtype=np.float64).reshape(-1, 3)
        scores = channel[tuple(zyx.astype(int).T)]
        order = np.argsort(-scores, kind="stable")
        out[name] = (zyx[order][:, ::-1].copy(), scores[order].astype(np.float64))
    return out

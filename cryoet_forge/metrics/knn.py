"""k-nearest-neighbour radii and the kNN backend interface."""

from __future__ import annotations

from typing import Any

import numpy as np

from cryoet_forge.errors import InputError


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
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{name} must be numeric, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


def kth_neighbour_distances(x: Any, k: int = 5) -> np.ndarray:
    """Distance of each row of ``x`` to its k-th nearest other row (exact, Euclidean).

    The row itself is not counted; duplicate rows are (at distance 0). Computed blockwise
    in Rust, in parallel, without the GIL and without an N x N matrix.
    """
    from cryoet_forge import _metrics_rs

    matrix = as_feature_matrix(x)
    n = matrix.shape[0]
    if not isinstance(k, (int, np.integer)) or not 1 <= k < n:
        raise InputError(f"k must be an integer with 1 <= k < N; got k={k!r} for N={n} rows")
    try:
        return _metrics_rs.kth_neighbour_distances(matrix, int(k))
    except ValueError as exc:
        raise InputError(str(exc)) from None


class ExactKnn:
    """Exact k-NN radii in the Rust core (blockwise, multithreaded, CPU)."""

    name = "exact"

    def kth_neighbour_distances(self, x: Any, k: int) -> np.ndarray:
        return kth_neighbour_distances(x, k)

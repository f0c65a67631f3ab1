"""The metrics engine: exact PRDC, FID and Inception Score at scale.

The Rust extension ``cryoet_forge._metrics_rs`` does the heavy work; call it through
these functions, which validate input and raise ``InputError`` with a clear message.
They are imported on first use, so that ``forge metrics --help`` does not load SciPy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryoet_forge.metrics.fid import FID, FIDResult, compute_fid, fid_from_moments
    from cryoet_forge.metrics.inception import InceptionScore, inception_score
    from cryoet_forge.metrics.knn import KnnBackend, PrdcCounts, as_feature_matrix, kth_neighbour_distances
    from cryoet_forge.metrics.prdc import PRDC, compute_prdc, prdc_counts

_WHERE = {
    "FID": "fid", "FIDResult": "fid", "compute_fid": "fid", "fid_from_moments": "fid",
    "InceptionScore": "inception", "inception_score": "inception",
    "KnnBackend": "knn", "PrdcCounts": "knn", "as_feature_matrix": "knn", "kth_neighbour_distances": "knn",
    "PRDC": "prdc", "compute_prdc": "prdc", "prdc_counts": "prdc",
}

__all__ = [
    "FID", "FIDResult", "InceptionScore", "KnnBackend", "PRDC", "PrdcCounts", "as_feature_matrix",
    "compute_fid", "compute_prdc", "fid_from_moments", "inception_score", "kth_neighbour_distances",
    "prdc_counts",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"cryoet_forge.metrics.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'cryoet_forge.metrics' has no attribute {name!r}")

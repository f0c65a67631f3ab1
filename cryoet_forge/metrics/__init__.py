"""The metrics engine: exact PRDC, FID and Inception Score at scale.

The Rust extension ``cryoet_forge._metrics_rs`` does the heavy work; call it through
these functions, which validate input and raise ``InputError`` with a clear message.
"""

from __future__ import annotations

from cryoet_forge.metrics.fid import FID, FIDResult, compute_fid, fid_from_moments
from cryoet_forge.metrics.inception import InceptionScore, inception_score
from cryoet_forge.metrics.knn import KnnBackend, PrdcCounts, as_feature_matrix, kth_neighbour_distances
from cryoet_forge.metrics.prdc import PRDC, compute_prdc, prdc_counts

__all__ = [
    "FID", "FIDResult", "InceptionScore", "KnnBackend", "PRDC", "PrdcCounts", "as_feature_matrix",
    "compute_fid", "compute_prdc", "fid_from_moments", "inception_score", "kth_neighbour_distances",
    "prdc_counts",
]

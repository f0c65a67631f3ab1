"""The metrics engine: exact nearest-neighbour radii and generative-model metrics.

The Rust extension ``cryoet_forge._metrics_rs`` does the heavy work; call it through
these functions, which validate input and raise ``InputError`` with a clear message.
"""

from __future__ import annotations

from cryoet_forge.metrics.knn import as_feature_matrix, kth_neighbour_distances

__all__ = ["as_feature_matrix", "kth_neighbour_distances"]

"""Inception Score: exp(E_x KL(p(y|x) || p(y))) over ``splits`` groups, mean and std.

Split s holds rows ``s*N//splits .. (s+1)*N//splits`` (the original implementation's
grouping); the std is the population std over splits; ``0 log 0 = 0``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cryoet_forge import _metrics_rs
from cryoet_forge.errors import InputError
from cryoet_forge.metrics.prdc import _to_numpy


def _as_probabilities(probs: Any) -> np.ndarray:
    """``probs`` as a C-contiguous float64 array, or InputError (ragged, non-numeric)."""
    try:
        p = np.asarray(probs)
        if p.dtype.kind not in "biuf":  # bool, integers, floats
            raise TypeError(f"dtype {p.dtype} is not real numbers")
        return np.ascontiguousarray(p, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"class probabilities cannot be read as a real-number array ({exc})") from None


def inception_score(probs: Any, splits: int = 10) -> tuple[float, float]:
    """(mean, std) of the Inception Score of class probabilities ``probs`` (N, C)."""
    p = _as_probabilities(probs)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise InputError(f"class probabilities must be a non-empty 2-D array (N, C), got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise InputError("class probabilities must be finite and non-negative")
    sums = p.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-3):
        row = int(np.argmax(np.abs(sums - 1.0)))
        raise InputError(f"class probabilities must sum to 1 per row; row {row} sums to {sums[row]:.6g} (apply softmax first)")
    if not isinstance(splits, (int, np.integer)) or isinstance(splits, bool) or not 1 <= splits <= p.shape[0]:
        raise InputError(f"splits must be an integer with 1 <= splits <= N={p.shape[0]}, got {splits!r}")
    try:
        return _metrics_rs.inception_score(p, int(splits))
    except ValueError as exc:
        raise InputError(str(exc)) from None


class InceptionScore:
    """Inception Score as a torchmetrics-style object: ``update(probs)`` then ``compute()``."""

    def __init__(self, splits: int = 10):
        self.splits = splits
        self.reset()

    def reset(self) -> None:
        self._parts: list[np.ndarray] = []

    def update(self, probs: Any) -> None:
        p = _as_probabilities(_to_numpy(probs))
        if p.ndim != 2:
            raise InputError(f"class probabilities must be a 2-D array (B, C), got shape {p.shape}")
        if self._parts and p.shape[1] != self._parts[0].shape[1]:
            raise InputError(f"class probabilities: batch has C={p.shape[1]}, earlier batches C={self._parts[0].shape[1]}")
        self._parts.append(p)

    def compute(self) -> tuple[float, float]:
        if not self._parts:
            raise InputError("InceptionScore.compute needs at least one update")
        return inception_score(np.concatenate(self._parts), self.splits)

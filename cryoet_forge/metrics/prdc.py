"""Precision, recall, density and coverage (Naeem et al. 2020), exactly as ``prdc`` 0.2.

Definitions (X real with N rows, Y fake with M rows, r_i / s_j the distance of X_i / Y_j
to its k-th nearest neighbour in its own set, the point itself not counted):

- precision = (1/M) sum_j 1[exists i: |X_i - Y_j| < r_i]
- recall    = (1/N) sum_i 1[exists j: |X_i - Y_j| < s_j]
- density   = (1/(kM)) sum_j sum_i 1[|X_i - Y_j| < r_i]
- coverage  = (1/N) sum_i 1[min_j |X_i - Y_j| < r_i]

Distances are those ``prdc`` compares: the exact float64 squared distance rounded to
float32, then a float32 square root. With float32 input the four values equal
``prdc.compute_prdc(real, fake, k)`` exactly. ``strict=False`` uses ``<=`` instead of ``<``.

Identical sets and duplicate rows: a row's duplicates are neighbours at distance exactly 0
(they count towards its k nearest), so a row present more than k times has radius 0 and,
with the strict ``<``, contains no point at all; ``strict=False`` counts points at distance
exactly 0 (and at exactly the radius). Comparing a set with itself (``real is fake`` or an
identical copy) gives precision = recall = coverage = 1 when no row is duplicated k or more
times. ``prdc`` computes duplicates' distances with the norm trick, so there they are
rounding noise instead of 0; its results on rows with k or more exact duplicates therefore
depend on BLAS rounding, while ours do not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cryoet_forge import registry
from cryoet_forge.errors import InputError
from cryoet_forge.metrics.knn import KnnBackend, PrdcCounts, ProgressCallback, as_feature_matrix, check_finite


def validate_pair(real: Any, fake: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 (N, D) and (M, D) arrays that PRDC with this k can use, or InputError."""
    x = as_feature_matrix(real, "real features")
    y = as_feature_matrix(fake, "fake features")
    if x.shape[1] != y.shape[1]:
        raise InputError(
            f"real and fake features must have the same dimension D, got {x.shape[1]} and {y.shape[1]}"
        )
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    for name, a in (("real", x), ("fake", y)):
        if a.shape[0] <= k:
            raise InputError(
                f"{name} features have {a.shape[0]} rows but k={k}: need more than k rows "
                "(each row needs k neighbours other than itself)"
            )
    check_finite(x, "real features")
    check_finite(y, "fake features")
    return x, y


def resolve_backend(backend: str | KnnBackend, device: str = "auto", **options: Any) -> KnnBackend:
    """A backend object from a registered name (``exact``, ``faiss``, ``torch``) or as given."""
    if not isinstance(backend, str):
        return backend

    if backend == "exact" and device in ("auto", "cpu"):
        return registry.create("knn-backend", "exact", **options)
    return registry.create("knn-backend", backend, device=device, **options)


def prdc_counts(
    real: Any, fake: Any, k: int = 5, backend: str | KnnBackend = "exact", strict: bool = True,
    device: str = "auto", progress: ProgressCallback | None = None, **backend_options: Any,
) -> PrdcCounts:
    """Counts, radii and backend details behind ``compute_prdc``."""
    x, y = validate_pair(real, fake, k)
    engine = resolve_backend(backend, device, **backend_options)
    return engine.prdc_counts(x, y, int(k), inclusive=not strict, progress=progress)


def compute_prdc(
    real: Any, fake: Any, k: int = 5, backend: str | KnnBackend = "exact", strict: bool = True,
    device: str = "auto", **backend_options: Any,
) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` (M, D) against ``real`` (N, D).

    Equal to ``prdc.compute_prdc(real, fake, k)`` for float32 input (``strict=True``).
    ``backend`` is a ``knn-backend`` name or object; ``device`` is passed to it.
    """
    return prdc_counts(real, fake, k, backend, strict, device, **backend_options).metrics()


class PRDC:
    """PRDC as a torchmetrics-style object: ``update(real=..., fake=...)`` then ``compute()``.

    k-NN metrics need all embeddings at once, so updates are kept (as float32) until
    ``compute()``; no N x M matrix is ever formed.
    """

    def __init__(self, k: int = 5, backend: str | KnnBackend = "exact", strict: bool = True,
                 device: str = "auto", **backend_options: Any):
        self.k = k
        self.backend = backend
        self.strict = strict
        self.device = device
        self.backend_options = backend_options
        self.reset()

    def reset(self) -> None:
        self._real: list[np.ndarray] = []
        self._fake: list[np.ndarray] = []

    def update(self, real: Any = None, fake: Any = None) -> None:
        """Add a batch of real and/or fake features (each (B, D))."""
        if real is None and fake is None:
            raise InputError("PRDC.update needs real and/or fake features")
        if real is not None:
            self._real.append(as_feature_matrix(_to_numpy(real), "real features"))
        if fake is not None:
            self._fake.append(as_feature_matrix(_to_numpy(fake), "fake features"))

    def compute(self) -> dict[str, float]:
        if not self._real or not self._fake:
            raise InputError("PRDC.compute needs at least one update with real and one with fake features")
        real = self._real[0] if len(self._real) == 1 else _concat(self._real, "real features")
        fake = self._fake[0] if len(self._fake) == 1 else _concat(self._fake, "fake features")
        return compute_prdc(real, fake, self.k, self.backend, self.strict, self.device, **self.backend_options)


def _concat(parts: list[np.ndarray], name: str) -> np.ndarray:
    dims = {p.shape[1] for p in parts}
    if len(dims) > 1:
        raise InputError(f"{name}: batches have different dimensions {sorted(dims)}")
    return np.concatenate(parts, axis=0)


def _to_numpy(x: Any) -> Any:
    """torch tensors (any device) to NumPy; anything else unchanged."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        return x.detach().cpu().numpy()
    return x

"""k-nearest-neighbour radii, the kNN backend interface, and the exact (Rust) backend.

Every backend returns *exact* results in the sense of ``prdc`` 0.2: a distance is the
float64 squared distance rounded to float32, then square-rooted in float32 (what
scikit-learn's ``euclidean_distances`` yields for float32 input). Fast approximate
distances (a float32 GEMM, FAISS, torch) only settle the comparisons their rigorous
error bound allows; the remaining pairs are recomputed exactly by the Rust core.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from cryoet_forge.contracts import KnnBackend  # noqa: F401  (the contract; re-exported)
from cryoet_forge.errors import InputError
from cryoet_forge.io.embeddings import _FINITE_CHECK_ROWS, as_feature_matrix, check_finite  # noqa: F401  (re-exported)

#: Called as ``progress(done, total)`` with work units (distance tiles) while a backend runs.
ProgressCallback = Callable[[int, int], Any]

#: squared (centred) row norms above this could overflow a float32 GEMM (as in the Rust core)
_MAX_GEMM_SQ_NORM = 1e36


def kth_neighbour_distances(x: Any, k: int = 5) -> np.ndarray:
    """Distance of each row of ``x`` to its k-th nearest other row (exact, Euclidean).

    The row itself is not counted; duplicate rows are (at distance 0). Computed blockwise
    in Rust, in parallel, without the GIL and without an N x N matrix.
    """
    from cryoet_forge import _metrics_rs

    matrix = as_feature_matrix(x)
    n = matrix.shape[0]
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k < n:
        raise InputError(f"k must be an integer with 1 <= k < N; got k={k!r} for N={n} rows")
    try:
        return _metrics_rs.kth_neighbour_distances(matrix, int(k))
    except ValueError as exc:
        raise InputError(str(exc)) from None


@dataclass
class PrdcCounts:
    """What a backend computes for PRDC: counts, radii and how the result was obtained."""

    n_real: int
    n_fake: int
    k: int
    precision_count: int
    recall_count: int
    density_count: int
    coverage_count: int
    real_radii: np.ndarray
    fake_radii: np.ndarray
    exact: bool = True
    info: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """The four values, with the same float64 operations as ``prdc.compute_prdc``."""
        n, m = float(self.n_real), float(self.n_fake)
        return {
            "precision": float(np.float64(self.precision_count) / m),
            "recall": float(np.float64(self.recall_count) / n),
            "density": float((1.0 / float(self.k)) * (np.float64(self.density_count) / m)),
            "coverage": float(np.float64(self.coverage_count) / n),
        }


class ExactKnn:
    """Exact k-NN radii and PRDC in the Rust core (blockwise GEMM, multithreaded, CPU)."""

    name = "exact"
    exact = True

    def __init__(self, device: str = "cpu"):
        if device not in ("cpu", "auto"):
            raise InputError(f"knn backend 'exact' runs on the CPU only; got device={device!r}")

    def kth_neighbour_distances(self, x: np.ndarray, k: int) -> np.ndarray:
        return kth_neighbour_distances(x, k)

    def prdc_counts(self, real, fake, k, inclusive=False, progress=None) -> PrdcCounts:
        from cryoet_forge import _metrics_rs

        try:
            c = _metrics_rs.prdc_counts(real, fake, int(k), bool(inclusive), progress)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        return PrdcCounts(
            n_real=c["n_real"], n_fake=c["n_fake"], k=c["k"],
            precision_count=c["precision_count"], recall_count=c["recall_count"],
            density_count=c["density_count"], coverage_count=c["coverage_count"],
            real_radii=c["real_radii"], fake_radii=c["fake_radii"], exact=True,
            info={"backend": "exact", "exact_pairs": c["exact_pairs"], "exact_rows": c["exact_rows"]},
        )


# ---------------------------------------------------------------------------------------
# Shared machinery of the GEMM-style backends (torch, faiss): error bounds and settling.


def gemm_margin_factor(d: int) -> float:
    """Relative error bound of a float32 squared distance ``|x|^2 + |y|^2 - 2 x.y`` formed
    wholly in float32 (the torch and FAISS routes).

    ``|approx - exact| <= factor * (|x|^2 + |y|^2)`` for any summation order. The formula lives
    once, in the Rust core (``tiles::margin_factor``: gamma_D for the dot product, 12 u for the
    float32 norms, sum and subtraction, 1% slack); the exact backend uses the same formula with
    the roundings of its own route (4.5 u).
    """
    from cryoet_forge import _metrics_rs

    return float(_metrics_rs.gemm_margin_factor(int(d)))


def gemm_usable(d: int, *norms: np.ndarray) -> bool:
    """Whether float32 GEMM distances of rows with these squared norms have a usable error
    bound (no overflow, moderate D); where not, a backend hands the job to ``ExactKnn``."""
    return gemm_margin_factor(d) < float("inf") and max(float(n.max()) for n in norms) <= _MAX_GEMM_SQ_NORM


def exact_instead(backend: str, real: np.ndarray, fake: np.ndarray, k: int, inclusive: bool,
                  progress: ProgressCallback | None) -> PrdcCounts:
    """PRDC from the exact backend for data a float32 GEMM cannot handle (see ``gemm_usable``)."""
    counts = ExactKnn().prdc_counts(real, fake, k, inclusive, progress)
    counts.info["note"] = f"feature norms too large for {backend}'s float32 distances; computed by the exact backend"
    return counts


def row_sq_norms(x: np.ndarray, centre: np.ndarray | None = None) -> np.ndarray:
    """float64 squared norms of the float32 rows (shifted by ``centre``), in row chunks
    so no float64 copy of ``x`` is made."""
    out = np.empty(x.shape[0])
    for start in range(0, x.shape[0], _FINITE_CHECK_ROWS):
        chunk = x[start : start + _FINITE_CHECK_ROWS]
        if centre is not None:
            chunk = chunk - centre
        chunk = chunk.astype(np.float64)
        out[start : start + chunk.shape[0]] = np.einsum("ij,ij->i", chunk, chunk)
    return out


def choose_centre(*sets: np.ndarray) -> np.ndarray | None:
    """A float32 centre to subtract before the GEMM when the rows share a large offset."""
    total = sum(s.shape[0] for s in sets)
    centre = (sum(s.sum(axis=0, dtype=np.float64) for s in sets) / total).astype(np.float32)
    raw = max(float(row_sq_norms(s).max()) for s in sets)
    shifted = max(float(row_sq_norms(s, centre).max()) for s in sets)
    return None if raw <= 2.0 * shifted else centre


def settle_thresholds(radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared-distance thresholds: ``d < lo`` means inside the ball, ``d > hi`` outside."""
    rr = radii.astype(np.float64) ** 2
    tiny = rr < 1e-30
    lo = np.where(tiny, -1.0, rr * (1.0 - 1e-6))
    hi = np.where(tiny, 1e-30, rr * (1.0 + 1e-6))
    return lo, hi


def exact_pair_distances(x: np.ndarray, y: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """prdc-rounded exact distances of the pairs (x[rows], y[cols]) from the Rust core."""
    from cryoet_forge import _metrics_rs

    return _metrics_rs.pair_distances(
        x, y, np.ascontiguousarray(rows, dtype=np.int64), np.ascontiguousarray(cols, dtype=np.int64)
    )


def exact_radii_from_candidates(x: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """Exact radii when each row's true k nearest are among ``candidates`` (N, C)."""
    from cryoet_forge import _metrics_rs

    return _metrics_rs.radii_from_candidates(x, np.ascontiguousarray(candidates, dtype=np.int64), int(k))


def refine_radii(
    x: np.ndarray, cand_idx: np.ndarray, cand_sq: np.ndarray, k: int, margins: np.ndarray,
    self_included: bool,
) -> tuple[np.ndarray, int]:
    """Exact radii from approximate nearest-neighbour lists sorted ascending per row.

    ``cand_sq`` are approximate squared distances with ``|error| <= margins[i]`` in row i.
    A row whose list might miss a neighbour that could be its k-th (the last candidate is
    within twice the margin of the approximate k-th) is recomputed against every row.
    Returns the radii and the number of rows recomputed in full.
    """
    n, c = cand_idx.shape
    kk = min(k + 1 if self_included else k, c)  # the row itself sits in its own list at ~0
    bound = cand_sq[:, kk - 1] + 2.0 * margins
    short = (cand_sq[:, -1] <= bound) & (c < n - (0 if self_included else 1))
    short |= (cand_idx < 0).any(axis=1) & (c < n)
    rows = np.flatnonzero(short)
    if rows.size == n:
        radii = np.empty(n, dtype=np.float32)
    else:
        # one Rust call for the good rows; short rows get placeholder candidates (the first
        # c rows other than themselves, as many as a good row has) and are redone in full below
        if rows.size:
            cand_idx = cand_idx.copy()
            cand_idx[rows] = np.arange(c) + (np.arange(c) >= rows[:, None])
        radii = exact_radii_from_candidates(x, cand_idx, k)
    for i in rows:  # against every other row
        others = np.delete(np.arange(n, dtype=np.int64), i)
        d = exact_pair_distances(x, x, np.full(others.size, i, dtype=np.int64), others)
        radii[i] = np.partition(d, k - 1)[k - 1]  # dist32 is monotone in the exact distance
    return radii, int(rows.size)


def settle_block(
    approx: np.ndarray, margin: np.ndarray, lo: np.ndarray, hi: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(surely inside, undecided) masks for an approximate squared-distance block."""
    inside = approx + margin < lo
    undecided = ~inside & ~(approx - margin > hi)
    return inside, undecided

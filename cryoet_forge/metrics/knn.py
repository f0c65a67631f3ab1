"""k-nearest-neighbour radii, the kNN backend interface, and the exact (Rust) backend.

Every backend returns *exact* results in the sense of ``prdc`` 0.2: a distance is the
float64 squared distance rounded to float32, then square-rooted in float32 (what
scikit-learn's ``euclidean_distances`` yields for float32 input). Fast approximate
distances (a float32 GEMM, FAISS, torch) only settle the comparisons their rigorous
error bound allows; the remaining pairs are recomputed exactly by the Rust core.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, ContextManager

import numpy as np

from cryoet_forge import _metrics_rs
from cryoet_forge.contracts import KnnBackend, PrdcCounts, ProgressCallback  # noqa: F401  (re-exported)
from cryoet_forge.errors import InputError
from cryoet_forge.io.embeddings import _FINITE_CHECK_ROWS, as_feature_matrix, check_finite  # noqa: F401  (re-exported)

#: squared (centred) row norms above this could overflow a float32 GEMM (as in the Rust core)
_MAX_GEMM_SQ_NORM = 1e36


def kth_neighbour_distances(x: Any, k: int = 5) -> np.ndarray:
    """Distance of each row of ``x`` to its k-th nearest other row (exact, Euclidean).

    The row itself is not counted; duplicate rows are (at distance 0). Computed blockwise
    in Rust, in parallel, without the GIL and without an N x N matrix.
    """
    matrix = as_feature_matrix(x)
    n = matrix.shape[0]
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k < n:
        raise InputError(f"k must be an integer with 1 <= k < N; got k={k!r} for N={n} rows")
    try:
        return _metrics_rs.kth_neighbour_distances(matrix, int(k))
    except ValueError as exc:
        raise InputError(str(exc)) from None


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
    return _metrics_rs.pair_distances(
        x, y, np.ascontiguousarray(rows, dtype=np.int64), np.ascontiguousarray(cols, dtype=np.int64)
    )


def exact_radii_from_candidates(x: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """Exact radii when each row's true k nearest are among ``candidates`` (N, C)."""
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


def settle_block(approx: Any, margin: Any, lo: Any, hi: Any) -> tuple[Any, Any]:
    """(surely inside, undecided) masks for an approximate squared-distance block (NumPy arrays
    or torch tensors, broadcast together): inside where even ``approx + margin`` is below ``lo``,
    undecided where ``approx - margin`` is not above ``hi`` either."""
    inside = approx + margin < lo
    undecided = ~inside & ~(approx - margin > hi)
    return inside, undecided


def in_ball(distances: np.ndarray, radii: np.ndarray, inclusive: bool) -> np.ndarray:
    """Whether exact ``distances`` lie inside balls of ``radii`` (on the sphere too when ``inclusive``)."""
    return distances <= radii if inclusive else distances < radii


def prepare_sets(*sets: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """The sets shifted by one shared centre (``choose_centre``) and their float64 squared row
    norms, or None where the float32 distances of these rows have no usable bound (``gemm_usable``)."""
    centre = choose_centre(*sets)
    shifted = [s if centre is None else np.ascontiguousarray(s - centre) for s in sets]
    norms = [row_sq_norms(s) for s in shifted]
    if not gemm_usable(sets[0].shape[1], *norms):
        return None
    return shifted, norms


class WorkTicks:
    """Calls ``progress(done, total)`` as each of ``total`` work units finishes (nothing when
    ``progress`` is None)."""

    def __init__(self, progress: ProgressCallback | None, total: int):
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self) -> None:
        self.done += 1
        if self.progress:
            self.progress(self.done, self.total)


@dataclass
class BallMemberships:
    """Who lies inside whose ball, settled exactly: per fake row the number of real balls holding
    it, per real row whether it holds a fake row (``covered``) and whether it lies in a fake ball
    (``recalled``)."""

    ball_count: np.ndarray
    covered: np.ndarray
    recalled: np.ndarray
    exact_pairs: int
    #: what the backend adds to ``PrdcCounts.info`` after the shared entries
    info: dict[str, Any] = field(default_factory=dict)


class GemmKnn:
    """The frame the float32-distance backends (``torch``, ``faiss``) share: the sets centred
    together (``prepare_sets``), the exact backend where the float32 bound is unusable, exact
    radii from each backend's approximate candidate lists (``refine_radii``), and the PRDC counts
    assembled from the ball memberships. A backend supplies ``_candidates`` (approximate
    nearest-neighbour lists), ``_memberships`` (the balls, its undecided pairs settled exactly),
    ``_work_units`` (progress steps of one PRDC run) and ``_describe`` (its ``info`` entries); it
    may change ``_load`` (its form of a centred set), ``_float32`` (a context for its arithmetic)
    and ``margin_factor`` (the error bound of its squared distances)."""

    name = "gemm"
    exact = True

    def margin_factor(self, d: int) -> float:
        return gemm_margin_factor(d)

    def _float32(self) -> ContextManager[Any]:
        return contextlib.nullcontext()

    def _load(self, shifted: np.ndarray) -> Any:
        return shifted

    def _describe(self) -> dict[str, Any]:
        return {}

    def _work_units(self, n: int, m: int) -> int:
        raise NotImplementedError

    def _candidates(self, data: Any, norms: np.ndarray, c: int, tick: WorkTicks) -> tuple[np.ndarray, np.ndarray]:
        """(indices, approximate float64 squared distances) of each row's ``c`` nearest rows of
        the same set, ascending; a missing candidate has index -1."""
        raise NotImplementedError

    def _memberships(self, real: np.ndarray, fake: np.ndarray, data_x: Any, data_y: Any, nx: np.ndarray,
                     ny: np.ndarray, rx: np.ndarray, ry: np.ndarray, inclusive: bool,
                     tick: WorkTicks) -> BallMemberships:
        raise NotImplementedError

    def _radii(self, x: np.ndarray, data: Any, norms: np.ndarray, k: int, tick: WorkTicks) -> tuple[np.ndarray, int]:
        """Exact radii (and the number of rows recomputed in full) from the backend's candidates."""
        idx, sq = self._candidates(data, norms, min(x.shape[0], 2 * k + 16), tick)
        margins = self.margin_factor(x.shape[1]) * (norms + norms.max())
        return refine_radii(x, idx, sq, k, margins, self_included=True)

    # -- the backend interface ---------------------------------------------------------------
    def kth_neighbour_distances(self, x: np.ndarray, k: int) -> np.ndarray:
        with self._float32():
            prepared = prepare_sets(x)
            if prepared is None:
                return ExactKnn().kth_neighbour_distances(x, k)
            (xs,), (nx,) = prepared
            return self._radii(x, self._load(xs), nx, k, WorkTicks(None, 0))[0]

    def prdc_counts(self, real, fake, k, inclusive=False, progress=None) -> PrdcCounts:
        with self._float32():
            prepared = prepare_sets(real, fake)
            if prepared is None:
                return exact_instead(self.name, real, fake, k, inclusive, progress)
            (xs, ys), (nx, ny) = prepared
            tick = WorkTicks(progress, self._work_units(real.shape[0], fake.shape[0]))
            data_x, data_y = self._load(xs), self._load(ys)
            rx, full_x = self._radii(real, data_x, nx, k, tick)
            ry, full_y = self._radii(fake, data_y, ny, k, tick)
            balls = self._memberships(real, fake, data_x, data_y, nx, ny, rx, ry, inclusive, tick)
        ball = balls.ball_count
        return PrdcCounts(
            n_real=real.shape[0], n_fake=fake.shape[0], k=k,
            precision_count=int((ball > 0).sum()), recall_count=int(balls.recalled.sum()),
            density_count=int(ball.sum()), coverage_count=int(balls.covered.sum()),
            real_radii=rx, fake_radii=ry, exact=self.exact,
            info={"backend": self.name, **self._describe(), "exact_pairs": balls.exact_pairs,
                  "exact_rows": full_x + full_y, **balls.info},
        )

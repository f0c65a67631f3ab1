"""Type stub of the Rust extension. Call it through ``cryoet_forge.metrics``, not directly.

Distances follow ``prdc`` 0.2: the exact float64 squared distance rounded to float32, then
a float32 square root. Errors are ValueError (bad shape, NaN/Inf, k out of range);
Ctrl-C during a long call raises KeyboardInterrupt.

The functions that return several values return plain dicts; their keys and value types are the
TypedDicts below (``_PrdcCounts`` ...). Those exist only in this stub: name them in annotations
under ``TYPE_CHECKING``.
"""

from typing import Any, Callable, TypedDict

import numpy as np
import numpy.typing as npt

class _PrdcCounts(TypedDict):
    """What ``prdc_counts`` returns."""

    n_real: int
    n_fake: int
    k: int
    precision_count: int
    recall_count: int
    density_count: int
    coverage_count: int
    #: distance pairs settled by the exact float64 route, and rows that needed it
    exact_pairs: int
    exact_rows: int
    real_radii: npt.NDArray[np.float32]
    fake_radii: npt.NDArray[np.float32]

class _RadiiCandidates(TypedDict):
    """What ``radii_candidates`` returns: per row of ``x`` up to ``cap`` candidates, flat."""

    cap: int
    max_norm: float
    #: (N * cap,) candidate squared distances and row indices; (N,) list lengths and floors
    vals: npt.NDArray[np.float64]
    idx: npt.NDArray[np.uint32]
    len: npt.NDArray[np.uint32]
    floor: npt.NDArray[np.float64]

class _RadiiFinish(TypedDict):
    """What ``radii_finish`` returns for its R rows."""

    radii: npt.NDArray[np.float32]
    exact_pairs: int
    exact_rows: int

class _BallCounts(TypedDict):
    """What ``ball_counts`` returns for its shard."""

    #: (M,) real balls holding each fake row (shards add)
    ball_count: npt.NDArray[np.uint32]
    #: (N,) whether a fake row lies in the real row's ball / the real row is in a fake ball (shards OR)
    recalled: npt.NDArray[np.bool_]
    covered: npt.NDArray[np.bool_]
    exact_pairs: int

__version__: str
CRATE_EXTRA_ROUNDINGS: float
FLOAT32_EXTRA_ROUNDINGS: float
#: rows per side of a distance tile
TILE: int

def gemm_margin_factor(d: int, extra_roundings: float | None = None) -> float:
    """``1.01 * (gamma_D + extra * 2^-24)``, the relative error bound of a float32 GEMM squared
    distance (``|a - d| <= factor * (|x|^2 + |y|^2)``); ``extra`` defaults to the float32 route of
    the torch/FAISS backends (12); infinity where ``D * 2^-24 >= 1/4``."""

def kth_neighbour_distances(x: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.float32]:
    """Distance from each row of the C-contiguous float32 (N, D) array ``x`` to its k-th
    nearest other row. Raises ValueError for non-2-D input, NaN/Inf, or k outside 1..N-1."""

def prdc_counts(
    real: npt.NDArray[np.float32],
    fake: npt.NDArray[np.float32],
    k: int,
    inclusive: bool = False,
    progress: Callable[[int, int], Any] | None = None,
) -> _PrdcCounts:
    """Exact PRDC of C-contiguous float32 ``real`` (N, D) and ``fake`` (M, D).

    Keys: n_real, n_fake, k, precision_count, recall_count, density_count, coverage_count,
    exact_pairs, exact_rows (ints) and real_radii, fake_radii (float32 arrays).
    ``progress(done, total)`` is called about every 100 ms with distance tiles done."""

def pair_distances(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.float32],
    rows: npt.NDArray[np.int64],
    cols: npt.NDArray[np.int64],
) -> npt.NDArray[np.float32]:
    """Exact (prdc-rounded) distances of the row pairs ``(x[rows[t]], y[cols[t]])``."""

def radii_from_candidates(
    x: npt.NDArray[np.float32], candidates: npt.NDArray[np.int64], k: int
) -> npt.NDArray[np.float32]:
    """k-th smallest exact distance from each row of ``x`` to its candidate rows
    (``candidates`` (N, C); -1 and the row itself are skipped)."""

def inception_score(probs: npt.NDArray[np.float64], splits: int = 10) -> tuple[float, float]:
    """(mean, std) of exp(E KL(p(y|x) || p(y))) over ``splits`` groups of float64 (N, C) probabilities."""

def gemm_centre(real: npt.NDArray[np.float32], fake: npt.NDArray[np.float32]) -> npt.NDArray[np.float32] | None:
    """The centre ``prdc_counts`` subtracts before its GEMM (None: none), the same on every run."""

def radii_candidates(
    x: npt.NDArray[np.float32],
    k: int,
    centre: npt.NDArray[np.float32] | None = None,
    rank: int = 0,
    world: int = 1,
    progress: Callable[[int, int], Any] | None = None,
) -> _RadiiCandidates:
    """First phase of the radii over tile shard ``rank`` of ``world``: per row the closest
    candidates by the float32 GEMM. Keys: cap, max_norm, and flat arrays vals (float64, N*cap),
    idx (uint32, N*cap), len (uint32, N), floor (float64, N: at or below every candidate dropped)."""

def radii_finish(
    x: npt.NDArray[np.float32],
    k: int,
    centre: npt.NDArray[np.float32] | None,
    vals: npt.NDArray[np.float64],
    idx: npt.NDArray[np.uint32],
    len: npt.NDArray[np.uint32],
    floor: npt.NDArray[np.float64],
    max_norm: float,
    cap: int,
    row_start: int,
) -> _RadiiFinish:
    """Exact radii of rows ``row_start .. row_start + R`` from every shard's candidate lists of
    those rows (vals, idx: (P, R*cap); len, floor: (P, R)). Keys: radii, exact_pairs, exact_rows."""

def ball_counts(
    real: npt.NDArray[np.float32],
    fake: npt.NDArray[np.float32],
    real_radii: npt.NDArray[np.float32],
    fake_radii: npt.NDArray[np.float32],
    inclusive: bool = False,
    centre: npt.NDArray[np.float32] | None = None,
    rank: int = 0,
    world: int = 1,
    progress: Callable[[int, int], Any] | None = None,
) -> _BallCounts:
    """Ball membership over tile shard ``rank`` of ``world`` of real x fake: ball_count (uint32 per
    fake; shards add), recalled and covered (bool per real; shards OR), exact_pairs."""

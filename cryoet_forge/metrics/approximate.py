"""Certified approximate PRDC: ``forge metrics --approximate``.

The exact kernel costs O((N + M)^2 D). This mode costs O(S (N + M) d') for S sampled queries and
a projection to d' dimensions, and every number it reports comes with an interval that holds by
construction, whatever the data:

1. **Projection lower bounds.** The rows are centred and projected onto the top d' principal
   axes of a row sample (an orthonormal P). For any two rows, |x - y|^2 = |P(x - y)|^2 +
   |x_perp - y_perp|^2 >= |P(x - y)|^2 + (rho_x - rho_y)^2, with rho the norm of the part off the
   subspace. Those lower bounds, widened by the float32 GEMM error bound and the rounding of the
   projection, rule pairs out without touching the D-dimensional rows.
2. **Upper radii.** A FAISS IVF index over the projections nominates k + 10 neighbours of every
   row; their exact distances give r+ >= r, the true k-NN radius (the k-th smallest distance to
   any k other rows is at least the k-th smallest to all of them). r+ is used for pruning only.
3. **Sampled queries, each evaluated exactly.** S fakes and S reals are drawn uniformly with
   replacement. For each, the quantity its metric averages (in a real ball or not, how many real
   balls, in a fake ball or not, covered or not) is computed exactly: pairs whose lower bound
   clears the ball are outside; for the rest the exact (prdc-rounded) distance is computed in
   Rust, and where it is below r+ the exact radius of that ball is computed too (its own
   candidates are the rows whose lower bound is below its r+). These are the same values the
   exact backend gives per query.

Precision, recall and coverage are means of 0/1 values over the sample, so the Clopper-Pearson
interval is exact (conservative) at the stated confidence. Density is the mean of a count that
has no a priori bound; its interval is the Student t interval over the sample (asymptotic). The
sampling error is the only error: with ``samples`` >= the set size every query is evaluated
once (no sampling) and the four values equal the exact backend's.

The cost of step 3 depends on how tight the bounds are: on embeddings whose variance sits in a
few hundred directions (as learned features do) most pairs are ruled out by the projection and
the index's r+ are close to r. On isotropic noise the projection rules out nothing (a float32
GEMM over all D dimensions then bounds the pairs, block by block) and r+ from the index is far
above r, so each sampled query needs many exact radii; once the queries would need more than a
fifth of a set's radii, all of them are computed by the exact kernel instead, and the mode costs
about as much as exact PRDC. ``info`` reports the pairs and radii computed exactly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from cryoet_forge.errors import InputError
from cryoet_forge.metrics.knn import (
    ProgressCallback,
    exact_pair_distances,
    gemm_margin_factor,
    kth_neighbour_distances,
    settle_thresholds,
)
from cryoet_forge.metrics.knn_faiss import import_faiss

#: rows per block of the projection pass and of the projected distance sweeps
_BLOCK = 16_384
#: queries per projected distance sweep
_QUERY_BATCH = 64
#: rows of the sample the principal axes come from
_PCA_ROWS = 10_000
#: rows per block of the projection (float64 copies of this many rows)
_PROJECT_ROWS = 2048
#: neighbours the index nominates beyond k
_EXTRA_CANDIDATES = 10
#: above this share of a set's radii needed by the sampled queries, all are computed by the exact kernel
_ALL_RADII_FRACTION = 0.2
#: leading principal axes the IVF index searches (it only nominates; the bounds use all of them)
_INDEX_DIMS = 64
#: relative slack on the projection's rounding (float32 storage, float64 sums), far above its error
_PROJ_SLACK = 1e-6
#: relative slack on the residual norms, computed as sqrt(|x|^2 - |Px|^2) in float64
_RESID_SLACK = 1e-5


@dataclass
class Estimate:
    """One value from the sample with its interval."""

    value: float
    low: float
    high: float
    method: str

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "low": self.low, "high": self.high, "method": self.method}


@dataclass
class ApproximatePrdc:
    """Sample estimates of precision, recall, density and coverage, each with its interval."""

    n_real: int
    n_fake: int
    k: int
    strict: bool
    confidence: float
    estimates: dict[str, Estimate]
    #: draws (with replacement) of fake and real queries; distinct queries evaluated
    samples: dict[str, int]
    census: bool
    real_upper_radii: np.ndarray
    fake_upper_radii: np.ndarray
    #: the drawn query rows (fake rows for precision and density, real rows for recall and coverage)
    fake_queries: np.ndarray
    real_queries: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def values(self) -> dict[str, float]:
        return {name: est.value for name, est in self.estimates.items()}


class _Side:
    """One feature set with its projection, residual norms and radii (upper bounds, exact ones found)."""

    def __init__(self, x: np.ndarray, proj: np.ndarray, rho: np.ndarray, norm: np.ndarray, centre: np.ndarray):
        self.x = x
        self.centre32 = centre.astype(np.float32)  # subtracted before the full-dimension GEMM
        self.proj = proj  # float32 (n, d')
        self.pn2 = np.einsum("ij,ij->i", proj, proj, dtype=np.float64)
        self.rho = rho  # float64 residual norms
        self.slack = _PROJ_SLACK * norm  # bound on |fl(P(x - c)) - P(x - c)|, with room
        self.rho_slack = _RESID_SLACK * norm
        self.n = x.shape[0]
        self.upper = np.full(self.n, np.inf, dtype=np.float32)
        self.index_upper = self.upper  # the index's upper radii, kept when exact ones replace them
        self.known = np.full(self.n, np.nan, dtype=np.float32)  # exact radii found so far
        self.requested = 0
        self.all_exact = False


class _Counter:
    def __init__(self) -> None:
        self.pairs = 0
        self.radii = 0
        self.sweeps = 0
        self.gemm_rows = 0


def _projection(real: np.ndarray, fake: np.ndarray, dims: int, rng: np.random.Generator):
    """Centre (float64) and orthonormal axes (dims, D), both from a row sample of the two sets."""
    n, m, d = real.shape[0], fake.shape[0], real.shape[1]
    take_r = min(n, max(1, _PCA_ROWS * n // (n + m)))
    take_f = min(m, max(1, _PCA_ROWS - take_r))
    rows = [real[np.sort(rng.choice(n, take_r, replace=False))], fake[np.sort(rng.choice(m, take_f, replace=False))]]
    sample = np.concatenate(rows).astype(np.float64)
    # any fixed centre keeps the bounds valid; the sample's mean is as good as the sets' and
    # spares a pass over both files
    centre = sample.mean(axis=0)
    sample -= centre
    dims = min(dims, d)
    # the principal axes: eigenvectors of the sample's scatter matrix, orthonormal in float64
    _, vectors = np.linalg.eigh(sample.T @ sample)
    return centre, np.ascontiguousarray(vectors[:, ::-1][:, :dims].T)


def _project(x: np.ndarray, centre: np.ndarray, axes: np.ndarray) -> _Side:
    n = x.shape[0]
    proj = np.empty((n, axes.shape[0]), dtype=np.float32)
    rho = np.empty(n)
    norm = np.empty(n)
    for start in range(0, n, _PROJECT_ROWS):  # small blocks: the float64 copy stays in cache
        block = x[start : start + _PROJECT_ROWS].astype(np.float64)
        block -= centre
        p = block @ axes.T
        full = np.einsum("ij,ij->i", block, block)
        inside = np.einsum("ij,ij->i", p, p)
        end = start + block.shape[0]
        proj[start:end] = p
        rho[start:end] = np.sqrt(np.maximum(full - inside, 0.0))
        norm[start:end] = np.sqrt(full)
    return _Side(x, proj, rho, norm, centre)


def _lower_bounds_sq(side_q: _Side, qi: np.ndarray, side_b: _Side, bi: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Certified lower bounds of the squared distances of the pairs (row ``qi`` of ``side_q``,
    row ``bi`` of ``side_b``) from their projected dot products ``g`` (float32 GEMM)."""
    qn, bn = side_q.pn2[qi], side_b.pn2[bi]
    approx = qn + bn - 2.0 * g.astype(np.float64)
    margin = gemm_margin_factor(side_q.proj.shape[1]) * (qn + bn)
    root = np.sqrt(np.maximum(approx - margin, 0.0)) - side_q.slack[qi] - side_b.slack[bi]
    gap = np.abs(side_q.rho[qi] - side_b.rho[bi]) - side_q.rho_slack[qi] - side_b.rho_slack[bi]
    return np.maximum(root, 0.0) ** 2 + np.maximum(gap, 0.0) ** 2


def _full_lower_bounds_sq(side_q: _Side, q: np.ndarray, side_b: _Side, start: int, stop: int) -> np.ndarray:
    """Certified lower bounds of the squared distances of queries ``q`` to rows ``start:stop`` of
    ``side_b`` from a float32 GEMM over all D dimensions of the centred rows: (len(q), stop - start).

    Centring in float32 moves each distance by at most 2^-24 (|x - c| + |y - c|) and the GEMM's
    error is at most ``gemm_margin_factor(D) (|x - c|^2 + |y - c|^2)``; both are subtracted."""
    factor = gemm_margin_factor(side_q.x.shape[1])
    qc = side_q.x[q] - side_q.centre32
    qn = np.einsum("ij,ij->i", qc, qc, dtype=np.float64)[:, None]
    out = np.empty((q.size, stop - start))
    for sub in range(start, stop, _PROJECT_ROWS):
        end = min(stop, sub + _PROJECT_ROWS)
        bc = side_b.x[sub:end] - side_b.centre32
        bn = np.einsum("ij,ij->i", bc, bc, dtype=np.float64)[None, :]
        approx = qn + bn - 2.0 * (qc @ bc.T).astype(np.float64)
        root = np.sqrt(np.maximum(approx - factor * (qn + bn), 0.0)) - _PROJ_SLACK * (np.sqrt(qn) + np.sqrt(bn))
        out[:, sub - start : end - start] = np.maximum(root, 0.0) ** 2
    return out


def _candidates(side_q: _Side, q: np.ndarray, side_b: _Side, limit_sq: np.ndarray, counter: _Counter,
                per_db: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each query, the rows of ``side_b`` whose lower bound does not exceed the limit
    (``limit_sq``: one per query, or one per row of ``side_b`` when ``per_db``), with those bounds.

    A float32 test with the error bound counted four times over passes every pair the exact
    lower bound could keep (two vector ops per pair); the float64 bound is then computed for
    those only. Where the projection leaves many pairs of a block (more than one in
    ``_QUERY_BATCH``: the data have much variance off the projection), the full-dimension GEMM
    bound is computed for the block too, which costs less than checking them one by one."""
    factor = 4.0 * gemm_margin_factor(side_q.proj.shape[1])
    qp = side_q.proj[q]
    qn = side_q.pn2[q]
    limit = np.sqrt(limit_sq)
    if per_db:
        reach_col = (limit + side_b.slack + float(side_q.slack[q].max())) ** 2
        row = qn * (1.0 - factor) / 2.0
    else:
        reach = (limit + side_q.slack[q] + float(side_b.slack.max())) ** 2
        row = (qn * (1.0 - factor) - reach) / 2.0
    row32 = row.astype(np.float32)[:, None]
    found: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in q]
    for start in range(0, side_b.n, _BLOCK):
        stop = min(start + _BLOCK, side_b.n)
        bn = side_b.pn2[start:stop]
        col = bn * (1.0 - factor) / 2.0
        if per_db:
            col = col - reach_col[start:stop] / 2.0
        g = qp @ side_b.proj[start:stop].T
        ti, bj = np.nonzero(g - col.astype(np.float32)[None, :] >= row32)
        if ti.size == 0:
            continue
        bi = bj + start
        lb = _lower_bounds_sq(side_q, q[ti], side_b, bi, g[ti, bj])
        keep = lb <= (limit_sq[bi] if per_db else limit_sq[ti])
        ti, bi, lb = ti[keep], bi[keep], lb[keep]
        if ti.size * _QUERY_BATCH > (stop - start) * len(q):
            rows, where = np.unique(ti, return_inverse=True)
            full = _full_lower_bounds_sq(side_q, q[rows], side_b, start, stop)[where, bi - start]
            counter.gemm_rows += int(rows.size) * (stop - start)
            lb = np.maximum(lb, full)
            keep = lb <= (limit_sq[bi] if per_db else limit_sq[ti])
            ti, bi, lb = ti[keep], bi[keep], lb[keep]
        cuts = np.searchsorted(ti, np.arange(len(q) + 1))
        for t in range(len(q)):
            if cuts[t + 1] > cuts[t]:
                found[t].append((bi[cuts[t] : cuts[t + 1]], lb[cuts[t] : cuts[t + 1]]))
    counter.sweeps += len(q)
    empty = (np.empty(0, dtype=np.int64), np.empty(0))
    return [(np.concatenate([c for c, _ in f]), np.concatenate([b for _, b in f])) if f else empty for f in found]


def _exact(side_q: _Side, side_b: _Side, qi: int, cols: np.ndarray, counter: _Counter) -> np.ndarray:
    counter.pairs += int(cols.size)
    return exact_pair_distances(side_q.x, side_b.x, np.full(cols.size, qi, dtype=np.int64), cols)


def _exact_radii(side: _Side, rows: np.ndarray, k: int, counter: _Counter) -> None:
    """Exact k-NN radii of ``rows`` of ``side`` within it, kept in ``side.known``.

    The rows with the smallest lower bounds are computed first; the k-th smallest of those
    distances is a tighter upper radius, and only rows whose bound is below it remain."""
    rows = np.unique(rows)
    rows = rows[np.isnan(side.known[rows])]
    side.requested += rows.size
    if rows.size and side.requested > _ALL_RADII_FRACTION * side.n:
        _all_radii(side, k, counter)
        return
    for start in range(0, rows.size, _QUERY_BATCH):
        q = rows[start : start + _QUERY_BATCH]
        _, hi = settle_thresholds(side.upper[q])
        lists = _candidates(side, q, side, hi, counter, per_db=False)
        for t, i in enumerate(q):
            cols, lb = lists[t]
            others = cols != i
            cols, lb = cols[others], lb[others]
            if cols.size < k:  # cannot happen with a valid upper radius; every other row then
                cols = np.delete(np.arange(side.n, dtype=np.int64), i)
                lb = np.zeros(cols.size)
            first = min(cols.size, 2 * k + 8)
            order = np.argpartition(lb, first - 1)[:first] if first < cols.size else np.arange(cols.size)
            d_first = _exact(side, side, int(i), cols[order], counter)
            tighter = float(np.partition(d_first, k - 1)[k - 1])
            _, hi_t = settle_thresholds(np.array([tighter], dtype=np.float32))
            rest = np.ones(cols.size, dtype=bool)
            rest[order] = False
            rest &= lb <= hi_t[0]
            d = np.concatenate([d_first, _exact(side, side, int(i), cols[rest], counter)])
            side.known[i] = np.partition(d, k - 1)[k - 1]
            counter.radii += 1


def _all_radii(side: _Side, k: int, counter: _Counter) -> None:
    """Every exact radius of ``side`` from the exact kernel (O(n^2 D), one tile sweep), for when the
    sampled queries would need more than ``_ALL_RADII_FRACTION`` of them one by one: the upper radii
    were too loose (isotropic data). They then replace the upper radii, so the pruning is tight."""
    side.known[:] = kth_neighbour_distances(side.x, k)
    side.upper = side.known.copy()
    side.all_exact = True
    counter.radii += side.n


def _upper_radii(side: _Side, k: int, nprobe: int, counter: _Counter) -> dict[str, Any]:
    """r+ >= r for every row: the k-th smallest exact distance to neighbours nominated by an IVF
    index over the projections."""
    faiss = import_faiss()
    n = side.proj.shape[0]
    dp = min(_INDEX_DIMS, side.proj.shape[1])  # the leading principal axes
    lead = np.ascontiguousarray(side.proj[:, :dp])
    wanted = min(n, k + 1 + _EXTRA_CANDIDATES)
    nlist = max(1, min(int(2 * math.sqrt(n)), n // 40))
    if nlist > 1:
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dp), dp, nlist)
        index.cp.niter = 10
        train = lead if n <= 40 * nlist else lead[np.linspace(0, n - 1, 40 * nlist).astype(np.int64)]
        index.train(np.ascontiguousarray(train))
        index.nprobe = min(nprobe, nlist)
    else:
        index = faiss.IndexFlatL2(dp)
    index.add(lead)
    for start in range(0, n, 4 * _BLOCK):
        stop = min(n, start + 4 * _BLOCK)
        _, idx = index.search(lead[start:stop], wanted)
        own = np.arange(start, stop)[:, None]
        valid = (idx >= 0) & (idx != own)
        rows = np.repeat(own, wanted, axis=1)[valid]
        cols = idx[valid].astype(np.int64)
        counter.pairs += int(cols.size)
        d = exact_pair_distances(side.x, side.x, np.ascontiguousarray(rows), np.ascontiguousarray(cols))
        full = np.full(idx.shape, np.inf, dtype=np.float32)
        full[valid] = d
        full.sort(axis=1)
        side.upper[start:stop] = full[:, k - 1]  # inf where the index gave fewer than k others
    side.index_upper = side.upper.copy()
    return {"dims": dp, "nlist": nlist, "nprobe": min(nprobe, nlist) if nlist > 1 else None,
            "nominated": wanted - 1}


def _tight_fraction(side: _Side) -> float | None:
    rows = np.flatnonzero(~np.isnan(side.known))
    if rows.size == 0:
        return None
    return float(np.mean(side.index_upper[rows] == side.known[rows]))


def _inside(d: np.ndarray, r: float, strict: bool) -> np.ndarray:
    return d < r if strict else d <= r


def _ball_hits(side_q: _Side, q: np.ndarray, side_b: _Side, k: int, strict: bool, counter: _Counter,
               first_only: bool) -> np.ndarray:
    """Per query, how many balls of ``side_b`` (exact radii) contain it (with ``first_only``,
    0 or 1: whether any does)."""
    out = np.zeros(len(q), dtype=np.int64)
    for start in range(0, len(q), _QUERY_BATCH):
        batch = q[start : start + _QUERY_BATCH]
        _, hi = settle_thresholds(side_b.upper)  # per batch: exact radii may have replaced them
        lists = _candidates(side_q, batch, side_b, hi, counter, per_db=True)
        pending = []  # (query position, ball rows, distances) where only the exact radius can tell
        for t, i in enumerate(batch):
            cols = lists[t][0]
            if cols.size == 0:
                continue
            d = _exact(side_q, side_b, int(i), cols, counter)
            maybe = _inside(d, side_b.upper[cols], strict)  # r <= r+: outside r+ is outside r
            if maybe.any():
                cols, d = cols[maybe], d[maybe]
                order = np.argsort(d / np.maximum(side_b.upper[cols], np.float32(1e-30)), kind="stable")
                pending.append((start + t, cols[order], d[order]))
        if not first_only:
            if pending:
                _exact_radii(side_b, np.concatenate([cols for _, cols, _ in pending]), k, counter)
            for where, cols, d in pending:
                radii = side_b.known[cols]
                out[where] = int(_inside(d, radii, strict).sum())
            continue
        # whether any ball holds the query: the likeliest balls first, in rounds over the batch
        step = 0
        while pending:
            _exact_radii(side_b, np.array([cols[step] for _, cols, _ in pending], dtype=np.int64), k, counter)
            still = []
            for where, cols, d in pending:
                if _inside(d[step : step + 1], side_b.known[cols[step]], strict)[0]:
                    out[where] = 1
                elif step + 1 < cols.size:
                    still.append((where, cols, d))
            pending = still
            step += 1
    return out


def _covered(real: _Side, fake: _Side, q: np.ndarray, k: int, strict: bool, counter: _Counter) -> np.ndarray:
    """Per real query: whether its nearest fake lies inside its own (exact) ball."""
    _exact_radii(real, q, k, counter)
    radii = real.known[q]
    _, hi = settle_thresholds(radii)
    out = np.zeros(len(q), dtype=np.int64)
    for start in range(0, len(q), _QUERY_BATCH):
        batch = q[start : start + _QUERY_BATCH]
        lists = _candidates(real, batch, fake, hi[start : start + _QUERY_BATCH], counter, per_db=False)
        for t, i in enumerate(batch):
            if lists[t][0].size:
                d = _exact(real, fake, int(i), lists[t][0], counter)
                out[start + t] = int(_inside(d, radii[start + t], strict).any())
    return out


def clopper_pearson(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Exact (conservative) binomial interval."""
    alpha = 1.0 - confidence
    low = 0.0 if successes == 0 else float(stats.beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return low, high


def _t_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    mean = float(values.mean())
    if values.size < 2:
        return -math.inf, math.inf
    quantile = float(stats.t.ppf(0.5 + confidence / 2, values.size - 1))
    half = quantile * float(values.std(ddof=1)) / math.sqrt(values.size)
    return mean - half, mean + half


def _draw(rng: np.random.Generator, size: int, samples: int) -> tuple[np.ndarray, bool]:
    """Query draws: every row once when the sample would be as large as the set (a census)."""
    if samples >= size:
        return np.arange(size, dtype=np.int64), True
    return rng.integers(0, size, samples, dtype=np.int64), False


def approximate_prdc(real: np.ndarray, fake: np.ndarray, k: int = 5, strict: bool = True, samples: int = 1000,
                     confidence: float = 0.95, seed: int = 0, projection_dims: int = 128, nprobe: int = 16,
                     progress: ProgressCallback | None = None) -> ApproximatePrdc:
    """PRDC of ``fake`` against ``real`` (validated float32 matrices) from ``samples`` queries per
    set, each with its interval at ``confidence``; see the module's docstring."""
    if not isinstance(samples, (int, np.integer)) or isinstance(samples, bool) or samples < 2:
        raise InputError(f"--samples must be an integer >= 2, got {samples!r}")
    if not 0.5 <= confidence < 1.0:
        raise InputError(f"--confidence must be in [0.5, 1), got {confidence!r}")
    if not isinstance(projection_dims, (int, np.integer)) or projection_dims < 1:
        raise InputError(f"projection dimensions must be a positive integer, got {projection_dims!r}")
    n, m = real.shape[0], fake.shape[0]
    rng = np.random.default_rng(seed)
    counter = _Counter()
    seconds: dict[str, float] = {}
    steps = 5

    def tick(step: int) -> None:
        if progress is not None:
            progress(step, steps)

    started = time.perf_counter()
    centre, axes = _projection(real, fake, int(projection_dims), rng)
    sides = {"real": _project(real, centre, axes), "fake": _project(fake, centre, axes)}
    seconds["projection"] = time.perf_counter() - started
    tick(1)
    started = time.perf_counter()
    index_info = {name: _upper_radii(side, k, nprobe, counter) for name, side in sides.items()}
    seconds["upper_radii"] = time.perf_counter() - started
    pairs_index = counter.pairs
    tick(2)
    xr, yf = sides["real"], sides["fake"]
    fq, census_f = _draw(rng, m, int(samples))
    rq, census_r = _draw(rng, n, int(samples))
    started = time.perf_counter()
    uf, f_inv = np.unique(fq, return_inverse=True)
    in_real = _ball_hits(yf, uf, xr, k, strict, counter, first_only=False)[f_inv]
    tick(3)
    ur, r_inv = np.unique(rq, return_inverse=True)
    recalled = _ball_hits(xr, ur, yf, k, strict, counter, first_only=True)[r_inv]
    tick(4)
    covered = _covered(xr, yf, ur, k, strict, counter)[r_inv]
    seconds["queries"] = time.perf_counter() - started
    tick(5)

    def binary(hits: np.ndarray, census: bool) -> Estimate:
        s, t = int(hits.sum()), int(hits.size)
        if census:
            return Estimate(float(np.float64(s) / t), s / t, s / t, "every query (exact)")
        low, high = clopper_pearson(s, t, confidence)
        return Estimate(s / t, low, high, "Clopper-Pearson")

    precision = binary(in_real > 0, census_f)
    if census_f:
        value = float((1.0 / float(k)) * (np.float64(in_real.sum()) / m))
        density = Estimate(value, value, value, "every query (exact)")
    else:
        low, high = _t_interval(in_real / float(k), confidence)
        density = Estimate(float(in_real.mean()) / k, max(0.0, low), high, "Student t (asymptotic)")
    estimates = {"precision": precision, "recall": binary(recalled > 0, census_r), "density": density,
                 "coverage": binary(covered > 0, census_r)}
    info = {
        "approximate": True, "projection_dims": int(axes.shape[0]), "index": index_info,
        "exact_pairs_index": pairs_index, "exact_pairs_queries": counter.pairs - pairs_index,
        "exact_radii": counter.radii, "projected_sweeps": counter.sweeps,
        "full_gemm_pairs": counter.gemm_rows, "seconds": seconds, "seed": int(seed),
        "upper_radii_finite": {name: int(np.isfinite(s.upper).sum()) for name, s in sides.items()},
        # how often the index's upper radius was the exact one, over the radii computed exactly
        "upper_radii_exact_fraction": {name: _tight_fraction(s) for name, s in sides.items()},
        "all_radii_exact": {name: s.all_exact for name, s in sides.items()},
    }
    return ApproximatePrdc(
        n_real=n, n_fake=m, k=int(k), strict=strict, confidence=float(confidence), estimates=estimates,
        samples={"fake": int(fq.size), "real": int(rq.size), "fake_distinct": int(uf.size),
                 "real_distinct": int(ur.size)},
        census=census_f and census_r, real_upper_radii=xr.upper, fake_upper_radii=yf.upper,
        fake_queries=fq, real_queries=rq, info=info,
    )

"""Fréchet distance between Gaussians fitted to two feature sets (FID).

FID = |mu_X - mu_Y|^2 + Tr(S_X) + Tr(S_Y) - 2 Tr((S_X S_Y)^(1/2)).

The trace of the square root is the sum of square roots of the eigenvalues of a
symmetric positive semi-definite matrix similar to S_X S_Y, in float64, never a general
``sqrtm``:

- ``cholesky`` (default when S_X is positive definite): S_X = L L^T, eigenvalues of
  L^T S_Y L (two triangular products and one eigenvalues-only symmetric solve);
- ``eigen`` (S_X singular): sqrt(S_X) from its eigendecomposition, eigenvalues of
  sqrt(S_X) S_Y sqrt(S_X);
- ``gram`` (raw features with N, M < D): the nonzero eigenvalues of S_X S_Y are the
  squared singular values of A B^T / sqrt((N-1)(M-1)) for the centred data A, B, an
  N x M problem instead of a D x D one.

Moments stream in float64 (``FID.update``), so features need not all be in memory.
Tiny negative eigenvalues from rounding are clipped to 0 and reported.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import scipy.linalg
from scipy.linalg import blas as _blas
from threadpoolctl import threadpool_limits

from cryoet_forge.errors import InputError
from cryoet_forge.metrics.knn import as_feature_matrix, check_finite
from cryoet_forge.metrics.prdc import _to_numpy


class FIDWarning(UserWarning):
    """A numerical caveat of an FID value (singular covariance, N < D, clipping)."""


@dataclass
class FIDResult:
    """An FID value with the terms it is made of and its numerical diagnostics."""

    fid: float
    mean_term: float
    trace_term: float
    route: str
    n_real: int
    n_fake: int
    dim: int
    clipped_eigenvalues: int = 0
    most_negative_eigenvalue: float = 0.0
    warnings: list[str] = field(default_factory=list)
    #: the bootstrap interval of ``fid_bias_corrected`` (not of ``fid``), clipped at 0
    fid_bias_corrected_ci: tuple[float, float] | None = None
    ci_level: float | None = None
    bootstrap: int = 0
    #: median of the resampled FIDs minus ``fid``
    bootstrap_bias: float | None = None
    #: ``fid`` minus ``bootstrap_bias``, clipped at 0 (``fid_bias_corrected_clipped`` says when)
    fid_bias_corrected: float | None = None
    fid_bias_corrected_clipped: bool = False

    @property
    def ci(self) -> tuple[float, float] | None:
        """The interval of ``fid_bias_corrected`` (the only estimate given one)."""
        return self.fid_bias_corrected_ci

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items()}
        ci = self.fid_bias_corrected_ci
        out["fid_bias_corrected_ci"] = list(ci) if ci is not None else None
        return out


class Moments:
    """Streaming float64 mean and covariance of rows (shifted by the first batch's mean
    so that large offsets do not cancel catastrophically)."""

    def __init__(self, name: str = "features"):
        self.name = name
        self.n = 0
        self.shift: np.ndarray | None = None
        self.s1: np.ndarray | None = None
        self.s2: np.ndarray | None = None  # upper triangle, Fortran order (BLAS syrk)

    def update(self, batch: Any, weights: np.ndarray | None = None) -> None:
        """Add the rows of ``batch``; ``weights`` (one non-negative integer per row) counts row i
        that many times, as a resample with replacement does, without copying the rows."""
        x = as_feature_matrix(batch, self.name)
        check_finite(x, self.name)
        if weights is not None and weights.shape != (x.shape[0],):
            raise InputError(f"{self.name}: {weights.shape} weights for {x.shape[0]} rows")
        if self.shift is None:
            d = x.shape[1]
            self.shift = x.mean(axis=0, dtype=np.float64)
            self.s1 = np.zeros(d)
            self.s2 = np.zeros((d, d), order="F")
        elif x.shape[1] != self.shift.shape[0]:
            raise InputError(f"{self.name}: batch has D={x.shape[1]}, earlier batches D={self.shift.shape[0]}")
        assert self.s1 is not None
        for start in range(0, x.shape[0], 4096):
            b = x[start : start + 4096].astype(np.float64)
            b -= self.shift
            if weights is None:
                self.s1 += b.sum(axis=0)
            else:
                w = weights[start : start + 4096].astype(np.float64)
                self.s1 += w @ b
                b *= np.sqrt(w)[:, None]  # sum_i w_i b_i b_i^T = (sqrt(w) b)^T (sqrt(w) b)
            # b^T b into the upper triangle: b.T is Fortran-contiguous, so no copy is made
            self.s2 = _blas.dsyrk(1.0, b.T, beta=1.0, c=self.s2, trans=0, lower=0, overwrite_c=1)
        self.n += x.shape[0] if weights is None else int(weights.sum())

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2 or self.shift is None or self.s1 is None or self.s2 is None:
            raise InputError(f"{self.name}: need at least 2 rows for a covariance, got {self.n}")
        m = self.s1 / self.n
        upper = np.triu(self.s2)
        s2 = upper + np.triu(upper, 1).T
        cov = (s2 - self.n * np.outer(m, m)) / (self.n - 1)
        return self.shift + m, cov


def _is_positive_definite(s: np.ndarray) -> tuple[np.ndarray | None, bool]:
    try:
        return scipy.linalg.cholesky(s, lower=True, check_finite=False), True
    except np.linalg.LinAlgError:
        return None, False


@functools.lru_cache(maxsize=1)
def _two_stage_eigvals() -> Callable[[np.ndarray], np.ndarray] | None:
    """LAPACK's two-stage symmetric eigenvalue solver (dsyev_2stage, eigenvalues only).

    Its first stage (full -> band) is level-3 BLAS, so it needs far less memory traffic
    than the one-stage dsytrd behind scipy's eigh (about 1.6x faster at D = 4096). SciPy
    does not wrap it, so it is called from SciPy's bundled OpenBLAS when that exports it;
    ``None`` otherwise (the caller falls back to ``scipy.linalg.eigh``).
    """
    libs = glob.glob(os.path.join(os.path.dirname(scipy.__file__), os.pardir, "scipy.libs", "libscipy_openblas*.so*"))
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
            fn = lib.scipy_LAPACKE_dsyev_2stage
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_int, ctypes.c_char, ctypes.c_char, ctypes.c_int, ctypes.c_void_p,
                       ctypes.c_int, ctypes.c_void_p]

        def eigvals(m: np.ndarray, fn=fn) -> np.ndarray:
            a = np.array(m, dtype=np.float64, order="C")
            w = np.empty(a.shape[0])
            info = fn(101, b"N", b"L", a.shape[0], a.ctypes.data, a.shape[0], w.ctypes.data)
            if info != 0:
                raise np.linalg.LinAlgError(f"dsyev_2stage failed (info={info})")
            return w

        return eigvals
    return None


def _one_blas_thread():
    """Limit BLAS to one thread for a block."""
    return threadpool_limits(1, user_api="blas")


def _sym_eigvals(m: np.ndarray) -> np.ndarray:
    """Eigenvalues of the symmetric part of ``m`` (float64, ascending)."""
    m = (m + m.T) * 0.5
    # Tridiagonal reduction synchronises its BLAS threads once per column; on a busy
    # machine that stalls for whole scheduler slices (measured 4x slower on 2 shared cores),
    # while one thread loses little, since the reduction is memory-bound.
    with _one_blas_thread():
        solver = _two_stage_eigvals() if m.shape[0] >= 256 else None
        if solver is not None:
            try:
                return np.sort(solver(m))
            except np.linalg.LinAlgError:
                pass
        return scipy.linalg.eigh(m, eigvals_only=True, driver="ev", overwrite_a=True, check_finite=False)


def trace_sqrt_product(s_x: np.ndarray, s_y: np.ndarray) -> tuple[float, str, np.ndarray]:
    """Tr((S_X S_Y)^(1/2)), the route taken and the raw eigenvalues used."""
    lower, ok = _is_positive_definite(s_x)
    if ok:
        # L^T S_Y L with two triangular products (trmm), half the flops of two GEMMs
        sl = _blas.dtrmm(1.0, lower, np.asfortranarray(s_y), side=1, lower=1)
        m = _blas.dtrmm(1.0, lower, sl, side=0, lower=1, trans_a=1)
        route = "cholesky"
    else:
        w, v = scipy.linalg.eigh(s_x, check_finite=False)
        root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
        m = root @ s_y @ root
        route = "eigen"
    ev = _sym_eigvals(m)
    return float(np.sqrt(np.clip(ev, 0.0, None)).sum()), route, ev


def _finish(mu_x, mu_y, trace_x, trace_y, tr_sqrt, route, ev, n_x, n_y, d, notes) -> FIDResult:
    diff = mu_x - mu_y
    mean_term = float(diff @ diff)
    trace_term = float(trace_x + trace_y - 2.0 * tr_sqrt)
    negative = ev[ev < 0]
    result = FIDResult(
        fid=mean_term + trace_term, mean_term=mean_term, trace_term=trace_term, route=route,
        n_real=n_x, n_fake=n_y, dim=d, clipped_eigenvalues=int(negative.size),
        most_negative_eigenvalue=float(negative.min()) if negative.size else 0.0, warnings=list(notes),
    )
    if negative.size:
        scale = max(float(np.abs(ev).max()), 1e-300)
        result.warnings.append(
            f"{negative.size} negative eigenvalue(s) of sqrt(S_X) S_Y sqrt(S_X) clipped to 0 "
            f"(most negative {result.most_negative_eigenvalue:.3g}, largest |eigenvalue| {scale:.3g})"
        )
    for message in result.warnings:
        warnings.warn(message, FIDWarning, stacklevel=3)
    return result


def _notes(n_x: int, n_y: int, d: int, route: str) -> list[str]:
    notes = []
    for name, n in (("real", n_x), ("fake", n_y)):
        if n <= d:
            notes.append(
                f"{name} features: N={n} <= D={d}, so the covariance is singular and FID is biased; "
                "use more samples than dimensions"
            )
    if route == "eigen":
        notes.append("covariance of the real features is singular (not positive definite); used the eigen route")
    return notes


def fid_from_moments(mu_x: Any, cov_x: Any, mu_y: Any, cov_y: Any, n_real: int = 0, n_fake: int = 0) -> FIDResult:
    """FID from means (D,) and covariances (D, D) in float64."""
    mu_x, mu_y = np.asarray(mu_x, dtype=np.float64), np.asarray(mu_y, dtype=np.float64)
    cov_x, cov_y = np.asarray(cov_x, dtype=np.float64), np.asarray(cov_y, dtype=np.float64)
    d = mu_x.shape[0] if mu_x.ndim else 0
    if mu_x.shape != (d,) or mu_y.shape != (d,) or cov_x.shape != (d, d) or cov_y.shape != (d, d):
        raise InputError(
            f"FID moments must be means (D,) and covariances (D, D) of one D; got {mu_x.shape}, "
            f"{cov_x.shape}, {mu_y.shape}, {cov_y.shape}"
        )
    for name, a in (("mean", mu_x), ("mean", mu_y), ("covariance", cov_x), ("covariance", cov_y)):
        if not np.isfinite(a).all():
            raise InputError(f"FID {name} has NaN or Inf values")
    tr_sqrt, route, ev = trace_sqrt_product(cov_x, cov_y)
    notes = _notes(n_real, n_fake, d, route) if n_real and n_fake else (
        ["covariance of the real features is singular (not positive definite); used the eigen route"]
        if route == "eigen" else [])
    return _finish(mu_x, mu_y, np.trace(cov_x), np.trace(cov_y), tr_sqrt, route, ev, n_real, n_fake, d, notes)


def _fid_of_features(x: np.ndarray, y: np.ndarray, wx: np.ndarray | None = None,
                     wy: np.ndarray | None = None) -> FIDResult:
    """FID of the rows of x and y, row i counted ``w[i]`` times where weights are given (the
    moments route only; the Gram route is for small sets and takes the rows themselves)."""
    n, m, d = x.shape[0], y.shape[0], x.shape[1]
    if wx is not None and wy is not None:
        n, m = int(wx.sum()), int(wy.sum())
    elif max(n, m) < d:
        # Gram route: an N x M singular value problem instead of D x D eigenvalues
        mu_x, mu_y = x.mean(axis=0, dtype=np.float64), y.mean(axis=0, dtype=np.float64)
        a = x.astype(np.float64) - mu_x
        b = y.astype(np.float64) - mu_y
        sv = scipy.linalg.svdvals(a @ b.T, check_finite=False)
        tr_sqrt = float(sv.sum() / np.sqrt((n - 1) * (m - 1)))
        trace_x = float(np.einsum("ij,ij->", a, a) / (n - 1))
        trace_y = float(np.einsum("ij,ij->", b, b) / (m - 1))
        return _finish(mu_x, mu_y, trace_x, trace_y, tr_sqrt, "gram", sv**2, n, m, d, _notes(n, m, d, "gram"))
    mx, my = Moments("real features"), Moments("fake features")
    mx.update(x, wx)
    my.update(y, wy)
    (mu_x, cov_x), (mu_y, cov_y) = mx.mean_cov(), my.mean_cov()
    tr_sqrt, route, ev = trace_sqrt_product(cov_x, cov_y)
    return _finish(mu_x, mu_y, np.trace(cov_x), np.trace(cov_y), tr_sqrt, route, ev, n, m, d, _notes(n, m, d, route))


#: fewer resamples than this give a 95% interval whose ends are the one or two most extreme values
MIN_BOOTSTRAP = 50
#: more than this adds nothing (the Monte Carlo error at 10^4 is already far below the interval's width)
MAX_BOOTSTRAP = 100_000


def fid_details(real: Any, fake: Any, bootstrap: int = 0, ci_level: float = 0.95, seed: int = 0) -> FIDResult:
    """FID of two feature sets with diagnostics and an optional bootstrap confidence interval.

    ``bootstrap`` > 0 resamples the rows of both sets with replacement that many times. FID is
    biased upwards (by O(D/N)) and resampling with replacement, which duplicates rows, adds that
    bias once more, so the resampled values sit above the estimate and their plain percentile
    interval misses the population FID (coverage 0.58 for a nominal 0.95 at D=8, N=200); it is
    no interval of ``fid`` either, which can lie below all of them. So one estimate gets an
    interval: ``fid_bias_corrected`` = F - b with the bootstrap bias b = median(F*) - F, and its
    *basic* (reverse-percentile) interval [2 F - q_hi, 2 F - q_lo], which removes the bias to
    first order and covers the population FID at the stated rate on Gaussians with a known FID
    (tests/test_metrics_fid.py). The median (not the mean) of the resampled values lies between
    q_lo and q_hi, so the corrected value always lies inside its interval. FID is >= 0, so the
    corrected value and the interval are clipped at 0, and a warning says when the value was.
    Where the bias is as large as F itself (the two sets come from one distribution, or are the
    same file), FID sits at its boundary 0, no bootstrap interval is valid there, and a warning
    says so. Fewer than ``MIN_BOOTSTRAP`` resamples give a warning (``forge metrics`` refuses them).
    """
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)):
        raise InputError(f"bootstrap must be an integer number of resamples, got {bootstrap!r}")
    if bootstrap < 0:
        raise InputError(f"bootstrap must be >= 0 resamples, got {bootstrap!r}")
    if bootstrap > MAX_BOOTSTRAP:
        raise InputError(f"bootstrap must be at most {MAX_BOOTSTRAP} resamples, got {bootstrap}")
    x = as_feature_matrix(real, "real features")
    y = as_feature_matrix(fake, "fake features")
    if x.shape[1] != y.shape[1]:
        raise InputError(f"real and fake features must have the same dimension D, got {x.shape[1]} and {y.shape[1]}")
    for name, a in (("real", x), ("fake", y)):
        if a.shape[0] < 2:
            raise InputError(f"{name} features: FID needs at least 2 rows, got {a.shape[0]}")
    check_finite(x, "real features")
    check_finite(y, "fake features")
    result = _fid_of_features(x, y)
    if bootstrap:
        if not 0.0 < ci_level < 1.0:
            raise InputError(f"ci_level must be in (0, 1), got {ci_level}")
        _bootstrap(result, x, y, int(bootstrap), ci_level, seed)
    return result


def _bootstrap(result: FIDResult, x: np.ndarray, y: np.ndarray, bootstrap: int, ci_level: float, seed: int) -> None:
    """``result``'s bias-corrected FID and its basic bootstrap interval from ``bootstrap`` resamples."""
    rng = np.random.default_rng(seed)
    values = np.empty(bootstrap)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FIDWarning)
        for i in range(values.size):
            xi = rng.integers(0, x.shape[0], x.shape[0])
            yi = rng.integers(0, y.shape[0], y.shape[0])
            if max(x.shape[0], y.shape[0]) < x.shape[1]:  # small sets: the Gram route on the rows
                values[i] = _fid_of_features(x[xi], y[yi]).fid
            else:  # the same resample as row counts: streamed moments, no copy of the rows
                values[i] = _fid_of_features(x, y, np.bincount(xi, minlength=x.shape[0]),
                                             np.bincount(yi, minlength=y.shape[0])).fid
    alpha = (1.0 - ci_level) / 2.0
    q_lo, median, q_hi = np.quantile(values, [alpha, 0.5, 1.0 - alpha])
    estimate = result.fid
    bias = float(median - estimate)
    corrected = float(estimate - bias)
    result.ci_level, result.bootstrap, result.bootstrap_bias = ci_level, bootstrap, bias
    result.fid_bias_corrected_ci = (max(0.0, float(2.0 * estimate - q_hi)), max(0.0, float(2.0 * estimate - q_lo)))
    result.fid_bias_corrected = max(0.0, corrected)
    result.fid_bias_corrected_clipped = corrected < 0.0
    notes = []
    if bootstrap < MIN_BOOTSTRAP:
        notes.append(f"{bootstrap} bootstrap resamples: a {round(ci_level * 100)}% interval needs at least "
                     f"{MIN_BOOTSTRAP} (fewer put its ends at the one or two most extreme resamples)")
    if corrected < 0.0:
        notes.append(f"the bias-corrected FID {corrected:.4g} is below 0, where FID cannot be; reported as 0")
    if bias >= estimate:
        notes.append(f"FID {estimate:.4g} is within its bootstrap bias ({bias:.4g}) of 0: the two sets are "
                     "indistinguishable at this sample size and no bootstrap interval is valid at the "
                     "boundary; read FID as consistent with 0")
    for message in notes:
        result.warnings.append(message)
        warnings.warn(message, FIDWarning, stacklevel=3)


def compute_fid(real: Any, fake: Any) -> float:
    """FID between feature sets ``real`` (N, D) and ``fake`` (M, D)."""
    return fid_details(real, fake).fid


class FID:
    """FID as a torchmetrics-style object: moments stream in float64 through ``update``."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._real = Moments("real features")
        self._fake = Moments("fake features")

    def update(self, real: Any = None, fake: Any = None) -> None:
        """Add a batch of real and/or fake features (each (B, D))."""
        if real is None and fake is None:
            raise InputError("FID.update needs real and/or fake features")

        if real is not None:
            self._real.update(_to_numpy(real))
        if fake is not None:
            self._fake.update(_to_numpy(fake))

    def result(self) -> FIDResult:
        if self._real.n == 0 or self._fake.n == 0:
            raise InputError("FID.compute needs at least one update with real and one with fake features")
        (mu_x, cov_x), (mu_y, cov_y) = self._real.mean_cov(), self._fake.mean_cov()
        if mu_x.shape != mu_y.shape:
            raise InputError(f"real and fake features must have the same dimension D, got {mu_x.shape[0]} and {mu_y.shape[0]}")
        return fid_from_moments(mu_x, cov_x, mu_y, cov_y, self._real.n, self._fake.n)

    def compute(self) -> float:
        return self.result().fid

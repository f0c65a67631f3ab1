"""The certified approximate PRDC (`forge metrics --approximate`): every sampled query is evaluated
exactly (so a census equals the exact backend bit for bit and each drawn query's value equals brute
force), the pruning bounds are true bounds, and the intervals cover the exact values."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

pytest.importorskip("faiss")

from cryoet_forge.metrics import approximate as approx  # noqa: E402
from cryoet_forge.metrics.approximate import approximate_prdc, clopper_pearson  # noqa: E402
from cryoet_forge.metrics.knn import kth_neighbour_distances  # noqa: E402
from cryoet_forge.metrics.prdc import compute_prdc  # noqa: E402
from tests_support import assert_one_line_error, forge_executable  # noqa: E402


def _structured(n: int, shift: float, seed: int, d: int = 96, latent: int = 6, noise: float = 0.05) -> np.ndarray:
    """Rows on a low-dimensional non-linear manifold plus isotropic noise, like learned features."""
    mixing = np.random.default_rng(100).normal(size=(latent, d)) / np.sqrt(latent)
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, latent))
    z[:, 0] += shift
    return (np.maximum(z @ mixing, 0.0) + noise * rng.normal(size=(n, d)) + 3.0).astype(np.float32)


def _sets(kind: str) -> tuple[np.ndarray, np.ndarray]:
    if kind == "structured":
        return _structured(700, 0.0, 1), _structured(600, 0.4, 2)
    rng = np.random.default_rng(5)
    if kind == "isotropic":  # the projection bounds prune nothing: every pair is checked exactly
        return rng.standard_normal((400, 300), dtype=np.float32), rng.standard_normal((350, 300), dtype=np.float32)
    # rows repeated more than k times (radius 0) beside distinct rows
    base = rng.standard_normal((30, 12), dtype=np.float32)
    real = np.concatenate([np.repeat(base[:10], 7, axis=0), base[10:], rng.standard_normal((200, 12), dtype=np.float32)])
    fake = np.concatenate([np.repeat(base[5:15], 3, axis=0), rng.standard_normal((150, 12), dtype=np.float32)])
    return np.ascontiguousarray(real), np.ascontiguousarray(fake)


def _exact_sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a.astype(np.float64)[:, None, :] - b.astype(np.float64)[None, :, :]) ** 2).sum(axis=2)


def _dist32(sq: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(sq, 0.0).astype(np.float32))


@pytest.mark.parametrize("kind", ["structured", "isotropic", "duplicates"])
@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("one_by_one", [True, False])
def test_census_equals_the_exact_backend(kind, strict, one_by_one, monkeypatch):
    if one_by_one:  # every radius the queries need from its own pruned sweep, never all at once
        monkeypatch.setattr(approx, "_ALL_RADII_FRACTION", 10.0)
    real, fake = _sets(kind)
    result = approximate_prdc(real, fake, k=5, strict=strict, samples=10**6)
    assert result.census
    assert result.info["all_radii_exact"] == ({"real": False, "fake": False} if one_by_one else
                                              {"real": True, "fake": True})
    assert result.samples == {"fake": fake.shape[0], "real": real.shape[0], "fake_distinct": fake.shape[0],
                              "real_distinct": real.shape[0]}
    assert result.values() == compute_prdc(real, fake, 5, strict=strict)
    for est in result.estimates.values():
        assert est.low == est.value == est.high and est.method == "every query (exact)"
    # the projection prunes the structured sets; isotropic rows need the full-dimension GEMM bound
    assert (result.info["full_gemm_pairs"] > 0) == (kind != "structured")


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("one_by_one", [True, False])
def test_each_drawn_query_has_its_brute_force_value(strict, one_by_one, monkeypatch):
    if one_by_one:
        monkeypatch.setattr(approx, "_ALL_RADII_FRACTION", 10.0)
    real, fake = _sets("structured")
    result = approximate_prdc(real, fake, k=4, strict=strict, samples=120, seed=3)
    assert not result.census and result.fake_queries.size == 120 and result.real_queries.size == 120
    rr = kth_neighbour_distances(real, 4)
    rf = kth_neighbour_distances(fake, 4)
    dist = _dist32(_exact_sq(real, fake))  # (N, M)
    inside = (dist < rr[:, None]) if strict else (dist <= rr[:, None])
    recalled = (dist < rf[None, :]) if strict else (dist <= rf[None, :])
    nearest = dist.min(axis=1)
    covered = (nearest < rr) if strict else (nearest <= rr)
    fq, rq = result.fake_queries, result.real_queries
    assert result.estimates["precision"].value == inside[:, fq].any(axis=0).mean()
    assert result.estimates["density"].value == pytest.approx(inside[:, fq].sum(axis=0).mean() / 4, rel=1e-12)
    assert result.estimates["recall"].value == recalled[rq].any(axis=1).mean()
    assert result.estimates["coverage"].value == covered[rq].mean()
    for name in ("precision", "recall", "coverage"):
        assert result.estimates[name].method == "Clopper-Pearson"
    assert result.estimates["density"].method == "Student t (asymptotic)"


def test_upper_radii_bound_the_exact_radii_and_the_draws_follow_the_seed():
    real, fake = _sets("structured")
    a = approximate_prdc(real, fake, k=5, samples=50, seed=11)
    b = approximate_prdc(real, fake, k=5, samples=50, seed=11)
    c = approximate_prdc(real, fake, k=5, samples=50, seed=12)
    assert np.all(a.real_upper_radii >= kth_neighbour_distances(real, 5))
    assert np.all(a.fake_upper_radii >= kth_neighbour_distances(fake, 5))
    assert np.isfinite(a.real_upper_radii).all() and np.isfinite(a.fake_upper_radii).all()
    assert np.array_equal(a.fake_queries, b.fake_queries) and a.values() == b.values()
    assert not np.array_equal(a.fake_queries, c.fake_queries)


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_projection_lower_bounds_never_exceed_the_distance(offset):
    rng = np.random.default_rng(2)
    low_rank = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 80))
    x = (low_rank + 0.3 * rng.normal(size=(300, 80)) * rng.uniform(0.1, 3.0, size=(300, 1)) + offset)
    x = x.astype(np.float32)
    centre, axes = approx._projection(x, x, 8, np.random.default_rng(0))
    side = approx._project(x, centre, axes)
    q = np.arange(0, 300, 7)
    exact = _exact_sq(x[q], x)
    limits = np.full(q.size, np.inf)
    lists = approx._candidates(side, q, side, limits, approx._Counter(), per_db=False)
    for t in range(q.size):
        cols, lb = lists[t]
        assert cols.size == 300  # an infinite limit keeps every row
        assert np.all(lb <= exact[t, cols])
        assert lb.max() > 0.2 * exact[t, cols].max()  # and the bound is not trivially zero
    full = approx._full_lower_bounds_sq(side, q, side, 0, 300)
    assert np.all(full <= exact) and np.all(full >= exact * (1 - 1e-3) - 1e-3 * exact.max())
    # a finite limit keeps every row whose distance is within it
    limit = np.quantile(exact, 0.05, axis=1)
    lists = approx._candidates(side, q, side, limit, approx._Counter(), per_db=False)
    for t in range(q.size):
        assert set(np.flatnonzero(exact[t] <= limit[t])) <= set(lists[t][0].tolist())


def test_clopper_pearson_values():
    low, high = clopper_pearson(0, 10, 0.95)
    assert low == 0.0 and high == pytest.approx(0.30850, abs=1e-5)
    low, high = clopper_pearson(5, 10, 0.95)
    assert low == pytest.approx(0.18709, abs=1e-5) and high == pytest.approx(0.81291, abs=1e-5)
    low, high = clopper_pearson(10, 10, 0.95)
    assert low == pytest.approx(0.69150, abs=1e-5) and high == 1.0


def test_intervals_cover_the_exact_values():
    real, fake = _sets("structured")
    exact = compute_prdc(real, fake, 5)
    misses = {name: 0 for name in exact}
    runs = 30
    for seed in range(runs):
        result = approximate_prdc(real, fake, k=5, samples=60, seed=seed)
        for name, est in result.estimates.items():
            assert est.low <= est.value <= est.high
            misses[name] += not est.low <= exact[name] <= est.high
    # at 95% about 1.5 misses in 30 are expected; Clopper-Pearson is conservative
    assert max(misses.values()) <= 5, misses


def test_bad_arguments():
    real, fake = _sets("structured")
    with pytest.raises(Exception, match=r"--samples must be an integer >= 2, got 1"):
        approximate_prdc(real, fake, samples=1)
    with pytest.raises(Exception, match=r"--confidence must be in \[0.5, 1\), got 1.0"):
        approximate_prdc(real, fake, confidence=1.0)


def _files(tmp_path):
    real, fake = _sets("structured")
    np.save(tmp_path / "real.npy", real)
    np.save(tmp_path / "fake.npy", fake)
    return real, fake


def test_cli_writes_values_and_intervals(tmp_path):
    real, fake = _files(tmp_path)
    out = tmp_path / "m.json"
    run = subprocess.run([forge_executable(), "metrics", "--real", str(tmp_path / "real.npy"), "--fake",
                          str(tmp_path / "fake.npy"), "--approximate", "--samples", "200", "--seed", "4",
                          "--json", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "Clopper-Pearson" in run.stdout and "each sampled query evaluated exactly" in run.stdout
    doc = json.loads(out.read_text())
    again = approximate_prdc(real, fake, k=5, samples=200, seed=4)
    assert doc["backend"] == "approximate" and doc["exact"] is False and doc["samples"]["fake"] == 200
    for name, est in again.estimates.items():
        assert doc[name] == est.value
        assert doc["intervals"][name] == est.as_dict()
    assert doc["fid"] > 0 and doc["confidence"] == 0.95
    # without FID, and with every query (sets smaller than --samples): the exact values
    run = subprocess.run([forge_executable(), "metrics", "--real", str(tmp_path / "real.npy"), "--fake",
                          str(tmp_path / "fake.npy"), "--approximate", "--no-fid", "--inclusive", "--json", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "every query evaluated: the values are exact" in run.stdout
    doc = json.loads(out.read_text())
    assert "fid" not in doc and doc["exact"] is True
    assert {name: doc[name] for name in ("precision", "recall", "density", "coverage")} == compute_prdc(
        real, fake, 5, strict=False)


@pytest.mark.parametrize("args, fragments", [
    (["--samples", "50"], ["--samples needs --approximate"]),
    (["--seed", "3"], ["--seed needs --approximate"]),
    (["--approximate", "--backend", "faiss"], ["--approximate and --backend faiss", "leave --backend out"]),
    (["--approximate", "--samples", "1"], ["--samples must be >= 2, got 1"]),
    (["--approximate", "--confidence", "0.3"], ["--confidence must be in [0.5, 1), got 0.3"]),
    (["--approximate", "--features", "cb3d"], ["--approximate reads feature files", "--save-features"]),
])
def test_cli_errors(tmp_path, args, fragments):
    _files(tmp_path)
    run = subprocess.run([forge_executable(), "metrics", "--real", str(tmp_path / "real.npy"), "--fake",
                          str(tmp_path / "fake.npy"), *args], capture_output=True, text=True)
    assert_one_line_error(run.returncode, run.stderr, *fragments)

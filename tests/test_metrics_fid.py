"""FID against a float64 scipy.linalg.sqrtm reference, streaming, routes and diagnostics."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg

from cryoet_forge.errors import InputError
from cryoet_forge.metrics import FID, compute_fid, fid_from_moments
from cryoet_forge.metrics.fid import FIDWarning, fid_details


def reference_fid(x, y):
    """The usual formula with a general matrix square root (pytorch-fid style), float64."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def correlated(n, d, seed, scale=1.0, shift=0.0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) / np.sqrt(d) + np.eye(d)
    return ((rng.standard_normal((n, d)) @ mix) * scale + shift).astype(np.float32)


@pytest.mark.parametrize(("n", "m", "d"), [(400, 500, 16), (900, 700, 64), (1500, 1300, 128)])
def test_matches_sqrtm_reference(n, m, d):
    x, y = correlated(n, d, 1), correlated(m, d, 2, scale=1.3, shift=0.2)
    got = compute_fid(x, y)
    assert got == pytest.approx(reference_fid(x, y), rel=1e-6)
    assert got > 0


def test_identical_sets_score_zero():
    x = correlated(300, 8, 4)
    assert abs(compute_fid(x, x)) < 1e-8


def test_streaming_moments_equal_one_shot_and_handle_offsets():
    x, y = correlated(700, 24, 5, shift=100.0), correlated(650, 24, 6, scale=0.8, shift=100.5)
    metric = FID()
    for start in range(0, 700, 100):
        metric.update(real=x[start : start + 100])
    for start in range(0, 650, 300):
        metric.update(fake=y[start : start + 300])
    assert metric.compute() == pytest.approx(reference_fid(x, y), rel=1e-6)
    assert metric.compute() == pytest.approx(compute_fid(x, y), rel=1e-9)


def test_from_moments_route_and_terms():
    x, y = correlated(500, 10, 7), correlated(500, 10, 8, shift=1.0)
    mx, my = x.astype(np.float64).mean(0), y.astype(np.float64).mean(0)
    cx, cy = np.cov(x.astype(np.float64), rowvar=False), np.cov(y.astype(np.float64), rowvar=False)
    result = fid_from_moments(mx, cx, my, cy, 500, 500)
    assert result.route == "cholesky"
    assert result.mean_term == pytest.approx(float(((mx - my) ** 2).sum()), rel=1e-12)
    assert result.fid == pytest.approx(result.mean_term + result.trace_term, rel=1e-12)
    assert result.fid == pytest.approx(reference_fid(x, y), rel=1e-6)


def test_gram_route_when_fewer_samples_than_dimensions_warns():
    x, y = correlated(40, 64, 9), correlated(50, 64, 10, scale=1.2)
    with pytest.warns(FIDWarning, match=r"N=(40|50) <= D=64"):
        result = fid_details(x, y)
    assert result.route == "gram"
    # the reference's sqrtm of a singular product is itself only accurate to ~1e-7 here
    assert result.fid == pytest.approx(reference_fid(x, y), rel=1e-6)


def test_singular_covariance_takes_eigen_route_and_says_so():
    rng = np.random.default_rng(3)
    basis = rng.standard_normal((4, 12))
    x = (rng.standard_normal((300, 4)) @ basis).astype(np.float64)  # rank-4 covariance in D=12
    y = rng.standard_normal((300, 12))
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fid_from_moments(x.mean(0), cx, y.mean(0), cy)
    assert result.route == "eigen"
    assert any("singular" in str(w.message) for w in caught)
    covmean = scipy.linalg.sqrtm(cx @ cy).real
    want = float(((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(cx) + np.trace(cy) - 2 * np.trace(covmean))
    assert result.fid == pytest.approx(want, rel=1e-5)
    # rounding leaves eigenvalues around 0 for the null space; negative ones are clipped and counted
    assert result.clipped_eigenvalues >= 0
    if result.clipped_eigenvalues:
        assert result.most_negative_eigenvalue < 0
        assert any("clipped" in message for message in result.warnings)


def test_negative_eigenvalues_are_clipped_and_reported():
    d = 6
    cx = np.diag([1.0, 1.0, 1.0, 1.0, 1.0, 1e-300])  # positive definite, tiny last value
    cy = np.eye(d)
    cy[5, 5] = -1e-12  # slightly indefinite, as rounding can make a covariance
    with pytest.warns(FIDWarning, match="negative eigenvalue"):
        result = fid_from_moments(np.zeros(d), cx, np.zeros(d), cy)
    assert result.clipped_eigenvalues == 1 and result.most_negative_eigenvalue < 0
    assert result.fid == pytest.approx(0.0, abs=1e-9)


def test_bootstrap_interval_is_reported_and_reproducible():
    x, y = correlated(300, 6, 11), correlated(300, 6, 12, shift=0.3)
    a = fid_details(x, y, bootstrap=200, seed=1)
    b = fid_details(x, y, bootstrap=200, seed=1)
    assert a.ci == b.ci and a.bootstrap == 200 and a.ci_level == 0.95
    assert a.ci[0] < a.ci[1]
    assert a.fid_bias_corrected == pytest.approx(a.fid - a.bootstrap_bias)
    assert a.bootstrap_bias > 0  # resampling with replacement biases FID upwards


def test_bootstrap_interval_covers_the_true_fid_at_the_stated_rate():
    # Gaussians whose FID is known in closed form; N = 200 rows of D = 6, where FID's O(D/N)
    # bias is about the size of its spread (a plain percentile interval covers ~0.6 of the time)
    d, n, trials = 6, 200, 100
    l1, l2, mu2, true = _gaussians(d, True, 0, shift=1.0 / np.sqrt(d))
    rng = np.random.default_rng(1)
    covered, estimates = 0, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FIDWarning)
        for t in range(trials):
            x = rng.normal(size=(n, d)) @ l1.T
            y = rng.normal(size=(n, d)) @ l2.T + mu2
            r = fid_details(x, y, bootstrap=100, seed=t)
            covered += r.ci[0] <= true <= r.ci[1]
            estimates.append((r.fid, r.fid_bias_corrected))
    plain, corrected = np.mean(estimates, axis=0)
    # binomial(100, 0.95): fewer than 88 covered has probability < 0.001
    assert 88 <= covered <= 100, (covered, true)
    assert plain > true and abs(corrected - true) < abs(plain - true)


def test_bootstrap_of_one_set_against_itself_says_the_interval_is_not_valid():
    x = correlated(200, 5, 3)
    with pytest.warns(FIDWarning, match="within its bootstrap bias .* consistent with 0"):
        r = fid_details(x, x.copy(), bootstrap=50)
    assert r.fid == pytest.approx(0.0, abs=1e-9)
    assert r.ci == (0.0, 0.0)  # clipped at the boundary; the warning says what it means


def test_rejects_bad_input():
    with pytest.raises(InputError, match="same dimension D, got 3 and 4"):
        compute_fid(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(InputError, match="at least 2 rows"):
        compute_fid(np.zeros((1, 3)), np.zeros((5, 3)))
    bad = np.ones((5, 3))
    bad[2, 1] = np.nan
    with pytest.raises(InputError, match="row 2, column 1"):
        compute_fid(bad, np.ones((5, 3)))
    with pytest.raises(InputError, match="at least one update"):
        FID().compute()
    with pytest.raises(InputError, match="bootstrap must be >= 0"):
        fid_details(np.ones((5, 3)), np.ones((5, 3)), bootstrap=-1)
    with pytest.raises(InputError, match=r"means \(D,\) and covariances"):
        fid_from_moments(1.0, [[1.0]], 2.0, [[1.0]])
    metric = FID()
    metric.update(real=np.zeros((4, 3)))
    with pytest.raises(InputError, match="batch has D=5, earlier batches D=3"):
        metric.update(real=np.zeros((4, 5)))


def test_eigenvalue_solvers_agree():
    from cryoet_forge.metrics import fid as fid_module

    rng = np.random.default_rng(0)
    b = rng.standard_normal((300, 300))
    m = b @ b.T / 300 + 0.5 * np.eye(300)
    want = np.linalg.eigvalsh(m)
    np.testing.assert_allclose(fid_module._sym_eigvals(m), want, rtol=1e-10, atol=1e-12)
    solver = fid_module._two_stage_eigvals()
    if solver is None:
        pytest.skip("this SciPy build does not export LAPACK's dsyev_2stage; eigh is used")
    np.testing.assert_allclose(np.sort(solver(m)), want, rtol=1e-10, atol=1e-12)


def _gaussians(d, shifted, seed, shift=0.5):
    """Cholesky factors and mean of two Gaussians and their population FID in closed form:
    shifted: means (by ``shift`` per coordinate) and covariances differ; else one Gaussian twice (FID 0)."""
    rng = np.random.default_rng(seed)
    a, c = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1 = a @ a.T / d + 0.5 * np.eye(d)
    s2 = c @ c.T / d + 0.5 * np.eye(d) if shifted else s1
    mu2 = np.full(d, shift) if shifted else np.zeros(d)
    root = scipy.linalg.sqrtm(s1).real
    true = float(mu2 @ mu2 + np.trace(s1 + s2 - 2.0 * scipy.linalg.sqrtm(root @ s2 @ root).real))
    return np.linalg.cholesky(s1), np.linalg.cholesky(s2), mu2, true if shifted else 0.0


@pytest.mark.parametrize("shifted", [True, False], ids=["shifted", "identical"])
def test_corrected_interval_covers_the_population_fid_and_holds_its_value(shifted):
    # 40 draws of N=120 rows in D=8 with 60 resamples each (a few seconds). FID's O(D/N) bias is
    # large here: a percentile interval of the resampled values covers 23 of the 40 shifted draws,
    # and never 0 in the identical case; the basic interval of the corrected value covers 36 and 40
    d, n, trials = 8, 120, 40
    l1, l2, mu2, true = _gaussians(d, shifted, 5)
    assert (true > 0.1) == shifted
    rng = np.random.default_rng(6)
    covered = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FIDWarning)
        for t in range(trials):
            x = rng.normal(size=(n, d)) @ l1.T
            y = rng.normal(size=(n, d)) @ l2.T + mu2
            r = fid_details(x, y, bootstrap=60, seed=t)
            low, high = r.fid_bias_corrected_ci
            assert 0.0 <= low <= r.fid_bias_corrected <= high, (t, r.fid_bias_corrected, low, high)
            assert r.fid_bias_corrected_clipped == (r.fid - r.bootstrap_bias < 0)
            covered += low <= true <= high
    # binomial(40, 0.95): fewer than 33 covered has probability < 0.001
    assert covered >= 33, (covered, true)


def test_corrected_fid_of_one_set_against_itself_is_clipped_at_zero_with_a_note():
    x = correlated(200, 5, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = fid_details(x, x.copy(), bootstrap=50)
    assert r.fid_bias_corrected == 0.0 and r.fid_bias_corrected_clipped
    assert r.fid_bias_corrected_ci == (0.0, 0.0) and r.ci == r.fid_bias_corrected_ci
    assert r.bootstrap_bias > 0
    clipped = f"the bias-corrected FID {r.fid - r.bootstrap_bias:.4g} is below 0, where FID cannot be; reported as 0"
    assert clipped in r.warnings and any(str(w.message) == clipped for w in caught)
    assert "ci" not in r.as_dict() and r.as_dict()["fid_bias_corrected_ci"] == [0.0, 0.0]


def test_fewer_than_fifty_resamples_warn_and_too_many_are_refused():
    x, y = correlated(100, 4, 1), correlated(100, 4, 2, shift=1.0)
    with pytest.warns(FIDWarning, match="^10 bootstrap resamples: a 95% interval needs at least 50"):
        fid_details(x, y, bootstrap=10)
    with pytest.raises(InputError, match=r"^bootstrap must be at most 100000 resamples, got 1000000000000$"):
        fid_details(x, y, bootstrap=10**12)
    with pytest.raises(InputError, match="bootstrap must be an integer number of resamples, got 2.5"):
        fid_details(x, y, bootstrap=2.5)

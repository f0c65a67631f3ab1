"""Exact PRDC: equality with the `prdc` package, strictness, duplicates, backends, API."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from cryoet_forge.errors import InputError
from cryoet_forge.metrics import PRDC, compute_prdc, prdc_counts

prdc = pytest.importorskip("prdc", reason="the reference package prdc==0.2 is in the 'test' extra")


def reference_prdc(real, fake, k):
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the sizes
        return prdc.compute_prdc(real, fake, k)


def overlapping(n, m, d, seed, shift=0.05, scale=1.0, offset=0.0):
    rng = np.random.default_rng(seed)
    real = rng.standard_normal((n, d)).astype(np.float32) + np.float32(offset)
    fake = (rng.standard_normal((m, d)) * scale + shift + offset).astype(np.float32)
    return real, fake


def definition_prdc(real, fake, k, strict=True):
    """Straight from the definitions with exact float64 distances, rounded as prdc rounds them."""
    def dist(a, b):
        d2 = ((a.astype(np.float64)[:, None, :] - b.astype(np.float64)[None, :, :]) ** 2).sum(-1)
        return np.sqrt(d2.astype(np.float32))

    inside = (lambda d, r: d < r) if strict else (lambda d, r: d <= r)
    dxx, dyy, dxy = dist(real, real), dist(fake, fake), dist(real, fake)
    np.fill_diagonal(dxx, np.inf)
    np.fill_diagonal(dyy, np.inf)
    rx = np.sort(dxx, axis=1)[:, k - 1]
    ry = np.sort(dyy, axis=1)[:, k - 1]
    in_real = inside(dxy, rx[:, None])
    return {
        "precision": in_real.any(axis=0).mean(),
        "recall": inside(dxy, ry[None, :]).any(axis=1).mean(),
        "density": (1.0 / k) * in_real.sum(axis=0).mean(),
        "coverage": in_real.any(axis=1).mean(),
    }


@pytest.mark.parametrize(
    ("n", "m", "d", "k", "scale"),
    [(300, 250, 8, 5, 1.2), (700, 520, 32, 3, 1.0), (1100, 600, 64, 5, 1.0), (400, 900, 200, 10, 1.1),
     (530, 530, 16, 1, 1.0)],
)
def test_equals_prdc_exactly(n, m, d, k, scale):
    # sizes cross the 512-row tiles of the Rust kernel; the sets overlap only partly
    real, fake = overlapping(n, m, d, seed=n + m + d + k, scale=scale, shift=0.1)
    ours = compute_prdc(real, fake, k)
    ref = reference_prdc(real, fake, k)
    assert ours == ref  # all four values, bit for bit
    assert 0.05 < ours["precision"] < 0.95 and 0.05 < ours["coverage"] < 0.95


def test_equals_prdc_on_offset_features():
    # a large common offset (like post-ReLU CNN features): the GEMM runs on centred rows
    real, fake = overlapping(600, 500, 48, seed=5, offset=30.0)
    assert compute_prdc(real, fake, 5) == reference_prdc(real, fake, 5)


def test_equals_prdc_when_float32_distances_tie():
    # integer-valued features: many real-fake distances equal radii exactly, where < matters
    rng = np.random.default_rng(11)
    real = rng.integers(0, 4, (400, 6)).astype(np.float32)
    fake = rng.integers(0, 4, (350, 6)).astype(np.float32)
    strict = compute_prdc(real, fake, 5)
    assert strict == definition_prdc(real, fake, 5, strict=True)
    inclusive = compute_prdc(real, fake, 5, strict=False)
    assert inclusive == definition_prdc(real, fake, 5, strict=False)
    assert inclusive["density"] > strict["density"]


def test_identical_sets_give_full_precision_recall_coverage():
    real, _ = overlapping(400, 10, 12, seed=2)
    for fake in (real, real.copy()):
        got = compute_prdc(real, fake, 5)
        assert got == reference_prdc(real, fake, 5)
        assert got["precision"] == got["recall"] == got["coverage"] == 1.0


def test_duplicate_rows_have_radius_zero_and_strict_excludes_them():
    rng = np.random.default_rng(4)
    base = rng.standard_normal((60, 5)).astype(np.float32)
    real = np.concatenate([base] + [base[:10]] * 5)  # rows 0..9 appear 6 times: radius 0 for k=5
    fake = base[:10].copy()  # fakes sit exactly on the duplicated reals
    counts = prdc_counts(real, fake, k=5)
    assert (counts.real_radii[:10] == 0).all()
    assert (counts.real_radii[10:60] > 0).all()
    strict = counts.metrics()
    inclusive = compute_prdc(real, fake, 5, strict=False)
    assert strict == definition_prdc(real, fake, 5, strict=True)
    assert inclusive == definition_prdc(real, fake, 5, strict=False)
    # with <=, each fake lies in the 6 zero-radius balls of its copies (and maybe more)
    assert inclusive["density"] >= 6 / 5 > strict["density"]


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_backends_equal_exact(backend):
    real, fake = overlapping(650, 540, 24, seed=9)
    want = compute_prdc(real, fake, 4)
    assert compute_prdc(real, fake, 4, backend=backend, device="cpu") == want
    assert compute_prdc(real, fake, 4, backend=backend, device="cpu", strict=False) == compute_prdc(
        real, fake, 4, strict=False
    )


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_backends_hand_float32_overflowing_norms_to_exact(backend):
    # squared norms ~1e40 overflow float32: the GEMM backends must not use their bound
    real, fake = overlapping(120, 110, 4, seed=5)
    real, fake = real * np.float32(1e19), fake * np.float32(1e19)
    counts = prdc_counts(real, fake, 3, backend=backend, device="cpu")
    assert counts.metrics() == compute_prdc(real, fake, 3)
    assert "exact backend" in counts.info["note"]


def test_gemm_backends_mix_refined_and_fully_recomputed_rows():
    # rows with many duplicates overflow their candidate lists; the rest are refined
    rng = np.random.default_rng(1)
    base = rng.standard_normal((300, 6)).astype(np.float32)
    real = np.concatenate([base, np.repeat(base[:3], 40, axis=0)])
    fake = rng.standard_normal((200, 6)).astype(np.float32)
    want = prdc_counts(real, fake, 3)
    for backend in ("faiss", "torch"):
        got = prdc_counts(real, fake, 3, backend=backend, device="cpu")
        assert 0 < got.info["exact_rows"] < real.shape[0] + fake.shape[0]
        assert np.array_equal(got.real_radii, want.real_radii)
        assert got.metrics() == want.metrics()


def test_torch_backend_with_small_blocks_equals_exact():
    real, fake = overlapping(300, 260, 16, seed=21)
    got = compute_prdc(real, fake, 3, backend="torch", device="cpu", block=64)
    assert got == compute_prdc(real, fake, 3)


def test_faiss_ivf_reports_approximation():
    real, fake = overlapping(800, 800, 16, seed=13)
    counts = prdc_counts(real, fake, 5, backend="faiss", device="cpu", index="ivf", nprobe=2)
    assert counts.exact is False
    assert counts.info["approximate"] is True and "nprobe" in counts.info
    values = counts.metrics()
    assert all(0.0 <= values[key] for key in values)


def test_prdc_object_accumulates_batches():
    real, fake = overlapping(500, 400, 10, seed=3)
    metric = PRDC(k=5)
    for start in range(0, 500, 128):
        metric.update(real=real[start : start + 128])
    metric.update(fake=fake[:200])
    metric.update(fake=fake[200:])
    assert metric.compute() == compute_prdc(real, fake, 5)
    metric.reset()
    with pytest.raises(InputError, match="at least one update"):
        metric.compute()


def test_float64_input_is_rounded_to_float32_first():
    real, fake = overlapping(200, 200, 6, seed=8)
    assert compute_prdc(real.astype(np.float64), fake.astype(np.float64), 3) == compute_prdc(real, fake, 3)


@pytest.mark.parametrize(
    ("real", "fake", "k", "message"),
    [
        (np.zeros((5, 3)), np.zeros((9, 3)), 5, r"real features have 5 rows but k=5"),
        (np.zeros((9, 3)), np.zeros((4, 3)), 5, r"fake features have 4 rows but k=5"),
        (np.zeros((9, 3)), np.zeros((9, 4)), 2, r"same dimension D, got 3 and 4"),
        (np.zeros((0, 3)), np.zeros((9, 3)), 2, r"must be non-empty"),
        (np.zeros(9), np.zeros((9, 3)), 2, r"must be a 2-D array"),
        (np.zeros((9, 3)), np.zeros((9, 3)), 0, r"k must be a positive integer"),
    ],
)
def test_rejects_bad_input(real, fake, k, message):
    with pytest.raises(InputError, match=message):
        compute_prdc(real, fake, k)


def test_rejects_non_finite_rows_naming_them():
    real, fake = overlapping(50, 50, 4, seed=1)
    fake[17, 2] = np.inf
    with pytest.raises(InputError, match=r"fake features has a non-finite value .* row 17, column 2"):
        compute_prdc(real, fake, 3)


def test_progress_callback_sees_every_tile():
    calls = []
    real, fake = overlapping(1100, 600, 8, seed=1)
    counts = prdc_counts(real, fake, 3, progress=lambda done, total: calls.append((done, total)))
    # 512-row tiles: upper triangles of 3x3 and 2x2 blocks, and the 3x2 cross grid
    assert calls[-1] == (6 + 3 + 6, 6 + 3 + 6)
    assert counts.metrics() == compute_prdc(real, fake, 3)


@pytest.mark.gpu
def test_torch_backend_on_cuda_equals_exact():
    real, fake = overlapping(3000, 2500, 64, seed=31)
    counts = prdc_counts(real, fake, 5, backend="torch", device="cuda")
    assert counts.info["device"] == "cuda"
    assert counts.metrics() == compute_prdc(real, fake, 5)


@pytest.mark.gpu
def test_faiss_gpu_backend_equals_exact():
    faiss = pytest.importorskip("faiss")
    if faiss.get_num_gpus() == 0:
        pytest.skip("this FAISS build has no GPU support (install the 'gpu' extra)")
    real, fake = overlapping(3000, 2500, 64, seed=32)
    counts = prdc_counts(real, fake, 5, backend="faiss", device="cuda")
    assert counts.info["gpu"] is True
    assert counts.metrics() == compute_prdc(real, fake, 5)


@pytest.mark.slow
@pytest.mark.parametrize(("n", "m", "d", "k"), [(4000, 3500, 2048, 5), (2500, 2500, 4096, 3)])
def test_equals_prdc_exactly_at_feature_scale(n, m, d, k):
    # CB3D-sized features: the float32 error bound is widest here
    real, fake = overlapping(n, m, d, seed=d + k, shift=0.02)
    ours = compute_prdc(real, fake, k)
    assert ours == reference_prdc(real, fake, k)
    assert 0.05 < ours["precision"] < 0.95

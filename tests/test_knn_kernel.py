"""The Rust k-th-nearest-neighbour kernel against a NumPy brute force."""

from __future__ import annotations

import numpy as np
import pytest

from cryoet_forge.errors import InputError
from cryoet_forge.metrics import kth_neighbour_distances


def brute_force_radii(x: np.ndarray, k: int) -> np.ndarray:
    x64 = x.astype(np.float64)
    d2 = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)  # the row itself is not its own neighbour
    return np.sqrt(np.sort(d2, axis=1)[:, k - 1]).astype(np.float32)


def test_extension_imports_from_installed_package():
    from cryoet_forge import _metrics_rs

    assert callable(_metrics_rs.kth_neighbour_distances)
    assert _metrics_rs.__version__


@pytest.mark.parametrize(
    ("n", "d", "k"), [(2, 1, 1), (10, 3, 1), (65, 7, 5), (300, 16, 5), (513, 64, 20), (200, 129, 199)]
)
def test_equals_numpy_brute_force(n, d, k):
    rng = np.random.default_rng(n * 1000 + d)
    x = rng.standard_normal((n, d)).astype(np.float32)
    np.testing.assert_allclose(kth_neighbour_distances(x, k), brute_force_radii(x, k), rtol=1e-6, atol=1e-7)


def test_ties_on_an_integer_grid():
    # Points of a 5x5 lattice: many neighbours at exactly the same distance.
    x = np.stack(np.meshgrid(np.arange(5), np.arange(5)), -1).reshape(-1, 2).astype(np.float32)
    for k in (1, 2, 4, 5, 8):
        got = kth_neighbour_distances(x, k)
        np.testing.assert_array_equal(got, brute_force_radii(x, k))
    # the centre has 4 neighbours at distance 1; a corner has 2, then one at sqrt(2), then two at 2
    assert kth_neighbour_distances(x, 4)[12] == 1.0
    assert kth_neighbour_distances(x, 3)[0] == pytest.approx(np.sqrt(2.0))
    assert kth_neighbour_distances(x, 4)[0] == 2.0


def test_duplicate_rows_are_neighbours_at_distance_zero():
    rng = np.random.default_rng(7)
    base = rng.standard_normal((20, 5)).astype(np.float32)
    x = np.concatenate([base, base[:5], base[:5]])  # rows 0..4 appear three times
    radii = kth_neighbour_distances(x, 2)
    np.testing.assert_array_equal(radii[:5], 0.0)
    np.testing.assert_allclose(radii, brute_force_radii(x, 2), rtol=1e-6)
    assert (radii[5:20] > 0).all()


def test_accepts_float64_and_non_contiguous_input():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 12))
    view = x[:, ::2]
    np.testing.assert_allclose(
        kth_neighbour_distances(view, 3), brute_force_radii(view.astype(np.float32), 3), rtol=1e-6
    )


def test_rejects_nan_with_position():
    x = np.ones((6, 3), dtype=np.float32)
    x[4, 2] = np.nan
    with pytest.raises(InputError, match=r"non-finite value .* row 4, column 2"):
        kth_neighbour_distances(x, 1)


def test_rejects_infinite_values():
    x = np.zeros((6, 3), dtype=np.float32)
    x[0, 0] = np.inf
    with pytest.raises(InputError, match="non-finite"):
        kth_neighbour_distances(x, 1)


@pytest.mark.parametrize("k", [0, 5, 6, -1])
def test_rejects_k_out_of_range(k):
    x = np.zeros((5, 2), dtype=np.float32)
    with pytest.raises(InputError, match=rf"1 <= k < N; got k={k} for N=5"):
        kth_neighbour_distances(x, k)


@pytest.mark.parametrize("shape", [(10,), (2, 3, 4), ()])
def test_rejects_non_2d_input(shape):
    with pytest.raises(InputError, match=r"must be a 2-D array \(N, D\)"):
        kth_neighbour_distances(np.zeros(shape, dtype=np.float32), 1)


def test_extension_itself_rejects_non_2d_with_value_error():
    from cryoet_forge import _metrics_rs

    with pytest.raises(ValueError, match="2-D array"):
        _metrics_rs.kth_neighbour_distances(np.zeros((2, 2, 2), dtype=np.float32), 1)

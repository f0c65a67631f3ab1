"""Inception Score against the NumPy reference formula."""

from __future__ import annotations

import numpy as np
import pytest

from cryoet_forge.errors import InputError
from cryoet_forge.metrics import InceptionScore, inception_score


def reference_is(probs, splits):
    scores = []
    n = probs.shape[0]
    for s in range(splits):
        part = probs[s * n // splits : (s + 1) * n // splits]
        py = part.mean(axis=0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(py)), 0.0)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def softmax_rows(n, c, seed, temperature=1.0):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, c)) * 3.0 / temperature
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(("n", "c", "splits"), [(1000, 10, 10), (503, 7, 4), (64, 3, 1), (250, 20, 7)])
def test_matches_numpy_reference(n, c, splits):
    probs = softmax_rows(n, c, seed=n + c)
    mean, std = inception_score(probs, splits)
    want_mean, want_std = reference_is(probs, splits)
    assert mean == pytest.approx(want_mean, rel=1e-9, abs=1e-12)
    assert std == pytest.approx(want_std, rel=1e-9, abs=1e-12)


def test_zero_probabilities_and_one_hot_rows():
    probs = np.zeros((40, 4))
    probs[np.arange(40), np.arange(40) % 4] = 1.0
    mean, std = inception_score(probs, splits=5)  # 8 rows per split, 2 of each class
    assert mean == pytest.approx(4.0, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    assert inception_score(np.full((10, 5), 0.2), 2) == pytest.approx((1.0, 0.0), abs=1e-12)


def test_object_accumulates_batches():
    probs = softmax_rows(300, 6, seed=2)
    metric = InceptionScore(splits=5)
    metric.update(probs[:100])
    metric.update(probs[100:])
    assert metric.compute() == inception_score(probs, 5)


@pytest.mark.parametrize(
    ("probs", "splits", "message"),
    [
        (np.full((4, 2), 0.5), 5, r"1 <= splits <= N=4"),
        (np.full((4, 2), 0.7), 2, r"sum to 1 per row; row 0"),
        (np.array([[1.5, -0.5]] * 3), 1, r"non-negative"),
        (np.full(4, 0.25), 1, r"2-D array"),
        ([["a", "b"]], 1, r"cannot be read as a real-number array"),
        ([[0.5, 0.5], [1.0]], 1, r"cannot be read as a real-number array"),
        (np.full((4, 2), 0.5), True, r"1 <= splits <= N=4"),
    ],
)
def test_rejects_bad_input(probs, splits, message):
    with pytest.raises(InputError, match=message):
        inception_score(probs, splits)

"""Picking scores as the CZ Imaging Institute challenge defines them, against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.picking.score import fbeta, match_counts, score_picks


def test_fbeta_by_hand():
    # precision 1/2, recall 1: (1 + 16) * 0.5 / (16 * 0.5 + 1) = 8.5 / 9
    assert fbeta(2, 2, 0) == pytest.approx((0.5, 1.0, 8.5 / 9))
    # precision 1, recall 1/2: 17 * 0.5 / (16 + 0.5)
    assert fbeta(1, 0, 1) == pytest.approx((1.0, 0.5, 8.5 / 16.5))
    assert fbeta(1, 0, 1, beta=1) == pytest.approx((1.0, 0.5, 2 / 3))
    assert fbeta(0, 0, 0) == (0.0, 0.0, 0.0)
    assert fbeta(0, 3, 2) == (0.0, 0.0, 0.0)


def test_a_hit_lies_within_half_the_radius():
    truth = [[10, 10, 10], [50, 50, 50], [90, 90, 90]]
    radius = 6.0  # hits within 3
    picks = [[12.9, 10, 10],   # 2.9 from the first: found
             [50, 53.1, 50],   # 3.1 from the second: a false pick
             [200, 0, 0]]      # nowhere: false
    assert match_counts(truth, picks, radius) == (1, 2, 2)
    # two picks at one particle: it is found once, the second pick is false
    assert match_counts(truth, [[10, 10, 10], [11, 10, 10]], radius) == (1, 1, 2)
    # one pick finding two close particles counts two (the challenge's definition)
    assert match_counts([[0, 0, 0], [4, 0, 0]], [[2, 0, 0]], radius) == (2, -1, 0)
    assert match_counts(truth, [], radius) == (0, 0, 3)
    assert match_counts([], picks, radius) == (0, 3, 0)


def test_score_picks_per_class_and_weighted_mean():
    truth = {"a": np.array([[0, 0, 0], [20, 0, 0]]), "b": np.array([[0, 20, 0]])}
    picks = {"a": np.array([[1, 0, 0], [40, 0, 0]])}  # a: TP 1, FP 1, FN 1; b: no picks
    result = score_picks(truth, picks, {"a": 4.0, "b": 4.0})
    a = result["classes"]["a"]
    assert (a["tp"], a["fp"], a["fn"]) == (1, 1, 1)
    assert a["fbeta"] == pytest.approx(0.5)  # precision = recall = 1/2
    assert result["classes"]["b"] == {"tp": 0, "fp": 0, "fn": 1, "precision": 0.0, "recall": 0.0, "fbeta": 0.0}
    assert result["fbeta"] == pytest.approx(0.25)
    weighted = score_picks(truth, picks, {"a": 4.0, "b": 4.0}, weights={"a": 3.0, "b": 1.0})
    assert weighted["fbeta"] == pytest.approx(0.375)


def test_bad_scoring_input_is_one_line():
    with pytest.raises(InputError, match="picks of class\\(es\\) c that the true particles do not have"):
        score_picks({"a": np.zeros((1, 3))}, {"c": np.zeros((1, 3))}, {"a": 1.0})
    with pytest.raises(ConfigError, match="no particle radius for class\\(es\\) a"):
        score_picks({"a": np.zeros((1, 3))}, {}, {})
    with pytest.raises(ConfigError, match="radius must be > 0"):
        match_counts([[0, 0, 0]], [[0, 0, 0]], 0.0)
    with pytest.raises(InputError, match="coordinates must be finite"):
        match_counts([[0, 0, np.nan]], [[0, 0, 0]], 1.0)


def test_several_tomograms_sum_counts_before_the_ratios():
    from cryoet_forge.picking.score import score_tomograms

    one = ({"a": np.array([[0, 0, 0]])}, {"a": np.array([[0, 0, 0]])})            # TP 1
    two = ({"a": np.array([[0, 0, 0], [9, 9, 9]])}, {"a": np.array([[50, 0, 0]])})  # FP 1, FN 2
    result = score_tomograms([one, two], {"a": 2.0})
    a = result["classes"]["a"]
    assert (a["tp"], a["fp"], a["fn"]) == (1, 1, 2)
    assert a["precision"] == pytest.approx(0.5) and a["recall"] == pytest.approx(1 / 3)
    assert result["fbeta"] == pytest.approx(17 * (0.5 / 3) / (16 * 0.5 + 1 / 3))

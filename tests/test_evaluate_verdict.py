"""What the evaluation can say: chance, reliability of the inception metrics, paired seeds, the baseline."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from test_evaluate import evaluation  # noqa: F401  (the toy evaluation fixture)

from cryoet_forge.classify import LabelledVolumes
from cryoet_forge.evaluate.baseline import radial_baseline, radial_profiles
from cryoet_forge.evaluate.report import render_report
from cryoet_forge.evaluate.verdict import assess, chance_level, class_counts, paired_difference


def test_chance_is_the_majority_class_rate():
    assert chance_level(np.array([0, 1, 2, 3]), 4) == 0.25
    assert chance_level(np.array([0, 0, 0, 1]), 3) == 0.75
    assert class_counts(np.array([0, 2, 2]), ["a", "b", "c"]) == {"a": 1, "b": 0, "c": 2}


def test_paired_difference_pairs_seeds():
    paired = paired_difference([0.5, 0.6, 0.7], [0.4, 0.4, 0.4], [0, 1, 2])
    assert paired["differences"] == pytest.approx([0.1, 0.2, 0.3])
    assert paired["mean"] == pytest.approx(0.2)
    # t(0.975, 2) = 4.303; sd 0.1; half-width 4.303 * 0.1 / sqrt(3)
    assert paired["ci_low"] == pytest.approx(0.2 - 4.3027 * 0.1 / 3 ** 0.5, abs=1e-3)
    assert paired["gan_wins"] == 3 and paired["n"] == 3


def _paired(low, high, mean=None, n=5):
    return {"n": n, "ci_low": low, "ci_high": high, "mean": (low + high) / 2 if mean is None else mean,
            "confidence": 0.95}


@pytest.mark.parametrize("low,high,outcome", [(0.02, 0.1, "gan-ahead"), (-0.1, -0.02, "traditional-ahead"),
                                              (-0.05, 0.08, "no-clear-difference")])
def test_verdict_follows_the_paired_interval(low, high, outcome):
    v = assess(0.8, 0.25, 0.1, _paired(low, high), 0.5)
    assert v["outcome"] == outcome and v["metrics_reliable"] and v["notes"] == []


def test_inception_near_chance_makes_metrics_unreliable_and_the_verdict_inconclusive():
    v = assess(0.30, 0.25, 0.1, _paired(0.05, 0.2), 0.41)
    assert v["outcome"] == "inconclusive" and not v["metrics_reliable"]
    assert v["sentence"].startswith("Inconclusive: the real data's own classifier is near chance")
    assert any("within 0.1 of chance (0.250)" in n for n in v["notes"])
    assert any("does not beat the radial-profile baseline (0.410)" in n for n in v["notes"])


def test_a_win_between_two_failures_is_no_win():
    """The parakeet-dev-high-snr case: CB3D learns the real split (0.58) but trained on either
    synthetic set stays at chance (0.242, 0.273; chance 0.258): a paired interval above zero is
    "neither-transfers", not "gan-ahead"."""
    v = assess(0.582, 0.258, 0.1, _paired(0.005, 0.057, mean=0.031), 0.758, synthetic=(0.242, 0.273))
    assert v["outcome"] == "neither-transfers"
    assert v["sentence"].startswith("Neither synthetic set transfers: CB3D trained on traditional (0.242) or on "
                                    "GAN data (0.273) stays within 0.100 of chance (0.258)")
    # one set above chance + margin: the interval decides again
    assert assess(0.582, 0.258, 0.1, _paired(0.005, 0.057), 0.758, synthetic=(0.242, 0.36))["outcome"] == "gan-ahead"


def test_one_seed_is_inconclusive():
    assert assess(0.9, 0.25, 0.1, _paired(0.1, 0.1, n=1), 0.5)["outcome"] == "inconclusive"


def _ball(size, radius, shift=(0, 0, 0)):
    grid = np.indices((size,) * 3) - (size - 1) / 2 - np.asarray(shift)[:, None, None, None]
    return (np.sqrt((grid ** 2).sum(0)) < radius).astype(np.float32)


def test_radial_profiles_are_rotation_invariant():
    rng = np.random.default_rng(0)
    v = _ball(16, 4) + 0.5 * _ball(16, 2, (3, 0, 0)) + 0.01 * rng.standard_normal((16, 16, 16))
    rotated = np.rot90(v, k=1, axes=(0, 2)).copy()   # a 90 degree rotation about y maps the grid onto itself
    a, b = radial_profiles(np.stack([v, rotated]))
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert radial_profiles(v[None]).shape == (1, 2 * 7)  # radii 1..7 (no voxel at 0 in an even box)


def test_radial_baseline_separates_sizes_and_is_at_chance_on_shuffled_labels():
    rng = np.random.default_rng(1)

    def make(n):
        labels = np.arange(n) % 2
        vols = np.stack([_ball(16, 3 + 3 * y) + 0.3 * rng.standard_normal((16, 16, 16)) for y in labels])
        return LabelledVolumes(vols, labels, ["small", "large"], 10.0)

    train, test = make(40), make(40)
    result = radial_baseline(train, test)
    assert result.accuracy == 1.0 and set(result.per_class_accuracy) == {"small", "large"}
    shuffled = LabelledVolumes(train.volumes, rng.permutation(train.labels), train.class_names, 10.0)
    assert radial_baseline(shuffled, test).accuracy < 0.8


def test_evaluation_records_chance_ceiling_baseline_counts_and_verdict(evaluation):  # noqa: F811
    _, report, results = evaluation
    assert results["chance"] == pytest.approx(1 / 3)
    assert results["counts"]["real_test"] == {"barrel": 8, "ring": 8, "membrane": 8}
    assert 0 <= results["baseline"]["accuracy"] <= 1
    paired = results["downstream_paired"]
    gan, trad = results["downstream"]["cryoetgan"]["accuracies"], results["downstream"]["traditional"]["accuracies"]
    assert paired["differences"] == pytest.approx([a - b for a, b in zip(gan, trad)])
    verdict = results["verdict"]
    expected = results["inception"]["real_test"]["accuracy"] >= results["chance"] + 0.1
    assert verdict["metrics_reliable"] == expected
    assert all(q["reliable"] == expected for q in results["quality"].values())
    text = report.read_text()
    assert "## What this evaluation can say" in text and verdict["sentence"] in text
    assert ("(unreliable)" in text) == (not expected)


def test_report_marks_metrics_unreliable(evaluation):  # noqa: F811
    _, _, results = evaluation
    results = copy.deepcopy(results)
    v = assess(0.3, 0.25, 0.1, results["downstream_paired"], results["baseline"]["accuracy"])
    results["verdict"] = v
    for q in results["quality"].values():
        q["reliable"] = False
    text = render_report(results)
    table = text[text.index("## Table 2"):text.index("### Per-class")]
    assert table.count("(unreliable)") == 2 * 6   # every metric cell of both synthetic rows
    assert "**Inconclusive:" in text and "**unreliable**" in text

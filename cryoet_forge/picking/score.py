"""Picks scored against the true particle centres, as the CZ Imaging Institute's 2025 cryo-ET
object-identification challenge scores them.

A true particle is found when a pick of its class lies within ``distance_multiplier`` (0.5) x its
radius of its centre; each true particle counts once however many picks find it. Per class:

    TP = the number of true particles found
    FP = the number of picks - TP
    FN = the number of true particles - TP
    precision = TP / (TP + FP), recall = TP / (TP + FN)
    F-beta = (1 + beta^2) precision recall / (beta^2 precision + recall), beta = 4

(the challenge's definitions, including FP: a pick that finds two particles closer than the hit
radius counts two true positives and lowers FP by one, which can then be negative). The overall F-beta is the challenge's: the mean of the
classes' F-beta weighted per class (equal weights by default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.spatial import KDTree

from cryoet_forge.errors import ConfigError, InputError

#: the challenge's recall weight and hit radius (a fraction of the particle radius)
BETA = 4.0
DISTANCE_MULTIPLIER = 0.5


@dataclass(frozen=True)
class ClassScore:
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    fbeta: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def fbeta(tp: float, fp: float, fn: float, beta: float = BETA) -> tuple[float, float, float]:
    """(precision, recall, F-beta); 0 where a ratio has no denominator."""
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    b2 = beta * beta
    denominator = b2 * precision + recall
    return precision, recall, ((1 + b2) * precision * recall / denominator if denominator > 0 else 0.0)


def _points(values: np.ndarray | Sequence, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1, 3) if len(values) else np.zeros((0, 3))
    if not np.isfinite(array).all():
        raise InputError(f"{what}: coordinates must be finite numbers")
    return array


def match_counts(truth: np.ndarray | Sequence, picks: np.ndarray | Sequence, radius: float,
                 distance_multiplier: float = DISTANCE_MULTIPLIER) -> tuple[int, int, int]:
    """(TP, FP, FN) of one class: ``truth`` and ``picks`` are (N, 3) coordinates in one unit,
    ``radius`` the particle radius in that unit."""
    if not radius > 0:
        raise ConfigError(f"particle radius must be > 0, got {radius}")
    reference, candidates = _points(truth, "true particles"), _points(picks, "picks")
    if len(reference) == 0:
        return 0, len(candidates), 0
    if len(candidates) == 0:
        return 0, 0, len(reference)
    found = KDTree(candidates).query_ball_tree(KDTree(reference), r=radius * distance_multiplier)
    tp = len({index for hits in found for index in hits})
    return tp, len(candidates) - tp, len(reference) - tp


def score_picks(truth: Mapping[str, np.ndarray], picks: Mapping[str, np.ndarray], radii: Mapping[str, float],
                beta: float = BETA, weights: Mapping[str, float] | None = None,
                distance_multiplier: float = DISTANCE_MULTIPLIER) -> dict[str, Any]:
    """Per-class and overall scores of one tomogram. ``truth``/``picks``: class -> (N, 3)
    coordinates (a class with no picks may be missing from ``picks``); ``radii``: class -> radius
    in the same unit.

    Returns ``{"classes": {name: ClassScore.to_dict()}, "fbeta": the weighted mean of the
    classes' F-beta}``.
    """
    return score_tomograms([(truth, picks)], radii, beta, weights, distance_multiplier)


def score_tomograms(pairs: Sequence[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]],
                    radii: Mapping[str, float], beta: float = BETA, weights: Mapping[str, float] | None = None,
                    distance_multiplier: float = DISTANCE_MULTIPLIER) -> dict[str, Any]:
    """:func:`score_picks` over several tomograms, (truth, picks) each: a class's TP, FP and FN are
    summed over the tomograms before its precision, recall and F-beta (the challenge's
    micro-average over runs)."""
    names = sorted({name for truth, _ in pairs for name in truth})
    for truth, picks in pairs:
        unknown = sorted(set(picks) - set(names))
        if unknown:
            raise InputError(f"picks of class(es) {', '.join(unknown)} that the true particles do not have "
                             f"(classes: {', '.join(names)})")
    missing = sorted(set(names) - set(radii))
    if missing:
        raise ConfigError(f"no particle radius for class(es) {', '.join(missing)}")
    weights = {name: float((weights or {}).get(name, 1.0)) for name in names}
    if any(w < 0 for w in weights.values()) or not sum(weights.values()) > 0:
        raise ConfigError(f"class weights must be >= 0 with a positive sum, got {weights}")
    classes: dict[str, dict[str, float]] = {}
    for name in names:
        counts = np.zeros(3, dtype=np.int64)
        for truth, picks in pairs:
            counts += match_counts(truth.get(name, np.zeros((0, 3))), picks.get(name, np.zeros((0, 3))),
                                   float(radii[name]), distance_multiplier)
        tp, fp, fn = (int(c) for c in counts)
        classes[name] = ClassScore(tp, fp, fn, *fbeta(tp, fp, fn, beta)).to_dict()
    overall = sum(weights[n] * classes[n]["fbeta"] for n in names) / sum(weights.values())
    return {"classes": classes, "fbeta": float(overall)}

"""What an evaluation can and cannot say: chance, the real ceiling, metric reliability, and the
paired comparison of GAN and traditional data.

- **Chance** is the accuracy of always answering the test split's most common class.
- **The inception network is reliable** when its accuracy on the real test split is at least
  ``metrics.reliability_margin`` (default 0.1) above chance. Below that its features carry
  little class information, and FID, PRDC and IS computed on them say nothing about realism:
  they are marked unreliable and the verdict is *inconclusive*. This rule and the per-metric
  ones (N <= D, all-zero PRDC, IS near 1) live in ``cryoet_forge.metrics.reliability``, which
  ``forge metrics`` applies too.
- **The paired difference** is GAN minus traditional accuracy per seed (the same seed gives the
  same classifier initialisation and batch order), with a Student-t interval over seeds.
  The verdict is *GAN ahead* when that interval lies above zero, *traditional ahead* when below,
  *no clear difference* when it contains zero.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import stats

from cryoet_forge.evaluate.report import number
from cryoet_forge.metrics.reliability import PRDC_KEYS, assess_metrics, near_chance


def confidence_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean over seeds; a single value gives a zero-width interval."""
    data = np.asarray(values, dtype=np.float64)
    mean = float(data.mean())
    if data.size < 2:
        return mean, mean, mean
    sem = float(data.std(ddof=1) / math.sqrt(data.size))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df=data.size - 1) * sem)
    return mean, mean - half, mean + half


def chance_level(labels: np.ndarray, n_classes: int) -> float:
    """Accuracy of always predicting the most common class of ``labels``."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)
    return float(counts.max() / max(counts.sum(), 1))


def class_counts(labels: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    return {name: int(counts[i]) for i, name in enumerate(class_names)}


def paired_difference(gan: Sequence[float], traditional: Sequence[float], seeds: Sequence[int],
                      confidence: float = 0.95) -> dict[str, Any]:
    """GAN minus traditional accuracy per seed, its mean and t-interval (seeds paired)."""

    differences = [float(a) - float(b) for a, b in zip(gan, traditional)]
    mean, low, high = confidence_interval(differences, confidence)
    return {"seeds": [int(s) for s in seeds], "differences": differences, "mean": mean, "ci_low": low,
            "ci_high": high, "confidence": confidence, "n": len(differences),
            "gan_wins": int(sum(d > 0 for d in differences))}


def assess(inception_accuracy: float, chance: float, margin: float, paired: dict[str, Any],
           baseline_accuracy: float | None, metrics_accuracy: float | None = None,
           metrics_network: str = "cb3d", synthetic: tuple[float, float] | None = None) -> dict[str, Any]:
    """The verdict of one evaluation and the sentences the report and the terminal print.

    ``inception_accuracy``: CB3D trained on the real training split, on the real test split (the
    ceiling); ``baseline_accuracy``: the radial-profile baseline trained on the same split.
    ``metrics_accuracy``: the test accuracy of the network FID, PRDC and IS use
    (``metrics_network``, ``metrics.inception``) when it is not CB3D; their reliability follows it.
    ``synthetic``: CB3D's mean accuracies trained on traditional and on GAN data; when both are
    within ``margin`` of chance the outcome is "neither-transfers" whatever the paired interval
    says (a difference between two failures is no win).
    """
    cb3d_note = near_chance(inception_accuracy, chance, margin)
    own = metrics_accuracy is None or metrics_network == "cb3d"  # the metrics use CB3D's features
    metrics_note = (cb3d_note if metrics_accuracy is None or own
                    else near_chance(metrics_accuracy, chance, margin, network=metrics_network))
    notes = [] if metrics_note is None else [metrics_note]
    if not own and cb3d_note is not None:
        notes.append(f"near chance: CB3D trained on the real training split scores {number(inception_accuracy)} "
                     f"on the real test split (chance {number(chance)}): its downstream accuracies say nothing; "
                     f"FID, PRDC and IS use {metrics_network}, which the real validation part chose")
    if baseline_accuracy is not None and inception_accuracy <= baseline_accuracy:
        notes.append(f"CB3D trained on the real training split ({number(inception_accuracy)}) does not beat the "
                     f"radial-profile baseline ({number(baseline_accuracy)}) on the same split: the classifier, "
                     f"not the data, limits every accuracy here")
    mean, interval = number(paired["mean"]), _interval_text(paired)
    if cb3d_note is not None:
        outcome = "inconclusive"
        sentence = (f"Inconclusive: the real data's own classifier is near chance, so this evaluation cannot "
                    f"tell GAN data from traditional simulation (GAN minus traditional {mean}, {interval}).")
    elif synthetic is not None and max(synthetic) < chance + margin:
        outcome = "neither-transfers"
        sentence = (f"Neither synthetic set transfers: CB3D trained on traditional ({number(synthetic[0])}) or on "
                    f"GAN data ({number(synthetic[1])}) stays within {number(margin)} of chance "
                    f"({number(chance)}) on the real test split, so GAN minus traditional {mean} ({interval}) is a "
                    "difference between two failures, not a win.")
    else:
        outcome = interval_outcome(paired)
        sentence = {
            "inconclusive": f"Inconclusive: one seed gives no interval (GAN minus traditional {mean}).",
            "gan-ahead": f"GAN data beat traditional simulation: GAN minus traditional {mean} ({interval}).",
            "traditional-ahead": f"Traditional simulation beats GAN data: GAN minus traditional {mean} ({interval}).",
            "no-clear-difference": f"No clear difference: GAN minus traditional {mean}, and the {interval} "
                                   "contains zero.",
        }[outcome]
    return {"outcome": outcome, "sentence": sentence, "metrics_reliable": metrics_note is None, "margin": margin,
            "notes": notes}


def interval_outcome(paired: dict[str, Any]) -> str:
    """What a paired GAN-minus-traditional interval says: "inconclusive" (one seed), "gan-ahead"
    (above zero), "traditional-ahead" (below) or "no-clear-difference"."""
    if paired["n"] < 2:
        return "inconclusive"
    if paired["ci_low"] > 0:
        return "gan-ahead"
    return "traditional-ahead" if paired["ci_high"] < 0 else "no-clear-difference"


def _interval_text(paired: dict[str, Any]) -> str:
    return (f"paired {round(100 * paired['confidence'])}% interval [{number(paired['ci_low'])}, "
            f"{number(paired['ci_high'])}] over {paired['n']} seeds")


def assess_classifier(kind: str, real_accuracy: float, chance: float, margin: float, paired: dict[str, Any],
                      baseline_accuracy: float | None,
                      synthetic: tuple[float, float] | None = None) -> dict[str, Any]:
    """The GAN-vs-traditional answer of one classifier kind: it counts only where the kind learns
    the real data (trained on the real training split, ``real_accuracy`` on the real test split
    at least ``margin`` above chance) and where at least one synthetic set teaches it something
    (``synthetic``: the mean accuracies of the kind trained on traditional and on GAN data; when
    both are within ``margin`` of chance the difference is between two failures, and the outcome
    says so); ``beats_baseline``: above the radial-profile baseline."""
    learns = near_chance(real_accuracy, chance, margin) is None
    transfers = synthetic is None or max(synthetic) >= chance + margin
    mean, interval = number(paired["mean"]), _interval_text(paired)
    if not learns:
        outcome = "does-not-learn"
        sentence = (f"{kind} does not learn the real data (trained on the real split: {number(real_accuracy)}, "
                    f"chance {number(chance)}); its GAN minus traditional {mean} says nothing.")
    elif not transfers:
        assert synthetic is not None
        outcome = "neither-transfers"
        sentence = (f"{kind} learns the real data ({number(real_accuracy)}), but neither traditional "
                    f"({number(synthetic[0])}) nor GAN data ({number(synthetic[1])}) teach it more than chance "
                    f"({number(chance)}, margin {number(margin)}) on the real test split: GAN minus traditional "
                    f"{mean} ({interval}) is a difference between two failures.")
    else:
        outcome = interval_outcome(paired)
        sentence = {
            "inconclusive": f"{kind}: one seed gives no interval (GAN minus traditional {mean}).",
            "gan-ahead": f"{kind}: GAN data beat traditional simulation, {mean} ({interval}).",
            "traditional-ahead": f"{kind}: traditional simulation beats GAN data, {mean} ({interval}).",
            "no-clear-difference": f"{kind}: no clear difference, {mean} ({interval} contains zero).",
        }[outcome]
    beats = None if baseline_accuracy is None else bool(real_accuracy > baseline_accuracy)
    return {"classifier": kind, "real_accuracy": real_accuracy, "learns": learns, "transfers": transfers,
            "beats_baseline": beats,
            "outcome": outcome, "sentence": sentence, "paired": paired}


def quality_reliability(scores: dict[str, Any], margin: float) -> dict[str, list[str]]:
    """The per-metric reliability rules (``cryoet_forge.metrics.reliability``) on one row of
    quality scores: {"fid": [...], "precision": [...], ..., "inception_score": [...]}. Rows
    recorded without their sizes skip the N <= D rule."""
    prdc = {key: scores[key] for key in PRDC_KEYS} if all(key in scores for key in PRDC_KEYS) else None
    return assess_metrics(n_real=scores.get("n_real"), n_fake=scores.get("n_fake"), dim=scores.get("dim"),
                          fid=scores.get("fid") is not None, prdc=prdc, margin=margin,
                          inception={"fake": scores["is_mean"]} if scores.get("is_mean") is not None else None)

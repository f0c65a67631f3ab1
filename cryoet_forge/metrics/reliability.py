"""When FID, PRDC and IS say nothing: the rules ``forge metrics`` and ``forge evaluate`` both apply.

Each rule that fires adds one sentence, starting with the rule's name, to the metrics it concerns:

- **near chance** (``forge evaluate``, which has labels): the inception network's accuracy on the
  real test split is less than ``margin`` above chance; its features carry little class
  information, so every metric on them is unreliable.
- **IS near 1**: the Inception Score is exp of the mutual information between a volume and its
  predicted class; 1 is what a classifier at chance gives (the same class probabilities for every
  volume). An IS less than ``margin`` above 1 (the margin evaluate allows above chance) marks the
  IS unreliable; on the *real* set it means the network is near chance there, the rule above
  without labels, and marks every metric.
- **N <= D**: fewer samples than feature dimensions make the covariance singular; FID is then
  biased by O(D/N) and dominated by that bias.
- **all-zero PRDC**: precision, recall, density and coverage all 0: no sample of either set lies in
  any k-NN ball of the other (sets that do not overlap at all at this k, or features that have
  collapsed onto repeated rows with radius 0), so the four numbers cannot rank anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from cryoet_forge.metrics.bundle import MetricBundle

#: how far above chance (accuracy) or above 1 (IS) a score must be to be read (evaluate's default)
DEFAULT_MARGIN = 0.1
PRDC_KEYS = ("precision", "recall", "density", "coverage")


def near_chance(accuracy: float, chance: float, margin: float = DEFAULT_MARGIN,
                network: str = "CB3D") -> str | None:
    """The near-chance rule: a sentence when ``accuracy`` is less than ``margin`` above ``chance``."""
    if accuracy >= chance + margin:
        return None
    return (f"near chance: the inception network ({network} trained on the real training split) scores "
            f"{_number(accuracy)} on the real test split, within {margin:g} of chance ({_number(chance)}): "
            "FID, PRDC and IS on its features are unreliable")


def assess_metrics(*, n_real: int | None = None, n_fake: int | None = None, dim: int | None = None,
                   fid: bool = False, prdc: Mapping[str, float] | None = None,
                   inception: Mapping[str, float] | None = None,
                   margin: float = DEFAULT_MARGIN) -> dict[str, list[str]]:
    """The rules that fire, per metric: {"fid": [...], "precision": [...], ..., "inception_score":
    [...], "inception_score_real": [...]}, an empty list for a metric no rule marks.

    ``fid``: whether FID was computed; ``prdc``: the four values; ``inception``: the mean IS of
    the "fake" and/or "real" set. Sizes left out (None) skip the N <= D rule."""
    out: dict[str, list[str]] = {}
    if fid:
        out["fid"] = []
    if prdc is not None:
        out.update({key: [] for key in PRDC_KEYS})
    inception = dict(inception or {})
    if "fake" in inception:
        out["inception_score"] = []
    if "real" in inception:
        out["inception_score_real"] = []

    if fid and dim is not None:
        small = [f"{name} N={n}" for name, n in (("real", n_real), ("fake", n_fake)) if n is not None and n <= dim]
        if small:
            out["fid"].append(f"N <= D: {' and '.join(small)} <= D={dim} samples: the covariance is singular "
                              "and FID is dominated by its O(D/N) bias; use more samples than dimensions")
    if prdc is not None and all(float(prdc[key]) == 0.0 for key in PRDC_KEYS):
        sentence = ("all-zero PRDC: precision, recall, density and coverage are all 0, so no sample of either "
                    "set lies in a k-NN ball of the other (disjoint sets, or rows repeated more than k times "
                    "with radius 0); they cannot rank anything here")
        for key in PRDC_KEYS:
            out[key].append(sentence)
    if "fake" in inception and inception["fake"] < 1.0 + margin:
        out["inception_score"].append(
            f"IS near 1: IS {inception['fake']:.4f} is within {margin:g} of 1, what a classifier at chance gives "
            "(the same class probabilities for every volume)")
    if "real" in inception and inception["real"] < 1.0 + margin:
        sentence = (f"IS near 1 on the real set: IS {inception['real']:.4f} is within {margin:g} of 1, so the "
                    "network is near chance on the real volumes and its features carry little class information")
        for key in out:
            out[key].append(sentence)
    return out


def bundle_reliability(bundle: MetricBundle, margin: float = DEFAULT_MARGIN) -> dict[str, list[str]]:
    """``assess_metrics`` of every value in one metric bundle."""
    return assess_metrics(n_real=bundle.n_real, n_fake=bundle.n_fake, dim=bundle.dim, fid=bundle.fid is not None,
                          prdc=bundle.prdc, margin=margin,
                          inception={which: score["mean"] for which, score in bundle.inception.items()})


def rule_names(sentences: list[str]) -> str:
    """The names of the rules in ``sentences`` (the text before each first colon), joined."""
    return ", ".join(dict.fromkeys(sentence.split(":", 1)[0] for sentence in sentences))


def _number(value: float) -> str:
    return f"{value:.3f}"

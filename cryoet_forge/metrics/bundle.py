"""The metric bundle: PRDC, FID and (given class probabilities) the Inception Score of one fake set
against one real set, computed one way for ``forge metrics`` and for ``forge evaluate``."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cryoet_forge.errors import InputError
from cryoet_forge.metrics.fid import FIDResult, FIDWarning, fid_details
from cryoet_forge.metrics.inception import inception_score
from cryoet_forge.metrics.knn import PrdcCounts, ProgressCallback
from cryoet_forge.metrics.prdc import prdc_counts, resolve_backend, validate_pair

PRDC_NAMES = ("precision", "recall", "density", "coverage")


@dataclass
class MetricBundle:
    """Every value of one real/fake comparison, with what produced it."""

    n_real: int
    n_fake: int
    dim: int
    k: int
    backend: str
    strict: bool
    counts: PrdcCounts
    prdc_seconds: float
    fid: FIDResult | None = None
    fid_seconds: float | None = None
    #: "fake" / "real" -> {"mean", "std", "splits"}, for the sets whose class probabilities were given
    inception: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def prdc(self) -> dict[str, float]:
        return self.counts.metrics()


def inception_scores(probabilities: dict[str, np.ndarray | None], splits: int,
                     sources: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """IS of each set of class probabilities given (splits capped at the set size).

    ``sources`` names where each set came from, for the error of probabilities that are not."""
    scores = {}
    for which, probs in probabilities.items():
        if probs is None:
            continue
        used = min(int(splits), int(probs.shape[0]))
        try:
            mean, std = inception_score(probs, used)
        except InputError as exc:  # an extractor's probabilities that are not probabilities
            if sources and which in sources:
                raise InputError(f"{sources[which]}: {exc}") from None
            raise
        scores[which] = {"mean": float(mean), "std": float(std), "splits": used}
    return scores


def compute_bundle(real: Any, fake: Any, *, k: int = 5, backend: Any = "exact", device: str = "auto",
                   strict: bool = True, with_fid: bool = True, bootstrap: int = 0,
                   probabilities: dict[str, np.ndarray | None] | None = None, is_splits: int = 10,
                   sources: dict[str, str] | None = None, progress: ProgressCallback | None = None) -> MetricBundle:
    """PRDC (``backend`` on ``device``), FID (with a ``bootstrap`` interval) and IS of ``fake`` vs ``real``.

    ``probabilities``: {"fake": (M, C), "real": (N, C)} class probabilities for the IS (either may
    be left out). FID warnings are kept in ``fid.warnings``, not raised as warnings.
    """
    x, y = validate_pair(real, fake, k)
    engine = resolve_backend(backend, device)
    started = time.perf_counter()
    counts = prdc_counts(x, y, k, engine, strict, progress=progress)
    bundle = MetricBundle(int(x.shape[0]), int(y.shape[0]), int(x.shape[1]), int(k), engine.name, strict, counts,
                          time.perf_counter() - started)
    if with_fid:
        started = time.perf_counter()
        with warnings.catch_warnings():  # kept in the result's warnings
            warnings.simplefilter("ignore", FIDWarning)
            bundle.fid = fid_details(x, y, bootstrap=bootstrap)
        bundle.fid_seconds = time.perf_counter() - started
    bundle.inception = inception_scores(probabilities or {}, is_splits, sources)
    return bundle

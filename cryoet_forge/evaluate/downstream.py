"""Train on synthetic, test on real: CB3D trained per seed on one data source, scored on the real test split."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cryoet_forge.classify import (
    ClassificationResult,
    ClassifierOptions,
    LabelledVolumes,
    evaluate_cb3d,
    train_cb3d,
)


def confidence_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean over seeds; a single value gives a zero-width interval."""
    from scipy import stats

    data = np.asarray(values, dtype=np.float64)
    mean = float(data.mean())
    if data.size < 2:
        return mean, mean, mean
    sem = float(data.std(ddof=1) / math.sqrt(data.size))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df=data.size - 1) * sem)
    return mean, mean - half, mean + half


def per_class_mean(per_class: Sequence[dict[str, float | None]]) -> dict[str, float | None]:
    """Per-class accuracy averaged over seeds (seeds where the class is absent left out; None if all are)."""
    means: dict[str, float | None] = {}
    for name in (per_class[0] if per_class else {}):
        values = [value for pc in per_class if (value := pc[name]) is not None]
        means[name] = sum(values) / len(values) if values else None
    return means


@dataclass
class DownstreamResult:
    """Accuracies of CB3D trained on ``source`` (one per seed) on the real test split."""

    source: str
    seeds: list[int]
    accuracies: list[float]
    per_class: list[dict[str, float | None]]
    mean: float
    low: float
    high: float
    confidence: float
    n_train: int
    first: ClassificationResult | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {"source": self.source, "seeds": list(self.seeds), "accuracies": list(self.accuracies),
                "per_class_accuracy": list(self.per_class),
                "per_class_accuracy_mean": per_class_mean(self.per_class), "mean": self.mean, "ci_low": self.low,
                "ci_high": self.high, "confidence": self.confidence, "n_train": self.n_train,
                "confusion_first_seed": self.first.confusion.tolist() if self.first is not None else None}


def _cache_key(train: LabelledVolumes, test: LabelledVolumes, class_names: Sequence[str],
               options: ClassifierOptions, seed: int) -> str:
    """A digest of everything one downstream score depends on (data bytes, labels, options, seed, torch)."""
    import hashlib
    import json

    import torch

    h = hashlib.blake2b(digest_size=20)
    for array in (train.volumes, train.labels, test.volumes, test.labels):
        array = np.ascontiguousarray(array)
        h.update(str((array.shape, array.dtype.str)).encode())
        h.update(array.data.cast("B"))
    h.update(json.dumps([list(class_names), options.to_dict(), int(seed), torch.__version__],
                        sort_keys=True).encode())
    return h.hexdigest()


def _cached_score(cache_dir: Path, key: str, class_names: Sequence[str]) -> ClassificationResult | None:
    """The cached score of ``key``; None when there is none or it cannot be read (then it is retrained)."""
    import json

    path = cache_dir / f"downstream-{key}.json"
    try:
        record = json.loads(path.read_text())
        empty = np.zeros((0,))
        return ClassificationResult(list(class_names), float(record["accuracy"]),
                                    dict(record["per_class_accuracy"]),
                                    np.asarray(record["confusion"], dtype=np.int64), empty, empty, empty, empty)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def train_on_synthetic_test_on_real(source: str, train: LabelledVolumes, test: LabelledVolumes,
                                    class_names: Sequence[str], options: ClassifierOptions,
                                    seeds: Sequence[int], confidence: float = 0.95,
                                    log: Callable[[str], None] | None = None,
                                    cache_dir: Path | None = None) -> DownstreamResult:
    """One CB3D per seed on ``train``; accuracy on ``test``; mean and t-interval over seeds.

    ``cache_dir``: a folder of scores keyed by a digest of the data, options, seed and torch
    version; a seed whose score is there is read instead of trained (the suite runs the same
    traditional set under several methods). Training is deterministic on CPU for a seed, so
    a cached score is the one training would give.
    """
    from cryoet_forge import progress

    train = train.relabelled(class_names)
    accuracies, per_class = [], []
    first: ClassificationResult | None = None
    with progress.stage(f"downstream {source}", len(seeds), "seeds") as bar:
        for seed in seeds:
            key = None if cache_dir is None else _cache_key(train, test, class_names, options, int(seed))
            result = None if key is None or cache_dir is None else _cached_score(cache_dir, key, class_names)
            if result is None:
                model, _ = train_cb3d(train, options, seed=int(seed), label=f"CB3D on {source}, seed {seed}")
                result = evaluate_cb3d(model, test, class_names, normalize=options.normalize,
                                       device=options.device)
                if key is not None and cache_dir is not None:
                    from cryoet_forge.classify import write_json

                    cache_dir.mkdir(parents=True, exist_ok=True)
                    write_json(cache_dir / f"downstream-{key}.json",
                               {"source": source, "seed": int(seed), "accuracy": result.accuracy,
                                "per_class_accuracy": result.per_class_accuracy,
                                "confusion": result.confusion.tolist()})
            accuracies.append(result.accuracy)
            per_class.append(result.per_class_accuracy)
            if first is None:
                first = result
            bar.advance(info=f"seed {seed}: accuracy {result.accuracy:.3f}")
            if log is not None:
                log(f"  downstream {source} seed {seed}: accuracy {result.accuracy:.4f}")
    mean, low, high = confidence_interval(accuracies, confidence)
    return DownstreamResult(source, [int(s) for s in seeds], accuracies, per_class, mean, low, high,
                            confidence, len(train), first)

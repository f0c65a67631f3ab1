"""Train on synthetic, test on real: a classifier (kind ``classifier``: ``cb3d``, ``radial``, a
plugin's) trained per seed on one data source, scored on the real test split."""

from __future__ import annotations

import ctypes
import hashlib
import json
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from cryoet_forge import progress
from cryoet_forge.classify import ClassificationResult, ClassifierOptions, LabelledVolumes, score_probabilities
from cryoet_forge.errors import ConfigError, ForgeError
from cryoet_forge.evaluate.verdict import confidence_interval  # noqa: F401  (also re-exported)
from cryoet_forge.io.atomic import write_json_atomic
from cryoet_forge.registry import create

#: the classifier kind whose options are the ``[classifier]`` table (``ClassifierOptions``)
CB3D_KIND = "cb3d"


def per_class_mean(per_class: Sequence[dict[str, float | None]]) -> dict[str, float | None]:
    """Per-class accuracy averaged over seeds (seeds where the class is absent left out; None if all are)."""
    means: dict[str, float | None] = {}
    for name in (per_class[0] if per_class else {}):
        values = [value for pc in per_class if (value := pc[name]) is not None]
        means[name] = sum(values) / len(values) if values else None
    return means


@dataclass
class DownstreamResult:
    """Accuracies of a classifier of kind ``classifier`` trained on ``source`` (one per seed) on the real test split."""

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
    classifier: str = CB3D_KIND

    def to_dict(self) -> dict:
        return {"source": self.source, "classifier": self.classifier, "seeds": list(self.seeds), "accuracies": list(self.accuracies),
                "per_class_accuracy": list(self.per_class),
                "per_class_accuracy_mean": per_class_mean(self.per_class), "mean": self.mean, "ci_low": self.low,
                "ci_high": self.high, "confidence": self.confidence, "n_train": self.n_train,
                "confusion_first_seed": self.first.confusion.tolist() if self.first is not None else None}


def _cache_key(train: LabelledVolumes, test: LabelledVolumes, class_names: Sequence[str],
               kind: str, options: dict[str, Any], seed: int, threads: int) -> str:
    """A digest of everything one downstream score depends on (data bytes, labels, classifier kind
    and options, seed, torch, and the thread count, which changes the summation order)."""
    h = hashlib.blake2b(digest_size=20)
    for array in (train.volumes, train.labels, test.volumes, test.labels):
        array = np.ascontiguousarray(array)
        h.update(str((array.shape, array.dtype.str)).encode())
        h.update(array.data.cast("B"))
    described: Any = options if kind == CB3D_KIND else [kind, options]  # cb3d: the keys of earlier caches
    h.update(json.dumps([list(class_names), described, int(seed), torch.__version__, int(threads)],
                        sort_keys=True, default=repr).encode())
    return h.hexdigest()


def _cached_score(cache_dir: Path, key: str, class_names: Sequence[str]) -> ClassificationResult | None:
    """The cached score of ``key``; None when there is none or it cannot be read (then it is retrained)."""
    path = cache_dir / f"downstream-{key}.json"
    try:
        record = json.loads(path.read_text())
        empty = np.zeros((0,))
        return ClassificationResult(list(class_names), float(record["accuracy"]),
                                    dict(record["per_class_accuracy"]),
                                    np.asarray(record["confusion"], dtype=np.int64), empty, empty, empty, empty)
    except (OSError, ValueError, KeyError, TypeError):
        return None


#: ``[downstream] workers`` values besides a count: "auto" (one per usable core, at most one per
#: classifier) and 0 (in this process, with torch's threads)
WORKERS_AUTO = "auto"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_workers(value: Any, what: str = "downstream.workers") -> int | str:
    """``value`` as a worker setting ("auto" or an integer >= 0), else a one-line ConfigError."""
    if value == WORKERS_AUTO:
        return WORKERS_AUTO
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{what} must be \"auto\" or an integer >= 0 (0 = in this process), got {value!r}")
    return value


def resolve_workers(setting: int | str, n_jobs: int, device: str) -> int:
    """Worker processes for ``n_jobs`` classifiers: 0 = train them in this process.

    On a CPU each classifier is trained in a worker process with one thread: on the 2-core
    machines two single-threaded trainings side by side finish 1.6x sooner than one after the
    other with two threads each (docs/results.md, "Training speed on a CPU"), and since every classifier runs
    single-threaded whatever the count, the scores do not depend on the number of workers.
    A CUDA classifier is trained in this process (one device, one queue).
    """
    setting = check_workers(setting)
    if device != "cpu" or n_jobs < 1:
        return 0
    if setting == WORKERS_AUTO:
        return min(n_jobs, usable_cores())
    return min(int(setting), n_jobs)


#: the sets of one pool, sent once to each worker process when it starts
_WORKER_SETS: dict[str, LabelledVolumes] = {}


def _end_with_parent(parent: int) -> None:
    """Linux: this worker is sent SIGTERM when the process that started it ends (killed or not),
    instead of finishing a classifier nobody will read."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != parent:  # the parent ended before the request
        os._exit(1)


def _start_worker(sets: dict[str, LabelledVolumes], parent: int) -> None:
    _end_with_parent(parent)
    torch.set_num_threads(1)
    progress.configure(quiet=True)  # the parent shows the classifiers' progress
    _WORKER_SETS.clear()
    _WORKER_SETS.update(sets)


def _train_and_score(source: str, test: str, class_names: Sequence[str], kind: str, options: dict[str, Any],
                     seed: int) -> ClassificationResult:
    """One downstream classifier: ``kind`` trained on ``source`` with ``seed``, scored on ``test``."""
    sets = _WORKER_SETS
    classifier = create("classifier", kind, **options)
    classifier.fit(sets[source], seed)
    return score_probabilities(classifier.probabilities(sets[test].volumes), sets[test], class_names)


def _run_jobs(jobs: list[tuple[str, int]], sets: dict[str, LabelledVolumes], test: str,
              class_names: Sequence[str], kind: str, options: dict[str, Any], workers: int,
              done: Callable[[int, ClassificationResult], None]) -> None:
    """Train and score ``jobs`` ((source, seed) pairs); ``done(index, result)`` as each one ends.

    ``workers`` 0: one after the other in this process; else a pool of that many spawned
    single-threaded processes (spawn, not fork: a forked child of a process whose OpenMP
    threads have run can hang).
    """
    if not jobs:
        return
    if workers == 0:
        _WORKER_SETS.clear()
        _WORKER_SETS.update(sets)
        try:
            for index, (source, seed) in enumerate(jobs):
                done(index, _train_and_score(source, test, class_names, kind, options, seed))
        finally:
            _WORKER_SETS.clear()
        return

    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_start_worker, initargs=(sets, os.getpid())) as pool:
            futures = {pool.submit(_train_and_score, source, test, list(class_names), kind, options, seed): index
                       for index, (source, seed) in enumerate(jobs)}
            try:
                for future in as_completed(futures):
                    done(futures[future], future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    except BrokenProcessPool:
        raise ForgeError("the downstream classifiers' worker processes ended unexpectedly (killed, out of "
                         "memory, or a script that calls forge without `if __name__ == \"__main__\":`); "
                         "downstream.workers = 0 trains them in this process") from None


def score_sources(sources: dict[str, LabelledVolumes], test: LabelledVolumes, class_names: Sequence[str],
                  options: ClassifierOptions, seeds: Sequence[int], confidence: float = 0.95,
                  log: Callable[[str], None] | None = None, cache_dir: Path | None = None,
                  workers: int | str = WORKERS_AUTO, kind: str = CB3D_KIND,
                  kind_options: dict[str, Any] | None = None) -> dict[str, DownstreamResult]:
    """One classifier per source and seed trained on that source; accuracy on ``test``; mean and
    t-interval over seeds. ``kind``: the registered classifier (``cb3d`` takes ``options``, the
    ``[classifier]`` table; any other kind takes ``kind_options``).

    All classifiers of all sources share one pool of ``workers`` (``resolve_workers``): the
    traditional and the GAN classifiers of the evaluation train side by side.
    ``cache_dir``: a folder of scores keyed by a digest of the data, options, seed, torch
    version and thread mode; a classifier whose score is there is read instead of trained (the
    suite runs the same traditional set under several methods). Training is deterministic on
    CPU for a seed and thread count, so a cached score is the one training would give.
    """
    seeds = [int(s) for s in seeds]
    trains = {source: train.relabelled(class_names) for source, train in sources.items()}
    jobs = [(source, seed) for source in trains for seed in seeds]
    settings = options.to_dict() if kind == CB3D_KIND else dict(kind_options or {})
    n_workers = resolve_workers(workers, len(jobs), options.device if kind == CB3D_KIND else "cpu")
    name = "CB3D" if kind == CB3D_KIND else kind

    threads = 1 if n_workers else torch.get_num_threads()
    results: dict[int, ClassificationResult] = {}
    keys: dict[int, str] = {}
    if cache_dir is not None:
        for index, (source, seed) in enumerate(jobs):
            keys[index] = _cache_key(trains[source], test, class_names, kind, settings, seed, threads)
            cached = _cached_score(cache_dir, keys[index], class_names)
            if cached is not None:
                results[index] = cached
    todo = [index for index in range(len(jobs)) if index not in results]
    n_workers = min(n_workers, len(todo))
    where = (f"{n_workers} single-threaded worker processes" if n_workers
             else f"this process, {threads} threads" if todo else "the cache")
    with progress.stage(f"downstream classifiers ({name})", len(jobs), "classifiers", start=len(results),
                        info=f"in {where}") as bar:

        def done(index: int, result: ClassificationResult) -> None:
            source, seed = jobs[index]
            results[index] = result
            if cache_dir is not None:
                cache_dir.mkdir(parents=True, exist_ok=True)
                write_json_atomic(cache_dir / f"downstream-{keys[index]}.json",
                                  {"source": source, "seed": seed, "accuracy": result.accuracy,
                                   "per_class_accuracy": result.per_class_accuracy,
                                   "confusion": result.confusion.tolist()}, allow_nan=False)
            bar.advance(info=f"{source} seed {seed}: accuracy {result.accuracy:.3f}")
            if log is not None:
                log(f"  downstream {name} on {source} seed {seed}: accuracy {result.accuracy:.4f}")

        sets = {**trains, "<test>": test}
        _run_jobs([jobs[index] for index in todo], sets, "<test>", class_names, kind, settings, n_workers,
                  lambda i, result: done(todo[i], result))
    out = {}
    for source, train in trains.items():
        indices = [jobs.index((source, seed)) for seed in seeds]
        accuracies = [results[i].accuracy for i in indices]
        mean, low, high = confidence_interval(accuracies, confidence)
        out[source] = DownstreamResult(source, seeds, accuracies, [results[i].per_class_accuracy for i in indices],
                                       mean, low, high, confidence, len(train), results[indices[0]], kind)
    return out


def train_on_synthetic_test_on_real(source: str, train: LabelledVolumes, test: LabelledVolumes,
                                    class_names: Sequence[str], options: ClassifierOptions,
                                    seeds: Sequence[int], confidence: float = 0.95,
                                    log: Callable[[str], None] | None = None,
                                    cache_dir: Path | None = None,
                                    workers: int | str = WORKERS_AUTO) -> DownstreamResult:
    """``score_sources`` for one source."""
    return score_sources({source: train}, test, class_names, options, seeds, confidence, log, cache_dir,
                         workers)[source]

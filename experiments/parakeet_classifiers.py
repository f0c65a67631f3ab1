"""CB3D settings for low-SNR, few-particle data, scored inside the Parakeet training tomogram only.

    python experiments/parakeet_classifiers.py                      # the whole sweep
    python experiments/parakeet_classifiers.py --only rule tta --folds 4 --repeats 1
    python experiments/parakeet_classifiers.py --data PATH/parakeet_dev
    forge extract --picks PATH/parakeet_dev/particles.csv --unit px --tomograms PATH/parakeet_dev/high_snr \
        --box 32 --bundle --out high_snr.npz
    python experiments/parakeet_classifiers.py --bundle high_snr.npz \
        --out experiments/results/parakeet_high_snr_classifiers.jsonl   # the high-dose tomograms

Only the boxes of tomogram 1 (TS_01) of ``parakeet_dev/subtomos.npz`` are read (the file holds
them first; reading stops before the first box of tomogram 2). They are split by repeated
stratified K-fold cross-validation; every candidate trains on the training folds (its own
early-stopping hold-out comes from them) and is scored on the held-out fold. The radial-profile
baseline (``cryoet_forge.evaluate.baseline``, with and without its light low-pass) is trained and
scored on exactly the same folds, so each candidate gets a paired comparison: the mean per-fold
difference and a 95% t-interval over the folds (folds of repeated K-fold share training volumes,
so the interval is optimistic; it ranks candidates, it does not prove a difference).

After the single-change candidates, ``combined`` is the rule with every change whose mean
accuracy beat the rule's (the best low-pass only, the best pooling only), and ``combined-ens3``
averages the probabilities of three seeds of it. ``stack-rule`` and ``stack-lp90`` (run only when
named) average CB3D's softmax with the radial classifier's probabilities, trained on the same
folds: does CB3D add anything the profile lacks? One JSON line per candidate is appended to
``experiments/results/parakeet_classifiers.jsonl`` (flushed after each), one line printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryoet_forge import progress
from cryoet_forge.classify import ClassifierOptions, LabelledVolumes, evaluate_cb3d, train_cb3d
from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.evaluate.baseline import radial_baseline
from cryoet_forge.evaluate.classifiers import RadialClassifier

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "parakeet_dev"
DEFAULT_OUT = ROOT / "experiments" / "results" / "parakeet_classifiers.jsonl"
TRAIN_TOMOGRAM = 1

#: the evaluation's rule: configs/evaluate-quickstart.toml [classifier] on the ClassifierSection defaults
RULE: dict[str, Any] = {"channels": [8, 16, 32, 32], "convs_per_block": [1, 1, 2, 2], "fc_width": 64,
                        "dropout": 0.0, "epochs": 40, "batch_size": 16, "lr": 1e-3, "weight_decay": 1e-4,
                        "validation_fraction": 0.2, "patience": 20, "augment": True, "max_shift": 0,
                        "channels_last": True, "device": "cpu"}
#: single changes to the rule, in the order they run
CHANGES: dict[str, dict[str, Any]] = {
    "rule": {},
    "lp40": {"lowpass_A": 40.0},
    "lp60": {"lowpass_A": 60.0},
    "lp90": {"lowpass_A": 90.0},
    "global": {"pool": "global"},
    "global-small": {"pool": "global", "channels": [8, 16, 16, 16], "fc_width": 32},
    "wd5e-3": {"weight_decay": 5e-3},
    "balanced": {"balanced": True},
    "mixup0.4": {"mixup": 0.4},
    "tta": {"tta": True},
    "smooth0.1": {"label_smoothing": 0.1},
    "cosine80": {"epochs": 80, "patience": 40},
    # rotation-invariant pooling (a learnt radial profile) on two blocks (8^3 maps of a 32^3 box) and
    # axis permutations (the 48 cube symmetries with the flips): run with --only, after the above
    "permute": {"permute_axes": True},
    "radial2": {"pool": "radial", "channels": [16, 32], "convs_per_block": [1, 1]},
    "radial2-lp60": {"pool": "radial", "channels": [16, 32], "convs_per_block": [1, 1], "lowpass_A": 60.0},
    "radial2-perm": {"pool": "radial", "channels": [16, 32], "convs_per_block": [1, 1], "permute_axes": True},
    "radial2-perm-lp60": {"pool": "radial", "channels": [16, 32], "convs_per_block": [1, 1],
                          "permute_axes": True, "lowpass_A": 60.0},
    "radial3-perm-lp60": {"pool": "radial", "channels": [8, 16, 32], "convs_per_block": [1, 1, 1],
                          "permute_axes": True, "lowpass_A": 60.0},
}
#: groups of alternatives: ``combined`` takes at most one of each (the best that beat the rule)
GROUPS = ({"lp40", "lp60", "lp90"}, {"global", "global-small"})
ENSEMBLE_SEEDS = 3
#: stacked candidates: CB3D with the named change, its softmax averaged with the radial classifier's
STACKS = {"stack-rule": "rule", "stack-lp90": "lp90"}
#: every candidate name ``--only`` takes
CANDIDATES = (*CHANGES, "combined", "combined-ens3", *STACKS)


def load_training_boxes(folder: Path) -> LabelledVolumes:
    """The boxes of tomogram 1 only; reading the box array stops after its last one."""
    path = folder / "subtomos.npz"
    if not path.is_file():
        raise InputError(f"{path}: not found (the parakeet_dev data set; pass --data FOLDER)")
    with np.load(path) as bundle:
        tomogram = np.asarray(bundle["tomogram_id"])
        labels = np.asarray(bundle["y"])
        class_names = [str(c) for c in bundle["class_names"]]
        voxel_size = float(bundle["voxel_size_A"])
    index = np.flatnonzero(tomogram == TRAIN_TOMOGRAM)
    if index.size == 0:
        raise InputError(f"{path}: no boxes of tomogram {TRAIN_TOMOGRAM}")
    last = int(index.max())
    with zipfile.ZipFile(path) as archive, archive.open("x.npy") as stream:
        version = np.lib.format.read_magic(stream)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(stream)
        if fortran or len(shape) != 4:
            raise InputError(f"{path}: x is not a C-ordered (N, S, S, S) array")
        row = int(np.prod(shape[1:])) * dtype.itemsize
        head = stream.read(row * (last + 1))
    rows = np.frombuffer(head, dtype=dtype).reshape((last + 1, *shape[1:]))
    return LabelledVolumes(rows[index].astype(np.float32), labels[index], class_names, voxel_size,
                           source=f"{path}[tomogram {TRAIN_TOMOGRAM}]")


def load_bundle_boxes(path: Path, tomogram: str = "TS_01") -> LabelledVolumes:
    """The boxes of ``tomogram`` in a ``forge extract --bundle`` file (e.g. cut from ``high_snr/``)."""
    from cryoet_forge.data.bundle import load_bundle

    bundle = load_bundle(path)
    if "rlnTomoName" not in bundle["parameters"]:
        raise InputError(f"{path}: no rlnTomoName parameter (not a forge extract bundle)")
    names = bundle["parameters"]["rlnTomoName"].to_numpy().astype(str)
    index = np.flatnonzero(names == tomogram)
    if index.size == 0:
        raise InputError(f"{path}: no boxes of tomogram {tomogram}")
    return LabelledVolumes(bundle["volumes"][index], bundle["labels"][index], bundle["class_names"],
                           bundle["voxel_size"], source=f"{path}[{tomogram}]")


def folds(labels: np.ndarray, n_folds: int, repeats: int) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    from sklearn.model_selection import RepeatedStratifiedKFold

    splitter = RepeatedStratifiedKFold(n_splits=n_folds, n_repeats=repeats, random_state=0)
    split = splitter.split(np.zeros(len(labels)), labels)
    return [(i // n_folds, i % n_folds, train, test) for i, (train, test) in enumerate(split)]


def paired(a: list[float], b: list[float]) -> dict[str, Any]:
    """Mean of a - b over the folds and its 95% t-interval."""
    from scipy import stats

    d = np.asarray(a) - np.asarray(b)
    half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"mean_difference": float(d.mean()), "ci95": [float(d.mean() - half), float(d.mean() + half)],
            "folds_ahead": int((d > 0).sum()), "folds_behind": int((d < 0).sum())}


def score_candidate(data: LabelledVolumes, splits, options: ClassifierOptions, ensemble: int = 1,
                    stack_radial: bool = False) -> dict[str, Any]:
    """Per-fold accuracy of CB3D (the mean softmax of ``ensemble`` seeds); with ``stack_radial``
    the radial-profile classifier's probabilities (sigma 1, no bootstrap) are averaged in with
    equal weight to CB3D's mean."""
    accuracies, kept = [], []
    for repeat, fold, train_index, test_index in splits:
        train, test = data.subset(train_index), data.subset(test_index)
        probabilities = 0.0
        for member in range(ensemble):
            model, history = train_cb3d(train, options, seed=100 * repeat + 10 * fold + 1000 * member)
            probabilities = probabilities + evaluate_cb3d(model, test, data.class_names, options.normalize).probabilities
            kept.append(history.best_epoch or len(history.loss))
        if stack_radial:
            radial = RadialClassifier(sigma=1.0, bootstrap=False)
            radial.fit(train, seed=0)
            probabilities = probabilities / ensemble + radial.probabilities(test.volumes)
        accuracies.append(float((np.argmax(probabilities, axis=1) == test.labels).mean()))
    return {"accuracies": accuracies, "epochs_kept": kept}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the parakeet_dev folder")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="read the TS_01 boxes of this forge extract --bundle file instead of subtomos.npz")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", nargs="+", default=None,
                        help=f"candidates among {', '.join(CANDIDATES)}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    progress.configure(quiet=True)
    try:
        names = args.only or [*CHANGES, "combined", "combined-ens3"]
        unknown = [n for n in names if n not in CANDIDATES]
        if unknown:
            raise ConfigError(f"unknown candidate(s) {', '.join(unknown)}")
        if args.folds < 2 or args.repeats < 1:
            raise ConfigError(f"need --folds >= 2 and --repeats >= 1, got {args.folds}, {args.repeats}")
        data = load_bundle_boxes(args.bundle) if args.bundle else load_training_boxes(args.data)
    except (ConfigError, InputError) as exc:
        sys.exit(f"error: {exc}")
    splits = folds(data.labels, args.folds, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"{data.source}: {len(data)} boxes, classes {np.bincount(data.labels).tolist()}, "
          f"{args.folds} folds x {args.repeats} repeats", flush=True)

    def write(record: dict[str, Any]) -> None:
        with args.out.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

    baselines: dict[str, list[float]] = {}
    for sigma in (1.0, 0.0):
        tic = time.perf_counter()
        accuracies = [radial_baseline(data.subset(tr), data.subset(te), sigma=sigma).accuracy
                      for _, _, tr, te in splits]
        name = f"radial-sigma{sigma:g}"
        baselines[name] = accuracies
        write({"name": name, "kind": "baseline", "sigma_voxels": sigma, "folds": args.folds,
               "repeats": args.repeats, "accuracies": accuracies, "mean": float(np.mean(accuracies)),
               "seconds": time.perf_counter() - tic})
        print(f"{name:16s} {np.mean(accuracies):.3f} {np.round(accuracies, 3).tolist()}", flush=True)

    means: dict[str, float] = {}
    for name in names:
        ensemble = 1
        if name in STACKS:
            change = CHANGES[STACKS[name]]
        elif name in CHANGES:
            change = CHANGES[name]
        else:
            if "rule" not in means:
                print(f"{name}: skipped (needs the rule's score in this run)", flush=True)
                continue
            change = combined_change(means)
            ensemble = ENSEMBLE_SEEDS if name == "combined-ens3" else 1
        options = ClassifierOptions(**{**RULE, **change})
        tic = time.perf_counter()
        scored = score_candidate(data, splits, options, ensemble, stack_radial=name in STACKS)
        accuracies = scored["accuracies"]
        means[name] = float(np.mean(accuracies))
        comparison = {b: paired(accuracies, acc) for b, acc in baselines.items()}
        write({"name": name, "kind": "cb3d+radial" if name in STACKS else "cb3d", "change": change, "ensemble": ensemble,
               "options": dataclasses.asdict(options), "folds": args.folds, "repeats": args.repeats,
               "accuracies": accuracies, "mean": means[name], "std": float(np.std(accuracies, ddof=1)),
               "epochs_kept": scored["epochs_kept"], "vs": comparison, "seconds": time.perf_counter() - tic})
        primary = comparison["radial-sigma1"]
        print(f"{name:16s} {means[name]:.3f} {np.round(accuracies, 3).tolist()} vs radial-sigma1 "
              f"{primary['mean_difference']:+.3f} [{primary['ci95'][0]:+.3f}, {primary['ci95'][1]:+.3f}] "
              f"({time.perf_counter() - tic:.0f} s) {json.dumps(change)}", flush=True)


def combined_change(means: dict[str, float]) -> dict[str, Any]:
    """The rule plus every single change whose mean beat the rule's (one per group of alternatives)."""
    better = {n for n, m in means.items() if n in CHANGES and n != "rule" and m > means["rule"]}
    for group in GROUPS:
        inside = sorted(better & group, key=lambda n: means[n])
        better -= set(inside[:-1])
    change: dict[str, Any] = {}
    for name in sorted(better, key=lambda n: list(CHANGES).index(n)):
        change.update(CHANGES[name])
    return change


if __name__ == "__main__":
    main()

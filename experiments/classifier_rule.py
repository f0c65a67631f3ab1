"""How the evaluation's CB3D training rule was chosen: candidates scored on a part of the real
*training* split that the rule never sees (the real test split plays no part).

    python experiments/classifier_rule.py quickstart              # the quickstart's domain
    python experiments/classifier_rule.py small-low-dose            # 15 per class, a fifth of the dose
    python experiments/classifier_rule.py quickstart --only chosen --seeds 0 1 2 3 4

The real training split is split once (stratified, seed 123) into 75% that the candidate's
training sees (its own hold-out for early stopping is taken from that) and 25% that scores it.
Prints one line per candidate: the mean assessment accuracy, the per-seed values, the epochs
kept, and the radial-profile baseline trained and scored on the same parts.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from cryoet_forge import progress
from cryoet_forge.classify import evaluate_cb3d, train_cb3d, validation_split
from cryoet_forge.evaluate.baseline import radial_baseline
from cryoet_forge.evaluate.config import config_from_dict, quickstart_table
from cryoet_forge.evaluate.datasets import prepare_data
from cryoet_forge.evaluate.pipeline import classifier_options

PREVIOUS = {"epochs": 12, "lr": 2e-3, "fc_width": 256, "dropout": 0.3, "validation_fraction": 0.0}
RULE = {"epochs": 60, "validation_fraction": 0.2, "patience": 12, "lr": 1e-3, "fc_width": 256, "dropout": 0.3}
CANDIDATES = {
    "previous": PREVIOUS,
    "rule": RULE,
    "rule-shift2": {**RULE, "max_shift": 2},
    "rule-narrow": {**RULE, "channels": [4, 8, 16, 16], "fc_width": 64},
    "fc64-nodrop": {**RULE, "fc_width": 64, "dropout": 0.0},
    "chosen": {**RULE, "fc_width": 64, "dropout": 0.0, "patience": 20, "epochs": 40},
    "fc64-drop03": {**RULE, "fc_width": 64},
    "fc64-nodrop-lr2e-3": {**RULE, "fc_width": 64, "dropout": 0.0, "lr": 2e-3, "epochs": 40},
}
DOMAINS = {
    "quickstart": {},
    "small-low-dose": {"data.n_train_per_class": 20, "data.n_test_per_class": 4,
                     "experimental.options": {"crowding": 2, "ice": 0.3, "dose": 25.0}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("domain", choices=sorted(DOMAINS))
    parser.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    progress.configure(quiet=True)
    config = config_from_dict(quickstart_table(), {"data.seed": 0, **DOMAINS[args.domain]})
    with tempfile.TemporaryDirectory() as folder:
        data = prepare_data(config, Path(folder), lambda line: None)
    train = data.real_train
    seen_index, assess_index = validation_split(train.labels, 0.25, seed=123)
    seen, assess = train.subset(seen_index), train.subset(assess_index)
    print(f"{args.domain}: {len(seen)} volumes seen, {len(assess)} assessed; radial baseline "
          f"{radial_baseline(seen, assess).accuracy:.3f}", flush=True)
    base = classifier_options(config)
    for name in args.only:
        options = dataclasses.replace(copy.deepcopy(base), **CANDIDATES[name])
        scores, kept, tic = [], [], time.perf_counter()
        for seed in args.seeds:
            model, history = train_cb3d(seen, options, seed=seed)
            scores.append(evaluate_cb3d(model, assess, train.class_names, options.normalize).accuracy)
            kept.append(history.best_epoch or len(history.loss))
        print(f"{name:20s} {np.mean(scores):.3f} {np.round(scores, 3).tolist()} epochs kept {kept} "
              f"({(time.perf_counter() - tic) / len(args.seeds):.1f} s per classifier)", flush=True)


if __name__ == "__main__":
    main()

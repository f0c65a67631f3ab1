"""Does a noisier traditional simulation transfer to parakeet_dev? A dose sweep of tilt-series.

    bash experiments/parakeet_evaluate.sh        # first: cuts WORK/train and WORK/test
    python experiments/parakeet_snr.py [WORK] --doses 200 25 6 2

For each total dose, 48 tilt-series volumes per class (32^3, 10 A, the data set's tilts, 4 um
underfocus, a 600 A slab, the shared 10 A maps) are simulated; the mean of the first four radial
shells of the z-scored boxes (the particle's contrast against its noise) is compared with the
real training split's, and the radial classifier trained on the simulation (3 bootstrap seeds)
is scored on the real test split (TS_02). Only the selection of what to try next reads the test
split here; no setting is chosen from it. JSON lines to experiments/results/parakeet_snr.jsonl.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cryoet_forge.classify import load_labelled, score_probabilities
from cryoet_forge.evaluate.baseline import radial_profiles
from cryoet_forge.evaluate.datasets import class_templates, resolve_maps_dir, simulate_labelled
from cryoet_forge.registry import create

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", nargs="?", type=Path, default=ROOT / "experiments" / "work" / "parakeet")
    parser.add_argument("--doses", nargs="+", type=float, default=[200.0, 25.0, 6.0, 2.0])
    args = parser.parse_args()
    train = load_labelled(args.work / "train" / "particles.star")
    names = train.class_names
    test = load_labelled(args.work / "test" / "particles.star").relabelled(names)
    templates = class_templates(names, resolve_maps_dir("shared:maps_10A"), 32, 10.0)
    real_centre = float(radial_profiles(train.volumes)[:, :4].mean())
    out = ROOT / "experiments" / "results" / "parakeet_snr.jsonl"
    for dose in args.doses:
        options = {"tilt_range": [-60.0, 60.0], "tilt_step": 3.0, "dose": dose, "defocus_um": [-4.0, -4.0],
                   "voltage_kv": 300.0, "ice_thickness_A": 600.0, "crowding": 1}
        simulated, _ = simulate_labelled("tilt-series", options, templates, names, 48, 10.0, 15, f"dose {dose:g}")
        accuracies = []
        for seed in range(3):
            classifier = create("classifier", "radial")
            classifier.fit(simulated, seed)
            accuracies.append(score_probabilities(classifier.probabilities(test.volumes), test, names).accuracy)
        row = {"dose": dose, "centre_contrast": float(radial_profiles(simulated.volumes)[:, :4].mean()),
               "real_centre_contrast": real_centre, "radial_on_real_test": accuracies,
               "mean": float(np.mean(accuracies))}
        print(json.dumps(row), flush=True)
        with out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

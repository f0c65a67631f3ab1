"""Which traditional physics transfers to parakeet_dev? Variants of the tilt-series simulation.

    bash experiments/parakeet_evaluate.sh        # first: cuts WORK/train (TS_01) and WORK/test (TS_02)
    python experiments/parakeet_physics.py [WORK] [--only NAME ...] [--maps structures]
    forge extract --picks PATH/parakeet_dev/particles.csv --unit px --tomograms PATH/parakeet_dev/high_snr \
        --tomo-name TS_01 --box 32 --out WORK_HIGH/train
    python experiments/parakeet_physics.py WORK_HIGH --dose 3000       # the high-dose tomograms

Each variant is the data set's acquisition as a user knows it (32^3 at 10 A, +-60 deg in 3 deg
steps, 200 e/A^2, 300 kV, 4 um underfocus, a 600 A slab, the shared 10 A maps) with one or more
options changed: CTF phase flipping before the back-projection (Parakeet's reconstruction flips
phases), no amplitude contrast (Parakeet's multislice has no absorption model), no crowding, no
low-frequency ice texture, a lower dose. For
each, 48 volumes per class are simulated and scored against the real *training* tomogram TS_01
only (the test tomogram is never read, so the variant can be chosen from these figures):

- ``accuracy``: the radial-profile classifier trained on the simulation (3 seeds), scored on
  TS_01's boxes;
- ``profile_correlation``: per class, the correlation between the simulated and the real mean radial
  profile (z-scored boxes), averaged over classes;
- ``difference_correlation``: the same for each class's profile minus the mean of the four classes'
  profiles (what tells the classes apart), averaged over classes;
- ``centre_contrast``: the mean of the first four radial shells (real: about 0).

JSON lines to experiments/results/parakeet_physics.jsonl.
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
from cryoet_forge.simulate.density import density_from_structure

ROOT = Path(__file__).resolve().parents[1]
KNOWN = {"tilt_range": [-60.0, 60.0], "tilt_step": 3.0, "dose": 200.0, "defocus_um": [-4.0, -4.0],
         "voltage_kv": 300.0, "ice_thickness_A": 600.0, "crowding": 1}
VARIANTS: dict[str, dict] = {
    "known": {},
    "flip": {"phase_flip": True},
    "no-amplitude": {"amplitude_contrast": 0.0},
    "flip-no-amplitude": {"phase_flip": True, "amplitude_contrast": 0.0},
    "flip-no-crowding": {"phase_flip": True, "crowding": 0},
    "flip-no-amplitude-no-crowding": {"phase_flip": True, "amplitude_contrast": 0.0, "crowding": 0},
    "no-ice": {"ice": 0.0},
    "flip-no-amplitude-no-ice": {"phase_flip": True, "amplitude_contrast": 0.0, "ice": 0.0},
    "flip-no-amplitude-no-ice-dose-25": {"phase_flip": True, "amplitude_contrast": 0.0, "ice": 0.0, "dose": 25.0},
    "flip-no-amplitude-no-ice-no-crowding": {"phase_flip": True, "amplitude_contrast": 0.0, "ice": 0.0,
                                             "crowding": 0},
}


def class_profiles(volumes: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    profiles = radial_profiles(volumes)
    return np.stack([profiles[labels == k].mean(axis=0) for k in range(n_classes)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", nargs="?", type=Path, default=ROOT / "experiments" / "work" / "parakeet")
    parser.add_argument("--dose", type=float, default=200.0,
                        help="the total dose of every variant (3000 for parakeet_dev/high_snr, cut into WORK)")
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS))
    parser.add_argument("--per-class", type=int, default=48)
    parser.add_argument("--maps", choices=["maps_10A", "structures"], default="maps_10A",
                        help="the shared maps_10A folder, or maps computed from the shared PDB models "
                             "(first biological assembly, the atoms Parakeet used)")
    args = parser.parse_args()
    real = load_labelled(args.work / "train" / "particles.star")
    names = real.class_names
    if args.maps == "structures":
        folder = resolve_maps_dir("shared:structures")
        templates = {name: density_from_structure(folder / f"{name}.pdb.gz", 10.0, 32, crop=True, assembly=1)
                     for name in names}
    else:
        templates = class_templates(names, resolve_maps_dir("shared:maps_10A"), 32, 10.0)
    real_profiles = class_profiles(real.volumes, real.labels, len(names))
    out = ROOT / "experiments" / "results" / "parakeet_physics.jsonl"
    for name in args.only or list(VARIANTS):
        options = {**KNOWN, "dose": args.dose, **VARIANTS[name]}
        simulated, _ = simulate_labelled("tilt-series", options, templates, names, args.per_class, 10.0, 15, name)
        accuracies = []
        for seed in range(3):
            classifier = create("classifier", "radial")
            classifier.fit(simulated, seed)
            accuracies.append(score_probabilities(classifier.probabilities(real.volumes), real, names).accuracy)
        sim_profiles = class_profiles(simulated.volumes, simulated.labels, len(names))
        correlations = [float(np.corrcoef(a, b)[0, 1]) for a, b in zip(sim_profiles, real_profiles)]
        sim_diff = sim_profiles - sim_profiles.mean(axis=0)
        real_diff = real_profiles - real_profiles.mean(axis=0)
        differences = [float(np.corrcoef(a, b)[0, 1]) for a, b in zip(sim_diff, real_diff)]
        row = {"variant": name, "maps": args.maps, "work": args.work.name, "dose": options["dose"], "options": VARIANTS[name], "accuracy_on_TS_01": accuracies,
               "mean": float(np.mean(accuracies)), "profile_correlation": float(np.mean(correlations)),
               "per_class_correlation": dict(zip(names, correlations)),
               "difference_correlation": float(np.mean(differences)),
               "per_class_difference_correlation": dict(zip(names, differences)),
               "centre_contrast": float(radial_profiles(simulated.volumes)[:, :4].mean()),
               "real_centre_contrast": float(radial_profiles(real.volumes)[:, :4].mean())}
        print(json.dumps(row), flush=True)
        with out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

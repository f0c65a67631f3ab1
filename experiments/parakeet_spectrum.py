"""Does a traditional set with the real data's power spectrum transfer to parakeet_dev?

    bash experiments/parakeet_evaluate.sh     # first: WORK/train, WORK/test, WORK/evaluation
    python experiments/parakeet_spectrum.py [WORK]

The evaluation's traditional set (WORK/evaluation/data/traditional) is z-scored and each
Fourier shell scaled by sqrt(real power / traditional power), the mean power per shell measured
on the real *training* split (TS_01); the radial classifier (5 bootstrap seeds) trained on the
traditional set and on the matched one is scored on the real test split (TS_02). A diagnostic:
nothing is chosen from the test split. JSON lines to experiments/results/parakeet_spectrum.jsonl.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cryoet_forge.classify import LabelledVolumes, load_labelled, score_probabilities
from cryoet_forge.registry import create

ROOT = Path(__file__).resolve().parents[1]


def zscored(volumes: np.ndarray) -> np.ndarray:
    return (volumes - volumes.mean(axis=(1, 2, 3), keepdims=True)) / volumes.std(axis=(1, 2, 3), keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", nargs="?", type=Path, default=ROOT / "experiments" / "work" / "parakeet")
    args = parser.parse_args()
    train = load_labelled(args.work / "train" / "particles.star")
    names = train.class_names
    test = load_labelled(args.work / "test" / "particles.star").relabelled(names)
    traditional = load_labelled(args.work / "evaluation" / "data" / "traditional" / "particles.star").relabelled(names)
    size = train.box
    k = np.fft.fftfreq(size)
    radius = np.sqrt(sum(g ** 2 for g in np.meshgrid(k, k, k, indexing="ij")))
    shell = np.minimum(np.rint(radius * size).astype(int), size // 2)

    def power(volumes: np.ndarray) -> np.ndarray:
        spectrum = np.abs(np.fft.fftn(zscored(volumes), axes=(1, 2, 3))) ** 2
        return np.array([spectrum[:, shell == s].mean() for s in range(size // 2 + 1)])

    gain = np.sqrt(power(train.volumes) / power(traditional.volumes))
    matched = np.real(np.fft.ifftn(np.fft.fftn(zscored(traditional.volumes), axes=(1, 2, 3)) * gain[shell],
                                   axes=(1, 2, 3))).astype(np.float32)
    sets = {"traditional": traditional,
            "spectrum-matched traditional": LabelledVolumes(matched, traditional.labels, names, traditional.voxel_size)}
    for name, data in sets.items():
        accuracies = []
        for seed in range(5):
            classifier = create("classifier", "radial")
            classifier.fit(data, seed)
            accuracies.append(score_probabilities(classifier.probabilities(test.volumes), test, names).accuracy)
        row = {"set": name, "radial_on_real_test": accuracies, "mean": float(np.mean(accuracies))}
        print(json.dumps(row), flush=True)
        with (ROOT / "experiments" / "results" / "parakeet_spectrum.jsonl").open("a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

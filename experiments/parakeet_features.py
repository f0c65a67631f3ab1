"""Invariant features and template matching on parakeet_dev's training tomogram (TS_01 only).

    python experiments/parakeet_features.py [--data PATH/parakeet_dev] [--rotations 300]

Scores, by repeated stratified 4-fold cross-validation (2 repeats) inside TS_01 (the test
tomogram is never read), logistic regression (C 1 / 0.1 / 0.01) and an RBF SVM on rotation-
invariant feature sets, and template matching against the clean maps: the normalised correlation
inside a 13-voxel sphere with each map under random rotations (a +-60 degree wedge about y
applied to the rotated map), logistic regression on the per-class max / top-10 mean / mean, and
the correlation at each particle's true orientation. Prints one line per cell and appends JSON
lines to experiments/results/parakeet_features.jsonl.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates
from scipy.spatial.transform import Rotation
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "results" / "parakeet_features.jsonl"


def shell_tools(size: int):
    grid = np.indices((size,) * 3) - (size - 1) / 2
    shell = np.rint(np.sqrt((grid ** 2).sum(0))).astype(int).ravel()
    inside = shell < size // 2
    counts = np.bincount(shell[inside], minlength=size // 2)
    used = counts > 0

    def mean(values: np.ndarray) -> np.ndarray:
        return np.bincount(shell[inside], weights=values.ravel()[inside], minlength=size // 2)[used] / counts[used]
    return mean


def features(volumes: np.ndarray, kind: str) -> np.ndarray:
    mean = shell_tools(volumes.shape[-1])

    def profile(v, sigma, moments=(1, 2)):
        v = gaussian_filter(v, sigma) if sigma > 0 else v
        v = (v - v.mean()) / (v.std() + 1e-12)
        return np.concatenate([mean(v ** k) for k in moments])

    def spectrum(v):
        return np.log(mean(np.fft.fftshift(np.abs(np.fft.fftn(v)) ** 2)) + 1e-9)

    def gradient(v):
        g = np.sqrt(sum(d ** 2 for d in np.gradient(gaussian_filter(v, 1))))
        return mean((g - g.mean()) / g.std())

    make = {"sigma1": lambda v: profile(v, 1), "sigma0.5": lambda v: profile(v, 0.5),
            "sigma1.5": lambda v: profile(v, 1.5),
            "sigma0+1+2": lambda v: np.concatenate([profile(v, s) for s in (0, 1, 2)]),
            "sigma1 moments1-4": lambda v: profile(v, 1, (1, 2, 3, 4)),
            "sigma1 + power spectrum": lambda v: np.concatenate([profile(v, 1), spectrum(v)]),
            "sigma1 + gradient": lambda v: np.concatenate([profile(v, 1), gradient(v)])}[kind]
    return np.array([make(v) for v in volumes])


def template_features(volumes, maps, rotations: int, sigma: float, radius: float = 13.0) -> np.ndarray:
    size = volumes.shape[-1]
    centre = (size - 1) / 2
    grid = np.indices((size,) * 3).reshape(3, -1) - centre
    mask = np.sqrt((grid ** 2).sum(0)) <= radius
    k = np.fft.fftfreq(size)
    kz, _, kx = np.meshgrid(k, k, k, indexing="ij")
    wedge = (np.abs(kz) <= np.abs(kx) * np.tan(np.deg2rad(60)) + 1e-9).astype(float)

    def prep(v):
        v = gaussian_filter(v, sigma).ravel()[mask]
        v = v - v.mean()
        return v / np.linalg.norm(v)

    x = np.array([prep(v) for v in volumes])
    matrices = Rotation.random(rotations, random_state=0).as_matrix()
    columns = []
    for template in maps:
        rotated = []
        for matrix in matrices:
            t = map_coordinates(template, matrix @ grid + centre, order=1).reshape(template.shape)
            rotated.append(prep(np.real(np.fft.ifftn(np.fft.fftn(t) * wedge))))
        cc = x @ np.array(rotated).T
        columns.append(np.stack([cc.max(1), np.sort(cc, 1)[:, -10:].mean(1), cc.mean(1)], 1))
    return np.concatenate(columns, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "parakeet_dev")
    parser.add_argument("--rotations", type=int, default=300)
    args = parser.parse_args()
    boxes = np.load(args.data / "subtomos.npz")
    keep = boxes["tomogram_id"] == 1  # the training tomogram only
    volumes, labels = boxes["x"][keep].astype(np.float64), boxes["y"][keep]
    maps = np.load(args.data / "clean_maps.npz")["x"].astype(np.float64)
    split = RepeatedStratifiedKFold(n_splits=4, n_repeats=2, random_state=0)
    models = {f"logistic C={c}": lambda c=c: make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
              for c in (1, 0.1, 0.01)}
    models["rbf svm"] = lambda: make_pipeline(StandardScaler(), SVC(C=1))
    OUT.parent.mkdir(parents=True, exist_ok=True)

    def record(row):
        print(json.dumps(row), flush=True)
        with OUT.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    for kind in ("sigma1", "sigma0.5", "sigma1.5", "sigma0+1+2", "sigma1 moments1-4", "sigma1 + power spectrum",
                 "sigma1 + gradient"):
        x = features(volumes, kind)
        for name, model in models.items():
            record({"features": kind, "model": name, "mean": float(cross_val_score(model(), x, labels, cv=split).mean())})
    for sigma in (1.0, 1.5, 2.0):
        x = template_features(volumes, maps, args.rotations, sigma)
        for name, model in list(models.items())[:3]:
            record({"features": f"template matching sigma {sigma}, {args.rotations} rotations", "model": name,
                    "mean": float(cross_val_score(model(), x, labels, cv=split).mean()),
                    "argmax_of_max": float((x[:, ::3].argmax(1) == labels).mean())})


if __name__ == "__main__":
    main()

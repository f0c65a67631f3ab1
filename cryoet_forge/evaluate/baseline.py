"""A simple rotation-invariant baseline classifier: radial profiles + logistic regression.

Each volume is low-passed lightly (Gaussian, sigma 1 voxel), z-scored, and summarised by its
radial mean and radial mean-square profiles about the box centre (one value per integer
radius, up to the inscribed sphere). Those profiles do not change when the particle is
rotated about the centre, so the classifier needs no pose. A multinomial logistic regression
(scikit-learn, L2, features standardised on the training set) is trained on the real training
split and scored on the real test split.

It is the floor a learned classifier should clear: when CB3D trained on the same real split
does not beat it, the evaluation's classifier is the weak link, and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cryoet_forge.classify import LabelledVolumes

#: the Gaussian low-pass (voxels) applied before the profiles
SIGMA = 1.0


def radial_profiles(volumes: np.ndarray, sigma: float = SIGMA) -> np.ndarray:
    """(N, S, S, S) -> (N, 2 R) radial mean and mean-square profiles over the R non-empty shells
    of integer radius below S / 2."""
    volumes = np.asarray(volumes, dtype=np.float64)
    n, size = volumes.shape[0], volumes.shape[-1]
    centre = (size - 1) / 2.0
    grid = np.indices((size, size, size), dtype=np.float64) - centre
    shell = np.rint(np.sqrt((grid ** 2).sum(0))).astype(np.int64).ravel()
    n_shells = size // 2
    inside = shell < n_shells
    counts = np.bincount(shell[inside], minlength=n_shells).astype(np.float64)
    used = counts > 0  # an even box has no voxel at radius 0
    features = np.empty((n, 2 * int(used.sum())))
    for i in range(n):
        v = gaussian_filter(volumes[i], sigma) if sigma > 0 else volumes[i]
        v = (v - v.mean()) / (v.std() + 1e-12)
        flat = v.ravel()[inside]
        mean = np.bincount(shell[inside], weights=flat, minlength=n_shells)[used] / counts[used]
        square = np.bincount(shell[inside], weights=flat ** 2, minlength=n_shells)[used] / counts[used]
        features[i] = np.concatenate([mean, square])
    return features


@dataclass
class BaselineResult:
    accuracy: float
    per_class_accuracy: dict[str, float | None]
    train_accuracy: float
    sigma_voxels: float = SIGMA

    def to_dict(self) -> dict[str, Any]:
        return {"method": "radial-profile logistic regression", "sigma_voxels": self.sigma_voxels,
                "accuracy": self.accuracy, "per_class_accuracy": self.per_class_accuracy,
                "train_accuracy": self.train_accuracy}


def radial_baseline(train: LabelledVolumes, test: LabelledVolumes, seed: int = 0,
                    sigma: float = SIGMA) -> BaselineResult:
    """Train the baseline on ``train``, score it on ``test`` (labels in the same class order);
    ``sigma``: the low-pass (voxels) before the profiles, 0 = none."""
    x_train, x_test = radial_profiles(train.volumes, sigma), radial_profiles(test.volumes, sigma)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed))
    model.fit(x_train, train.labels)
    predicted = model.predict(x_test)
    per_class: dict[str, float | None] = {}
    for label, name in enumerate(test.class_names):
        mask = test.labels == label
        per_class[name] = float((predicted[mask] == label).mean()) if mask.any() else None
    return BaselineResult(float((predicted == test.labels).mean()), per_class,
                          float((model.predict(x_train) == train.labels).mean()), float(sigma))

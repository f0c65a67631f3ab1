"""The built-in downstream classifiers (kind ``classifier``): ``cb3d`` and ``radial``.

Each satisfies ``contracts.Classifier``: ``fit(train, seed)`` on ``LabelledVolumes``, then
``probabilities(volumes) -> (N, C)`` in ``train.class_names`` order. ``forge evaluate`` trains
every kind named in ``[downstream] classifiers`` on the real training split, the traditional
set and the GAN set, one per seed, and scores each on the real test split
(``downstream.score_sources``), so the GAN-vs-traditional question is answered per kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cryoet_forge.classify import ClassifierOptions, LabelledVolumes, train_cb3d
from cryoet_forge.errors import ConfigError
from cryoet_forge.evaluate.baseline import radial_profiles
from cryoet_forge.models.cb3d import run_inference
from cryoet_forge.options import VALIDATED_RULE


@dataclass
class RuleOptions(ClassifierOptions):
    """``ClassifierOptions`` with the validated rule's values as defaults (``options.VALIDATED_RULE``)."""

    channels: list = field(default_factory=lambda: list(VALIDATED_RULE["channels"]))
    convs_per_block: list = field(default_factory=lambda: list(VALIDATED_RULE["convs_per_block"]))
    fc_width: int = VALIDATED_RULE["fc_width"]
    dropout: float = VALIDATED_RULE["dropout"]
    epochs: int = VALIDATED_RULE["epochs"]
    batch_size: int = VALIDATED_RULE["batch_size"]
    lr: float = VALIDATED_RULE["lr"]
    validation_fraction: float = VALIDATED_RULE["validation_fraction"]
    patience: int = VALIDATED_RULE["patience"]


class CB3DClassifier:
    """CB3D, the paper's 3D CNN (options: the ``[classifier]`` table; defaults: the validated rule)."""

    def __init__(self, **options: Any) -> None:
        self.options: ClassifierOptions = RuleOptions(**options)
        self.model: Any = None

    def fit(self, train: LabelledVolumes, seed: int) -> None:
        self.model, _ = train_cb3d(train, self.options, seed=int(seed), label=f"CB3D on {train.source}, seed {seed}")

    def probabilities(self, volumes: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise ConfigError("classifier 'cb3d': probabilities() before fit()")
        return run_inference(self.model, volumes, self.options.normalize, device=self.options.device)[1]


class RadialClassifier:
    """Rotation-invariant radial profiles + logistic regression (the evaluation's baseline as a classifier).

    Each volume is low-passed (Gaussian, ``sigma`` voxels), z-scored and summarised by its radial
    mean and mean-square profiles (``baseline.radial_profiles``); a multinomial logistic
    regression (``C``, features standardised on the training set) learns them. Training is
    deterministic, so with ``bootstrap`` (the default) each seed fits a stratified bootstrap
    resample of the training set (same seed, same indices for every source of the same size):
    the seeds then spread as CB3D's do and a paired interval over seeds means something.
    """

    def __init__(self, sigma: float = 1.0, C: float = 1.0, bootstrap: bool = True) -> None:
        for key, value in (("sigma", sigma), ("C", C)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ConfigError(f"classifier 'radial': {key} must be a number, got {value!r}")
        if sigma < 0 or C <= 0:
            raise ConfigError(f"classifier 'radial': needs sigma >= 0 and C > 0, got sigma={sigma}, C={C}")
        self.sigma, self.C, self.bootstrap = float(sigma), float(C), bool(bootstrap)
        self.model: Any = None
        self.n_classes = 0

    def fit(self, train: LabelledVolumes, seed: int) -> None:
        index = stratified_bootstrap(train.labels, int(seed)) if self.bootstrap else np.arange(len(train))
        if len(np.unique(train.labels[index])) < 2:
            raise ConfigError(f"{train.source}: classifier 'radial' needs at least two classes to learn")
        self.n_classes = len(train.class_names)
        self.model = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=5000))
        self.model.fit(radial_profiles(train.volumes[index], self.sigma), train.labels[index])

    def features(self, volumes: np.ndarray) -> np.ndarray:
        """The radial profiles, standardised as the training set's (what the regression reads):
        (N, 2 R) features for FID and PRDC when ``metrics.inception`` chooses this classifier."""
        if self.model is None:
            raise ConfigError("classifier 'radial': features() before fit()")
        return self.model[0].transform(radial_profiles(np.asarray(volumes), self.sigma))

    def probabilities(self, volumes: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise ConfigError("classifier 'radial': probabilities() before fit()")
        known = self.model.predict_proba(radial_profiles(np.asarray(volumes), self.sigma))
        out = np.zeros((known.shape[0], self.n_classes))
        out[:, self.model.classes_] = known  # classes absent from training keep probability 0
        return out


def stratified_bootstrap(labels: np.ndarray, seed: int) -> np.ndarray:
    """Indices of a bootstrap resample drawn within each class (each class keeps its count)."""
    rng = np.random.default_rng(seed)
    parts = [rng.choice(np.flatnonzero(labels == label), size=int((labels == label).sum()), replace=True)
             for label in np.unique(labels)]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

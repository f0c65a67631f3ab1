"""The inception network of ``forge evaluate``: the classifier trained on the real training split
that embeds every set the same way (features for FID and PRDC, probabilities for IS), and the
quality scores computed from those embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from cryoet_forge.classify import LabelledVolumes, score_probabilities, validation_split
from cryoet_forge.evaluate.config import EvaluationConfig
from cryoet_forge.evaluate.downstream import CB3D_KIND
from cryoet_forge.io.embeddings import save_features
from cryoet_forge.metrics.bundle import PRDC_NAMES, compute_bundle
from cryoet_forge.models.cb3d import CB3D, run_inference
from cryoet_forge.registry import create


class InceptionNet:
    """The CB3D trained on real data, used to embed every set the same way (features + probabilities)."""

    kind = CB3D_KIND

    def __init__(self, model: CB3D, class_names: list[str], normalize: str, device: str, feature_dir: Path):
        self.model, self.class_names, self.normalize, self.device = model, class_names, normalize, device
        self.feature_dir = feature_dir

    def infer(self, volumes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(features (N, D), class probabilities (N, C))."""
        return run_inference(self.model, volumes, self.normalize, device=self.device)

    def embed(self, name: str, data: LabelledVolumes) -> tuple[np.ndarray, np.ndarray]:
        features, probs = self.infer(data.volumes)
        save_features(self.feature_dir / f"{name}.features.npy", features)  # atomic, like every output
        save_features(self.feature_dir / f"{name}.probabilities.npy", probs)
        return features, probs


class ClassifierInception(InceptionNet):
    """Another classifier kind as the inception network: one with ``features(volumes)``, fitted on
    the real training split with the data seed (refitted, not stored: the same data and seed give
    the same model, the ``Classifier`` contract)."""

    def __init__(self, kind: str, classifier: Any, class_names: list[str], feature_dir: Path):
        self.kind, self.classifier, self.class_names, self.feature_dir = kind, classifier, class_names, feature_dir

    def infer(self, volumes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(self.classifier.features(volumes), dtype=np.float32),
                np.asarray(self.classifier.probabilities(volumes), dtype=np.float32))


def inception_candidates(config: EvaluationConfig) -> list[str]:
    """The kinds ``metrics.inception`` may choose: cb3d and each downstream kind with ``features``."""
    if config.metrics.inception != "best":
        return [config.metrics.inception]
    kinds = [CB3D_KIND]
    for kind in config.downstream.classifiers:
        if kind != CB3D_KIND and callable(getattr(create("classifier", kind, **config.downstream.classifier_options.get(
                kind, {})), "features", None)):
            kinds.append(kind)
    return kinds


def fitted_classifier(config: EvaluationConfig, kind: str, train: LabelledVolumes) -> Any:
    """Classifier ``kind`` (its ``[downstream] classifier_options``) fitted on ``train`` with the data seed."""
    classifier = create("classifier", kind, **config.downstream.classifier_options.get(kind, {}))
    classifier.fit(train, config.data.seed)
    return classifier


def choose_inception(config: EvaluationConfig, real_train: LabelledVolumes, validation_fraction: float,
                     net: InceptionNet, validation: dict[str, float],
                     log: Callable[[str], None]) -> tuple[InceptionNet, str]:
    """The network that embeds every set for FID, PRDC and IS: each candidate kind
    (``inception_candidates``) scored on the real validation part (added to ``validation``, which
    holds cb3d's), and the network of the best one (``net``, the trained CB3D, on a tie), with its kind."""
    kinds = inception_candidates(config)
    if kinds != [CB3D_KIND]:
        fit_index, val_index = validation_split(real_train.labels, validation_fraction, config.data.seed)
        if len(val_index):
            part, held_out = real_train.subset(fit_index), real_train.subset(val_index)
            for kind in kinds:
                if kind != CB3D_KIND:
                    probs = fitted_classifier(config, kind, part).probabilities(held_out.volumes)
                    validation[kind] = score_probabilities(probs, held_out, real_train.class_names).accuracy
    chosen = (kinds[0] if len(kinds) == 1 else
              max(kinds, key=lambda k: (validation.get(k, -1.0), k == CB3D_KIND)))
    if chosen != CB3D_KIND:
        net = ClassifierInception(chosen, fitted_classifier(config, chosen, real_train), real_train.class_names,
                                  net.feature_dir)
        log(f"inception network: {chosen} (real validation part: "
            + ", ".join(f"{k} {v:.3f}" for k, v in validation.items()) + ")")
    return net, chosen


def quality_metrics(real_features: np.ndarray, features: np.ndarray, probs: np.ndarray,
                    config: EvaluationConfig) -> dict[str, Any]:
    """IS of ``probs``; FID and PRDC of ``features`` against the real test features (the metric
    bundle of ``forge metrics``, with the [metrics] settings)."""
    m = config.metrics
    bundle = compute_bundle(real_features, features, k=m.k, backend=m.backend, probabilities={"fake": probs},
                            is_splits=m.is_splits)
    # small sets have singular covariances (N < D): the engine notes it; keep its notes with the number
    assert bundle.fid is not None
    return {"is_mean": bundle.inception["fake"]["mean"], "is_std": bundle.inception["fake"]["std"],
            "fid": float(bundle.fid.fid), **{key: float(bundle.prdc[key]) for key in PRDC_NAMES},
            "fid_notes": sorted({message.split(" (")[0] for message in bundle.fid.warnings}),
            "n_real": bundle.n_real, "n_fake": bundle.n_fake, "dim": bundle.dim}

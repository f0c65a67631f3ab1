"""The GAN runs of the evaluation: training CryoETGAN variants, generating labelled volumes from
them, picking a checkpoint and scoring the GAN over its checkpoints."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cryoet_forge import progress
from cryoet_forge.classify import LabelledVolumes, train_cb3d
from cryoet_forge.config import load_config
from cryoet_forge.errors import ForgeError, InputError
from cryoet_forge.evaluate.config import EvaluationConfig, classifier_options, gan_data_overrides
from cryoet_forge.evaluate.datasets import EvaluationData
from cryoet_forge.evaluate.inception import InceptionNet, quality_metrics
from cryoet_forge.evaluate.report import extra_loss_terms
from cryoet_forge.generate import generate_from_maps
from cryoet_forge.metrics import compute_fid
from cryoet_forge.models.cb3d import METADATA_NAME, normalize_volumes, save_cb3d
from cryoet_forge.train import resume_config, train
from cryoet_forge.train.checkpoint import checkpoint_steps, list_checkpoints


class InMemoryVolumes(torch.utils.data.Dataset):
    """A ``LabelledVolumes`` as a dataset with the contract's item dicts (per-volume normalised)."""

    def __init__(self, data: LabelledVolumes, normalize: str = "minmax"):
        tensor = torch.from_numpy(np.ascontiguousarray(data.volumes))[:, None]
        self.volumes = normalize_volumes(tensor, normalize)
        self.labels = data.labels
        self.class_names = list(data.class_names)
        self.voxel_size = float(data.voxel_size)
        self.box = int(data.box)

    def __len__(self) -> int:
        return int(self.volumes.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        label = int(self.labels[index])
        return {"volume": self.volumes[index], "label": label, "class_name": self.class_names[label],
                "index": int(index)}


def train_config_for(config: EvaluationConfig, density_star: Path, real_star: Path,
                     variant: dict[str, Any] | None = None):
    """The TrainConfig of one GAN: the evaluation's [gan] config and overrides, the variant's on top.

    The data sections name the folders written for this evaluation, so the saved run
    configuration reproduces the run on its own.
    """
    overrides: dict[str, Any] = gan_data_overrides(density_star, real_star)
    overrides.update(config.gan.overrides)
    overrides.update(variant or {})
    return load_config(config.gan.config or None, overrides)


def train_gan(config: EvaluationConfig, run_dir: Path, density: LabelledVolumes, real_train: LabelledVolumes,
              density_star: Path, real_star: Path, variant: dict[str, Any] | None = None,
              log: Callable[[str], None] | None = None, resume: bool = False) -> Path:
    """Train one GAN (D = posed clean maps, S = the real training split) into ``run_dir``.

    A ``run_dir`` that already holds checkpoints is an error, unless ``resume``: then a run
    of the same configuration is continued from its newest intact checkpoint (bit-exact, as
    ``forge train --resume``) and a run of another configuration is removed and trained again.
    """
    cfg = train_config_for(config, density_star, real_star, variant)
    if cfg.loss.semantic_weight > 0 and not cfg.loss.semantic_classifier:
        cfg.loss.semantic_classifier = str(domain_classifier(config, density, Path(run_dir).parent / "semantic-cb3d",
                                                             log))
    # keep every checkpoint of the run so that the metric curves can score them
    checkpoint_every = cfg.log.checkpoint_every or cfg.train.steps
    cfg.log.keep_checkpoints = max(cfg.log.keep_checkpoints, cfg.train.steps // max(checkpoint_every, 1) + 1)
    if log is not None:
        log(f"training CryoETGAN in {run_dir} ({cfg.train.steps} steps, loss {cfg.loss.adversarial}, "
            f"critic {cfg.model.critic}, density noise std {cfg.data.density_noise_std:g})")
    datasets = (InMemoryVolumes(density, "minmax"), InMemoryVolumes(real_train, "minmax"))
    return Path(train(cfg, run_dir, datasets=datasets, resume=_continue_run(cfg, Path(run_dir), resume, log)))


def _continue_run(cfg, run_dir: Path, resume: bool, log: Callable[[str], None] | None) -> bool:
    """Whether ``run_dir`` holds a run of ``cfg`` to continue; one of another configuration is removed."""
    if not list_checkpoints(run_dir):
        return False
    if not resume:
        raise InputError(f"{run_dir}: already holds checkpoints of an earlier evaluation; rerun with --resume "
                         "to reuse its finished stages, or pick a new --out")
    try:
        same = resume_config(run_dir).to_dict() == cfg.to_dict()
    except ForgeError:
        same = False
    if same:
        if log is not None:
            log(f"continuing the GAN run {run_dir} from its newest checkpoint")
        return True
    if log is not None:
        log(f"{run_dir}: trained with another configuration; training it again")
    shutil.rmtree(run_dir)
    return False


def domain_classifier(config: EvaluationConfig, density: LabelledVolumes, folder: Path,
                      log: Callable[[str], None] | None = None) -> Path:
    """The CB3D of the semantic-consistency loss: trained on the GAN's labelled domain D with the
    evaluation's classifier rule, saved in ``folder``; reused (by the ablations' runs) only when
    it was trained on the same volumes, labels and options."""
    options = classifier_options(config)
    h = hashlib.blake2b(digest_size=20)
    for array in (density.volumes, density.labels):
        h.update(np.ascontiguousarray(array).data.cast("B"))
    h.update(json.dumps([options.to_dict(), int(config.data.seed)], sort_keys=True).encode())
    digest = h.hexdigest()
    try:
        if json.loads((folder / METADATA_NAME).read_text())["training"]["digest"] == digest:
            return folder
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if log is not None:
        log(f"training the domain-D classifier of the semantic-consistency loss ({len(density)} volumes)")
    model, _ = train_cb3d(density, options, seed=config.data.seed, label="domain-D CB3D (semantic loss)")
    save_cb3d(model, folder, density.class_names, normalize=options.normalize,
              extra={"voxel_size": density.voxel_size,
                     "training": {"data": "domain D of the GAN", "digest": digest}})
    return folder


def run_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of each checkpoint of a GAN run, oldest first."""
    return checkpoint_steps(Path(run_dir))


def generate_labelled(run_dir: Path, maps: LabelledVolumes, seed: int, source: str,
                      checkpoint: Path | None = None) -> LabelledVolumes:
    """One generated subtomogram per posed clean map, labels carried over.

    ``checkpoint`` picks an intermediate checkpoint of the run (for curves over training);
    by default the run's latest, through ``cryoet_forge.generate.generate_from_maps``.
    """
    normalized = normalize_volumes(torch.from_numpy(np.ascontiguousarray(maps.volumes)), "minmax").numpy()
    if checkpoint is None:
        volumes = generate_from_maps(run_dir, normalized, n_per_map=1, seed=seed)
    else:
        volumes = generate_from_checkpoint(run_dir, checkpoint, normalized, seed)
    return LabelledVolumes(np.asarray(volumes, dtype=np.float32), maps.labels, maps.class_names,
                           maps.voxel_size, source)


def generate_from_checkpoint(run_dir: Path, checkpoint: Path, maps: np.ndarray, seed: int,
                             batch_size: int = 8) -> np.ndarray:
    """D -> S generator of one checkpoint folder applied to (B, S, S, S) maps in [-1, 1] (taken as
    they are), with the noise draws of ``generate_from_maps``: the last checkpoint reproduces the
    final scores."""
    return generate_from_maps(run_dir, maps, n_per_map=1, seed=seed, batch_size=batch_size, normalize="none",
                              checkpoint=checkpoint)


def select_and_generate(config: EvaluationConfig, run_dir: Path, data: EvaluationData, inception: InceptionNet,
                        train_features: np.ndarray, source: str,
                        curve_cache: dict[Path, tuple[np.ndarray, np.ndarray]] | None = None,
                        ) -> tuple[LabelledVolumes, dict[str, Any]]:
    """Generated volumes from the checkpoint the config's rule picks, and a record of the choice.

    ``curve_cache``, when given, receives (features, probabilities) of the checkpoints that
    ``metric_curves`` scores, keyed by checkpoint folder.
    """
    checkpoints = run_checkpoints(run_dir)
    if config.gan.select_checkpoint == "last" or len(checkpoints) < 2:
        step, path = checkpoints[-1] if checkpoints else (None, None)
        generated = generate_labelled(run_dir, data.density_generate, seed=config.data.seed, source=source)
        return generated, {"rule": "last", "step": step, "checkpoint": None if path is None else str(path)}

    fid_train: dict[str, float] = {}
    best: tuple[float, int, LabelledVolumes, Path] | None = None
    on_curves = {checkpoints[i][1] for i in curve_picks(config, len(checkpoints))}
    with progress.stage(f"{source}: checkpoint selection (FID to the real training split)", len(checkpoints),
                        "checkpoints") as bar:
        for step, path in checkpoints:
            generated = generate_labelled(run_dir, data.density_generate, seed=config.data.seed, source=source,
                                          checkpoint=path)
            features, probs = inception.infer(generated.volumes)
            if curve_cache is not None and path in on_curves:
                curve_cache[path] = (features, probs)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fid = float(compute_fid(train_features, features))
            fid_train[str(step)] = fid
            if best is None or fid < best[0]:
                best = (fid, step, generated, path)
            bar.advance(info=f"step {step}: FID {fid:.3g}")
    assert best is not None  # at least two checkpoints here
    return best[2], {"rule": "best-fid-train", "step": best[1], "checkpoint": str(best[3]), "fid_train": fid_train}


def gan_summary(run_dir: Path) -> dict[str, Any]:
    """The settings of a trained run that a reader of the report needs (from its saved config)."""
    cfg = resume_config(run_dir)
    steps = [step for step, _ in run_checkpoints(run_dir)]
    return {"steps": steps[-1] if steps else 0, "batch_size": cfg.train.batch_size, "loss": cfg.loss.adversarial,
            "critic": cfg.model.critic, "generator": cfg.model.generator,
            "generator_options": dict(cfg.model.generator_options), "critic_options": dict(cfg.model.critic_options),
            "extra_losses": extra_loss_terms(cfg.loss),
            "density_noise_std": cfg.data.density_noise_std, "n_critic": cfg.train.n_critic}


def curve_picks(config: EvaluationConfig, n_checkpoints: int) -> list[int]:
    """Indices of the ``gan.curve_points`` evenly spaced checkpoints (the first and last included)."""
    n = min(config.gan.curve_points, n_checkpoints)
    return sorted({int(round(i)) for i in np.linspace(0, n_checkpoints - 1, n)})


def metric_curves(config: EvaluationConfig, run_dir: Path, data: EvaluationData, inception: InceptionNet,
                  real_features: np.ndarray,
                  cache: dict[Path, tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, list]:
    """IS/FID/PRDC of the GAN at evenly spaced checkpoints of its run (the last included).

    ``cache``: (features, probabilities) already computed for some checkpoint folders.
    """
    checkpoints = run_checkpoints(run_dir)
    curves: dict[str, list] = {"steps": [], "is_mean": [], "fid": [], "precision": [], "recall": [],
                               "density": [], "coverage": []}
    if not checkpoints:
        return curves
    for index in curve_picks(config, len(checkpoints)):
        step, path = checkpoints[index]
        if cache is not None and path in cache:
            features, probs = cache[path]
        else:
            generated = generate_labelled(run_dir, data.density_generate, seed=config.data.seed,
                                          source=f"step {step}", checkpoint=path)
            features, probs = inception.infer(generated.volumes)
        scores = quality_metrics(real_features, features, probs, config)
        curves["steps"].append(step)
        for key in ("is_mean", "fid", "precision", "recall", "density", "coverage"):
            curves[key].append(scores[key])
    return curves

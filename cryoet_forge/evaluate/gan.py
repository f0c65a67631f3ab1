"""Training CryoETGAN variants for the evaluation and generating labelled volumes from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cryoet_forge.classify import LabelledVolumes
from cryoet_forge.errors import ForgeError
from cryoet_forge.evaluate.config import EvaluationConfig
from cryoet_forge.models.cb3d import normalize_volumes


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
    from cryoet_forge.config import load_config
    from cryoet_forge.evaluate.config import gan_data_overrides

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
    from cryoet_forge.train import train

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
    import shutil

    from cryoet_forge.errors import InputError
    from cryoet_forge.train import resume_config
    from cryoet_forge.train.checkpoint import list_checkpoints

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
    import hashlib
    import json

    from cryoet_forge.classify import train_cb3d
    from cryoet_forge.evaluate.pipeline import classifier_options
    from cryoet_forge.models.cb3d import METADATA_NAME, save_cb3d

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
    from cryoet_forge.train.checkpoint import STEP_DIR, list_checkpoints

    return [(int(m.group(1)), p) for p in list_checkpoints(Path(run_dir)) if (m := STEP_DIR.match(p.name))]


def generate_labelled(run_dir: Path, maps: LabelledVolumes, seed: int, source: str,
                      checkpoint: Path | None = None) -> LabelledVolumes:
    """One generated subtomogram per posed clean map, labels carried over.

    ``checkpoint`` picks an intermediate checkpoint of the run (for curves over training);
    by default the run's latest, through ``cryoet_forge.generate.generate_from_maps``.
    """
    normalized = normalize_volumes(torch.from_numpy(np.ascontiguousarray(maps.volumes)), "minmax").numpy()
    if checkpoint is None:
        from cryoet_forge.generate import generate_from_maps

        volumes = generate_from_maps(run_dir, normalized, n_per_map=1, seed=seed)
    else:
        volumes = generate_from_checkpoint(run_dir, checkpoint, normalized, seed)
    return LabelledVolumes(np.asarray(volumes, dtype=np.float32), maps.labels, maps.class_names,
                           maps.voxel_size, source)


@torch.no_grad()
def generate_from_checkpoint(run_dir: Path, checkpoint: Path, maps: np.ndarray, seed: int,
                             batch_size: int = 8) -> np.ndarray:
    """D -> S generator of one checkpoint folder applied to (B, S, S, S) maps in [-1, 1]."""
    from cryoet_forge.contracts import noise_shape, run_generator, takes_noise
    from cryoet_forge.generate import load_generator

    generator, _ = load_generator(run_dir, checkpoint=checkpoint)
    # the same noise draws as generate_from_maps, so the last checkpoint reproduces the final scores
    noise_gen = torch.Generator().manual_seed(int(seed))
    out = []
    from cryoet_forge import progress

    with torch.random.fork_rng(devices=[]), progress.stage("generate", maps.shape[0], "volumes") as bar:
        torch.manual_seed(int(seed))
        for begin in range(0, maps.shape[0], batch_size):
            x = torch.from_numpy(maps[begin:begin + batch_size])[:, None].float()
            noise = None
            if takes_noise(generator):
                noise = torch.randn(noise_shape(generator, tuple(x.shape)), generator=noise_gen)
            out.append(run_generator(generator, x, noise)[:, 0].float().numpy())
            bar.advance(x.shape[0])
    return np.concatenate(out)

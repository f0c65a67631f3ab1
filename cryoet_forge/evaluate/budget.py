"""Fit an evaluation to a time budget: ``forge quickstart|evaluate --budget-minutes N``.

The run is measured on this machine before it starts (a few GAN steps, two CB3D epochs, a
simulation chunk, generation and inference, all at the configured box and widths: about
10-20 s), and its time is predicted as

    fixed    = simulation of every set + checkpoint selection (generate + embed per checkpoint)
    scalable = GAN steps x s/step + classifier epochs x volume-epochs x s/volume-epoch
    total    = overhead + fixed + scalable

where the downstream classifiers, trained side by side in single-threaded worker processes
(``[downstream] workers``), count their rounds (ceil(classifiers / workers)) at the measured
single-thread rate, plus the pool's start.

GAN steps and classifier epochs (the scalable part) are scaled by one factor so that the
prediction meets the budget; the checkpoint interval follows the steps, so the number of
checkpoints (and the selection's cost) stays the same. When the fixed part alone would take
more than half of the budget, the set sizes (particles per class) are scaled down as well.
Limits keep the run meaningful: at least 50 GAN steps, 4 classifier epochs and 8 particles
per class; at most 8x the configured GAN steps and 3x the epochs. The seeds, the classes, the
box and the networks are never changed. What was scaled, the measured costs and the
prediction go into ``results.json`` (``budget``) and the report.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cryoet_forge.classify import LabelledVolumes, train_cb3d
from cryoet_forge.contracts import noise_shape, run_generator, takes_noise
from cryoet_forge.errors import ConfigError
from cryoet_forge.evaluate.config import EvaluationConfig, classifier_options, traditional_acquisition
from cryoet_forge.evaluate.datasets import _particle_variants, class_templates, resolve_maps_dir, simulate_labelled
from cryoet_forge.evaluate.downstream import resolve_workers
from cryoet_forge.evaluate.gan import InMemoryVolumes, train_config_for
from cryoet_forge.models.cb3d import CB3D, run_inference
from cryoet_forge.train.distributed import DistContext, resolve_device
from cryoet_forge.train.loop import Trainer

MIN_GAN_STEPS = 50
MIN_EPOCHS = 4
MIN_PER_CLASS = 8
MAX_STEP_FACTOR = 8.0
MAX_EPOCH_FACTOR = 3.0
#: start-up, metrics, figures, report (measured: about 10 s for the quickstart on 2 cores)
OVERHEAD_S = 12.0
#: starting a pool of downstream worker processes (each imports torch and forge: about 4 s on 2 cores)
POOL_START_S = 4.0


@dataclasses.dataclass
class Costs:
    """Seconds per unit of work on this machine, at the configured sizes."""

    gan_step_s: float
    classifier_volume_epoch_s: float
    experimental_volume_s: float
    traditional_volume_s: float
    generate_volume_s: float
    embed_volume_s: float
    calibration_s: float = 0.0
    #: a CB3D volume-epoch with one thread (the downstream classifiers in worker processes);
    #: 0 = not measured, taken as the multithreaded rate
    classifier_volume_epoch_1thread_s: float = 0.0


def _random_set(n: int, box: int, n_classes: int, voxel_size: float, seed: int):
    rng = np.random.default_rng(seed)
    volumes = rng.standard_normal((n, box, box, box)).astype(np.float32)
    labels = np.arange(n) % n_classes
    return LabelledVolumes(volumes, labels, [f"c{i}" for i in range(n_classes)], voxel_size, "calibration")


def measure_costs(config: EvaluationConfig) -> Costs:
    """Time each kind of work once at the configured sizes (see the module docstring)."""
    started = time.perf_counter()
    d = config.data
    n_classes = len(d.classes)
    box, voxel = d.box, d.voxel_size
    with torch.random.fork_rng(devices=[]):
        # GAN: 1 warm-up step, then 3 timed steps of the real training step
        cfg = train_config_for(config, Path("calibration"), Path("calibration"))
        volumes = _random_set(max(8, 2 * cfg.train.batch_size), box, n_classes, voxel, 0)
        device = resolve_device(cfg.train.device)
        trainer = Trainer(cfg, Path("calibration-run"), DistContext(device=device), resume=False,
                          datasets=(InMemoryVolumes(volumes), InMemoryVolumes(volumes)))
        trainer.train_step()
        tic = time.perf_counter()
        for _ in range(3):
            trainer.train_step()
        gan_step_s = (time.perf_counter() - tic) / 3

        # generation: the D -> S generator in eval mode, batches of 8
        generator = trainer.nets["g_ds"].eval()
        x = torch.zeros(8, 1, box, box, box, device=device)
        with torch.no_grad():
            z = torch.randn(noise_shape(generator, tuple(x.shape)), device=device) if takes_noise(generator) else None
            run_generator(generator, x, z)
            tic = time.perf_counter()
            run_generator(generator, x, z)
            generate_volume_s = (time.perf_counter() - tic) / 8
        del trainer

        # classifier: two epochs on 32 volumes, the second timed (the first pays for warm-up and
        # memory-format conversion, which a real run pays once, not every epoch)
        options = dataclasses.replace(classifier_options(config), epochs=2)
        small = _random_set(32, box, n_classes, voxel, 1)

        def volume_epoch_s(threads: int, label: str) -> tuple[float, CB3D]:
            """Seconds per volume of the second of two CB3D epochs on ``threads`` threads, and the model."""
            stamps: list[float] = []
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                trained, _ = train_cb3d(small, options, seed=0, label=label,
                                        progress=lambda epoch, loss, accuracy: stamps.append(time.perf_counter()))
            finally:
                torch.set_num_threads(before)
            return (stamps[1] - stamps[0]) / len(small), trained

        classifier_volume_epoch_s, model = volume_epoch_s(torch.get_num_threads(), "calibration: CB3D epochs")
        # the same with one thread, as each downstream worker process trains
        classifier_volume_epoch_1thread_s, _ = volume_epoch_s(1, "calibration: CB3D epochs, one thread")
        tic = time.perf_counter()
        run_inference(model, small.volumes, options.normalize, device=options.device)
        embed_volume_s = (time.perf_counter() - tic) / len(small)

        # simulation: one chunk of each simulator on the class maps
        names = [str(c) for c in d.classes]
        templates = class_templates(names, resolve_maps_dir(d.maps_dir), box, voxel, d.assembly)
        per_class = max(1, 8 // n_classes)

        def per_volume(simulator: str, options: dict, maps) -> float:
            tic = time.perf_counter()
            simulate_labelled(simulator, options, maps, names, per_class, voxel, 0, "calibration")
            return (time.perf_counter() - tic) / (per_class * n_classes)

        experimental_volume_s = 0.0
        if d.source == "embedded":  # per-particle shape variants, as the real run makes them
            variants = _particle_variants(templates, box, voxel, d.vary_shapes, d.seed)
            experimental_volume_s = per_volume(config.experimental.simulator, config.experimental.options,
                                               lambda name, i: variants(name, i, 0))

        traditional_volume_s = per_volume(config.traditional.simulator,
                                          traditional_acquisition(config.traditional)[0], templates)
    return Costs(gan_step_s, classifier_volume_epoch_s, experimental_volume_s, traditional_volume_s,
                 generate_volume_s, embed_volume_s, time.perf_counter() - started,
                 classifier_volume_epoch_1thread_s)


def _gan_steps(config: EvaluationConfig) -> tuple[int, int]:
    overrides = config.gan.overrides
    return int(overrides.get("train.steps", 1000)), int(overrides.get("log.checkpoint_every", 100))


def predict(config: EvaluationConfig, costs: Costs) -> dict[str, float]:
    """Predicted seconds of each part of ``config``'s evaluation on the measured machine."""
    d, n_classes = config.data, len(config.data.classes)
    seeds = len(config.downstream.seeds)
    n_train, n_test = d.n_train_per_class * n_classes, d.n_test_per_class * n_classes
    n_density, n_down = d.n_density_per_class * n_classes, config.downstream.n_per_class * n_classes
    steps, every = _gan_steps(config)
    n_checkpoints = max(1, steps // max(every, 1))
    ablation_runs = len(config.ablations.noise_std) + int(config.ablations.lsgan) + int(config.ablations.patchgan)
    gan_runs = (0 if config.gan.run else 1) + ablation_runs
    simulation = ((n_train + n_test) * costs.experimental_volume_s
                  + (n_density + 2 * n_down) * costs.traditional_volume_s)
    selection = (gan_runs * n_checkpoints * n_down * (costs.generate_volume_s + costs.embed_volume_s)
                 + (n_test + n_train + 2 * n_down) * costs.embed_volume_s)
    gan = gan_runs * steps * costs.gan_step_s
    epochs = config.classifier.epochs
    inception = epochs * costs.classifier_volume_epoch_s * n_train
    downstream = _downstream_s(config, costs, 2 * seeds) + ablation_runs * _downstream_s(
        config, costs, len(config.ablations.seeds))
    classifier = inception + downstream
    uncertainty = n_classes * config.uncertainty.samples * costs.generate_volume_s if config.uncertainty.enabled else 0
    parts = {"overhead": OVERHEAD_S, "simulation": simulation, "selection": selection + uncertainty,
             "gan_training": gan, "classifiers": classifier}
    parts["total"] = sum(parts.values())
    return parts


def _downstream_s(config: EvaluationConfig, costs: Costs, n_classifiers: int) -> float:
    """Predicted seconds of one pool of ``n_classifiers`` downstream classifiers (or of them in this process)."""
    volume_epochs = config.classifier.epochs * config.downstream.n_per_class * len(config.data.classes)
    workers = resolve_workers(config.downstream.workers, n_classifiers, classifier_options(config).device)
    if workers == 0:
        return n_classifiers * volume_epochs * costs.classifier_volume_epoch_s
    rate = costs.classifier_volume_epoch_1thread_s or costs.classifier_volume_epoch_s
    return POOL_START_S + -(-n_classifiers // workers) * volume_epochs * rate


def _scaled_config(config: EvaluationConfig, step_factor: float, epoch_factor: float,
                   size_factor: float) -> EvaluationConfig:
    out = copy.deepcopy(config)
    steps, every = _gan_steps(config)
    n_checkpoints = max(1, steps // max(every, 1))
    new_steps = max(MIN_GAN_STEPS, int(round(steps * step_factor)))
    out.gan.overrides["train.steps"] = new_steps
    out.gan.overrides["log.checkpoint_every"] = max(1, new_steps // n_checkpoints)
    if "log.image_every" in out.gan.overrides:
        out.gan.overrides["log.image_every"] = out.gan.overrides["log.checkpoint_every"]
    out.classifier.epochs = max(MIN_EPOCHS, int(round(config.classifier.epochs * epoch_factor)))
    if size_factor < 1:
        for key in ("n_train_per_class", "n_test_per_class", "n_density_per_class"):
            setattr(out.data, key, max(MIN_PER_CLASS, int(round(getattr(config.data, key) * size_factor))))
        out.downstream.n_per_class = max(MIN_PER_CLASS, int(round(config.downstream.n_per_class * size_factor)))
    return out


def fit_to_budget(config: EvaluationConfig, minutes: float, costs: Costs | None = None,
                  log: Callable[[str], None] | None = None) -> tuple[EvaluationConfig, dict[str, Any]]:
    """``config`` scaled to run in about ``minutes`` here; and the record for the report."""
    if not minutes > 0:
        raise ConfigError(f"--budget-minutes must be > 0, got {minutes}")
    if costs is None:
        if log is not None:
            log("measuring this machine for the time budget (a few GAN steps, two CB3D epochs, a simulation chunk)")
        costs = measure_costs(config)
    budget = minutes * 60.0 - costs.calibration_s
    base = predict(config, costs)
    size_factor = 1.0
    fixed = base["overhead"] + base["simulation"] + base["selection"]
    if fixed > 0.5 * budget and fixed > 0:
        # the simulation and selection scale with the set sizes; give them half the budget
        size_factor = max(0.1, (0.5 * budget - base["overhead"]) / max(fixed - base["overhead"], 1e-9))
        size_factor = min(1.0, size_factor)
    sized = _scaled_config(config, 1.0, 1.0, size_factor)
    sized_parts = predict(sized, costs)
    fixed = sized_parts["overhead"] + sized_parts["simulation"] + sized_parts["selection"]
    scalable = sized_parts["gan_training"] + sized_parts["classifiers"]
    factor = max(0.0, budget - fixed) / max(scalable, 1e-9)
    step_factor = min(factor, MAX_STEP_FACTOR)
    epoch_factor = min(factor, MAX_EPOCH_FACTOR)
    scaled = _scaled_config(config, step_factor, epoch_factor, size_factor)
    prediction = predict(scaled, costs)
    changes = {}
    for key, old, new in (
            ("gan.train.steps", _gan_steps(config)[0], _gan_steps(scaled)[0]),
            ("gan.log.checkpoint_every", _gan_steps(config)[1], _gan_steps(scaled)[1]),
            ("classifier.epochs", config.classifier.epochs, scaled.classifier.epochs),
            ("data.n_train_per_class", config.data.n_train_per_class, scaled.data.n_train_per_class),
            ("data.n_test_per_class", config.data.n_test_per_class, scaled.data.n_test_per_class),
            ("data.n_density_per_class", config.data.n_density_per_class, scaled.data.n_density_per_class),
            ("downstream.n_per_class", config.downstream.n_per_class, scaled.downstream.n_per_class)):
        if old != new:
            changes[key] = {"from": old, "to": new}
    record = {"minutes": float(minutes), "costs": dataclasses.asdict(costs),
              "predicted_s": {k: round(v, 1) for k, v in prediction.items()},
              "predicted_unscaled_s": round(base["total"], 1), "scaled": changes,
              "limits": {"min_gan_steps": MIN_GAN_STEPS, "min_epochs": MIN_EPOCHS,
                         "min_per_class": MIN_PER_CLASS, "max_step_factor": MAX_STEP_FACTOR,
                         "max_epoch_factor": MAX_EPOCH_FACTOR}}
    if prediction["total"] + costs.calibration_s > minutes * 60.0 * 1.1:
        record["warning"] = (f"the smallest run allowed by the limits is predicted to take "
                             f"{(prediction['total'] + costs.calibration_s) / 60:.1f} min, over the budget")
    if log is not None:
        shown = ", ".join(f"{k} {v['from']} -> {v['to']}" for k, v in changes.items()) or "nothing"
        log(f"time budget {minutes:g} min: scaled {shown}; predicted "
            f"{(prediction['total'] + costs.calibration_s) / 60:.1f} min")
        if "warning" in record:
            log(f"warning: {record['warning']}")
    return scaled, record

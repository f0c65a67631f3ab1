"""The CryoETGAN training loop: two generators, two critics, unpaired domains D and S.

One training step = ``n_critic`` critic updates (each on a fresh pair of batches: density
maps d from D, subtomograms s from S) followed by one generator update on the last pair:

- critics:   L_C = adv.critic(C_S(s), C_S(G_ds(d))) + adv.critic(C_D(d), C_D(G_sd(s))) [+ GP]
- generators: L_G = adv.gen(C_S(G_ds(d))) + adv.gen(C_D(G_sd(s)))
                    + lambda * (|d - G_sd(G_ds(d))|_1 + |s - G_ds(G_sd(s))|_1)

Zero-mean Gaussian noise of std ``data.density_noise_std`` is added to every density map
drawn from D. The D -> S generator gets a fresh Gaussian noise volume per sample.

Both generators form one module (``CyclePair``) so that under DistributedDataParallel it
runs exactly one forward per backward; each critic scores its real, fake (and interpolated)
batches in one batched forward, and the two critics do forward + backward one after the
other, which halves the peak memory of the critic update. Inside the generator update the
critics are used without DDP and with frozen parameters.

The parts: ``train/builder.py`` turns the configuration into data, networks, losses and
optimisers; ``train/steps.py`` holds the critic and generator updates; ``train/checkpoint.py``
the checkpoint manager; ``train/callbacks.py`` logging, TensorBoard, progress, montages, the
finiteness check and plugins' callbacks. Here: the ``Trainer`` (the state of a run and its
step), ``fit`` (the loop) and ``train`` (a run folder from a configuration).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from cryoet_forge import progress
from cryoet_forge.config import TrainConfig, load_config, save_config
from cryoet_forge.errors import InputError
from cryoet_forge.io.atomic import write_json_atomic
from cryoet_forge.losses import CycleL1Loss
from cryoet_forge.train.builder import (
    NETWORKS,
    POLARITY_SAMPLE,
    CriticPass,
    CyclePair,
    InvertedVolumes,
    build_datasets,
    build_losses,
    build_models,
    build_networks,
    build_optimizers,
    build_semantic_loss,
    check_domains,
    check_networks,
    check_polarity,
    configure_backends,
    factory_parameters,
    make_optimizer,
    prepare_data,
    volume_shape,
    wrap_networks,
)
from cryoet_forge.train.callbacks import (
    CallbackList,
    TrainState,
    check_finite,
    default_callbacks,
    plugin_callbacks,
)
from cryoet_forge.train.callbacks import tensorboard_writer as _tensorboard_writer
from cryoet_forge.train.checkpoint import (
    Checkpoint,
    CheckpointManager,
    capture_rng,
    error_text,
    restore_rng,
    sub_state_dict,
)
from cryoet_forge.train.distributed import (
    DistContext,
    ResumableBatchSampler,
    all_gather_objects,
    any_across_ranks,
    init_distributed,
    shutdown,
)
from cryoet_forge.train.precision import Precision
from cryoet_forge.train.steps import (
    GeneratorLosses,
    GeneratorNoise,
    GlobalNoise,
    average_gradients,
    critic_step,
    dropout_rng_state,
    generator_step,
    lr_factor,
    set_dropout_rng_state,
    set_learning_rates,
)

__all__ = [  # what other modules import from here (most of it lives in builder, steps, checkpoint)
    "NETWORKS", "POLARITY_SAMPLE", "RUN_CONFIG", "RUN_DATA", "CriticPass", "CyclePair", "InvertedVolumes",
    "Trainer", "build_datasets", "build_losses", "build_networks", "capture_rng", "check_domains",
    "check_networks", "check_polarity", "factory_parameters", "fit", "lr_factor", "make_optimizer",
    "restore_rng", "resume_config", "train", "volume_shape", "write_run_metadata", "_tensorboard_writer",
    "_check_finite",
]

RUN_CONFIG = "config.toml"
RUN_DATA = "data.json"
_check_finite = check_finite


class Trainer:
    """The state of one training run and its step: data streams, networks, optimisers, noise, step
    count; built from the configuration by ``train/builder.py``, resumed from and saved to the run
    folder through its ``CheckpointManager`` (``checkpoints``)."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, ctx: DistContext, resume: bool, datasets=None):
        self.cfg, self.run_dir, self.ctx, self.device = cfg, Path(run_dir), ctx, ctx.device
        self.adversarial, self.cycle = build_losses(cfg)
        configure_backends(cfg, self.device, self.adversarial)
        self.amp = Precision(cfg.train.precision, self.device)
        self.precision, self.autocast_dtype = self.amp.name, self.amp.dtype
        # data first: a size mismatch must fail before any network is built
        self.datasets, self.box = prepare_data(cfg, ctx, datasets)
        self.checkpoints = CheckpointManager(self.run_dir, cfg.log.keep_checkpoints, ctx)
        # (the newest intact checkpoint: a corrupt newer one is skipped, and said so, here)
        resume_from = self.checkpoints.load_newest_intact() if resume else None
        # a resumed run keeps the memory formats it started with (bit-exact)
        self.models = m = build_models(cfg, ctx, self.box, self.amp,
                                       resume_from.state.get("memory_formats") if resume_from else None)
        self.nets, self.critics, self.regularizers = m.nets, m.critics, m.regularizers
        self.memory_formats, self.memory_format = m.memory_formats, m.memory_format
        self.critic_params = list(self.critics.parameters())
        self.optimizers = o = build_optimizers(cfg, m, self.device, self.amp)
        self.g_opt, self.c_opt, self.g_scaler, self.c_scaler = o.generator, o.critic, o.g_scaler, o.c_scaler
        identity = CycleL1Loss(cfg.loss.identity_weight) if cfg.loss.identity_weight > 0 else None
        self.generator_losses = GeneratorLosses(self.cycle, identity, build_semantic_loss(cfg, self.device, self.box),
                                                self.regularizers)
        self.noise = GlobalNoise(cfg.train.seed + 17, self.device, ctx.rank, ctx.world_size)
        self.step, self.positions = 0, {"density": 0, "subtomograms": 0}
        rng = self._load(resume_from) if resume_from is not None else None
        self.wrapped = wrap_networks(m, ctx, cfg.train.compile)
        self.iters = {name: self._stream(name, i) for i, name in enumerate(self.datasets)}
        self.last_images: tuple[torch.Tensor, ...] = ()
        if rng is not None:
            try:
                restore_rng(rng)
            except (KeyError, RuntimeError, ValueError, TypeError) as exc:
                raise InputError(f"{self.last_good}: checkpoint RNG state is unusable ({error_text(exc)})") from None
        else:
            torch.manual_seed(cfg.train.seed + 1000 * (ctx.rank + 1))
            np.random.seed(cfg.train.seed + ctx.rank)
            random.seed(cfg.train.seed + ctx.rank)

    @property
    def last_good(self) -> Path | None:
        """The newest checkpoint this run wrote or resumed from."""
        return self.checkpoints.last_good

    # -- data and noise ----------------------------------------------------------------------
    def _stream(self, name: str, index: int):
        dataset = self.datasets[name]
        sampler = ResumableBatchSampler(len(dataset), self.cfg.train.batch_size,
                                        seed=self.cfg.train.seed * 2 + index, rank=self.ctx.rank,
                                        world_size=self.ctx.world_size, start=self.positions[name])
        workers = self.cfg.data.num_workers
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, num_workers=workers,
            pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
            # a private generator: creating the iterator must not advance the global RNG
            generator=torch.Generator().manual_seed(self.cfg.train.seed),
        )
        return iter(loader)

    def _next(self, name: str) -> torch.Tensor:
        batch = next(self.iters[name])
        self.positions[name] += 1
        volume = batch["volume"] if isinstance(batch, dict) else batch
        return volume.to(self.device, non_blocking=True).float().contiguous(memory_format=self.memory_format)

    def _pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        d = self._next("density")
        s = self._next("subtomograms")
        std = self.cfg.data.density_noise_std
        if std > 0:
            d = d + std * self.noise.randn(tuple(d.shape))
        return d, s

    def _noise_for(self, x: torch.Tensor) -> torch.Tensor | None:
        return self.noise.for_generator(self.nets["g_ds"], x)

    def _generator_noise(self, d: torch.Tensor) -> GeneratorNoise:
        """The noise of one generator update, drawn in this order: z1, z2, cycle noise, z_id."""
        loss = self.cfg.loss
        z1, z2 = self._noise_for(d), self._noise_for(d)
        cycle_noise = loss.cycle_noise_std * self.noise.randn(tuple(d.shape)) if loss.cycle_noise_std > 0 else None
        z_id = self._noise_for(d) if loss.identity_weight > 0 else None
        return GeneratorNoise(z1, z2, cycle_noise, z_id, identity=loss.identity_weight > 0)

    # -- one step ----------------------------------------------------------------------------
    def train_step(self) -> dict[str, torch.Tensor]:
        """One step: ``n_critic`` critic updates, then one generator update on the last pair.

        The generators' forward pass of the last critic update is the one the generator
        update back-propagates through (``train.reuse_fakes``, the default): the critic sees
        ``G(d).detach()``, the generator loss the same ``G(d)`` scored by the updated critic.
        With ``reuse_fakes = false`` the generators run twice (no-grad for the critic, again
        with grad for the generator) with the same noise and dropout draws, so both settings
        compute the same numbers; the second is the reference the fast path is tested against.
        """
        t, w, autocast = self.cfg.train, self.wrapped, self.amp.autocast
        # the schedule from the step alone, so a resumed run agrees
        set_learning_rates((self.g_opt, self.c_opt), self.optimizers.base_lrs, lr_factor(self.cfg.optim, self.step))
        for i in range(t.n_critic):
            d, s = self._pair()
            if i < t.n_critic - 1:
                with torch.no_grad(), autocast():
                    fake_s, fake_d = w.generators_eval(d, s, self._noise_for(d), None, cycle=False)
            else:
                noise = self._generator_noise(d)
                if t.reuse_fakes:
                    with autocast():
                        outputs = noise.forward(w.generators, d, s)
                    fake_s, fake_d = outputs[0].detach(), outputs[1].detach()
                else:
                    rng = dropout_rng_state(self.device)  # replayed for the generator update's forward
                    with torch.no_grad(), autocast():
                        fake_s, fake_d = w.generators_eval(d, s, noise.z1, None, cycle=False)
            stats = critic_step(w.critics, self.critics, self.c_opt, self.c_scaler, self.adversarial,
                                {"subtomograms": (s, fake_s.float()), "density": (d, fake_d.float())},
                                autocast, self.noise.rand)
        if not t.reuse_fakes:
            set_dropout_rng_state(rng, self.device)
            with autocast():
                outputs = noise.forward(w.generators, d, s)
        # the regularisers' own parameters are outside DDP: their gradients are averaged by hand
        sync = self._average_regularizer_grads if self.ctx.distributed and len(self.regularizers) else None
        stats.update(generator_step(outputs, d, s, w.critics_eval, self.critic_params,
                                    (self.nets["g_ds"], self.nets["g_sd"]), self.g_opt, self.g_scaler,
                                    self.adversarial, self.generator_losses, autocast, sync_grads=sync))
        self.last_images = tuple(x[:1].detach() for x in (d, outputs[0], outputs[2], s, outputs[1], outputs[3]))
        return stats

    def _average_regularizer_grads(self) -> None:
        average_gradients(self.regularizers.parameters(), self.ctx.world_size)

    # -- checkpoints -------------------------------------------------------------------------
    def weights(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in NETWORKS:
            for key, value in self.nets[name].state_dict().items():
                out[f"{name}.{key}"] = value
        for name, reg in self.regularizers.items():
            for key, value in reg.state_dict().items():
                out[f"reg.{name}.{key}"] = value
        return out

    def checkpoint_state(self) -> dict[str, Any]:
        """The training state of a checkpoint (collective: it gathers every rank's RNG states)."""
        rngs = all_gather_objects(self.ctx, capture_rng())
        return {
            "step": self.step,
            "world_size": self.ctx.world_size,
            "data_position": dict(self.positions),
            "optimizers": {"generator": self.g_opt.state_dict(), "critic": self.c_opt.state_dict()},
            "scalers": {"generator": self.g_scaler.state_dict(), "critic": self.c_scaler.state_dict()},
            "noise_generator": self.noise.generator.get_state(),
            "rng": rngs,
            "memory_formats": dict(self.memory_formats),
        }

    def save(self) -> Path | None:
        """Checkpoint this step (every rank calls it; rank 0 writes, and gets the folder)."""
        state = self.checkpoint_state()
        return self.checkpoints.save(self.step, self.weights() if self.ctx.is_main else {}, state)

    def _load(self, checkpoint: Checkpoint) -> dict[str, Any]:
        """Networks, optimisers, scalers, noise and data positions from ``checkpoint``; returns this
        rank's RNG states, restored once the data streams exist."""
        path, step, weights, state = checkpoint
        try:
            for name in NETWORKS:
                self.nets[name].load_state_dict(sub_state_dict(weights, name))
            for name, reg in self.regularizers.items():
                reg.load_state_dict(sub_state_dict(weights, f"reg.{name}"))
            self.g_opt.load_state_dict(state["optimizers"]["generator"])
            self.c_opt.load_state_dict(state["optimizers"]["critic"])
            self.g_scaler.load_state_dict(state["scalers"]["generator"])
            self.c_scaler.load_state_dict(state["scalers"]["critic"])
            self.noise.generator.set_state(state["noise_generator"])
            self.positions = {k: int(v) for k, v in state["data_position"].items()}
            rngs = state["rng"]
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise InputError(f"{path}: checkpoint does not match this run's networks/optimizers "
                             f"({error_text(exc)})") from None
        self.step = step
        # a different number of processes resumes, but no longer bit-exactly
        return rngs[self.ctx.rank % len(rngs)]


# -- the loop ------------------------------------------------------------------------------------

def fit(trainer: Trainer, callbacks: Sequence[Any] = ()) -> TrainState:
    """Train from ``trainer.step`` to ``train.steps``, calling ``callbacks`` (``train/callbacks.py``).

    A checkpoint is written every ``log.checkpoint_every`` steps, at the last step and at a step
    after which a callback stops training; never from a step with a non-finite loss.
    """
    hooks, state = CallbackList(callbacks), TrainState(trainer)
    try:
        hooks.on_train_start(state)
        while trainer.step < state.steps and not state.should_stop:
            state.losses = trainer.train_step()
            trainer.step += 1
            state.logged = None
            hooks.on_step_end(state)
            state.should_stop = any_across_ranks(trainer.ctx, state.should_stop)
            if state.at_checkpoint or state.should_stop:
                check_finite(state.losses, trainer.step, trainer.last_good)
                trainer.save()
                hooks.on_checkpoint(state)
    except BaseException as exc:
        state.error = exc
        raise
    finally:
        hooks.on_train_end(state)
    return state


def write_run_metadata(run_dir: Path, density, box: int) -> None:
    meta = {
        "box": box,
        "voxel_size": float(getattr(density, "voxel_size", 0.0) or 0.0),
        "class_names": list(getattr(density, "class_names", []) or []),
    }
    write_json_atomic(run_dir / RUN_DATA, meta, indent=1)


def train(cfg: TrainConfig, run_dir: str | os.PathLike, *, resume: bool = False, datasets=None,
          callbacks: Sequence[Any] = ()) -> Path:
    """Train (or, with ``resume``, continue) a run in ``run_dir``; returns the run folder.

    ``datasets`` = (density_dataset, subtomogram_dataset) replaces the configured ones;
    ``callbacks`` run after the built-in ones and the plugins' (``train/callbacks.py``).
    Under ``torchrun`` every process calls this; rank 0 writes the run folder.
    """
    run_dir = Path(run_dir)
    ctx = init_distributed(cfg.train.device)
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        return _train(cfg, run_dir, ctx, resume, datasets, callbacks)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)  # a process-wide switch
        shutdown(ctx)


def _train(cfg: TrainConfig, run_dir: Path, ctx: DistContext, resume: bool, datasets,
           callbacks: Sequence[Any]) -> Path:
    if not resume and CheckpointManager(run_dir, cfg.log.keep_checkpoints).paths():
        raise InputError(f"{run_dir}: already holds checkpoints; continue it with --resume or pick a new folder")
    extra = plugin_callbacks()  # a broken plugin stops the run before anything is built
    trainer = Trainer(cfg, run_dir, ctx, resume, datasets)
    if resume and trainer.step >= cfg.train.steps:  # the run folder stays as it is
        if ctx.is_main:
            progress.warn(f"nothing to train: {run_dir} is at step {trainer.step} >= {cfg.train.steps}")
        return run_dir
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / RUN_CONFIG)
        write_run_metadata(run_dir, trainer.datasets["density"], trainer.box)
    fit(trainer, [*default_callbacks(cfg, ctx), *extra, *callbacks])
    return run_dir


def resume_config(run_dir: str | os.PathLike, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The configuration saved in a run folder, with overrides (e.g. more steps)."""
    path = Path(run_dir) / RUN_CONFIG
    if not Path(run_dir).is_dir():
        raise InputError(f"{run_dir}: no such run folder")
    if not path.is_file():
        raise InputError(f"{path}: run configuration missing; is {run_dir} a training run folder?")
    return load_config(path, overrides)

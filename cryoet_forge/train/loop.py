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
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from cryoet_forge import progress, registry
from cryoet_forge.config import TrainConfig, load_config, save_config
from cryoet_forge.contracts import (
    AdversarialLoss,
    check_generator_output,
    check_role,
    noise_shape,
    run_generator,
    takes_noise,
)
from cryoet_forge.contrastive import RegularizerInputs, build_regularizers
from cryoet_forge.errors import ConfigError, InputError, TrainingError
from cryoet_forge.losses import CycleL1Loss
from cryoet_forge.train import checkpoint as ckpt
from cryoet_forge.train.distributed import (
    DistContext,
    ResumableBatchSampler,
    all_gather_objects,
    barrier,
    init_distributed,
    mean_across_ranks,
    shutdown,
)
from cryoet_forge.train.memory_format import FORMATS, choose_memory_formats
from cryoet_forge.train.precision import resolve_precision

RUN_CONFIG = "config.toml"
RUN_DATA = "data.json"
NETWORKS = ("g_ds", "g_sd", "c_s", "c_d")


# -- building blocks -----------------------------------------------------------------------

class CyclePair(nn.Module):
    """Both generators; ``forward`` returns the translations (and their cycles)."""

    def __init__(self, g_ds: nn.Module, g_sd: nn.Module):
        super().__init__()
        self.g_ds, self.g_sd = g_ds, g_sd

    def forward(self, d: torch.Tensor, s: torch.Tensor, z1: torch.Tensor | None,
                z2: torch.Tensor | None, cycle: bool = True, cycle_noise: torch.Tensor | None = None,
                identity: bool = False, z_id: torch.Tensor | None = None):
        """(fake_s, fake_d) without the cycle; else (fake_s, fake_d, cyc_d, cyc_s), and with
        ``identity`` also (G_DS(s), G_SD(d)) for the identity loss."""
        fake_s = run_generator(self.g_ds, d, z1, check=False)
        fake_d = self.g_sd(s)
        if not cycle:
            return fake_s, fake_d
        # cycle noise: the D -> S -> D cycle sees the generated subtomogram plus Gaussian noise,
        # so the content it reconstructs from must be carried above that noise level
        cyc_d = self.g_sd(fake_s if cycle_noise is None else fake_s + cycle_noise.to(fake_s.dtype))
        cyc_s = run_generator(self.g_ds, fake_d, z2, check=False)
        if not identity:
            return fake_s, fake_d, cyc_d, cyc_s
        return fake_s, fake_d, cyc_d, cyc_s, run_generator(self.g_ds, s, z_id, check=False), self.g_sd(d)


class CriticPass(nn.Module):
    """One critic scoring several batches (real, fake[, interpolates]) in one batched forward."""

    def __init__(self, critic: nn.Module):
        super().__init__()
        self.critic = critic

    def forward(self, parts: Sequence[torch.Tensor]):
        return self.critic(torch.cat(list(parts))).split([p.shape[0] for p in parts])


def factory_parameters(kind: str, name: str) -> dict[str, inspect.Parameter]:
    """The keyword parameters of a registered component's factory ({} if not introspectable)."""
    factory = registry.get(kind, name).factory
    try:
        return dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return {}


def build_networks(cfg: TrainConfig, names: Sequence[str] = NETWORKS) -> dict[str, nn.Module]:
    """The networks ``names`` of a run (default: all four, created in ``NETWORKS`` order),
    built from the registry (unknown names list the choices)."""
    m = cfg.model
    forward_opts = dict(m.generator_options)
    inverse_opts = dict(m.generator_options)
    if "noise" in factory_parameters("generator", m.generator):
        inverse_opts["noise"] = False  # S -> D needs no stochastic input
    inverse_opts.update(m.inverse_generator_options)
    specs = {
        "g_ds": ("generator", m.generator, {"out_channels": 1, **forward_opts}),
        "g_sd": ("generator", m.generator, {"out_channels": 1, **inverse_opts}),
        "c_s": ("critic", m.critic, dict(m.critic_options)),
        "c_d": ("critic", m.critic, dict(m.critic_options)),
    }
    return {key: registry.create(kind, name, in_channels=1, **opts)
            for key, (kind, name, opts) in specs.items() if key in names}


@torch.no_grad()
def check_networks(nets: dict[str, nn.Module], box: int, names: dict[str, str],
                   device: torch.device) -> None:
    """Run each network once on a zero volume so a size it cannot take fails before training, and
    check each generator's output against its contract (``contracts.check_generator_output``)."""
    x = torch.zeros(1, 1, box, box, box, device=device)
    for key, net in nets.items():
        kind = "generator" if key.startswith("g_") else "critic"
        try:
            y = net.eval()(x)
        except (ValueError, RuntimeError) as exc:
            raise InputError(f"{kind} {names[kind]!r} cannot take {box}^3 volumes "
                             f"({ckpt.error_text(exc)})") from None
        finally:
            net.train()
        if kind == "generator":
            check_generator_output(net, x, y)


def build_losses(cfg: TrainConfig) -> tuple[AdversarialLoss, CycleL1Loss]:
    adversarial = registry.create("loss", cfg.loss.adversarial, **cfg.loss.options)
    check_role("loss", "adversarial", adversarial, cfg.loss.adversarial)
    if not cfg.loss.cycle_noise_std >= 0:
        raise ConfigError(f"loss.cycle_noise_std must be >= 0, got {cfg.loss.cycle_noise_std}")
    if not cfg.loss.identity_weight >= 0:
        raise ConfigError(f"loss.identity_weight must be >= 0, got {cfg.loss.identity_weight}")
    if not cfg.loss.semantic_weight >= 0:
        raise ConfigError(f"loss.semantic_weight must be >= 0, got {cfg.loss.semantic_weight}")
    if cfg.loss.semantic_weight > 0 and not cfg.loss.semantic_classifier:
        raise ConfigError("loss.semantic_weight > 0 needs loss.semantic_classifier (a CB3D checkpoint "
                          "trained on domain D)")
    return adversarial, CycleL1Loss(cfg.loss.cycle_weight)


def build_datasets(cfg: TrainConfig):
    """Domain D and domain S; an error in a dataset's options names its config key."""
    built = []
    for key, section in (("data.density", cfg.data.density), ("data.subtomograms", cfg.data.subtomograms)):
        try:
            built.append(registry.create("dataset", section.dataset, **section.options))
        except (ConfigError, InputError) as exc:
            if str(exc).startswith(key):
                raise
            named = str(exc).startswith(f"dataset {section.dataset!r}")
            raise type(exc)(f"{key}.options{'' if named else f' (dataset {section.dataset!r})'}: {exc}") from None
    return built[0], built[1]


def volume_shape(dataset, what: str) -> tuple[int, ...]:
    if len(dataset) == 0:
        raise InputError(f"the {what} dataset is empty")
    shape = tuple(dataset[0]["volume"].shape)
    if len(shape) != 4 or shape[0] != 1 or len(set(shape[1:])) != 1:
        raise InputError(f"{what} volumes must be (1, S, S, S) cubes, got {shape}")
    return shape


class InvertedVolumes(torch.utils.data.Dataset):
    """A dataset whose volumes are multiplied by -1 (``data.polarity = "auto"`` on protein-bright S)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        item["volume"] = -item["volume"]
        return item

    def __getattr__(self, name: str):  # class names, voxel size, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


#: subtomograms of domain S read for the contrast check (evenly spaced)
POLARITY_SAMPLE = 64


def check_polarity(subtomograms, mode: str, log=None):
    """Domain S under the contrast convention (cryoet_forge.data.polarity): the dataset, wrapped to
    invert it where ``mode`` is "auto" and it is protein-bright; "check" raises an InputError then."""
    from cryoet_forge.data.polarity import apply_polarity

    if mode == "off":
        return subtomograms
    n = len(subtomograms)
    index = np.unique(np.linspace(0, n - 1, min(n, POLARITY_SAMPLE)).round().astype(int))
    sample = np.stack([np.asarray(subtomograms[int(i)]["volume"], dtype=np.float32)[0] for i in index])
    source = str(getattr(subtomograms, "source", "") or "the subtomogram (S) dataset")
    inverted, _, line = apply_polarity(sample, mode, f"{source} (domain S)", "data.polarity")
    if inverted is sample:
        return subtomograms  # as the convention expects (or undetermined): nothing to say
    if log is not None:
        log(line)
    return InvertedVolumes(subtomograms)


def check_domains(density, subtomograms) -> int:
    d_shape = volume_shape(density, "density-map (D)")
    s_shape = volume_shape(subtomograms, "subtomogram (S)")
    if d_shape != s_shape:
        raise InputError(
            f"domain volumes differ in size: density maps are {d_shape[-1]}^3, subtomograms "
            f"{s_shape[-1]}^3; expected the same box (resample one domain)"
        )
    d_voxel, s_voxel = (float(getattr(ds, "voxel_size", 0.0) or 0.0) for ds in (density, subtomograms))
    if d_voxel > 0 and s_voxel > 0 and abs(d_voxel - s_voxel) > 1e-3 * max(d_voxel, s_voxel):
        raise InputError(
            f"domain voxel sizes differ: density maps are at {d_voxel:g} A, subtomograms at {s_voxel:g} A; "
            "expected one voxel size (resample one domain, e.g. forge extract --voxel-size)"
        )
    return d_shape[-1]


def lr_factor(o, step: int) -> float:
    """The learning-rate multiplier at ``step`` (0-based): 1 until ``optim.decay_start``, then
    linearly down to 0 over ``optim.decay_steps`` (CycleGAN's schedule); 1 throughout when
    ``decay_steps`` is 0."""
    if o.decay_steps <= 0 or step < o.decay_start:
        return 1.0
    return max(0.0, 1.0 - (step - o.decay_start) / o.decay_steps)


def make_optimizer(cfg: TrainConfig, params, lr: float, device: torch.device):
    o = cfg.optim
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": o.weight_decay}
    cls: type[torch.optim.Optimizer]
    if o.name == "adam":
        cls, kwargs["betas"] = torch.optim.Adam, tuple(o.betas)
    elif o.name == "sgd":
        cls = torch.optim.SGD
    else:
        cls = torch.optim.RMSprop
    accepted = inspect.signature(cls).parameters
    if o.fused and device.type == "cuda":
        if "fused" in accepted:
            kwargs["fused"] = True
        elif "foreach" in accepted:
            kwargs["foreach"] = True
    return cls(params, **kwargs)


def capture_rng() -> dict[str, Any]:
    np_state: Any = np.random.get_state()  # the legacy tuple (name, keys, pos, has_gauss, gaussian)
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# -- the trainer -----------------------------------------------------------------------------

class Trainer:
    """Owns the networks, optimizers, data streams and run folder of one training run."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, ctx: DistContext, resume: bool,
                 datasets=None):
        self.cfg, self.run_dir, self.ctx = cfg, Path(run_dir), ctx
        t = cfg.train
        self.device = ctx.device
        self.adversarial, self.cycle = build_losses(cfg)
        self.identity_loss = CycleL1Loss(cfg.loss.identity_weight)
        if t.compile and self.adversarial.needs_interpolates:
            raise ConfigError(f"train.compile does not support loss {cfg.loss.adversarial!r} "
                              "(its gradient penalty needs double backward)")
        if t.deterministic:
            if self.device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = t.tf32
            torch.backends.cudnn.allow_tf32 = t.tf32
            torch.backends.cudnn.benchmark = not t.deterministic
        self.precision = resolve_precision(t.precision, self.device)
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

        # data first: a size mismatch must fail before any network is built
        density, subtomograms = datasets if datasets is not None else build_datasets(cfg)
        self.box = check_domains(density, subtomograms)
        subtomograms = check_polarity(subtomograms, cfg.data.polarity,
                                      log=progress.log if ctx.is_main and cfg.log.progress else None)
        self.datasets = {"density": density, "subtomograms": subtomograms}
        if t.batch_size % ctx.world_size:
            raise ConfigError(f"train.batch_size {t.batch_size} is not divisible by {ctx.world_size} processes")

        torch.manual_seed(t.seed)  # identical initial weights on every rank
        self.nets = build_networks(cfg)
        for net in self.nets.values():
            net.to(self.device)
        check_networks(self.nets, self.box, {"generator": cfg.model.generator, "critic": cfg.model.critic},
                       self.device)
        setting = t.channels_last
        if setting == "auto" and t.deterministic:
            setting = False  # a measured choice could differ between runs; deterministic runs fix it
        # a resumed run keeps the formats it started with (bit-exact)
        # (of the newest intact checkpoint: a corrupt newer one is skipped, and said so, here)
        self._resume_from = ckpt.load_newest_intact(run_dir, ckpt.load_checkpoint) if resume else None
        saved = self._resume_from[1][2].get("memory_formats") if self._resume_from is not None else None
        self.memory_formats, self.memory_format_record = choose_memory_formats(
            self.nets, self.box, self.device, setting, self._autocast, saved,
            batch=max(1, t.batch_size // ctx.world_size))
        if ctx.distributed:  # every rank trains in rank 0's formats (DDP needs the same layouts)
            self.memory_formats = all_gather_objects(ctx, self.memory_formats)[0]
        for name, net in self.nets.items():
            net.to(memory_format=FORMATS[self.memory_formats[name]])
        # the input batches: the generators see them first
        self.memory_format = FORMATS[self.memory_formats["g_ds"]]
        if self.memory_format_record and ctx.is_main and cfg.log.progress:
            progress.log("memory format (measured): " + "; ".join(
                f"{group} {r['chosen']} ({1e3 * r['seconds']['channels_last']:.0f} ms channels_last, "
                f"{1e3 * r['seconds']['contiguous']:.0f} ms contiguous)"
                for group, r in self.memory_format_record.items()))
        self.gen_pair = CyclePair(self.nets["g_ds"], self.nets["g_sd"])
        # generator regularisers (PatchNCE, plugins): set up on the networks before the
        # optimiser exists, since they may own parameters trained with the generators
        regularizers = build_regularizers(cfg.loss.regularizers)
        self.regularizers = nn.ModuleDict(regularizers)
        example = torch.zeros((1, 1, self.box, self.box, self.box), device=self.device).contiguous(
            memory_format=self.memory_format)
        for reg in regularizers.values():
            reg.setup(self.nets["g_ds"], self.nets["g_sd"], example)
        self.regularizers.to(self.device)
        self.critics = nn.ModuleDict({"subtomograms": self.nets["c_s"], "density": self.nets["c_d"]})
        self.critic_params = list(self.critics.parameters())
        lr = cfg.optim.lr
        self.g_opt = make_optimizer(cfg, [*self.gen_pair.parameters(), *self.regularizers.parameters()],
                                    lr, self.device)
        self.c_opt = make_optimizer(cfg, self.critic_params, cfg.optim.critic_lr or lr, self.device)
        self.base_lrs = (lr, cfg.optim.critic_lr or lr)
        self.semantic = self._semantic_classifier()
        scaler_on = self.precision == "fp16"
        self.g_scaler = torch.amp.GradScaler(self.device.type, enabled=scaler_on)
        self.c_scaler = torch.amp.GradScaler(self.device.type, enabled=scaler_on)
        self.noise_gen = torch.Generator(device=self.device).manual_seed(t.seed + 17)

        self.step = 0
        self.positions = {"density": 0, "subtomograms": 0}
        self.last_good: Path | None = None
        if resume:
            self._load_latest()

        # the wrapped networks the steps call: DDP and torch.compile wrappers, or the networks themselves
        self.gen_train: Any
        self.critic_train: dict[str, Any]
        self.gen_eval: Any = self.gen_pair
        self.c_s_eval: Any = self.nets["c_s"]
        self.c_d_eval: Any = self.nets["c_d"]
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.gen_train = DDP(self.gen_pair, device_ids=ids, forward_sync_buffers=False)
            self.critic_train = {k: DDP(CriticPass(c), device_ids=ids, forward_sync_buffers=False)
                                 for k, c in self.critics.items()}
        else:
            self.gen_train = self.gen_pair
            self.critic_train = {k: CriticPass(c) for k, c in self.critics.items()}
        if t.compile:
            self.gen_train = torch.compile(self.gen_train)
            self.critic_train = {k: torch.compile(c) for k, c in self.critic_train.items()}
            self.gen_eval = torch.compile(self.gen_eval)
            self.c_s_eval = torch.compile(self.c_s_eval)
            self.c_d_eval = torch.compile(self.c_d_eval)

        self.iters = {name: self._stream(name, i) for i, name in enumerate(self.datasets)}
        if resume:
            try:
                restore_rng(self._rng_to_restore)
            except (KeyError, RuntimeError, ValueError, TypeError) as exc:
                raise InputError(f"{self.last_good}: checkpoint RNG state is unusable "
                                 f"({ckpt.error_text(exc)})") from None
        else:
            torch.manual_seed(t.seed + 1000 * (ctx.rank + 1))
            np.random.seed(t.seed + ctx.rank)
            random.seed(t.seed + ctx.rank)

    # -- data ----------------------------------------------------------------------------
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

    def _global_randn(self, local_shape: tuple[int, ...], sample=torch.randn) -> torch.Tensor:
        """Noise for this rank's slice of the global batch (same values whatever the world size)."""
        b = local_shape[0]
        full = sample((b * self.ctx.world_size, *local_shape[1:]), generator=self.noise_gen,
                      device=self.device)
        return full[self.ctx.rank * b:(self.ctx.rank + 1) * b]

    def _global_rand(self, local_shape: tuple[int, ...]) -> torch.Tensor:
        return self._global_randn(local_shape, sample=torch.rand)

    def _semantic_classifier(self):
        """The frozen domain-D classifier of the semantic-consistency loss, with its input
        normalisation; None when the loss is off."""
        if not self.cfg.loss.semantic_weight > 0:
            return None
        from cryoet_forge.models.cb3d import load_cb3d

        model, metadata = load_cb3d(self.cfg.loss.semantic_classifier, device=self.device)
        if model.config.box != self.box:
            raise InputError(f"loss.semantic_classifier {self.cfg.loss.semantic_classifier}: trained on "
                             f"{model.config.box}^3 volumes, the run's are {self.box}^3")
        for p in model.parameters():
            p.requires_grad_(False)
        return model.eval(), metadata.get("normalize", "zscore")

    def _semantic_loss(self, d: torch.Tensor, fake_s: torch.Tensor) -> torch.Tensor:
        """weight * cross-entropy of the classifier on G_DS(d) against its own prediction on d."""
        from cryoet_forge.models.cb3d import normalize_volumes

        model, normalize = self.semantic
        with torch.no_grad():
            target = model(normalize_volumes(d.float(), normalize)).argmax(1)
        logits = model(normalize_volumes(fake_s.float(), normalize)).float()
        return self.cfg.loss.semantic_weight * nn.functional.cross_entropy(logits, target)

    def _noise_for(self, x: torch.Tensor) -> torch.Tensor | None:
        g = self.nets["g_ds"]
        if not takes_noise(g):
            return None
        return self._global_randn(noise_shape(g, tuple(x.shape)))

    def _pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        d = self._next("density")
        s = self._next("subtomograms")
        std = self.cfg.data.density_noise_std
        if std > 0:
            d = d + std * self._global_randn(tuple(d.shape))
        return d, s

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # -- one step --------------------------------------------------------------------------
    def _rng_states(self):
        """The global RNG states that dropout draws from (CPU, and the CUDA device in use)."""
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def _set_rng_states(self, states) -> None:
        cpu, cuda = states
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.device)

    def _generator_noise(self, d: torch.Tensor):
        """The noise of one generator update: z for D -> S, z for the S -> D -> S cycle, cycle
        noise, and z for the identity pass G_DS(s) (None when the identity loss is off)."""
        z1 = self._noise_for(d)
        z2 = self._noise_for(d)
        cycle_noise = None
        if self.cfg.loss.cycle_noise_std > 0:
            cycle_noise = self.cfg.loss.cycle_noise_std * self._global_randn(tuple(d.shape))
        z_id = self._noise_for(d) if self.cfg.loss.identity_weight > 0 else None
        return z1, z2, cycle_noise, z_id

    def train_step(self) -> dict[str, torch.Tensor]:
        """One step: ``n_critic`` critic updates, then one generator update on the last pair.

        The generators' forward pass of the last critic update is the one the generator
        update back-propagates through (``train.reuse_fakes``, the default): the critic sees
        ``G(d).detach()``, the generator loss the same ``G(d)`` scored by the updated critic.
        With ``reuse_fakes = false`` the generators run twice (no-grad for the critic, again
        with grad for the generator) with the same noise and dropout draws, so both settings
        compute the same numbers; the second is the reference the fast path is tested against.
        """
        adv, t = self.adversarial, self.cfg.train
        identity = self.cfg.loss.identity_weight > 0
        factor = lr_factor(self.cfg.optim, self.step)  # from the step alone, so a resumed run agrees
        for opt, base in zip((self.g_opt, self.c_opt), self.base_lrs):
            for group in opt.param_groups:
                group["lr"] = base * factor
        stats: dict[str, torch.Tensor] = {}
        for i in range(t.n_critic):
            d, s = self._pair()
            last = i == t.n_critic - 1
            if last:
                z1, z2, cycle_noise, z_id = self._generator_noise(d)
                if t.reuse_fakes:
                    with self._autocast():
                        outputs = self.gen_train(d, s, z1, z2, cycle_noise=cycle_noise,
                                                 identity=identity, z_id=z_id)
                    fake_s, fake_d = outputs[0].detach(), outputs[1].detach()
                else:
                    rng = self._rng_states()  # replayed for the generator update's forward
                    with torch.no_grad(), self._autocast():
                        fake_s, fake_d = self.gen_eval(d, s, z1, None, cycle=False)
            else:
                with torch.no_grad(), self._autocast():
                    fake_s, fake_d = self.gen_eval(d, s, self._noise_for(d), None, cycle=False)
            parts = {"subtomograms": [s, fake_s.float()], "density": [d, fake_d.float()]}
            if adv.needs_interpolates:
                for batches in parts.values():
                    real, fake = batches
                    eps = self._global_rand((real.shape[0], 1, 1, 1, 1))
                    batches.append((eps * real + (1 - eps) * fake).requires_grad_(True))
            self.c_opt.zero_grad(set_to_none=True)
            total_c = penalty = None
            gaps = {}
            # one critic at a time (forward + backward): the critics' activations dominate the
            # memory, so this halves the peak; their parameters are disjoint, the gradients equal
            for domain, batches in parts.items():
                with self._autocast():
                    scores = self.critic_train[domain](batches)
                    loss = adv.critic_loss(scores[0], scores[1])
                    pen = loss.new_zeros(())
                    if adv.needs_interpolates:
                        # the penalty's inner gradient is taken unscaled: at the GradScaler's
                        # starting scale (65536) it overflows fp16 and the penalty turns NaN;
                        # the outer loss below is still scaled for the parameter gradients
                        pen = adv.penalty(scores[2], batches[2])
                    loss = loss + pen
                self.c_scaler.scale(loss).backward()
                total_c = loss.detach() if total_c is None else total_c + loss.detach()
                penalty = pen.detach() if penalty is None else penalty + pen.detach()
                gaps[domain] = adv.gap(scores[0], scores[1]).detach()
            self.c_scaler.step(self.c_opt)
            self.c_scaler.update()
            adv.after_critic_step(self.nets["c_s"])
            adv.after_critic_step(self.nets["c_d"])
        assert total_c is not None and penalty is not None  # both domains ran
        stats["loss/critic"] = total_c.float()
        stats["loss/penalty"] = penalty.float()
        stats["critic_gap/subtomograms"] = gaps["subtomograms"]
        stats["critic_gap/density"] = gaps["density"]

        # generator update on the last pair, critics frozen
        critic_params = self.critic_params
        for p in critic_params:
            p.requires_grad_(False)
        try:
            if not t.reuse_fakes:
                self._set_rng_states(rng)
                with self._autocast():
                    outputs = self.gen_train(d, s, z1, z2, cycle_noise=cycle_noise, identity=identity, z_id=z_id)
            fake_s, fake_d, cyc_d, cyc_s = outputs[:4]
            with self._autocast():
                adv_g = (adv.generator_loss(self.c_s_eval(fake_s))
                         + adv.generator_loss(self.c_d_eval(fake_d)))
                cycle = self.cycle(d, cyc_d) + self.cycle(s, cyc_s)
                loss_g = adv_g + cycle
                if identity:  # the same weighted L1 as the cycle term, input against its identity pass
                    idt_s, idt_d = outputs[4:]
                    idt = self.identity_loss(s, idt_s) + self.identity_loss(d, idt_d)
                    loss_g = loss_g + idt
                if self.semantic is not None:
                    sem = self._semantic_loss(d, fake_s)
                    loss_g = loss_g + sem
                regs = {}
                if len(self.regularizers):
                    inputs = RegularizerInputs(d, s, fake_s, fake_d, self.nets["g_ds"], self.nets["g_sd"])
                    for name, reg in self.regularizers.items():
                        regs[name] = reg(inputs)
                        loss_g = loss_g + regs[name]
            self.g_opt.zero_grad(set_to_none=True)
            self.g_scaler.scale(loss_g).backward()
            if self.ctx.distributed and len(self.regularizers):
                self._average_regularizer_grads()
            self.g_scaler.step(self.g_opt)
            self.g_scaler.update()
        finally:
            for p in critic_params:
                p.requires_grad_(True)
        stats["loss/generator"] = adv_g.detach().float()
        stats["loss/cycle"] = cycle.detach().float()
        if identity:
            stats["loss/identity"] = idt.detach().float()
        if self.semantic is not None:
            stats["loss/semantic"] = sem.detach().float()
        for name, value in regs.items():
            stats[f"loss/{name}"] = value.detach().float()
        self.last_images = (d[:1].detach(), fake_s[:1].detach(), cyc_d[:1].detach(),
                            s[:1].detach(), fake_d[:1].detach(), cyc_s[:1].detach())
        return stats

    def _average_regularizer_grads(self) -> None:
        """The regularisers' own parameters are outside DDP: average their gradients by hand."""
        import torch.distributed as dist

        for p in self.regularizers.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= self.ctx.world_size

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

    def save(self) -> Path | None:
        rngs = all_gather_objects(self.ctx, capture_rng())
        path = None
        if self.ctx.is_main:
            state = {
                "step": self.step,
                "world_size": self.ctx.world_size,
                "data_position": dict(self.positions),
                "optimizers": {"generator": self.g_opt.state_dict(), "critic": self.c_opt.state_dict()},
                "scalers": {"generator": self.g_scaler.state_dict(), "critic": self.c_scaler.state_dict()},
                "noise_generator": self.noise_gen.get_state(),
                "rng": rngs,
                "memory_formats": dict(self.memory_formats),
            }
            path = ckpt.save_checkpoint(self.run_dir, self.step, self.weights(), state,
                                        keep=self.cfg.log.keep_checkpoints)
        barrier(self.ctx)
        self.last_good = path
        return path

    def _load_latest(self) -> None:
        assert self._resume_from is not None
        path, (step, weights, state) = self._resume_from
        self._resume_from = None  # the tensors are in the networks from here on
        try:
            for name in NETWORKS:
                self.nets[name].load_state_dict(ckpt.sub_state_dict(weights, name))
            for name, reg in self.regularizers.items():
                reg.load_state_dict(ckpt.sub_state_dict(weights, f"reg.{name}"))
            self.g_opt.load_state_dict(state["optimizers"]["generator"])
            self.c_opt.load_state_dict(state["optimizers"]["critic"])
            self.g_scaler.load_state_dict(state["scalers"]["generator"])
            self.c_scaler.load_state_dict(state["scalers"]["critic"])
            self.noise_gen.set_state(state["noise_generator"])
            self.positions = {k: int(v) for k, v in state["data_position"].items()}
            rngs = state["rng"]
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise InputError(
                f"{path}: checkpoint does not match this run's networks/optimizers "
                f"({ckpt.error_text(exc)})"
            ) from None
        # a different number of processes resumes, but no longer bit-exactly
        self._rng_to_restore = rngs[self.ctx.rank % len(rngs)]
        self.step = step
        self.last_good = path

    # -- logging -------------------------------------------------------------------------------
    def save_montage(self) -> Path:
        from cryoet_forge.viz import save_slice_montage

        d, fs, cd, s, fd, cs = (x[0, 0].float().cpu().numpy() for x in self.last_images)
        path = self.run_dir / "images" / f"step-{self.step:08d}.png"
        save_slice_montage(
            path, [[d, fs, cd], [s, fd, cs]],
            row_labels=["D -> S -> D", "S -> D -> S"],
            col_labels=["input", "generated", "cycled"],
            title=f"step {self.step}",
        )
        return path


def _check_finite(stats: dict[str, torch.Tensor], step: int, last_good: Path | None) -> None:
    values = {k: float(v) for k, v in stats.items()}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        listed = ", ".join(f"{k}={v}" for k, v in bad.items())
        where = str(last_good) if last_good is not None else "none written yet"
        raise TrainingError(f"non-finite loss at step {step} ({listed}); last good checkpoint: {where}")


def write_run_metadata(run_dir: Path, density, box: int) -> None:
    from cryoet_forge.io.atomic import write_bytes_atomic

    meta = {
        "box": box,
        "voxel_size": float(getattr(density, "voxel_size", 0.0) or 0.0),
        "class_names": list(getattr(density, "class_names", []) or []),
    }
    write_bytes_atomic(run_dir / RUN_DATA, json.dumps(meta, indent=1).encode())


def train(cfg: TrainConfig, run_dir: str | os.PathLike, *, resume: bool = False, datasets=None) -> Path:
    """Train (or, with ``resume``, continue) a run in ``run_dir``; returns the run folder.

    ``datasets`` = (density_dataset, subtomogram_dataset) replaces the configured ones.
    Under ``torchrun`` every process calls this; rank 0 writes the run folder.
    """
    run_dir = Path(run_dir)
    ctx = init_distributed(cfg.train.device)
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        return _train(cfg, run_dir, ctx, resume, datasets)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)  # a process-wide switch
        shutdown(ctx)


def _tensorboard_writer(run_dir: Path, step: int):
    """A TensorBoard writer for ``run_dir/tensorboard``, or None (one line) without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        progress.log("tensorboard is not installed: no event files are written "
                      "(pip install 'cryoet-forge[tensorboard]'); losses are still in the checkpoints' state")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=step or None)


def _train(cfg: TrainConfig, run_dir: Path, ctx: DistContext, resume: bool, datasets) -> Path:
    if not resume and ckpt.list_checkpoints(run_dir):
        raise InputError(f"{run_dir}: already holds checkpoints; continue it with --resume or pick a new folder")
    trainer = Trainer(cfg, run_dir, ctx, resume, datasets)
    if resume and trainer.step >= cfg.train.steps:  # the run folder stays as it is
        if ctx.is_main:
            progress.warn(f"nothing to train: {run_dir} is at step {trainer.step} >= {cfg.train.steps}")
        return run_dir
    writer = None
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / RUN_CONFIG)
        write_run_metadata(run_dir, trainer.datasets["density"], trainer.box)
        writer = _tensorboard_writer(run_dir, trainer.step)
    log = cfg.log
    steps = cfg.train.steps
    show = log.progress and ctx.is_main
    bar = progress.stage("GAN training", steps, "steps", start=trainer.step) if show else None
    check_every_step = trainer.device.type == "cpu"
    sums: dict[str, torch.Tensor] = {}
    count, tic = 0, time.perf_counter()
    try:
        while trainer.step < steps:
            stats = trainer.train_step()
            trainer.step += 1
            count += 1
            for k, v in stats.items():
                sums[k] = sums.get(k, 0) + v
            step = trainer.step
            at_log = step % log.every == 0 or step == steps
            at_ckpt = (log.checkpoint_every and step % log.checkpoint_every == 0) or step == steps
            at_image = log.image_every and (step % log.image_every == 0 or step == steps)
            if check_every_step or at_log or at_ckpt or at_image:
                _check_finite(stats, step, trainer.last_good)
            info = None
            if at_log:
                means = {k: v / count for k, v in sums.items()}
                names = sorted(means)
                reduced = mean_across_ranks(ctx, torch.stack([means[k] for k in names]))
                if trainer.device.type == "cuda":
                    torch.cuda.synchronize(trainer.device)
                elapsed = time.perf_counter() - tic
                values = dict(zip(names, reduced.tolist()))
                _check_finite({k: torch.tensor(v) for k, v in values.items()}, step, trainer.last_good)
                values["throughput/pairs_per_s"] = count * cfg.train.batch_size / max(elapsed, 1e-9)
                if writer is not None:
                    for k, v in values.items():
                        writer.add_scalar(k, v, step)
                info = (f"G {values['loss/generator']:.3g} cycle {values['loss/cycle']:.3g} "
                        f"C {values['loss/critic']:.3g} {values['throughput/pairs_per_s']:.1f} pairs/s")
                sums, count, tic = {}, 0, time.perf_counter()
            if bar is not None:
                bar.update(step, info)
            if at_image and ctx.is_main:
                trainer.save_montage()
            if at_ckpt:
                trainer.save()
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    return run_dir


def resume_config(run_dir: str | os.PathLike, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The configuration saved in a run folder, with overrides (e.g. more steps)."""
    path = Path(run_dir) / RUN_CONFIG
    if not Path(run_dir).is_dir():
        raise InputError(f"{run_dir}: no such run folder")
    if not path.is_file():
        raise InputError(f"{path}: run configuration missing; is {run_dir} a training run folder?")
    return load_config(path, overrides)

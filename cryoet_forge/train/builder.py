"""Config -> the parts of a training run: data, networks, losses, optimisers, scalers.

Everything here runs once, before the first step; the ``Trainer`` (``train/loop.py``) holds what
these functions return and the step functions (``train/steps.py``) use it. The order in which
``build_models`` creates the networks and regularisers is the order they draw their initial
weights from the seeded global RNG, so it is part of what makes a run reproducible.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from cryoet_forge import progress, registry
from cryoet_forge.config import TrainConfig, validate
from cryoet_forge.contracts import (
    AdversarialLoss,
    check_generator_output,
    check_role,
    run_generator,
)
from cryoet_forge.contrastive import build_regularizers
from cryoet_forge.data.polarity import apply_polarity
from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.losses import CycleL1Loss
from cryoet_forge.models.cb3d import load_cb3d, normalize_volumes
from cryoet_forge.train.checkpoint import error_text
from cryoet_forge.train.distributed import DistContext, all_gather_objects
from cryoet_forge.train.memory_format import FORMATS, choose_memory_formats
from cryoet_forge.train.precision import Precision

NETWORKS = ("g_ds", "g_sd", "c_s", "c_d")


# -- networks, losses, data ------------------------------------------------------------------

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
                             f"({error_text(exc)})") from None
        finally:
            net.train()
        if kind == "generator":
            check_generator_output(net, x, y)


def build_losses(cfg: TrainConfig) -> tuple[AdversarialLoss, CycleL1Loss]:
    adversarial = registry.create("loss", cfg.loss.adversarial, **cfg.loss.options)
    check_role("loss", "adversarial", adversarial, cfg.loss.adversarial)
    validate(cfg, for_training=True)  # the loss weights, and the semantic term's classifier
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


# -- a run's parts ---------------------------------------------------------------------------

def configure_backends(cfg: TrainConfig, device: torch.device, adversarial: AdversarialLoss) -> None:
    """The process-wide switches of ``[train]``: deterministic algorithms, TF32, cuDNN autotuning
    (ConfigError for torch.compile with a loss that needs double backward)."""
    t = cfg.train
    if t.compile and adversarial.needs_interpolates:
        raise ConfigError(f"train.compile does not support loss {cfg.loss.adversarial!r} "
                          "(its gradient penalty needs double backward)")
    if t.deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = t.tf32
        torch.backends.cudnn.allow_tf32 = t.tf32
        torch.backends.cudnn.benchmark = not t.deterministic


def prepare_data(cfg: TrainConfig, ctx: DistContext, datasets=None) -> tuple[dict[str, Any], int]:
    """Domains D and S (``datasets`` replaces the configured ones) checked against each other,
    S under the contrast convention: ``({"density": D, "subtomograms": S}, box)``."""
    density, subtomograms = datasets if datasets is not None else build_datasets(cfg)
    box = check_domains(density, subtomograms)
    subtomograms = check_polarity(subtomograms, cfg.data.polarity,
                                  log=progress.log if ctx.is_main and cfg.log.progress else None)
    if cfg.train.batch_size % ctx.world_size:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} is not divisible by {ctx.world_size} processes")
    return {"density": density, "subtomograms": subtomograms}, box


@dataclass
class Models:
    """The trained modules of a run and the memory formats they train in."""

    nets: dict[str, nn.Module]  # g_ds, g_sd, c_s, c_d
    gen_pair: CyclePair
    critics: nn.ModuleDict  # "subtomograms": c_s, "density": c_d
    regularizers: nn.ModuleDict
    memory_formats: dict[str, str]  # network -> a key of memory_format.FORMATS
    memory_format_record: dict[str, dict]  # the measurement behind "auto" ({} when not measured)

    @property
    def memory_format(self) -> torch.memory_format:
        """The input batches' format: the generators see them first."""
        return FORMATS[self.memory_formats["g_ds"]]


def build_models(cfg: TrainConfig, ctx: DistContext, box: int, precision: Precision,
                 saved_formats: dict[str, str] | None = None) -> Models:
    """The networks (seeded identically on every rank, checked on a ``box``^3 volume) in their memory
    formats (``saved_formats``: a resumed run's, kept for a bit-exact resume), and the generator
    regularisers set up on them."""
    t, device = cfg.train, ctx.device
    torch.manual_seed(t.seed)  # identical initial weights on every rank
    nets = build_networks(cfg)
    for net in nets.values():
        net.to(device)
    check_networks(nets, box, {"generator": cfg.model.generator, "critic": cfg.model.critic}, device)
    setting = t.channels_last
    if setting == "auto" and t.deterministic:
        setting = False  # a measured choice could differ between runs; deterministic runs fix it
    formats, record = choose_memory_formats(nets, box, device, setting, precision.autocast, saved_formats,
                                            batch=max(1, t.batch_size // ctx.world_size))
    if ctx.distributed:  # every rank trains in rank 0's formats (DDP needs the same layouts)
        formats = all_gather_objects(ctx, formats)[0]
    for name, net in nets.items():
        net.to(memory_format=FORMATS[formats[name]])
    if record and ctx.is_main and cfg.log.progress:
        progress.log("memory format (measured): " + "; ".join(
            f"{group} {r['chosen']} ({1e3 * r['seconds']['channels_last']:.0f} ms channels_last, "
            f"{1e3 * r['seconds']['contiguous']:.0f} ms contiguous)" for group, r in record.items()))
    # generator regularisers (PatchNCE, plugins): set up on the networks before the
    # optimiser exists, since they may own parameters trained with the generators
    built = build_regularizers(cfg.loss.regularizers)
    regularizers = nn.ModuleDict(built)
    example = torch.zeros((1, 1, box, box, box), device=device).contiguous(
        memory_format=FORMATS[formats["g_ds"]])
    for reg in built.values():
        reg.setup(nets["g_ds"], nets["g_sd"], example)
    regularizers.to(device)
    return Models(nets, CyclePair(nets["g_ds"], nets["g_sd"]),
                  nn.ModuleDict({"subtomograms": nets["c_s"], "density": nets["c_d"]}),
                  regularizers, formats, record)


@dataclass
class Optimizers:
    """The two optimisers, their gradient scalers and base learning rates (before the schedule)."""

    generator: torch.optim.Optimizer  # both generators and the regularisers' own parameters
    critic: torch.optim.Optimizer
    g_scaler: torch.amp.GradScaler
    c_scaler: torch.amp.GradScaler
    base_lrs: tuple[float, float]  # (generator, critic)


def build_optimizers(cfg: TrainConfig, models: Models, device: torch.device, precision: Precision) -> Optimizers:
    lr = cfg.optim.lr
    critic_lr = cfg.optim.critic_lr or lr
    return Optimizers(
        make_optimizer(cfg, [*models.gen_pair.parameters(), *models.regularizers.parameters()], lr, device),
        make_optimizer(cfg, list(models.critics.parameters()), critic_lr, device),
        precision.grad_scaler(), precision.grad_scaler(), (lr, critic_lr))


class SemanticLoss:
    """weight * cross-entropy of a frozen domain-D classifier on G_DS(d) against its own prediction on d."""

    def __init__(self, model: nn.Module, normalize: str, weight: float):
        self.model, self.normalize, self.weight = model, normalize, weight

    def __call__(self, d: torch.Tensor, fake_s: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.model(normalize_volumes(d.float(), self.normalize)).argmax(1)
        logits = self.model(normalize_volumes(fake_s.float(), self.normalize)).float()
        return self.weight * nn.functional.cross_entropy(logits, target)


def build_semantic_loss(cfg: TrainConfig, device: torch.device, box: int) -> SemanticLoss | None:
    """The semantic-consistency loss with its frozen classifier; None when the loss is off."""
    if not cfg.loss.semantic_weight > 0:
        return None
    model, metadata = load_cb3d(cfg.loss.semantic_classifier, device=device)
    if model.config.box != box:
        raise InputError(f"loss.semantic_classifier {cfg.loss.semantic_classifier}: trained on "
                         f"{model.config.box}^3 volumes, the run's are {box}^3")
    for p in model.parameters():
        p.requires_grad_(False)
    return SemanticLoss(model.eval(), metadata.get("normalize", "zscore"), cfg.loss.semantic_weight)


@dataclass
class Wrapped:
    """The callables the steps run: the networks behind DistributedDataParallel and torch.compile
    where those are on, else the networks themselves. The ``*_eval`` ones are never wrapped in DDP
    (no-grad forwards, and the frozen critics of the generator update)."""

    generators: Callable[..., Any]
    critics: dict[str, Callable[..., Any]]  # domain -> CriticPass
    generators_eval: Callable[..., Any]
    critics_eval: dict[str, Callable[..., Any]]  # domain -> critic


def wrap_networks(models: Models, ctx: DistContext, compile: bool) -> Wrapped:
    critics_eval: dict[str, Callable[..., Any]] = dict(models.critics.items())
    if ctx.distributed:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        generators: Callable[..., Any] = DDP(models.gen_pair, device_ids=ids, forward_sync_buffers=False)
        critics: dict[str, Callable[..., Any]] = {
            k: DDP(CriticPass(c), device_ids=ids, forward_sync_buffers=False) for k, c in models.critics.items()}
    else:
        generators = models.gen_pair
        critics = {k: CriticPass(c) for k, c in models.critics.items()}
    generators_eval: Callable[..., Any] = models.gen_pair
    if compile:
        generators = torch.compile(generators)
        critics = {k: torch.compile(c) for k, c in critics.items()}
        generators_eval = torch.compile(generators_eval)
        critics_eval = {k: torch.compile(c) for k, c in critics_eval.items()}
    return Wrapped(generators, critics, generators_eval, critics_eval)

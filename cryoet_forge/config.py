"""Typed run configuration: loaded from TOML, overridable from the command line, saved with the run.

A configuration file has the sections of ``TrainConfig`` (``[model]``, ``[loss]``,
``[data]``, ``[data.density]``, ``[data.subtomograms]``, ``[optim]``, ``[train]``,
``[log]``); every key is optional and defaults to the paper's setting where the paper
gives one. A key that does not exist is an error naming it (a typo must not silently
train with a default). ``*_options`` / ``options`` tables are passed as keyword options
to the named component, which rejects options it does not know.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from cryoet_forge.devices import check_seed
from cryoet_forge.io.files import check_input_file
from cryoet_forge.limits import INT64_MAX, check_allocation, check_int_range

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.io.atomic import atomic_path
from cryoet_forge.options import build_dataclass, check_at_least, check_choice


@dataclass
class ModelConfig:
    generator: str = "cryoetgan"
    #: options of the D -> S generator (noise channel on for cryoetgan)
    generator_options: dict = field(default_factory=dict)
    #: options of the S -> D generator; cryoetgan gets ``noise = false`` unless set here
    inverse_generator_options: dict = field(default_factory=dict)
    critic: str = "sn-wgan"
    critic_options: dict = field(default_factory=dict)


@dataclass
class LossConfig:
    adversarial: str = "wgan-clip"
    options: dict = field(default_factory=dict)
    #: lambda of the cycle-consistency L1 term
    cycle_weight: float = 10.0
    #: std of Gaussian noise added to generated subtomograms before the S -> D generator maps
    #: them back in the D -> S -> D cycle (0 = off, the paper). It stops the D -> S generator
    #: from hiding the input map in imperceptible low-amplitude patterns (CycleGAN
    #: "steganography", Chu et al. 2017): content must survive noise of this level.
    cycle_noise_std: float = 0.0
    #: lambda of the identity (self-regularisation) L1 term, mean |G_DS(s) - s| + mean |G_SD(d) - d|
    #: (CycleGAN, Zhu et al. 2017, section 5.2): each generator leaves an input that is already of
    #: its output domain unchanged, which keeps it from altering more than the domain gap needs
    #: (0 = off, the paper)
    identity_weight: float = 0.0
    #: lambda of the semantic-consistency term (CyCADA, Hoffman et al. 2018): a frozen classifier
    #: trained on domain D must give G_DS(d) the class it gives d, cross-entropy against its own
    #: prediction on d (0 = off, the paper). Needs ``semantic_classifier``
    semantic_weight: float = 0.0
    #: that classifier: a CB3D checkpoint (folder or .safetensors of ``forge classify train``)
    #: trained on labelled domain-D volumes; ``forge evaluate`` trains one itself when it is empty
    semantic_classifier: str = ""
    #: generator regularisers by registered name, each a table of its options (``weight`` among
    #: them), e.g. ``[loss.regularizers.patchnce]`` (CUT's PatchNCE, see cryoet_forge.contrastive)
    regularizers: dict = field(default_factory=dict)


@dataclass
class DomainConfig:
    dataset: str = "simulated"
    options: dict = field(default_factory=dict)


def _default_density() -> DomainConfig:
    return DomainConfig("simulated", {"simulator": "posed-map", "box": 32, "seed": 1})


def _default_subtomograms() -> DomainConfig:
    return DomainConfig("simulated", {"simulator": "fourier", "box": 32, "seed": 2})


@dataclass
class DataConfig:
    #: domain D: clean density maps
    density: DomainConfig = field(default_factory=_default_density)
    #: domain S: (experimental or simulated) subtomograms
    subtomograms: DomainConfig = field(default_factory=_default_subtomograms)
    #: std of the zero-mean Gaussian noise added to density maps during training (0 = off)
    density_noise_std: float = 0.0
    num_workers: int = 0
    #: domain S must follow the contrast convention (protein dark; cryoet_forge.data.polarity):
    #: "check" stops when its subtomograms are measurably protein-bright, "auto" inverts them,
    #: "off" skips the check
    polarity: str = "check"


@dataclass
class OptimConfig:
    name: str = "rmsprop"
    lr: float = 5e-4
    #: critic learning rate; 0 means the same as ``lr``
    critic_lr: float = 0.0
    betas: list = field(default_factory=lambda: [0.5, 0.999])
    weight_decay: float = 0.0
    #: fused (single-kernel) optimizer step where torch offers it (CUDA)
    fused: bool = False
    #: linear learning-rate decay: constant until step ``decay_start``, then down to zero over
    #: ``decay_steps`` steps (0 = a constant learning rate, the paper)
    decay_start: int = 0
    decay_steps: int = 0


@dataclass
class TrainOptions:
    steps: int = 1000
    #: global batch size (split across processes under torchrun)
    batch_size: int = 8
    n_critic: int = 5
    seed: int = 0
    precision: str = "fp32"
    compile: bool = False
    #: channels_last_3d memory format: "auto" (per network, the faster one measured at start-up),
    #: true or false for every network (exact either way: only the summation order changes)
    channels_last: bool | str = "auto"
    #: the generator update back-propagates through the forward pass of the last critic
    #: update instead of recomputing it (exact: same noise, same dropout draws)
    reuse_fakes: bool = True
    device: str = "auto"
    deterministic: bool = False
    tf32: bool = True


@dataclass
class LogConfig:
    every: int = 10
    image_every: int = 100
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    progress: bool = True


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainOptions = field(default_factory=TrainOptions)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRECISIONS = ("fp32", "bf16", "fp16", "auto")
OPTIMIZERS = ("rmsprop", "adam", "sgd")


def validate(cfg: TrainConfig, *, for_training: bool = False) -> TrainConfig:
    """The one validator of a training configuration: every value with a fixed set of choices or a
    range; ConfigError naming the key. ``for_training`` adds what only the trainer needs and a
    caller may fill in after reading the file (``loss.semantic_classifier`` when
    ``loss.semantic_weight > 0``: ``forge evaluate`` trains that classifier itself)."""
    t = cfg.train
    if not (isinstance(t.channels_last, bool) or t.channels_last == "auto"):
        raise ConfigError(f"train.channels_last {t.channels_last!r}; choose from: true, false, \"auto\"")
    check_choice("train.precision", t.precision, PRECISIONS)
    check_choice("optim.name", cfg.optim.name, OPTIMIZERS)
    check_choice("data.polarity", cfg.data.polarity, ("check", "auto", "off"))
    check_at_least((("train.steps", t.steps, 0), ("train.batch_size", t.batch_size, 1),
                    ("train.n_critic", t.n_critic, 1), ("log.every", cfg.log.every, 1),
                    ("log.image_every", cfg.log.image_every, 0),
                    ("log.checkpoint_every", cfg.log.checkpoint_every, 0),
                    ("log.keep_checkpoints", cfg.log.keep_checkpoints, 1),
                    ("data.num_workers", cfg.data.num_workers, 0)))
    _check_batch_size(cfg)

    check_int_range(t.steps, "train.steps", 0, INT64_MAX)  # torch counts steps in int64
    if not cfg.optim.lr > 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    o = cfg.optim
    if o.critic_lr < 0:
        raise ConfigError(f"optim.critic_lr must be >= 0 (0 = optim.lr), got {o.critic_lr}")
    if o.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    if o.decay_start < 0 or o.decay_steps < 0:
        raise ConfigError(f"optim.decay_start and optim.decay_steps must be >= 0, got {o.decay_start}, "
                          f"{o.decay_steps}")
    if o.name == "adam" and not (
            len(o.betas) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in o.betas)):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {o.betas}")
    if not cfg.data.density_noise_std >= 0:  # NaN fails too
        raise ConfigError(f"data.density_noise_std must be a number >= 0, got {cfg.data.density_noise_std}")
    loss = cfg.loss
    for key, value in (("cycle_noise_std", loss.cycle_noise_std), ("identity_weight", loss.identity_weight),
                       ("semantic_weight", loss.semantic_weight)):
        if not value >= 0:  # NaN fails too
            raise ConfigError(f"loss.{key} must be >= 0, got {value}")
    if for_training and loss.semantic_weight > 0 and not loss.semantic_classifier:
        raise ConfigError("loss.semantic_weight > 0 needs loss.semantic_classifier (a CB3D checkpoint "
                          "trained on domain D)")

    check_seed(t.seed, "train.seed")
    if t.device not in ("auto", "cpu", "cuda") and not t.device.startswith("cuda:"):
        raise ConfigError(f"train.device {t.device!r}; choose from: auto, cpu, cuda, cuda:N")
    return cfg


#: float32 volumes per batch item: a density map and a subtomogram, the four generator outputs of the
#: two cycles and the two identity/critic inputs; activations come on top, so this is a lower bound
_VOLUMES_PER_ITEM = 8


def _check_batch_size(cfg: TrainConfig) -> None:
    """``train.batch_size`` an integer torch can take, and (where both domains name their box) its
    batch of volumes no more than the available memory; checked before any tensor is made."""
    size = check_int_range(cfg.train.batch_size, "train.batch_size", 1, INT64_MAX)
    boxes = [domain.options.get("box") for domain in (cfg.data.density, cfg.data.subtomograms)]
    box = max((b for b in boxes if isinstance(b, int) and not isinstance(b, bool) and b > 0), default=None)
    if box is not None:
        check_allocation(size * _VOLUMES_PER_ITEM * 4 * box**3,
                         f"train.batch_size {size} (at least {_VOLUMES_PER_ITEM} volumes of {box}^3 voxels per item)",
                         "a smaller train.batch_size", error=ConfigError)


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.steps=10"`` -> ``("train.steps", 10)``; the value is read as TOML, else a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = (part.strip() for part in text.split("=", 1))
    if not key:
        raise ConfigError(f"override {text!r} has no key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def apply_overrides(table: dict, overrides: dict[str, Any]) -> dict:
    """Set dotted keys (``{"train.steps": 10}``) in a nested dict, creating tables."""
    for dotted, value in overrides.items():
        node = table
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {dotted!r}: {part!r} is not a table")
            node = child
        node[parts[-1]] = value
    return table


def config_from_dict(table: dict, overrides: dict[str, Any] | None = None) -> TrainConfig:
    table = apply_overrides(_deep_copy(table), dict(overrides or {}))
    return validate(build_dataclass(TrainConfig, table))


def _deep_copy(table: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in table.items()}


def read_toml(path: str | os.PathLike) -> dict:
    """The table of a TOML config file, or a ConfigError naming the file."""
    path = Path(path)
    try:
        check_input_file(path, "config file")
    except InputError as exc:
        raise ConfigError(str(exc).replace("no such config file", "config file not found")) from None
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML (not UTF-8 text: byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None


def load_config(path: str | os.PathLike | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a TOML file (or the defaults when ``path`` is None) and apply dotted overrides."""
    table = read_toml(path) if path is not None else {}
    try:
        return config_from_dict(table, overrides)
    except ConfigError as exc:
        if path is None:
            raise
        if overrides:  # blame the file only when the file alone fails too
            try:
                config_from_dict(table, None)
            except ConfigError:
                pass
            else:
                raise ConfigError(f"{exc} (from the command line, over {path})") from None
        raise ConfigError(f"{path}: {exc}") from None


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> Path:
    """Write ``cfg`` as TOML atomically; ``load_config`` reads it back to an equal config."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        tomli_w.dump(cfg.to_dict(), fh)
    return path

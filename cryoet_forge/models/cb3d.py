"""CB3D: the C3D-style subtomogram classifier of Che et al. (2018), the "Inception network" of cryo-ET.

Layout (3^3 convolutions, padding 1, each followed by BatchNorm and ReLU):

    block 1: 1 conv,  64 channels   -> max-pool 2
    block 2: 1 conv, 128 channels   -> max-pool 2
    block 3: 2 convs, 256 channels  -> max-pool 2
    block 4: 2 convs, 512 channels  -> max-pool 2
    fc6: Linear(flat, 4096) + ReLU + Dropout(0.5)
    fc7: Linear(4096, 4096) + ReLU + Dropout(0.5)    <- the 4096-d "dense-layer" features
    head: Linear(4096, n_classes), softmax for probabilities

The pools use ``ceil_mode`` so any box from 16^3 to 40^3 (and beyond) works: 40 -> 20 -> 10 ->
5 -> 3 and 16 -> 8 -> 4 -> 2 -> 1. The flattened size therefore depends on the box, which is
part of the model's configuration (and of its checkpoint metadata). Channel widths, the number
of convolutions per block and the FC width are options, so tests and CPU runs can use narrow
nets; the defaults are the paper-scale network.

Three input and output options, all off by default, are part of the configuration so that every
inference path (``run_inference``, the feature extractor, a loaded checkpoint) applies them the
way training did: ``lowpass_sigma`` (a fixed Gaussian low-pass of the input, in voxels),
``pool = "global"`` (global average pooling after the blocks instead of flattening them: a
small head for few particles) and ``tta`` (in eval mode, features and class probabilities are
averaged over the 8 combinations of axis flips, which keep a missing wedge about y).

Checkpoints are a ``.safetensors`` file of weights plus a ``.json`` file beside it holding the
architecture options, class names, input normalisation and anything the caller adds; nothing is
ever pickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from cryoet_forge.data.normalization import NORMALIZATIONS, normalize_volumes  # noqa: F401  (re-exported)
from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.io.atomic import write_bytes_atomic, write_json_atomic

WEIGHTS_NAME = "cb3d.safetensors"
METADATA_NAME = "cb3d.json"
FORMAT_VERSION = 1
POOLS = ("flatten", "global", "radial")
#: the Gaussian kernel reaches this many standard deviations (as scipy.ndimage.gaussian_filter)
LOWPASS_TRUNCATE = 4.0
#: the flips averaged by test-time augmentation: every subset of the three spatial axes
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))


def lowpass_sigma_voxels(resolution_A: float, voxel_size: float) -> float:
    """The Gaussian standard deviation (voxels) whose transfer function falls to 1/2 at the spatial
    frequency 1 / ``resolution_A``: exp(-2 pi^2 sigma^2 f^2) = 1/2, sigma = sqrt(ln 2 / 2) d / pi."""
    if resolution_A < 0 or voxel_size <= 0:
        raise ConfigError(f"low-pass needs a resolution >= 0 A and a voxel size > 0 A; got {resolution_A}, "
                          f"{voxel_size}")
    return float(np.sqrt(np.log(2.0) / 2.0) * resolution_A / (np.pi * voxel_size))


class GaussianLowpass(nn.Module):
    """A fixed (non-trainable, not saved) separable Gaussian blur of (B, C, S, S, S) volumes.

    Mirror boundaries and a kernel of radius ``round(4 sigma)``, as ``scipy.ndimage.gaussian_filter``
    with ``mode="mirror"``; the kernel sums to 1.
    """

    kernel: torch.Tensor

    def __init__(self, sigma: float, box: int):
        super().__init__()
        radius = min(int(LOWPASS_TRUNCATE * sigma + 0.5), box - 1)
        x = torch.arange(-radius, radius + 1, dtype=torch.float64)
        kernel = torch.exp(-0.5 * (x / sigma) ** 2)
        self.radius = radius
        self.register_buffer("kernel", (kernel / kernel.sum()).to(torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        h = x.reshape(b * c, 1, *x.shape[2:])
        k = self.kernel.to(h.dtype)
        r = self.radius
        for axis in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = k.numel()
            pad = [0, 0, 0, 0, 0, 0]
            pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
            h = nn.functional.conv3d(nn.functional.pad(h, pad, mode="reflect"), k.view(shape))
        return h.reshape(x.shape)


@dataclass
class CB3DConfig:
    """Architecture options of a CB3D network (saved with every checkpoint)."""

    num_classes: int
    box: int = 40
    channels: tuple[int, ...] = (64, 128, 256, 512)
    convs_per_block: tuple[int, ...] = (1, 1, 2, 2)
    fc_width: int = 4096
    dropout: float = 0.5
    in_channels: int = 1
    #: "flatten" the last block's output into fc6 (the paper), average it over space ("global") or
    #: over spherical shells about the box centre ("radial": one mean per channel and shell, a
    #: learnt radial profile; see :func:`shell_index`)
    pool: str = "flatten"
    #: standard deviation (voxels) of a fixed Gaussian low-pass applied to the input; 0 = none
    lowpass_sigma: float = 0.0
    #: eval mode: average features and probabilities over the 8 axis-flip combinations
    tta: bool = False

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.convs_per_block = tuple(int(c) for c in self.convs_per_block)
        if self.num_classes < 2:
            raise ConfigError(f"cb3d needs at least 2 classes, got num_classes={self.num_classes}")
        if self.box < 8:
            raise ConfigError(f"cb3d box must be >= 8 voxels, got box={self.box}")
        if not self.channels or len(self.channels) != len(self.convs_per_block):
            raise ConfigError(
                f"cb3d channels {list(self.channels)} and convs_per_block "
                f"{list(self.convs_per_block)} must be non-empty and of equal length"
            )
        if self.fc_width < 1 or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(
                f"cb3d fc_width must be >= 1 and dropout in [0, 1); got {self.fc_width}, {self.dropout}"
            )
        if self.pool not in POOLS:
            raise ConfigError(f"cb3d pool {self.pool!r}; choose from: {', '.join(POOLS)}")
        try:
            self.lowpass_sigma = float(self.lowpass_sigma)
        except (TypeError, ValueError):
            raise ConfigError(f"cb3d lowpass_sigma must be a number of voxels, got {self.lowpass_sigma!r}") from None
        if not self.lowpass_sigma >= 0:
            raise ConfigError(f"cb3d lowpass_sigma must be >= 0 voxels, got {self.lowpass_sigma}")
        self.tta = bool(self.tta)

    @property
    def feature_dim(self) -> int:
        return self.fc_width

    def pooled_size(self) -> int:
        size = self.box
        for _ in self.channels:
            size = -(-size // 2)  # ceil_mode pooling
        return size

    def pooled_features(self) -> int:
        """The width of the pooled last block, the input of fc6."""
        size = self.pooled_size()
        per_channel = {"flatten": size ** 3, "global": 1, "radial": int(shell_index(size).max()) + 1}
        return self.channels[-1] * per_channel[self.pool]


def shell_index(size: int) -> torch.Tensor:
    """(size, size, size) shell numbers of a cubic grid: ``floor`` of each voxel's distance from the
    grid centre, those beyond the inscribed sphere (radius ``size // 2``) in the outermost shell.

    ``pool = "radial"`` averages each channel within each shell: pooling that a rotation about the
    centre leaves unchanged (up to the grid), so the head sees a radial profile of learnt features
    instead of positions it would have to learn every orientation of from few particles.
    """
    centre = (size - 1) / 2.0
    axis = torch.arange(size, dtype=torch.float64) - centre
    radius = torch.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2)
    return torch.clamp(torch.floor(radius), max=size // 2).to(torch.long)


class RadialPool(nn.Module):
    """Mean of each channel over each spherical shell of :func:`shell_index`: (B, C, S, S, S) ->
    (B, C * shells), shell-major within each channel."""

    def __init__(self, size: int):
        super().__init__()
        index = shell_index(size).flatten()
        shells = int(index.max()) + 1
        weights = torch.zeros(index.numel(), shells, dtype=torch.float32)
        weights[torch.arange(index.numel()), index] = 1.0
        self.weights: torch.Tensor
        self.register_buffer("weights", weights / weights.sum(0, keepdim=True), persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (h.flatten(2) @ self.weights.to(h.dtype)).flatten(1)


class CB3D(nn.Module):
    """CB3D 3D-CNN classifier (Che et al. 2018): conv+BN+ReLU blocks, two dense layers, softmax."""

    def __init__(self, num_classes: int, box: int = 40, channels: Sequence[int] = (64, 128, 256, 512),
                 convs_per_block: Sequence[int] = (1, 1, 2, 2), fc_width: int = 4096,
                 dropout: float = 0.5, in_channels: int = 1, pool: str = "flatten",
                 lowpass_sigma: float = 0.0, tta: bool = False):
        super().__init__()
        self.config = CB3DConfig(num_classes=num_classes, box=box, channels=tuple(channels),
                                 convs_per_block=tuple(convs_per_block), fc_width=fc_width,
                                 dropout=dropout, in_channels=in_channels, pool=pool,
                                 lowpass_sigma=lowpass_sigma, tta=tta)
        self.lowpass: GaussianLowpass | None = (GaussianLowpass(self.config.lowpass_sigma, box) if self.config.lowpass_sigma > 0
                        else None)
        layers: list[nn.Module] = []
        previous = in_channels
        for width, n_convs in zip(self.config.channels, self.config.convs_per_block):
            for _ in range(n_convs):
                layers += [nn.Conv3d(previous, width, kernel_size=3, padding=1, bias=False),
                           nn.BatchNorm3d(width), nn.ReLU(inplace=True)]
                previous = width
            layers.append(nn.MaxPool3d(kernel_size=2, stride=2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.radial_pool = RadialPool(self.config.pooled_size()) if self.config.pool == "radial" else None
        self.fc6 = nn.Sequential(nn.Linear(self.config.pooled_features(), fc_width), nn.ReLU(inplace=True))
        self.fc7 = nn.Sequential(nn.Linear(fc_width, fc_width), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(fc_width, num_classes)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def _check_input(self, x: torch.Tensor) -> None:
        box = self.config.box
        if x.dim() != 5 or x.shape[1] != self.config.in_channels or tuple(x.shape[2:]) != (box, box, box):
            raise InputError(
                f"cb3d expects volumes of shape (B, {self.config.in_channels}, {box}, {box}, {box}), "
                f"got {tuple(x.shape)}"
            )

    def _embed_once(self, x: torch.Tensor) -> torch.Tensor:
        if self.lowpass is not None:
            x = self.lowpass(x)
        h = self.features(x)
        if self.radial_pool is not None:
            h = self.radial_pool(h)
        else:
            h = h.mean(dim=(2, 3, 4)) if self.config.pool == "global" else h.flatten(1)
        h = self.dropout(self.fc6(h))
        return self.fc7(h)

    def _averaging(self) -> bool:
        return self.config.tta and not self.training

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The fc7 activations (after ReLU, before dropout): the dense-layer features (B, fc_width);
        with ``tta`` in eval mode, their mean over the axis flips of the input."""
        self._check_input(x)
        if self._averaging():
            return torch.stack([self._embed_once(torch.flip(x, dims) if dims else x)
                                for dims in TTA_FLIPS]).mean(0)
        return self._embed_once(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes); with ``tta`` in eval mode, the log of the mean softmax over
        the axis flips (so that softmax of them is that mean)."""
        return self.forward_all(x)[1]

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits) from one pass (with ``tta`` in eval mode: one pass per flip)."""
        self._check_input(x)
        if self._averaging():
            each_features, each_probabilities = [], []
            for dims in TTA_FLIPS:
                f = self._embed_once(torch.flip(x, dims) if dims else x)
                each_features.append(f)
                each_probabilities.append(torch.softmax(self.head(self.dropout(f)).float(), dim=1))
            return torch.stack(each_features).mean(0), torch.stack(each_probabilities).mean(0).log()
        features = self._embed_once(x)
        return features, self.head(self.dropout(features))


# --- input normalisation -----------------------------------------------------------------



def as_volume_batch(volumes: Any) -> torch.Tensor:
    """Accept (S,S,S), (N,S,S,S) or (N,1,S,S,S) arrays/tensors (or a list of (S,S,S)); return (N,1,S,S,S) float32."""
    if isinstance(volumes, (list, tuple)):
        if not volumes:
            raise InputError("no volumes given (empty list)")
        volumes = np.stack([np.asarray(v, dtype=np.float32) for v in volumes])
    tensor = torch.as_tensor(np.asarray(volumes) if not isinstance(volumes, torch.Tensor) else volumes)
    tensor = tensor.detach().to(torch.float32)
    if tensor.dim() == 3:
        tensor = tensor[None, None]
    elif tensor.dim() == 4:
        tensor = tensor[:, None]
    if tensor.dim() != 5 or tensor.shape[1] != 1 or tensor.shape[0] == 0:
        raise InputError(f"expected volumes shaped (N, S, S, S) or (N, 1, S, S, S), got {tuple(tensor.shape)}")
    if not (tensor.shape[2] == tensor.shape[3] == tensor.shape[4]):
        raise InputError(f"expected cubic volumes, got {tuple(tensor.shape[2:])}")
    if not torch.isfinite(tensor).all():
        raise InputError("volumes contain NaN or Inf voxels")
    return tensor


# --- checkpoints --------------------------------------------------------------------------

def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights, metadata) for a checkpoint folder or a ``.safetensors`` file."""
    p = Path(path)
    if p.suffix == ".safetensors":
        return p, p.with_suffix(".json")
    return p / WEIGHTS_NAME, p / METADATA_NAME


def save_cb3d(model: CB3D, path: str | os.PathLike, class_names: Sequence[str],
              normalize: str = "zscore", extra: dict[str, Any] | None = None) -> Path:
    """Write weights (safetensors) and metadata (JSON) atomically; ``path`` is a folder or a .safetensors file."""
    if len(class_names) != model.num_classes:
        raise ConfigError(f"{len(class_names)} class names for a {model.num_classes}-class model")
    weights_path, meta_path = checkpoint_paths(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_bytes_atomic(weights_path, save(state, metadata={"format": "cryoet-forge-cb3d"}))
    config = asdict(model.config)
    config["channels"] = list(config["channels"])
    config["convs_per_block"] = list(config["convs_per_block"])
    metadata = {"format_version": FORMAT_VERSION, "model": "cb3d", "config": config,
                "class_names": list(class_names), "normalize": normalize, **(extra or {})}
    write_json_atomic(meta_path, metadata)
    return weights_path


def load_cb3d(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[CB3D, dict[str, Any]]:
    """Load a checkpoint written by ``save_cb3d``; returns (model in eval mode, metadata)."""
    weights_path, meta_path = checkpoint_paths(path)
    for required in (weights_path, meta_path):
        if not required.is_file():
            raise InputError(f"{required}: CB3D checkpoint file not found")
    try:
        metadata = json.loads(meta_path.read_text())
        config = metadata["config"]
        class_names = list(metadata["class_names"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{meta_path}: not a CB3D checkpoint metadata file ({exc})") from None
    try:
        model = CB3D(**config)
    except (TypeError, ValueError) as exc:  # unknown keys or values of the wrong type
        raise InputError(f"{meta_path}: not a CB3D checkpoint metadata file ({exc})") from None
    try:
        state = load_file(str(weights_path))
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{weights_path}: unreadable or mismatched CB3D weights ({first})") from None
    if len(class_names) != model.num_classes:
        raise InputError(f"{meta_path}: {len(class_names)} class names for {model.num_classes} outputs")
    model.to(device).eval()
    return model, metadata


# --- inference ----------------------------------------------------------------------------

@torch.no_grad()
def run_inference(model: CB3D, volumes: Any, normalize: str = "zscore", batch_size: int = 32,
                  device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(features (N, fc_width), probabilities (N, n_classes)) in eval mode, float32 numpy."""
    batch = as_volume_batch(volumes)
    was_training = model.training
    model.eval()
    features, probs = [], []
    try:
        for start in range(0, batch.shape[0], batch_size):
            x = normalize_volumes(batch[start:start + batch_size], normalize).to(device)
            f, logits = model.forward_all(x)
            features.append(f.float().cpu())
            probs.append(torch.softmax(logits.float(), dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(features).numpy(), torch.cat(probs).numpy()


class CB3DFeatureExtractor:
    """CB3D dense-layer (fc7, 4096-d by default) features of volumes; needs a trained checkpoint.

    ``checkpoint``: a folder or ``.safetensors`` file written by ``forge classify train``.
    Without one, a randomly initialised network of the given ``box``/``num_classes`` is used
    (seeded): random-network features are a known baseline for distribution distances, but
    a trained classifier is what the paper's IS/FID/PRDC mean.
    """

    def __init__(self, checkpoint: str | os.PathLike | None = None, device: str = "cpu",
                 batch_size: int = 32, box: int = 32, num_classes: int = 4, seed: int = 0,
                 normalize: str = "zscore", **arch: Any):
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        if checkpoint is not None:
            if arch:  # architecture options (or misspelt names) would be silently ignored
                raise ConfigError(f"cb3d option(s) {', '.join(sorted(arch))} do not apply with a checkpoint "
                                  "(its cb3d.json holds the architecture)")
            self.model, self.metadata = load_cb3d(checkpoint, device=self.device)
            self.normalize = self.metadata.get("normalize", "zscore")
            self.class_names = list(self.metadata["class_names"])
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.model = CB3D(num_classes=num_classes, box=box, **arch)
            self.model.to(self.device).eval()
            self.metadata = {}
            self.normalize = normalize
            self.class_names = [f"class-{i + 1}" for i in range(num_classes)]

    @property
    def box(self) -> int:
        return self.model.config.box

    @property
    def dim(self) -> int:
        return self.model.config.feature_dim

    def extract(self, volumes: Any) -> np.ndarray:
        """Volumes (N,S,S,S) or (N,1,S,S,S) -> features (N, D) float32."""
        return run_inference(self.model, volumes, self.normalize, self.batch_size, self.device)[0]

    def probabilities(self, volumes: Any) -> np.ndarray:
        """Volumes -> softmax class probabilities (N, n_classes), the input of the Inception Score."""
        return run_inference(self.model, volumes, self.normalize, self.batch_size, self.device)[1]

    def extract_with_probabilities(self, volumes: Any) -> tuple[np.ndarray, np.ndarray]:
        return run_inference(self.model, volumes, self.normalize, self.batch_size, self.device)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

"""Subtomogram classification with CB3D: load labelled sets, train, evaluate, extract features.

Everything works on in-memory ``LabelledVolumes`` (volumes + 0-based labels + class names +
voxel size), so the evaluation pipeline can feed simulated or generated arrays directly and
``forge classify`` can feed labelled folders (MRC + STAR, the "volume-folder" dataset).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from cryoet_forge import progress as display
from cryoet_forge import registry
from cryoet_forge.data.folders import UNLABELLED
from cryoet_forge.devices import check_device
from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.io.mrc import read_mrc
from cryoet_forge.io.star import read_particles
from cryoet_forge.models.cb3d import (
    CB3D,
    NORMALIZATIONS,
    POOLS,
    as_volume_batch,
    lowpass_sigma_voxels,
    normalize_volumes,
    run_inference,
)

#: voxel sizes closer than this (relative) count as equal
VOXEL_SIZE_RTOL = 1e-3


@dataclass
class LabelledVolumes:
    """A labelled set of cubic volumes held in memory."""

    volumes: np.ndarray  # (N, S, S, S) float32
    labels: np.ndarray  # (N,) int64, 0-based indices into class_names
    class_names: list[str]
    voxel_size: float
    source: str = "<memory>"

    def __post_init__(self) -> None:
        self.volumes = np.asarray(self.volumes, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.class_names = [str(c) for c in self.class_names]
        if self.volumes.ndim != 4 or len(set(self.volumes.shape[1:])) != 1:
            raise InputError(f"{self.source}: expected cubic volumes (N, S, S, S), got {self.volumes.shape}")
        if self.labels.shape != (self.volumes.shape[0],):
            raise InputError(
                f"{self.source}: {self.labels.shape[0] if self.labels.ndim else 0} labels for "
                f"{self.volumes.shape[0]} volumes"
            )
        if len(set(self.class_names)) != len(self.class_names):
            raise InputError(f"{self.source}: duplicate class names {self.class_names}")
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise InputError(
                f"{self.source}: labels must be in 0..{len(self.class_names) - 1}, got "
                f"{int(self.labels.min())}..{int(self.labels.max())}"
            )
        if not self.voxel_size or self.voxel_size <= 0:
            raise InputError(f"{self.source}: voxel size must be > 0 Angstrom, got {self.voxel_size}")

    def __len__(self) -> int:
        return int(self.volumes.shape[0])

    @property
    def box(self) -> int:
        return int(self.volumes.shape[1])

    def present_classes(self) -> list[str]:
        return [self.class_names[i] for i in sorted(set(self.labels.tolist()))]

    def subset(self, index: np.ndarray) -> "LabelledVolumes":
        return LabelledVolumes(self.volumes[index], self.labels[index], self.class_names,
                               self.voxel_size, self.source)

    def relabelled(self, class_names: Sequence[str]) -> "LabelledVolumes":
        """The same set with labels re-indexed into ``class_names`` (which must contain every present class)."""
        lookup = {name: i for i, name in enumerate(class_names)}
        missing = [c for c in self.present_classes() if c not in lookup]
        if missing:
            raise InputError(
                f"{self.source}: class(es) {', '.join(missing)} not among the expected classes "
                f"{', '.join(class_names)}"
            )
        mapping = np.array([lookup.get(name, -1) for name in self.class_names], dtype=np.int64)
        return LabelledVolumes(self.volumes, mapping[self.labels], list(class_names),
                               self.voxel_size, self.source)


# --- loading labelled folders ---------------------------------------------------------------

def _star_path(root: Path) -> Path | None:
    if root.is_file():
        return root if root.suffix == ".star" else None
    stars = sorted(root.glob("*.star"))
    return stars[0] if len(stars) == 1 else None


def _check_star_labels(star: Path) -> None:
    """Labels must be present and consistent: every class number maps to one class name and back."""
    table = read_particles(star)
    missing = [c for c in ("rlnImageName", "rlnClassNumber", "forgeClassName") if c not in table.columns]
    if missing:
        raise InputError(f"{star}: labels missing, STAR table has no column(s) {', '.join(missing)}")
    if table["rlnClassNumber"].isna().any() or table["forgeClassName"].isna().any():
        raise InputError(f"{star}: labels missing, some rows have an empty class number or name")
    pairs = table[["rlnClassNumber", "forgeClassName"]].drop_duplicates()
    for column, other in (("rlnClassNumber", "forgeClassName"), ("forgeClassName", "rlnClassNumber")):
        counts = pairs.groupby(column)[other].nunique()
        clash = counts[counts > 1]
        if len(clash):
            value = clash.index[0]
            seen = sorted(str(v) for v in pairs.loc[pairs[column] == value, other])
            raise InputError(
                f"{star}: labels do not match, {column} {value} appears with {other} {', '.join(seen)}"
            )


def load_labelled(root: str | Path) -> LabelledVolumes:
    """Read a labelled folder (STAR file, or a folder holding exactly one) into memory, unnormalised."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such file or folder")
    star = _star_path(root)
    if star is None:
        raise InputError(
            f"{root}: labels missing, expected a STAR file (or a folder with exactly one *.star) "
            "listing rlnImageName, rlnClassNumber and forgeClassName"
        )
    _check_star_labels(star)
    dataset = registry.create("dataset", "volume-folder", root=str(star), normalize="none")
    if len(dataset) == 0:
        raise InputError(f"{star}: the STAR table lists no particles")
    return _read_dataset(dataset, star)


def load_volumes(root: str | Path) -> LabelledVolumes:
    """Read any volume source into memory, unnormalised, labels kept where the source has them.

    ``root``: a STAR file (or a folder holding exactly one), a folder of ``.mrc``/``.map`` files
    (one class, ``unlabelled``), an ``.npz`` bundle, or a single ``.mrc``/``.map`` file holding
    one volume.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such file or folder")
    if root.is_file() and root.suffix.lower() in (".mrc", ".map"):
        volume, voxel_size = read_mrc(root)
        return LabelledVolumes(volume[None], np.zeros(1), [UNLABELLED], voxel_size, str(root))
    if root.is_file() and root.suffix.lower() not in (".star", ".npz"):
        raise InputError(f"{root}: expected a folder of .mrc volumes, a STAR file, an .npz bundle or "
                         "one .mrc volume")
    dataset = registry.create("dataset", "volume-folder", root=str(root), normalize="none")
    return _read_dataset(dataset, getattr(dataset, "source", root))


def _read_dataset(dataset, source: str | Path) -> LabelledVolumes:
    """Every item of a volume dataset (items ``{"volume", "label"}``), all of one box, in memory."""
    if len(dataset) == 0:
        raise InputError(f"{source}: no volumes found")
    volumes, labels = [], []
    box = None
    for i in range(len(dataset)):
        item = dataset[i]
        volume = item["volume"]
        volume = volume.numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
        volume = volume.reshape(volume.shape[-3:]) if volume.ndim == 4 else volume
        if box is None:
            box = volume.shape
        elif volume.shape != box:
            raise InputError(
                f"{source}: volumes of mixed sizes, particle {i + 1} is {volume.shape} but the first is {box}"
            )
        volumes.append(volume.astype(np.float32, copy=False))
        labels.append(int(item["label"]))
    return LabelledVolumes(np.stack(volumes), np.asarray(labels), list(dataset.class_names),
                           float(dataset.voxel_size), str(source))


def check_same_grid(a: LabelledVolumes, b: LabelledVolumes) -> None:
    """Two sets must share box and voxel size (InputError naming both sources)."""
    if a.box != b.box:
        raise InputError(f"volumes of mixed sizes: {a.source} has {a.box}^3 voxels, {b.source} has {b.box}^3")
    if not math.isclose(a.voxel_size, b.voxel_size, rel_tol=VOXEL_SIZE_RTOL):
        raise InputError(
            f"volumes of mixed voxel sizes: {a.source} has {a.voxel_size:g} A, {b.source} has {b.voxel_size:g} A"
        )


def check_trained_voxel_size(metadata: dict[str, Any], data: LabelledVolumes) -> None:
    """``data`` must have the voxel size a classifier was trained on (``metadata["voxel_size"]``, if recorded)."""
    trained = metadata.get("voxel_size")
    if trained is not None and not math.isclose(float(trained), data.voxel_size, rel_tol=VOXEL_SIZE_RTOL):
        raise InputError(f"volumes of mixed voxel sizes: {data.source} has {data.voxel_size:g} A but the "
                         f"classifier was trained on {float(trained):g} A")


def check_splits(train: LabelledVolumes, test: LabelledVolumes) -> list[str]:
    """Two splits must share box, voxel size and the set of present classes; returns the class list."""
    check_same_grid(train, test)
    train_classes, test_classes = train.present_classes(), test.present_classes()
    only_train = [c for c in train_classes if c not in test_classes]
    only_test = [c for c in test_classes if c not in train_classes]
    if only_train or only_test:
        parts = []
        if only_train:
            parts.append(f"{', '.join(only_train)} only in {train.source}")
        if only_test:
            parts.append(f"{', '.join(only_test)} only in {test.source}")
        raise InputError(f"classes present in one split only: {'; '.join(parts)}")
    return train_classes


# --- training ----------------------------------------------------------------------------------

@dataclass
class ClassifierOptions:
    """How a CB3D classifier is built and trained (also the ``[classifier]`` table of ``forge evaluate``).

    ``channels`` and ``convs_per_block`` are plain lists so that ``build_dataclass`` can read them
    from TOML; any sequence of integers is accepted and stored as a list of ints.
    """

    channels: list = field(default_factory=lambda: [64, 128, 256, 512])
    convs_per_block: list = field(default_factory=lambda: [1, 1, 2, 2])
    fc_width: int = 4096
    dropout: float = 0.5
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    normalize: str = "zscore"
    #: per-volume random flips of each axis (and so 180-degree rotations about each axis): they
    #: keep a missing wedge about y where it is, unlike 90-degree turns that move it
    augment: bool = True
    #: per-volume random permutations of the three axes (with ``augment``: all 48 symmetries of the
    #: cube). Unlike flips they move the missing wedge, so the network meets it from every side;
    #: they give a classifier of randomly oriented particles 6x the orientations to learn from
    permute_axes: bool = False
    #: per-volume random circular shifts of up to this many voxels along each axis (0 = none):
    #: picks are rarely centred to the voxel, and a shift keeps the wedge too
    max_shift: int = 0
    #: fraction of each class held out of training to choose the epoch (0 = train every epoch on
    #: everything and keep the last weights). With a validation part, training keeps the weights
    #: of the epoch with the best validation accuracy (ties: lower validation loss) and stops after
    #: ``patience`` epochs without a better one; ``epochs`` is then the most it trains
    validation_fraction: float = 0.0
    patience: int = 10
    #: train in the channels_last_3d memory format (the same products, another summation order;
    #: measured 1.2x faster for the narrow CPU networks, docs/results.md, "The classifier training rule")
    channels_last: bool = True
    device: str = "cpu"
    #: a fixed Gaussian low-pass of every input volume, part of the network (so training, inference
    #: and saved checkpoints all apply it): the resolution in Angstrom at which its transfer falls
    #: to 1/2, converted to voxels with the data's voxel size; 0 = none
    lowpass_A: float = 0.0
    #: "flatten" the last block into the first dense layer, or "global" average pooling over space
    pool: str = "flatten"
    #: mixup (Zhang et al. 2018): each batch is mixed with a shuffled copy of itself with a weight
    #: drawn from Beta(mixup, mixup), the loss mixed alike; 0 = off
    mixup: float = 0.0
    #: each epoch draws its volumes with replacement, every class equally likely (as many draws as
    #: there are fit volumes) instead of a shuffle of them all
    balanced: bool = False
    #: test-time augmentation, part of the network: in eval mode (validation, evaluation, features)
    #: features and probabilities are averaged over the 8 axis-flip combinations of the input
    tta: bool = False
    #: label smoothing of the cross-entropy loss (0 = none)
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        for key in ("channels", "convs_per_block"):
            values = getattr(self, key)
            try:
                setattr(self, key, [int(v) for v in values])
            except (TypeError, ValueError):
                raise ConfigError(f"classifier {key} must be a list of integers, got {values!r}") from None
        if self.normalize not in NORMALIZATIONS:
            raise ConfigError(f"normalize {self.normalize!r}; choose from: {', '.join(NORMALIZATIONS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(
                f"classifier needs epochs >= 1, batch_size >= 1, lr > 0; got {self.epochs}, "
                f"{self.batch_size}, {self.lr}"
            )
        if not 0 <= self.validation_fraction < 0.9:
            raise ConfigError(f"classifier validation_fraction must be in [0, 0.9), got {self.validation_fraction}")
        if self.patience < 1 or self.max_shift < 0:
            raise ConfigError(f"classifier needs patience >= 1 and max_shift >= 0; got {self.patience}, "
                              f"{self.max_shift}")
        if self.pool not in POOLS:
            raise ConfigError(f"classifier pool {self.pool!r}; choose from: {', '.join(POOLS)}")
        for key in ("lowpass_A", "mixup", "label_smoothing"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"classifier {key} must be a number >= 0, got {value!r}")
        if self.label_smoothing >= 1:
            raise ConfigError(f"classifier label_smoothing must be below 1, got {self.label_smoothing}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainHistory:
    loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0
    #: with a validation part: its accuracy and loss after each epoch, the epoch whose weights
    #: were kept (1-based) and the number of volumes held out
    val_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    n_validation: int = 0

    def summary(self) -> dict[str, Any]:
        return asdict(self)


def validation_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) indices: ``round(fraction * n_c)`` of each class held out, at least one.

    A class with fewer than 3 volumes stays whole in the fit part (holding one out would leave
    it almost nothing to learn from). Seeded, so the same data and seed give the same split.
    """
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for c in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, round(fraction * len(index))) if len(index) >= 3 and fraction > 0 else 0
        val.append(index[:n_val])
        fit.append(index[n_val:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


#: the six orders of the spatial axes of a (B, C, Z, Y, X) batch
AXIS_PERMUTATIONS: tuple[tuple[int, int, int], ...] = ((2, 3, 4), (2, 4, 3), (3, 2, 4), (3, 4, 2), (4, 2, 3),
                                                       (4, 3, 2))


def augment_batch(x: torch.Tensor, generator: torch.Generator, flips: bool, max_shift: int,
                  permute: bool = False) -> torch.Tensor:
    """Per-volume random axis flips and circular shifts of a (B, 1, S, S, S) batch (wedge-preserving)
    and, with ``permute``, random axis permutations (which move the wedge)."""
    b = x.shape[0]
    if permute:
        choice = torch.randint(len(AXIS_PERMUTATIONS), (b,), generator=generator)
        x = torch.stack([x[i:i + 1].permute(0, 1, *AXIS_PERMUTATIONS[int(c)])[0] for i, c in enumerate(choice)])
    if flips:
        masks = torch.rand(b, 3, generator=generator) < 0.5
        for axis in range(3):
            m = masks[:, axis].view(b, 1, 1, 1, 1)
            if bool(m.any()):
                x = torch.where(m, torch.flip(x, [2 + axis]), x)
    if max_shift > 0:
        shifts = torch.randint(-max_shift, max_shift + 1, (b, 3), generator=generator)
        x = torch.stack([torch.roll(x[i], tuple(int(v) for v in shifts[i]), dims=(1, 2, 3))
                         for i in range(b)])
    return x


def build_cb3d(options: ClassifierOptions, num_classes: int, box: int, seed: int,
               voxel_size: float | None = None) -> CB3D:
    """A fresh, seeded CB3D; ``voxel_size`` (Angstrom) is needed only with ``options.lowpass_A``."""
    sigma = 0.0
    if options.lowpass_A > 0:
        if voxel_size is None:
            raise ConfigError("classifier lowpass_A needs the voxel size of the volumes")
        sigma = lowpass_sigma_voxels(options.lowpass_A, voxel_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CB3D(num_classes=num_classes, box=box, channels=options.channels,
                    convs_per_block=options.convs_per_block, fc_width=options.fc_width,
                    dropout=options.dropout, pool=options.pool, lowpass_sigma=sigma, tta=options.tta)


def epoch_order(labels: torch.Tensor, generator: torch.Generator, balanced: bool) -> torch.Tensor:
    """Indices into ``labels`` for one epoch: a shuffle of all, or (``balanced``) as many draws with
    replacement in which every present class is equally likely."""
    if not balanced:
        return torch.randperm(len(labels), generator=generator)
    counts = torch.bincount(labels)
    weights = 1.0 / counts[labels].to(torch.float64)
    return torch.multinomial(weights, len(labels), replacement=True, generator=generator)


def mixup_batch(x: torch.Tensor, y: torch.Tensor, alpha: float, rng: np.random.Generator,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(mixed volumes, the partner labels, weight): ``lam x + (1 - lam) x[perm]``, lam ~ Beta(alpha, alpha)."""
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=generator)
    return lam * x + (1.0 - lam) * x[perm], y[perm], lam


def train_cb3d(data: LabelledVolumes, options: ClassifierOptions, seed: int = 0,
               progress: Callable[[int, float, float], None] | None = None,
               label: str = "CB3D training") -> tuple[CB3D, TrainHistory]:
    """Train a fresh CB3D on ``data``; deterministic for a given seed on CPU.

    Shows a progress stage ``label`` over the epochs (loss and training accuracy as info);
    ``progress(epoch, loss, accuracy)`` is also called after every epoch.
    """
    if len(data) < 2:
        raise InputError(f"{data.source}: need at least 2 volumes to train a classifier, got {len(data)}")
    if len(data.present_classes()) < 2:
        raise InputError(f"{data.source}: need at least 2 classes to train a classifier, "
                         f"got only {', '.join(data.present_classes())}")

    device = check_device(options.device, "classifier device")
    model = build_cb3d(options, len(data.class_names), data.box, seed, data.voxel_size).to(device)
    memory_format = torch.channels_last_3d if options.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.epochs)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=options.label_smoothing)
    mix_rng = np.random.default_rng([seed, 1])  # mixup weights, apart from the torch draws
    volumes = normalize_volumes(as_volume_batch(data.volumes), options.normalize)
    labels = torch.as_tensor(data.labels)
    fit_index, val_index = validation_split(data.labels, options.validation_fraction, seed)
    if len(val_index) and len(np.unique(data.labels[fit_index])) < 2:
        fit_index, val_index = np.arange(len(data)), val_index[:0]
    fit_volumes, fit_labels = volumes[fit_index], labels[fit_index]
    val_volumes, val_labels = volumes[val_index], labels[val_index]
    generator = torch.Generator().manual_seed(seed)
    history = TrainHistory(n_validation=len(val_index))
    best: tuple[float, float] | None = None  # (-accuracy, loss) of the kept epoch
    best_state: dict[str, torch.Tensor] | None = None
    start = time.perf_counter()
    model.train()

    with torch.random.fork_rng(devices=[]), display.stage(label, options.epochs, "epochs") as bar:
        torch.manual_seed(seed + 1)  # dropout draws
        for epoch in range(options.epochs):
            loss, accuracy = _train_epoch(model, optimizer, loss_fn, fit_volumes, fit_labels, options, generator,
                                          mix_rng, device, memory_format)
            scheduler.step()
            history.loss.append(loss)
            history.train_accuracy.append(accuracy)
            info = f"loss {history.loss[-1]:.3f} train accuracy {history.train_accuracy[-1]:.3f}"
            stop = False
            if len(val_index):
                val_acc, val_loss = _score(model, val_volumes, val_labels, options.batch_size, device)
                history.val_accuracy.append(val_acc)
                history.val_loss.append(val_loss)
                if best is None or (-val_acc, val_loss) < best:
                    best, history.best_epoch = (-val_acc, val_loss), epoch + 1
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                assert history.best_epoch is not None  # set by the first validation
                stop = epoch + 1 - history.best_epoch >= options.patience
                info += f" validation {val_acc:.3f} (best epoch {history.best_epoch})"
            bar.advance(info=info)
            if progress is not None:
                progress(epoch + 1, history.loss[-1], history.train_accuracy[-1])
            if stop:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model = model.to(memory_format=torch.contiguous_format)  # saved and used for inference as usual
    history.seconds = time.perf_counter() - start
    model.eval()
    return model, history


def _train_epoch(model: CB3D, optimizer: torch.optim.Optimizer, loss_fn: nn.Module, volumes: torch.Tensor,
                 labels: torch.Tensor, options: ClassifierOptions, generator: torch.Generator,
                 mix_rng: np.random.Generator, device: torch.device,
                 memory_format: torch.memory_format) -> tuple[float, float]:
    """One epoch of optimiser steps over the fit part (``volumes``, ``labels``) in a seeded order,
    augmented and mixed as ``options`` say: (mean loss, training accuracy) over the samples used."""
    order = epoch_order(labels, generator, options.balanced)
    total, correct, loss_sum = 0, 0, 0.0
    for begin in range(0, len(order), options.batch_size):
        index = order[begin:begin + options.batch_size]
        if len(index) < 2 and len(order) > 1:
            continue  # a lone sample gives BatchNorm nothing to normalise over
        x = volumes[index]
        if options.augment or options.max_shift or options.permute_axes:
            x = augment_batch(x, generator, options.augment, options.max_shift, options.permute_axes)
        y = labels[index]
        if options.mixup > 0:
            x, y_mix, lam = mixup_batch(x, y, options.mixup, mix_rng, generator)
        x, y = x.to(device).contiguous(memory_format=memory_format), y.to(device)
        logits = model(x)
        loss = loss_fn(logits, y)
        if options.mixup > 0:
            loss = lam * loss + (1.0 - lam) * loss_fn(logits, y_mix.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * len(index)
        correct += int((logits.argmax(1) == y).sum())
        total += len(index)
    return loss_sum / max(total, 1), correct / max(total, 1)


@torch.no_grad()
def _score(model: CB3D, volumes: torch.Tensor, labels: torch.Tensor, batch_size: int,
           device: torch.device) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` in eval mode on normalised volumes; back to train mode."""
    model.eval()
    correct, loss_sum = 0, 0.0
    try:
        for begin in range(0, len(labels), max(batch_size, 32)):
            x = volumes[begin:begin + max(batch_size, 32)].to(device)
            y = labels[begin:begin + max(batch_size, 32)].to(device)
            logits = model(x).float()
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    finally:
        model.train()
    return correct / len(labels), loss_sum / len(labels)


# --- evaluation --------------------------------------------------------------------------------

@dataclass
class ClassificationResult:
    """Scores of a classifier on a labelled set; ``confusion[i, j]`` counts true class i predicted as j."""

    class_names: list[str]
    accuracy: float
    per_class_accuracy: dict[str, float | None]
    confusion: np.ndarray
    predictions: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray
    features: np.ndarray

    def summary(self) -> dict[str, Any]:
        return {
            "n": int(self.labels.shape[0]),
            "accuracy": self.accuracy,
            "per_class_accuracy": dict(self.per_class_accuracy),
            "class_names": list(self.class_names),
            "confusion": self.confusion.tolist(),
        }


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def evaluate_cb3d(model: CB3D, data: LabelledVolumes, class_names: Sequence[str], normalize: str = "zscore",
                  batch_size: int = 32, device: str = "cpu") -> ClassificationResult:
    """Accuracy, per-class accuracy and confusion of ``model`` (whose outputs are ``class_names``) on ``data``."""
    if len(class_names) != model.num_classes:
        raise ConfigError(f"{len(class_names)} class names for a {model.num_classes}-class model")
    if data.box != model.config.box:
        raise InputError(
            f"{data.source}: volumes are {data.box}^3 but the classifier was trained on {model.config.box}^3"
        )
    data = data.relabelled(class_names)
    features, probabilities = run_inference(model, data.volumes, normalize, batch_size, device)
    return score_probabilities(probabilities, data, class_names, features)


def score_probabilities(probabilities: np.ndarray, data: LabelledVolumes, class_names: Sequence[str],
                        features: np.ndarray | None = None) -> ClassificationResult:
    """Accuracy, per-class accuracy and confusion of (N, C) ``probabilities`` (columns in
    ``class_names`` order) against the labels of ``data``."""
    data = data.relabelled(class_names)
    probabilities = np.asarray(probabilities)
    if probabilities.shape != (len(data), len(class_names)):
        raise ConfigError(f"classifier gave probabilities of shape {probabilities.shape}; expected "
                          f"({len(data)}, {len(class_names)}): one row per volume, one column per class")
    predictions = probabilities.argmax(axis=1)
    confusion = confusion_matrix(data.labels, predictions, len(class_names))
    per_class: dict[str, float | None] = {}
    for i, name in enumerate(class_names):
        n = int(confusion[i].sum())
        per_class[name] = float(confusion[i, i] / n) if n else None
    accuracy = float((predictions == data.labels).mean())
    return ClassificationResult(list(class_names), accuracy, per_class, confusion, predictions, data.labels,
                                probabilities, np.zeros((len(data), 0)) if features is None else features)



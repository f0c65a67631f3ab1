"""The built-in picker: a 3-D U-Net trained on labelled tomograms to give every voxel a class
(background or a particle class), then class peaks as picks (DeepFinder's recipe).

Training draws random crops of ``patch``^3 voxels from the training tomograms, a fraction
``particle_crops`` of them centred near a random particle (so a sparse tomogram still shows its
particles), flips each axis at random (flips keep the missing wedge), and minimises the
cross-entropy against sphere targets (``label_fraction`` x each class's radius around every
centre, :func:`~cryoet_forge.picking.tomograms.sphere_labels`) weighted by the inverse square root
of each target's frequency. Each tomogram is z-scored as a whole first (after a Gaussian low-pass
to ``lowpass_A`` when it is set: the transfer falls to 1/2 at 1 / ``lowpass_A``, converted to voxels
with each tomogram's voxel size, as the classifier's option of that name). Picking runs the network
over the whole tomogram by overlapping tiles (:mod:`cryoet_forge.models.tiling`) and keeps each
class's probability peaks (:func:`~cryoet_forge.picking.peaks.class_peaks`) at least
``min_distance`` x its radius apart.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from scipy import ndimage
from torch import nn

from cryoet_forge import progress
from cryoet_forge.devices import check_device
from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.io.atomic import atomic_path, write_json_atomic
from cryoet_forge.models.cb3d import lowpass_sigma_voxels
from cryoet_forge.models.tiling import apply_tiled
from cryoet_forge.picking.peaks import class_peaks
from cryoet_forge.picking.tomograms import LabelledTomogram, sphere_labels
from cryoet_forge.picking.unet import SegmentationUNet

#: the files ``SegmentationPicker.save`` writes
WEIGHTS, STATE = "weights.safetensors", "state.json"


@dataclass
class PickerOptions:
    """How the segmentation picker is built, trained and applied."""

    #: channels of the U-Net's levels (each level halves the size)
    channels: list = field(default_factory=lambda: [16, 32, 64])
    #: training crop size (voxels; a multiple of 2^(levels - 1))
    patch: int = 48
    steps: int = 400
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    #: the radius of each sphere target as a fraction of the particle radius
    label_fraction: float = 0.5
    #: the share of training crops centred near a particle (the rest anywhere)
    particle_crops: float = 0.5
    #: random flips of each axis of each crop
    augment: bool = True
    #: Gaussian low-pass of every tomogram before z-scoring, training and picking (the resolution in
    #: Angstrom where its transfer is 1/2); 0 = none. A low-pass near the particles' size keeps their
    #: blobs and removes fine background texture whose strength a simulation rarely matches.
    lowpass_A: float = 0.0
    #: a pick needs at least this probability of its class
    threshold: float = 0.5
    #: picks of a class are at least this fraction of its radius apart
    min_distance: float = 1.0
    #: tiles of the picking pass (voxels; a multiple of 2^(levels - 1)) and their overlap
    tile: int = 64
    overlap: int = 16
    device: str = "cpu"

    def __post_init__(self) -> None:
        try:
            self.channels = [int(c) for c in self.channels]
        except (TypeError, ValueError):
            raise ConfigError(f"picker channels must be a list of integers, got {self.channels!r}") from None
        multiple = 2 ** (len(self.channels) - 1)
        for key in ("patch", "tile"):
            value = getattr(self, key)
            if value < multiple or value % multiple:
                raise ConfigError(f"picker {key} must be a positive multiple of {multiple} (the U-Net's "
                                  f"{len(self.channels)} levels), got {value}")
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ConfigError(f"picker needs steps >= 1, batch_size >= 1, lr > 0; got {self.steps}, "
                              f"{self.batch_size}, {self.lr}")
        if not 0 <= self.overlap < self.tile:
            raise ConfigError(f"picker overlap must be in [0, tile), got {self.overlap}")
        for key in ("label_fraction", "particle_crops", "threshold"):
            value = getattr(self, key)
            if not 0 <= value <= 1:
                raise ConfigError(f"picker {key} must be in [0, 1], got {value}")
        if isinstance(self.lowpass_A, bool) or not isinstance(self.lowpass_A, (int, float)) or not self.lowpass_A >= 0:
            raise ConfigError(f"picker lowpass_A must be a number >= 0 (Angstrom; 0 = none), got {self.lowpass_A!r}")
        if not self.label_fraction > 0 or self.min_distance < 0:
            raise ConfigError(f"picker needs label_fraction > 0 and min_distance >= 0; got "
                              f"{self.label_fraction}, {self.min_distance}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def zscore(volume: np.ndarray) -> np.ndarray:
    v = np.asarray(volume, dtype=np.float32)
    std = float(v.std())
    return (v - float(v.mean())) / (std if std > 0 else 1.0)


def prepare_volume(volume: np.ndarray, lowpass_A: float, voxel_size: float | None) -> np.ndarray:
    """What the network reads: ``volume`` low-passed to ``lowpass_A`` (when > 0; needs the voxel
    size) and z-scored as a whole."""
    if lowpass_A > 0:
        if voxel_size is None or not voxel_size > 0:
            raise InputError(f"picker lowpass_A {lowpass_A:g} A needs the tomogram's voxel size, got {voxel_size}")
        sigma = lowpass_sigma_voxels(lowpass_A, voxel_size)
        volume = ndimage.gaussian_filter(np.asarray(volume, dtype=np.float32), sigma, mode="mirror")
    return zscore(volume)


@dataclass
class _Prepared:
    volume: np.ndarray
    labels: np.ndarray
    centres: np.ndarray  # (N, 3) (z, y, x) voxels of every particle inside


def _crop_start(shape: tuple[int, ...], patch: int, centre: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    high = np.array(shape) - patch
    if centre is None:
        return np.array([rng.integers(0, h + 1) for h in high])
    jitter = rng.integers(-patch // 4, patch // 4 + 1, size=3)
    return np.clip(np.rint(centre).astype(int) - patch // 2 + jitter, 0, high)


class SegmentationPicker:
    """The built-in picker (``forge list picker``): see the module docstring."""

    def __init__(self, options: PickerOptions | None = None, **kwargs: Any):
        self.options = options or PickerOptions(**kwargs)
        self.class_names: list[str] = []
        self.radii_A: dict[str, float] = {}
        self.model: SegmentationUNet | None = None
        self.history: dict[str, Any] = {}

    # -- training -------------------------------------------------------------------------------

    def _prepare(self, tomograms: Sequence[LabelledTomogram]) -> list[_Prepared]:
        opt = self.options
        prepared = []
        for t in tomograms:
            if min(t.volume.shape) < opt.patch:
                raise InputError(f"tomogram {t.name}: shape {t.volume.shape} is smaller than the training "
                                 f"patch ({opt.patch}); lower picker patch")
            radii = {c: t.radius_voxels(c) for c in t.picks}
            labels = sphere_labels(t.volume.shape, t.picks, radii, self.class_names, opt.label_fraction)
            centres = np.concatenate([p[:, ::-1] for p in t.picks.values()]) if t.picks else np.zeros((0, 3))
            inside = np.all((centres >= 0) & (centres < np.array(t.volume.shape)), axis=1)
            prepared.append(_Prepared(prepare_volume(t.volume, opt.lowpass_A, t.voxel_size), labels, centres[inside]))
        return prepared

    def _batch(self, data: list[_Prepared], rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        opt = self.options
        volumes, targets = [], []
        for _ in range(opt.batch_size):
            item = data[int(rng.integers(len(data)))]
            centre = (item.centres[int(rng.integers(len(item.centres)))]
                      if len(item.centres) and rng.random() < opt.particle_crops else None)
            z, y, x = _crop_start(item.volume.shape, opt.patch, centre, rng)
            v = item.volume[z:z + opt.patch, y:y + opt.patch, x:x + opt.patch]
            t = item.labels[z:z + opt.patch, y:y + opt.patch, x:x + opt.patch]
            if opt.augment:
                for axis in range(3):
                    if rng.random() < 0.5:
                        v, t = np.flip(v, axis), np.flip(t, axis)
            volumes.append(np.ascontiguousarray(v))
            targets.append(np.ascontiguousarray(t))
        return torch.from_numpy(np.stack(volumes))[:, None], torch.from_numpy(np.stack(targets).astype(np.int64))

    def fit(self, tomograms: Sequence[LabelledTomogram], seed: int = 0) -> SegmentationPicker:
        """Train a fresh network on ``tomograms``; deterministic for a given seed on CPU."""
        if not tomograms:
            raise InputError("the picker needs at least one labelled tomogram to train on")
        opt = self.options
        self.class_names = sorted({c for t in tomograms for c in t.picks})
        if not self.class_names:
            raise InputError("the training tomograms have no picks")
        self.radii_A = {}
        for t in tomograms:
            for c in t.picks:
                self.radii_A.setdefault(c, float(t.radii_A[c]))
        data = self._prepare(tomograms)
        device = check_device(opt.device, "picker device")
        counts = np.bincount(np.concatenate([d.labels.ravel() for d in data]), minlength=len(self.class_names) + 1)
        inverse = 1.0 / np.sqrt(np.maximum(counts, 1).astype(np.float64))
        weights = torch.as_tensor(inverse / inverse.mean(), dtype=torch.float32, device=device)
        rng = np.random.default_rng(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = SegmentationUNet(len(self.class_names) + 1, opt.channels).to(device)
            optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=opt.steps)
            loss_fn = nn.CrossEntropyLoss(weight=weights)
            losses: list[float] = []
            start = time.perf_counter()
            model.train()
            with progress.stage("picker training", opt.steps, "steps") as bar:
                for _ in range(opt.steps):
                    x, y = self._batch(data, rng)
                    loss = loss_fn(model(x.to(device)), y.to(device))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    losses.append(float(loss.detach()))
                    bar.advance(1, info=f"loss {losses[-1]:.3f}")
        self.model = model.eval()
        self.history = {"loss": losses, "seconds": time.perf_counter() - start, "target_voxels": counts.tolist()}
        return self

    # -- saving ---------------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike) -> None:
        """The trained network (``weights.safetensors``) and its classes and radii (``state.json``)
        into the existing ``folder`` (``forge pick train``)."""
        if self.model is None:
            raise InputError("the picker is not trained; call fit first")
        folder = Path(folder)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        with atomic_path(folder / WEIGHTS) as tmp:
            save_file(weights, str(tmp))
        write_json_atomic(folder / STATE, {"class_names": self.class_names, "radii_A": self.radii_A,
                                           "channels": self.options.channels,
                                           "final_loss": self.history.get("loss", [None])[-1]})

    def load(self, folder: str | os.PathLike) -> SegmentationPicker:
        """The picker ``save`` wrote into ``folder`` (its network built with this picker's options)."""
        folder = Path(folder)
        try:
            state = json.loads((folder / STATE).read_text())
            weights = load_file(str(folder / WEIGHTS))
            class_names = [str(c) for c in state["class_names"]]
            radii = {str(k): float(v) for k, v in state["radii_A"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as exc:
            raise InputError(f"{folder}: not a saved unet-segmentation picker ({WEIGHTS} and {STATE}): {exc}") from None
        if [int(c) for c in state.get("channels", [])] != self.options.channels:
            raise InputError(f"{folder}: the picker was saved with channels {state.get('channels')}, not "
                             f"{self.options.channels}")
        model = SegmentationUNet(len(class_names) + 1, self.options.channels)
        try:
            model.load_state_dict(weights)
        except RuntimeError as exc:
            raise InputError(f"{folder}: {WEIGHTS} does not fit the picker's network: {str(exc).splitlines()[0]}") from None
        device = check_device(self.options.device, "picker device")
        self.class_names, self.radii_A, self.model = class_names, radii, model.to(device).eval()
        return self

    # -- picking --------------------------------------------------------------------------------

    def probabilities(self, volume: np.ndarray, voxel_size: float | None = None) -> np.ndarray:
        """(1 + n_classes, Z, Y, X) softmax of the whole (Z, Y, X) ``volume`` (low-passed when the
        picker's ``lowpass_A`` is set, which needs ``voxel_size`` in Angstrom; z-scored)."""
        if self.model is None:
            raise InputError("the picker is not trained; call fit first")
        model, opt = self.model, self.options
        device = next(model.parameters()).device

        def softmax(tiles: torch.Tensor, _: list) -> torch.Tensor:
            return torch.softmax(model(tiles), dim=1)

        return apply_tiled(softmax, prepare_volume(volume, opt.lowpass_A, voxel_size), opt.tile, opt.overlap, batch_size=2, device=device,
                           channels=len(self.class_names) + 1)

    def pick(self, volume: np.ndarray, voxel_size: float) -> dict[str, np.ndarray]:
        """class -> (N, 3) (x, y, z) voxel centres of the picks in ``volume`` (at ``voxel_size`` A)."""
        found = self.pick_with_scores(volume, voxel_size)
        return {name: points for name, (points, _) in found.items()}

    def pick_with_scores(self, volume: np.ndarray, voxel_size: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if not voxel_size > 0:
            raise InputError(f"voxel size must be > 0 A, got {voxel_size}")
        # a distance beyond the tomogram's size keeps one pick per class either way (and bounds the filter)
        largest = float(max(np.shape(volume)))
        distances = [min(self.options.min_distance * self.radii_A[c] / voxel_size, largest) for c in self.class_names]
        return class_peaks(self.probabilities(volume, voxel_size), self.class_names, distances, self.options.threshold)

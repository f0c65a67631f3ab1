"""Monte-Carlo-dropout uncertainty maps (Gal & Ghahramani 2016), as in the CryoETGAN paper.

The D -> S generator runs ``samples`` times on one density map with its dropout layers
active and everything else in inference mode; the per-voxel mean and standard deviation
of the outputs are the prediction and its uncertainty. The generator's noise volume is
drawn once and held fixed across the samples, so the std measures the network's
(dropout) uncertainty rather than the intended noise-driven diversity.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cryoet_forge.contracts import noise_shape, takes_noise
from cryoet_forge.errors import InputError
from cryoet_forge.generate import (
    _as_batch,
    check_run_voxel_size,
    density_normalization,
    load_generator,
    run_metadata,
    run_seeded,
)
from cryoet_forge.io.atomic import atomic_folder, atomic_path, check_output_folder
from cryoet_forge.io.mrc import read_mrc, write_mrc
from cryoet_forge.limits import check_allocation

# matplotlib is imported when the overlay is drawn (start-up time).


def _dropout_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


@torch.no_grad()
def mc_dropout(run_dir: str | os.PathLike, volume: np.ndarray, samples: int = 20, seed: int = 0,
               dropout: float | None = None, batch_size: int = 10,
               checkpoint: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(S, S, S) density map -> (mean, std), each (S, S, S) float32, over ``samples`` dropout draws.

    ``dropout`` sets the dropout probability for a run trained without dropout (or overrides it);
    ``checkpoint`` picks a checkpoint folder of the run (default: the newest).
    """
    if samples < 2:
        raise InputError(f"samples must be >= 2 for a standard deviation, got {samples}")
    overrides: dict[str, Any] = {} if dropout is None else {"dropout": float(dropout)}
    model, cfg = load_generator(run_dir, checkpoint=checkpoint, **overrides)
    layers = _dropout_layers(model)
    if not layers:
        raise InputError(f"{run_dir}: the generator has no dropout layers (trained with dropout = 0); "
                         "pass a dropout probability (forge uncertainty --dropout P) or train with dropout "
                         "(model.generator_options dropout > 0)")
    for layer in layers:
        layer.train()
    box = int(run_metadata(Path(run_dir))["box"])

    # every draw is kept (float32) and stacked in float64 for the mean and std
    check_allocation(12 * samples * box**3, f"--samples {samples} ({samples} generated volumes of {box}^3 voxels "
                     "kept for the standard deviation)", "fewer --samples")
    x = _as_batch(volume, box, density_normalization(cfg))
    if x.shape[0] != 1:
        raise InputError(f"expected one density map (S, S, S), got {tuple(x.shape)}")
    noise = None
    if takes_noise(model):
        noise = torch.randn(noise_shape(model, tuple(x.shape)), generator=torch.Generator().manual_seed(seed))
    inputs = x.expand(samples, *x.shape[1:]).contiguous()
    stack = run_seeded(model, inputs, seed, batch_size, noise=noise, label="MC dropout", unit="samples").double()
    return (stack.mean(0).float().numpy(), stack.std(0, unbiased=True).float().numpy())


def save_overlay(path: str | os.PathLike, mean: np.ndarray, std: np.ndarray, title: str = "") -> Path:
    """PNG: central z, y and x slices of the mean (grey) with the std overlaid (colour)."""
    # start-up: matplotlib (about 0.4 s) is loaded only when a figure is drawn
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # start-up: as above

    fig = Figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 3)
    vmax = float(np.percentile(std, 99.5)) or 1e-6
    image = None
    for axis, ax in enumerate(axes):
        centre = mean.shape[axis] // 2
        m, s = np.take(mean, centre, axis=axis), np.take(std, centre, axis=axis)
        ax.imshow(m, cmap="gray", interpolation="nearest")
        image = ax.imshow(s, cmap="inferno", alpha=0.55, vmin=0.0, vmax=vmax, interpolation="nearest")
        ax.set_title(f"central {'zyx'[axis]} slice", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    assert image is not None  # three axes were drawn
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="per-voxel std")
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)


#: what ``uncertainty_to_folder`` writes into OUT
OUTPUT_NAMES = ("mean.mrc", "std.mrc", "overlay.png")


def uncertainty_to_folder(run_dir, map_path, out_dir, samples: int = 20, seed: int = 0,
                          dropout: float | None = None, overwrite: bool = False) -> list[Path]:
    """Write OUT/mean.mrc, OUT/std.mrc and OUT/overlay.png for one density map, together (an
    earlier result in OUT is replaced as a whole only with ``overwrite``)."""
    out_dir = Path(out_dir)
    existing = check_output_folder(out_dir, OUTPUT_NAMES, "an uncertainty map", overwrite)
    volume, voxel = read_mrc(map_path)
    check_run_voxel_size(Path(run_dir), float(voxel), str(map_path))
    box = int(run_metadata(Path(run_dir))["box"])
    if volume.shape != (box, box, box):
        raise InputError(f"{map_path}: a map of {' x '.join(map(str, volume.shape))} voxels, but the run was "
                         f"trained on {box}^3 volumes; expected a map of the run's box")
    mean, std = mc_dropout(run_dir, volume, samples=samples, seed=seed, dropout=dropout)
    with atomic_folder(out_dir, stale=tuple(existing)) as work:
        write_mrc(work / "mean.mrc", mean, voxel)
        write_mrc(work / "std.mrc", std, voxel)
        save_overlay(work / "overlay.png", mean, std, title=f"{Path(map_path).name}: MC dropout, {samples} samples")
    return [out_dir / name for name in OUTPUT_NAMES]

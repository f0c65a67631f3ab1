"""Per-volume intensity normalisation: the one implementation every dataset, model and metric uses."""

from __future__ import annotations

import torch

from cryoet_forge.errors import ConfigError

NORMALIZATIONS = ("zscore", "minmax", "none")


def check_normalization(name: str) -> str:
    if name not in NORMALIZATIONS:
        raise ConfigError(f"normalize {name!r}: choose from {', '.join(NORMALIZATIONS)}")
    return name


def normalize_volumes(volumes: torch.Tensor, mode: str) -> torch.Tensor:
    """Each volume of a (B, ...) batch on its own: ``zscore`` (mean 0, std 1), ``minmax`` ([-1, 1]),
    ``none`` (unchanged). A flat volume (every voxel equal) maps to 0 in both ``zscore`` and ``minmax``."""
    check_normalization(mode)
    if mode == "none":
        return volumes
    flat = volumes.reshape(volumes.shape[0], -1)
    if mode == "zscore":
        centre = flat.mean(dim=1, keepdim=True)
        spread = flat.std(dim=1, keepdim=True)
        scale, offset = 1.0, 0.0
    else:
        centre = flat.min(dim=1, keepdim=True).values
        spread = flat.max(dim=1, keepdim=True).values - centre
        scale, offset = 2.0, -1.0
    varies = spread > 0
    out = scale * (flat - centre) / torch.where(varies, spread, torch.ones_like(spread)) + offset
    return torch.where(varies, out, torch.zeros_like(out)).reshape(volumes.shape)


def normalize_volume(volume: torch.Tensor, mode: str) -> torch.Tensor:
    """One volume, as :func:`normalize_volumes` treats each volume of a batch."""
    return normalize_volumes(volume.unsqueeze(0), mode)[0]

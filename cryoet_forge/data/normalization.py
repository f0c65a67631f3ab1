"""Per-volume intensity normalisation."""

from __future__ import annotations

import torch

from cryoet_forge.errors import ConfigError

NORMALIZATIONS = ("zscore", "minmax", "none")


def check_normalization(name: str) -> str:
    if name not in NORMALIZATIONS:
        raise ConfigError(f"normalize {name!r}: choose from {', '.join(NORMALIZATIONS)}")
    return name


def normalize_volume(volume: torch.Tensor, mode: str) -> torch.Tensor:
    """``zscore``: mean 0, std 1; ``minmax``: [-1, 1]; ``none``: unchanged. Flat volumes map to 0."""
    if mode == "none":
        return volume
    if mode == "zscore":
        std = volume.std()
        return (volume - volume.mean()) / std if std > 0 else torch.zeros_like(volume)
    if mode == "minmax":
        lo, hi = volume.min(), volume.max()
        return 2.0 * (volume - lo) / (hi - lo) - 1.0 if hi > lo else torch.zeros_like(volume)
    raise ConfigError(f"normalize {mode!r}: choose from {', '.join(NORMALIZATIONS)}")

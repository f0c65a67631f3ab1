"""Validation and random draws shared by the simulators."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from cryoet_forge.errors import ConfigError
from cryoet_forge.io.mrc import check_voxel_size


def as_range(value: float | Sequence[float], name: str, positive: bool = False) -> tuple[float, float]:
    """A number or a (low, high) pair -> (low, high) with low <= high, ConfigError otherwise."""
    if isinstance(value, (int, float)):
        low = high = float(value)
    else:
        try:
            low, high = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} {value!r}: expected a number or a (low, high) pair") from None
    if low > high:
        low, high = high, low
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"{name} {value!r}: expected finite values")
    if positive and low <= 0:
        raise ConfigError(f"{name} {value!r}: expected values > 0")
    return low, high


def uniform(n: int, bounds: tuple[float, float], generator: torch.Generator | None) -> torch.Tensor:
    """``n`` float64 draws uniform in [low, high] (one draw per particle even when low == high)."""
    device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    return bounds[0] + (bounds[1] - bounds[0]) * u.cpu()


def check_maps(maps: torch.Tensor, voxel_size: float) -> torch.Tensor:
    """(B, S, S, S) or (B, 1, S, S, S) float maps -> (B, S, S, S); ConfigError otherwise."""
    check_voxel_size(voxel_size)
    if maps.dim() == 5 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.dim() != 4 or not (maps.shape[1] == maps.shape[2] == maps.shape[3]):
        raise ConfigError(f"maps of shape {tuple(maps.shape)}: expected (B, S, S, S) cubic volumes")
    if not torch.is_floating_point(maps):
        maps = maps.float()
    return maps

"""Random poses (uniform SO(3) rotation + shift) and the ``posed-map`` simulator: clean posed maps.

Clean randomly rotated and shifted density maps are domain D of CryoETGAN.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from cryoet_forge.errors import ConfigError
from cryoet_forge.simulate.parameters import check_maps, uniform
from cryoet_forge.simulate.rotations import (
    matrices_to_euler_zyz,
    quaternions_to_matrices,
    random_quaternions,
    rigid_transform,
)


def draw_poses(n: int, max_shift: float, generator: torch.Generator | None,
               rotate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform SO(3) rotations (n, 3, 3) and uniform shifts (n, 3) in +-max_shift voxels (float64, CPU)."""
    if rotate:
        rotations = quaternions_to_matrices(random_quaternions(n, generator)).cpu()
    else:
        rotations = torch.eye(3, dtype=torch.float64).expand(n, 3, 3).clone()
    shifts = torch.stack([uniform(n, (-max_shift, max_shift), generator) for _ in range(3)], dim=1)
    return rotations, shifts


def pose_records(rotations: torch.Tensor, shifts: torch.Tensor, voxel_size: float) -> list[dict[str, Any]]:
    """Per-particle dicts of ZYZ angles (degrees) and shifts (Angstrom)."""
    angles = matrices_to_euler_zyz(rotations)
    records = []
    for a, t in zip(angles.tolist(), shifts.tolist()):
        records.append({
            "rlnAngleRot": a[0], "rlnAngleTilt": a[1], "rlnAnglePsi": a[2],
            "forgeShiftXAngst": t[0] * voxel_size, "forgeShiftYAngst": t[1] * voxel_size,
            "forgeShiftZAngst": t[2] * voxel_size,
        })
    return records


def check_max_shift(max_shift: float, box: int) -> None:
    """ConfigError unless a shift of up to ``max_shift`` voxels keeps the particle's centre in the
    inner half of a ``box``^3 box."""
    if not max_shift < box / 2:
        raise ConfigError(f"max_shift {max_shift:g} voxels: expected less than half the box ({box}^3: "
                          f"< {box / 2:g}), or the particle leaves its box")


def posed_maps(maps: torch.Tensor, rotations: torch.Tensor, shifts: torch.Tensor, rotate: bool,
               max_shift: float) -> torch.Tensor:
    """``maps`` moved to the drawn poses (one trilinear resampling), or as they are when the
    simulator neither rotates nor shifts (maps that were posed before, e.g. by ``forge simulate``)."""
    check_max_shift(max_shift, int(maps.shape[-1]))
    if not rotate and max_shift == 0:
        return maps.float()
    return rigid_transform(maps.float(), rotations.float(), shifts.float())


class PoseSimulator:
    """Clean density maps in a random pose (uniform rotation, random shift), no imaging model."""

    name = "posed-map"

    def __init__(self, max_shift: float = 2.0, rotate: bool = True):
        try:
            shift = float(max_shift)
        except (TypeError, ValueError):
            shift = math.nan
        if not shift >= 0:  # also rejects NaN and text such as --option max_shift=abc
            raise ConfigError(f"max_shift {max_shift!r}: expected >= 0 voxels")
        self.max_shift = shift
        self.rotate = bool(rotate)

    @torch.no_grad()
    def simulate(self, maps: torch.Tensor, voxel_size: float,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[dict]]:
        maps = check_maps(maps, voxel_size)
        rotations, shifts = draw_poses(maps.shape[0], self.max_shift, generator, self.rotate)
        posed = posed_maps(maps, rotations, shifts, self.rotate, self.max_shift)
        records = pose_records(rotations, shifts, voxel_size)
        for rec in records:
            rec["forgeSimulator"] = self.name
        return posed, records

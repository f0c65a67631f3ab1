"""Rotations on SO(3) and batched rigid transforms of volumes (torch, CPU or GPU).

Convention (used everywhere in cryoet-forge): a rotation ``R`` acts on column vectors
(x, y, z) of positions relative to the box centre (voxel index ``S // 2`` on each axis).
Rotating a volume by ``R`` and shifting it by ``t`` (voxels) moves the density at ``q``
to ``R q + t``. Euler angles are ZYZ: ``R = Rz(rot) @ Ry(tilt) @ Rz(psi)``, in degrees,
stored as ``rlnAngleRot``, ``rlnAngleTilt`` and ``rlnAnglePsi``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_quaternions(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` unit quaternions (w, x, y, z) uniform on S^3, i.e. rotations uniform on SO(3).

    A normalised 4D standard Gaussian is isotropic, hence uniform on the sphere; the
    double cover q ~ -q maps the uniform measure on S^3 to the Haar measure on SO(3).
    """
    device = generator.device if generator is not None else torch.device("cpu")
    q = torch.randn(n, 4, generator=generator, device=device, dtype=torch.float64)
    q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return torch.where(q[:, :1] < 0, -q, q)  # canonical sign, w >= 0


def quaternions_to_matrices(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (N, 4) (w, x, y, z) -> rotation matrices (N, 3, 3)."""
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(q.shape[:-1] + (3, 3))


def _rz(a: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(a), torch.sin(a)
    o, i = torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([c, -s, o, s, c, o, o, o, i], -1).reshape(a.shape + (3, 3))


def _ry(a: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(a), torch.sin(a)
    o, i = torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([c, o, s, o, i, o, -s, o, c], -1).reshape(a.shape + (3, 3))


def euler_zyz_to_matrices(rot: torch.Tensor, tilt: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    """ZYZ Euler angles in degrees -> matrices ``Rz(rot) @ Ry(tilt) @ Rz(psi)``."""
    d = math.pi / 180.0
    return _rz(rot * d) @ _ry(tilt * d) @ _rz(psi * d)


def matrices_to_euler_zyz(r: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (N, 3, 3) -> (N, 3) ZYZ angles (rot, tilt, psi) in degrees.

    rot and psi are in [-180, 180), tilt in [0, 180]. At tilt 0 or 180 (gimbal lock)
    psi is set to 0 and rot carries the whole in-plane angle.
    """
    r = r.to(torch.float64)
    tilt = torch.arccos(r[:, 2, 2].clamp(-1.0, 1.0))
    sin_tilt = torch.sin(tilt)
    regular = sin_tilt > 1e-6
    rot = torch.where(regular, torch.atan2(r[:, 1, 2], r[:, 0, 2]), torch.atan2(r[:, 1, 0], r[:, 0, 0]))
    psi = torch.where(regular, torch.atan2(r[:, 2, 1], -r[:, 2, 0]), torch.zeros_like(tilt))
    # at tilt = 180 the matrix is Rz(rot) Ry(180) = Rz(rot - psi)...: fold psi = 0 into rot
    flipped = (~regular) & (r[:, 2, 2] < 0)
    rot = torch.where(flipped, torch.atan2(-r[:, 0, 1], -r[:, 0, 0]), rot)
    angles = torch.stack([rot, tilt, psi], dim=1) * (180.0 / math.pi)
    angles[:, 0] = torch.remainder(angles[:, 0] + 180.0, 360.0) - 180.0
    angles[:, 2] = torch.remainder(angles[:, 2] + 180.0, 360.0) - 180.0
    return angles


def centred_positions(size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(size^3, 3) voxel positions (x, y, z) relative to index ``size // 2``, in (z, y, x) order."""
    axis = torch.arange(size, device=device, dtype=dtype) - size // 2
    zz, yy, xx = torch.meshgrid(axis, axis, axis, indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1).reshape(-1, 3)


def rigid_transform(volumes: torch.Tensor, rotations: torch.Tensor,
                    shifts: torch.Tensor | None = None, mode: str = "bilinear") -> torch.Tensor:
    """Rotate (about index S//2) and shift a batch of volumes (B, S, S, S) in one grid_sample.

    ``rotations`` (B, 3, 3) act on (x, y, z); ``shifts`` (B, 3) are (x, y, z) voxels.
    Density that leaves the box is lost and the box fills with zeros.
    """
    b, s = volumes.shape[0], volumes.shape[-1]
    device, dtype = volumes.device, volumes.dtype
    rot = rotations.to(torch.float64)
    t = shifts.to(torch.float64) if shifts is not None else torch.zeros(b, 3, dtype=torch.float64)
    # In normalised coordinates (align_corners=False) an output voxel at index i sits at
    # c = (2 i + 1) / S - 1; its offset from index S//2 is p = c S / 2 + d with
    # d = (S - 1) / 2 - S // 2. Sampling the source at index R^T (p - t) + S // 2 gives
    # c_src = R^T c + (2 / S) (R^T (d - t) - d), an affine map that affine_grid builds fast.
    d = torch.full((b, 3), (s - 1) / 2 - s // 2, dtype=torch.float64)
    rt = rot.transpose(1, 2)
    offset = (2.0 / s) * (torch.bmm(rt, (d - t).unsqueeze(-1)).squeeze(-1) - d)
    # the affine map is separable: c_src = R^T[:, 0] c_x + R^T[:, 1] c_y + R^T[:, 2] c_z + offset,
    # so two broadcast additions build the (B, S, S, S, 3) grid (affine_grid runs a slow bmm)
    rt = rt.to(device=device, dtype=dtype)
    c = (2.0 * torch.arange(s, device=device, dtype=dtype) + 1.0) / s - 1.0
    x_term = c.reshape(1, 1, s, 1) * rt[:, :, 0].reshape(b, 1, 1, 3)
    y_term = c.reshape(1, s, 1, 1) * rt[:, :, 1].reshape(b, 1, 1, 3)
    z_term = (c.reshape(1, s, 1) * rt[:, :, 2].reshape(b, 1, 3) + offset.to(device, dtype).reshape(b, 1, 3))
    grid = (x_term + y_term).unsqueeze(1) + z_term.reshape(b, s, 1, 1, 3)  # (B, S, S, S, 3)
    out = F.grid_sample(volumes.reshape(b, 1, s, s, s), grid, mode=mode,
                        padding_mode="zeros", align_corners=False)
    return out.reshape(b, s, s, s)

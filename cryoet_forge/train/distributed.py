"""Process-group set-up for ``torchrun`` (DDP) and the data sharding every rank agrees on.

Under ``torchrun`` (``WORLD_SIZE`` > 1) each process joins a process group: NCCL when it
trains on a GPU, Gloo on the CPU. Every rank walks the same global batch order and takes
its own contiguous slice of each global batch, and random tensors that depend on the
sample (noise volumes, density-map noise) are drawn for the whole global batch from a
generator seeded identically on every rank and then sliced. So N processes with a global
batch B compute the same thing as one process with batch B, up to the order of the
floating-point gradient reduction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist

from cryoet_forge.devices import check_device, launcher_world
from cryoet_forge.errors import ConfigError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    return check_device(preference, "train.device", local_rank)


def init_distributed(device_preference: str) -> DistContext:
    """Join the torchrun process group if there is one; pick this rank's device."""
    where = launcher_world()
    world_size, rank, local_rank = where.world_size, where.rank, where.local_rank
    device = resolve_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world_size, local_rank, device)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def mean_across_ranks(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    if ctx.distributed:
        values = values.clone()
        dist.all_reduce(values)
        values /= ctx.world_size
    return values


def any_across_ranks(ctx: DistContext, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (a one-element all-reduce under DDP)."""
    if not ctx.distributed:
        return flag
    value = torch.tensor([float(flag)], device=ctx.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


class ResumableBatchSampler:
    """Endless batches of this rank's indices; position = global batches consumed so far.

    Each epoch is a permutation of ``range(n)`` from ``seed`` and the epoch number; the
    permutation is cut into global batches (the remainder is dropped), and rank r takes
    items ``[r*b, (r+1)*b)`` of each, where b = global_batch / world_size. Starting at
    ``start`` batches reproduces the sequence exactly, whatever prefetching a DataLoader
    did before, because the caller counts what it consumed.
    """

    def __init__(self, n: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1,
                 start: int = 0):
        if global_batch % world_size:
            raise ConfigError(
                f"train.batch_size {global_batch} is not divisible by the {world_size} processes"
            )
        if n < global_batch:
            raise ConfigError(f"a dataset of {n} volumes is smaller than train.batch_size {global_batch}")
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.rank, self.world_size, self.start = rank, world_size, start
        self.per_epoch = n // global_batch
        self.local = global_batch // world_size

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[list[int]]:
        position = self.start
        epoch, perm = -1, None
        while True:
            e, b = divmod(position, self.per_epoch)
            if e != epoch:
                epoch, perm = e, self._permutation(e)
            assert perm is not None  # set for the first epoch above
            first = b * self.global_batch + self.rank * self.local
            yield perm[first:first + self.local].tolist()
            position += 1

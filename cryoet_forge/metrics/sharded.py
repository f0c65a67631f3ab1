"""Exact PRDC split over the processes of a ``torch.distributed`` job
(``torchrun --nproc_per_node=P $(which forge) metrics ...``, on one node or several).

Every process reads the same feature files (memory-mapped) and runs the Rust kernel on its share
of the distance tiles, dealt round robin: the upper-triangle tiles of each set's radii and the
real x fake rectangle. The candidate lists of the radii are exchanged in blocks of rows and every
process finishes the radii of all rows (exact recomputation of a few dozen candidates per row,
O(N cap D), small beside the O(N^2 D) sweep); the ball counts are summed and the per-row flags
ORed across processes. Every per-row quantity is exact, so radii and counts equal one process's
bit for bit; only the diagnostics (pairs and rows recomputed exactly) may differ.

Collectives run on the process group's own device: CPU tensors with Gloo, CUDA tensors with NCCL.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from cryoet_forge import _metrics_rs
from cryoet_forge.errors import InputError
from cryoet_forge.metrics.knn import PrdcCounts, ProgressCallback

# `forge metrics` imports this module only under a launcher (WORLD_SIZE > 1), so torch loads only there.

#: rows of candidate lists exchanged per collective (bounds the memory of the exchange)
ROW_BLOCK = 65_536


def share_threads(local_world: int) -> None:
    """Give each of the processes on this machine its part of the cores for the Rust kernel
    (``RAYON_NUM_THREADS``; set before the kernel's first call, kept when the user set it)."""
    if "RAYON_NUM_THREADS" not in os.environ:
        os.environ["RAYON_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // local_world))


def init_process_group() -> None:
    """Join the job's process group (``env://``, as torchrun sets it up): Gloo, since the exact
    kernel runs on CPUs."""
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")


def leave_process_group() -> None:
    """Leave the job's process group (the end of ``init_process_group``)."""
    dist.destroy_process_group()


def _tile_share(tiles: int, rank: int, world: int) -> int:
    return len(range(rank, tiles, world))


class ShardedExactKnn:
    """The ``exact`` backend with its tile sweeps split over the initialised process group."""

    name = "exact"
    exact = True

    def __init__(self, group: Any = None):
        if not dist.is_initialized():
            raise InputError("ShardedExactKnn needs an initialised torch.distributed process group")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        nccl = dist.get_backend(group) == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    # -- collectives ---------------------------------------------------------------------------

    def _gather(self, array: np.ndarray) -> np.ndarray:
        """(P, ...) stack of every process's equally shaped ``array``."""
        local = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        parts = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(parts, local, group=self.group)
        return torch.stack(parts).cpu().numpy()

    def _sum(self, array: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64)).to(self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t.cpu().numpy()

    # -- the kernel, sharded -------------------------------------------------------------------

    def _radii(self, x: np.ndarray, k: int, centre: np.ndarray | None,
               progress: ProgressCallback | None) -> tuple[np.ndarray, int, int]:
        c = _metrics_rs.radii_candidates(x, int(k), centre, self.rank, self.world, progress)
        cap, n = int(c["cap"]), x.shape[0]
        vals, idx = c["vals"].reshape(n, cap), c["idx"].reshape(n, cap)
        radii = np.empty(n, dtype=np.float32)
        exact_pairs = exact_rows = 0
        for r0 in range(0, n, ROW_BLOCK):
            r1 = min(n, r0 + ROW_BLOCK)
            rows = r1 - r0
            got = _metrics_rs.radii_finish(
                x, int(k), centre,
                self._gather(vals[r0:r1].reshape(-1)).reshape(self.world, rows * cap),
                self._gather(idx[r0:r1].reshape(-1).astype(np.int64)).astype(np.uint32).reshape(self.world, -1),
                self._gather(c["len"][r0:r1].astype(np.int64)).astype(np.uint32).reshape(self.world, rows),
                self._gather(c["floor"][r0:r1]).reshape(self.world, rows),
                float(c["max_norm"]), cap, r0)
            radii[r0:r1] = got["radii"]
            exact_pairs += int(got["exact_pairs"])
            exact_rows += int(got["exact_rows"])
        return radii, exact_pairs, exact_rows

    def kth_neighbour_distances(self, x: np.ndarray, k: int) -> np.ndarray:
        return self._radii(x, k, _metrics_rs.gemm_centre(x, x), None)[0]

    def prdc_counts(self, real: np.ndarray, fake: np.ndarray, k: int, inclusive: bool = False,
                    progress: ProgressCallback | None = None) -> PrdcCounts:
        n, m = real.shape[0], fake.shape[0]
        if not 1 <= k < min(n, m):
            raise InputError(f"k must satisfy 1 <= k < N and k < M (k={k}, N={n} real rows, M={m} fake rows)")
        tile = int(_metrics_rs.TILE)
        nb, mb = -(-n // tile), -(-m // tile)
        shares = [_tile_share(nb * (nb + 1) // 2, self.rank, self.world),
                  _tile_share(mb * (mb + 1) // 2, self.rank, self.world),
                  _tile_share(nb * mb, self.rank, self.world)]

        def phase(offset: int):
            if progress is None:
                return None
            return lambda done, total: progress(offset + done, sum(shares))

        try:
            centre = _metrics_rs.gemm_centre(real, fake)
            real_radii, pairs_r, rows_r = self._radii(real, k, centre, phase(0))
            fake_radii, pairs_f, rows_f = self._radii(fake, k, centre, phase(shares[0]))
            b = _metrics_rs.ball_counts(real, fake, real_radii, fake_radii, bool(inclusive), centre,
                                        self.rank, self.world, phase(shares[0] + shares[1]))
        except ValueError as exc:
            raise InputError(str(exc)) from None
        ball = self._sum(b["ball_count"])
        recalled = self._sum(b["recalled"]) > 0
        covered = self._sum(b["covered"]) > 0
        cross_pairs = int(self._sum(np.array([b["exact_pairs"]]))[0])
        return PrdcCounts(
            n_real=n, n_fake=m, k=int(k),
            precision_count=int((ball > 0).sum()), recall_count=int(recalled.sum()),
            density_count=int(ball.sum()), coverage_count=int(covered.sum()),
            real_radii=real_radii, fake_radii=fake_radii, exact=True,
            info={"backend": "exact", "world_size": self.world, "exact_pairs": pairs_r + pairs_f + cross_pairs,
                  "exact_rows": rows_r + rows_f},
        )

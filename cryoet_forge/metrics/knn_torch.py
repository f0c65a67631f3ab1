"""The ``torch`` kNN backend: blockwise float32 GEMM distances in PyTorch.

Runs on CUDA when available (``device="auto"``) and on the CPU otherwise. TF32 is
switched off so the float32 error bound holds; pairs the bound cannot settle are
recomputed exactly by the Rust core, so results equal the ``exact`` backend.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from cryoet_forge.errors import InputError
from cryoet_forge.metrics.knn import (
    BallMemberships,
    GemmKnn,
    WorkTicks,
    exact_pair_distances,
    in_ball,
    settle_block,
    settle_thresholds,
)


@contextlib.contextmanager
def _full_float32_matmul():
    old = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old[0]
        torch.set_float32_matmul_precision(old[1])


def resolve_torch_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but torch sees no CUDA device; use --device cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    return device


class TorchKnn(GemmKnn):
    """Blockwise float32 GEMM distances in PyTorch (CUDA when present), settled exactly."""

    name = "torch"
    exact = True

    def __init__(self, device: str = "auto", block: int = 2048):
        self.device = resolve_torch_device(device)
        self.block = int(block)

    def _float32(self):
        return _full_float32_matmul()

    def _load(self, shifted: np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(shifted)).to(self.device)

    def _describe(self) -> dict:
        return {"device": self.device}

    def _work_units(self, n: int, m: int) -> int:
        nbx, nby = -(-n // self.block), -(-m // self.block)  # distance tiles: real-real, fake-fake, real-fake
        return nbx * nbx + nby * nby + nbx * nby

    def _approx(self, a, na, b, nb):
        # |x|^2 + |y|^2 - 2 x.y in float32; the margin factor covers its rounding
        return (na[:, None] + nb[None, :]) - 2.0 * (a @ b.T)

    def _tensor(self, values: np.ndarray):
        return torch.from_numpy(values.astype(np.float32)).to(self.device)

    def _candidates(self, xt, nx: np.ndarray, c: int, tick: WorkTicks):
        n = xt.shape[0]
        nx_t = self._tensor(nx)
        best_val = torch.empty((n, c), dtype=torch.float32, device=self.device)
        best_idx = torch.empty((n, c), dtype=torch.int64, device=self.device)
        for i0 in range(0, n, self.block):
            i1 = min(i0 + self.block, n)
            vals = idx = None
            for j0 in range(0, n, self.block):
                j1 = min(j0 + self.block, n)
                a = self._approx(xt[i0:i1], nx_t[i0:i1], xt[j0:j1], nx_t[j0:j1])
                cols = torch.arange(j0, j1, device=self.device).expand(i1 - i0, -1)
                if vals is not None and idx is not None:
                    a = torch.cat([vals, a], dim=1)
                    cols = torch.cat([idx, cols], dim=1)
                vals, pos = torch.topk(a, min(c, a.shape[1]), dim=1, largest=False, sorted=True)
                idx = torch.gather(cols, 1, pos)
                tick()
            assert vals is not None and idx is not None  # n > 0, so one column block ran
            best_val[i0:i1], best_idx[i0:i1] = vals, idx
        return best_idx.cpu().numpy(), best_val.double().cpu().numpy()

    def _memberships(self, real, fake, xt, yt, nx, ny, rx, ry, inclusive, tick) -> BallMemberships:
        n, m, dev = real.shape[0], fake.shape[0], self.device
        factor = self.margin_factor(real.shape[1])
        lo_x, hi_x = (self._tensor(v) for v in settle_thresholds(rx))
        lo_y, hi_y = (self._tensor(v) for v in settle_thresholds(ry))
        nx_t, ny_t = self._tensor(nx), self._tensor(ny)
        ball_count = torch.zeros(m, dtype=torch.int64, device=dev)
        covered = torch.zeros(n, dtype=torch.bool, device=dev)
        recalled = torch.zeros(n, dtype=torch.bool, device=dev)
        exact_pairs = 0
        for i0 in range(0, n, self.block):
            i1 = min(i0 + self.block, n)
            for j0 in range(0, m, self.block):
                j1 = min(j0 + self.block, m)
                a = self._approx(xt[i0:i1], nx_t[i0:i1], yt[j0:j1], ny_t[j0:j1])
                margin = factor * (nx_t[i0:i1, None] + ny_t[None, j0:j1])
                in_x, und_x = settle_block(a, margin, lo_x[i0:i1, None], hi_x[i0:i1, None])
                in_y, und_y = settle_block(a, margin, lo_y[None, j0:j1], hi_y[None, j0:j1])
                und = und_x | und_y
                if bool(und.any()):
                    r, c = torch.nonzero(und, as_tuple=True)
                    rows, cols = r.cpu().numpy() + i0, c.cpu().numpy() + j0
                    dist = exact_pair_distances(real, fake, rows, cols)
                    exact_pairs += rows.size
                    # where the bound had decided, the exact answer is the same
                    in_x[r, c] = torch.from_numpy(in_ball(dist, rx[rows], inclusive)).to(dev)
                    in_y[r, c] = torch.from_numpy(in_ball(dist, ry[cols], inclusive)).to(dev)
                ball_count[j0:j1] += in_x.sum(dim=0)
                covered[i0:i1] |= in_x.any(dim=1)
                recalled[i0:i1] |= in_y.any(dim=1)
                tick()
        return BallMemberships(ball_count.cpu().numpy(), covered.cpu().numpy(), recalled.cpu().numpy(), exact_pairs)

"""The ``torch`` kNN backend: blockwise float32 GEMM distances in PyTorch.

Runs on CUDA when available (``device="auto"``) and on the CPU otherwise. TF32 is
switched off so the float32 error bound holds; pairs the bound cannot settle are
recomputed exactly by the Rust core, so results equal the ``exact`` backend.
"""

from __future__ import annotations

import contextlib

import numpy as np

from cryoet_forge.errors import InputError
from cryoet_forge.metrics.knn import (
    ExactKnn,
    PrdcCounts,
    choose_centre,
    exact_instead,
    exact_pair_distances,
    gemm_margin_factor,
    gemm_usable,
    refine_radii,
    row_sq_norms,
    settle_thresholds,
)


@contextlib.contextmanager
def _full_float32_matmul():
    import torch

    old = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old[0]
        torch.set_float32_matmul_precision(old[1])


def resolve_torch_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but torch sees no CUDA device; use --device cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    return device


class TorchKnn:
    """Blockwise float32 GEMM distances in PyTorch (CUDA when present), settled exactly."""

    name = "torch"
    exact = True

    def __init__(self, device: str = "auto", block: int = 2048):
        self.device = resolve_torch_device(device)
        self.block = int(block)

    # -- helpers -----------------------------------------------------------------------
    def _prepare(self, *sets: np.ndarray):
        """(tensors, float64 squared norms) of the centred sets; tensors is None when the
        float32 GEMM is unusable for them (see ``gemm_usable``)."""
        import torch

        centre = choose_centre(*sets)
        shifted = [s if centre is None else s - centre for s in sets]
        norms = [row_sq_norms(s) for s in shifted]
        if not gemm_usable(sets[0].shape[1], *norms):
            return None, norms
        return [torch.from_numpy(np.ascontiguousarray(s)).to(self.device) for s in shifted], norms

    def _approx(self, a, na, b, nb):
        # |x|^2 + |y|^2 - 2 x.y in float32; the margin factor covers its rounding
        return (na[:, None] + nb[None, :]) - 2.0 * (a @ b.T)

    def _radii(self, x: np.ndarray, xt, nx: np.ndarray, k: int, progress, done: list[int], total: int):
        import torch

        n = x.shape[0]
        c = min(n, 2 * k + 16)
        nx_t = torch.from_numpy(nx.astype(np.float32)).to(self.device)
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
                done[0] += 1
                if progress:
                    progress(done[0], total)
            assert vals is not None and idx is not None  # n > 0, so one column block ran
            best_val[i0:i1], best_idx[i0:i1] = vals, idx
        margins = gemm_margin_factor(x.shape[1]) * (nx + nx.max())
        return refine_radii(
            x, best_idx.cpu().numpy(), best_val.double().cpu().numpy(), k, margins, self_included=True
        )

    # -- the backend interface ---------------------------------------------------------------
    def kth_neighbour_distances(self, x: np.ndarray, k: int) -> np.ndarray:
        with _full_float32_matmul():
            tensors, (nx,) = self._prepare(x)
            if tensors is None:
                return ExactKnn().kth_neighbour_distances(x, k)
            radii, _ = self._radii(x, tensors[0], nx, k, None, [0], 0)
        return radii

    def prdc_counts(self, real, fake, k, inclusive=False, progress=None) -> PrdcCounts:
        import torch

        n, m, d = real.shape[0], fake.shape[0], real.shape[1]
        nbx, nby = -(-n // self.block), -(-m // self.block)
        total = nbx * nbx + nby * nby + nbx * nby
        done = [0]
        with _full_float32_matmul():
            tensors, (nx, ny) = self._prepare(real, fake)
            if tensors is None:
                return exact_instead("torch", real, fake, k, inclusive, progress)
            xt, yt = tensors
            rx, full_x = self._radii(real, xt, nx, k, progress, done, total)
            ry, full_y = self._radii(fake, yt, ny, k, progress, done, total)
            factor = gemm_margin_factor(d)
            dev = self.device
            lo_x, hi_x = (torch.from_numpy(v.astype(np.float32)).to(dev) for v in settle_thresholds(rx))
            lo_y, hi_y = (torch.from_numpy(v.astype(np.float32)).to(dev) for v in settle_thresholds(ry))
            nx_t = torch.from_numpy(nx.astype(np.float32)).to(dev)
            ny_t = torch.from_numpy(ny.astype(np.float32)).to(dev)
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
                    lower, upper = a - margin, a + margin
                    in_x = upper < lo_x[i0:i1, None]
                    und_x = ~in_x & ~(lower > hi_x[i0:i1, None])
                    in_y = upper < lo_y[None, j0:j1]
                    und_y = ~in_y & ~(lower > hi_y[None, j0:j1])
                    und = und_x | und_y
                    if bool(und.any()):
                        r, c = torch.nonzero(und, as_tuple=True)
                        rows, cols = r.cpu().numpy() + i0, c.cpu().numpy() + j0
                        dist = exact_pair_distances(real, fake, rows, cols)
                        exact_pairs += rows.size
                        if inclusive:
                            ex_x, ex_y = dist <= rx[rows], dist <= ry[cols]
                        else:
                            ex_x, ex_y = dist < rx[rows], dist < ry[cols]
                        # where the bound had decided, the exact answer is the same
                        in_x[r, c] = torch.from_numpy(ex_x).to(dev)
                        in_y[r, c] = torch.from_numpy(ex_y).to(dev)
                    ball_count[j0:j1] += in_x.sum(dim=0)
                    covered[i0:i1] |= in_x.any(dim=1)
                    recalled[i0:i1] |= in_y.any(dim=1)
                    done[0] += 1
                    if progress:
                        progress(done[0], total)
        ball = ball_count.cpu().numpy()
        return PrdcCounts(
            n_real=n, n_fake=m, k=k,
            precision_count=int((ball > 0).sum()), recall_count=int(recalled.sum()),
            density_count=int(ball.sum()), coverage_count=int(covered.sum()),
            real_radii=rx, fake_radii=ry, exact=True,
            info={"backend": "torch", "device": self.device, "exact_pairs": exact_pairs,
                  "exact_rows": full_x + full_y},
        )

"""The ``faiss`` kNN backend: FAISS search for radii, range search for the ball counts.

``index="flat"`` (default) is exact: FAISS's float32 distances only nominate candidates,
which the Rust core recomputes exactly wherever the error bound leaves a doubt.
``index="ivf"`` searches an inverted-file index (``nlist`` cells, ``nprobe`` visited);
it can miss neighbours, so its results are approximate and say so (``exact = False``).
FAISS GPU is used for the k-NN searches when the GPU build is installed and a GPU is
visible (``device="auto"`` or ``"cuda"``).
"""

from __future__ import annotations

import functools

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
    settle_block,
    settle_thresholds,
)

#: the distributions that ship the top-level ``faiss`` module (the ``faiss`` and ``gpu`` extras)
FAISS_DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-gpu")


@functools.cache
def import_faiss():
    """The ``faiss`` module, or an InputError saying what to install (or uninstall)."""
    from importlib import metadata

    installed = []
    for dist in FAISS_DISTRIBUTIONS:
        try:
            installed.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    if len(installed) > 1:
        raise InputError(f"knn backend 'faiss': {' and '.join(installed)} are both installed and ship the same "
                         "faiss module; pip uninstall one of them")
    try:
        import faiss
    except ImportError:
        raise InputError("knn backend 'faiss' needs FAISS: pip install 'cryoet-forge[faiss]' (CPU) or "
                         "'cryoet-forge[gpu]' (CUDA); the exact and torch backends need neither") from None
    return faiss


class FaissKnn:
    """FAISS flat (exact after refinement) or IVF (approximate) search; GPU when present."""

    name = "faiss"

    def __init__(self, device: str = "auto", index: str = "flat", nlist: int | None = None, nprobe: int = 16):
        faiss = import_faiss()

        if index not in ("flat", "ivf"):
            raise InputError(f"faiss index must be 'flat' or 'ivf', got {index!r}")
        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if device == "cuda" and gpus == 0:
            raise InputError(
                "device 'cuda' was asked for but FAISS has no GPU support here "
                "(install the 'gpu' extra on a CUDA machine) ; use --device cpu"
            )
        if device not in ("auto", "cpu", "cuda"):
            raise InputError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
        self.use_gpu = device != "cpu" and gpus > 0
        self.index_kind = index
        self.nlist = nlist
        self.nprobe = int(nprobe)
        self.exact = index == "flat"

    def _build(self, data: np.ndarray):
        faiss = import_faiss()

        d = data.shape[1]
        if self.index_kind == "flat":
            index = faiss.IndexFlatL2(d)
        else:
            nlist = self.nlist or max(1, min(int(4 * np.sqrt(data.shape[0])), data.shape[0] // 39))
            nlist = min(nlist, data.shape[0])
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
            index.train(data)
            index.nprobe = min(self.nprobe, nlist)
        index.add(data)
        return index

    def _search_index(self, index):
        if self.use_gpu:
            faiss = import_faiss()

            return faiss.index_cpu_to_all_gpus(index)
        return index

    def _margin_factor(self, d: int) -> float:
        # FAISS may sum squared differences directly (error <= gamma_D * d <= 2 gamma_D (|x|^2+|y|^2))
        return 2.0 * gemm_margin_factor(d)

    def _radii(self, x: np.ndarray, xs: np.ndarray, nx: np.ndarray, k: int):
        n = x.shape[0]
        c = min(n, 2 * k + 16)
        index = self._search_index(self._build(xs))
        sq, idx = index.search(xs, c)
        sq = np.where(idx < 0, np.inf, sq.astype(np.float64))
        margins = self._margin_factor(x.shape[1]) * (nx + nx.max())
        return refine_radii(x, idx, sq, k, margins, self_included=True)

    def kth_neighbour_distances(self, x: np.ndarray, k: int) -> np.ndarray:
        centre = choose_centre(x)
        xs = x if centre is None else np.ascontiguousarray(x - centre)
        nx = row_sq_norms(xs)
        if not gemm_usable(x.shape[1], nx):
            return ExactKnn().kth_neighbour_distances(x, k)
        return self._radii(x, xs, nx, k)[0]

    def _balls(self, queries_exact, db_exact, queries, db, nq, ndb, db_radii, inclusive, factor):
        """For each (query, db point) pair inside the db point's ball: (query ids, db ids)."""
        lo, hi = settle_thresholds(db_radii)
        index = self._build(db)
        threshold = float(hi.max() + factor * (nq.max() + ndb.max())) * (1 + 1e-6) + 1e-30
        lims, sq, ids = index.range_search(queries, np.float32(threshold))
        q = np.repeat(np.arange(queries.shape[0], dtype=np.int64), np.diff(lims).astype(np.int64))
        sq = sq.astype(np.float64)
        inside, undecided = settle_block(sq, factor * (nq[q] + ndb[ids]), lo[ids], hi[ids])
        rows = np.flatnonzero(undecided)
        if rows.size:
            dist = exact_pair_distances(queries_exact, db_exact, q[rows], ids[rows])
            r = db_radii[ids[rows]]
            inside[rows] = dist <= r if inclusive else dist < r
        return q[inside], ids[inside], int(rows.size), int(q.size)

    def prdc_counts(self, real, fake, k, inclusive=False, progress=None) -> PrdcCounts:
        n, m, d = real.shape[0], fake.shape[0], real.shape[1]
        centre = choose_centre(real, fake)
        xs = real if centre is None else np.ascontiguousarray(real - centre)
        ys = fake if centre is None else np.ascontiguousarray(fake - centre)
        nx = row_sq_norms(xs)
        ny = row_sq_norms(ys)
        if not gemm_usable(d, nx, ny):
            return exact_instead("faiss", real, fake, k, inclusive, progress)
        steps = 4
        rx, full_x = self._radii(real, xs, nx, k)
        if progress:
            progress(1, steps)
        ry, full_y = self._radii(fake, ys, ny, k)
        if progress:
            progress(2, steps)
        factor = self._margin_factor(d)
        # fakes (queries) inside real balls: precision, density, coverage
        fj, ri, exact_a, found_a = self._balls(fake, real, ys, xs, ny, nx, rx, inclusive, factor)
        if progress:
            progress(3, steps)
        # reals (queries) inside fake balls: recall
        rq, _, exact_b, found_b = self._balls(real, fake, xs, ys, nx, ny, ry, inclusive, factor)
        if progress:
            progress(4, steps)
        ball = np.bincount(fj, minlength=m)
        covered = np.zeros(n, dtype=bool)
        covered[ri] = True
        recalled = np.zeros(n, dtype=bool)
        recalled[rq] = True
        info = {
            "backend": "faiss", "index": self.index_kind, "gpu": self.use_gpu,
            "exact_pairs": exact_a + exact_b, "exact_rows": full_x + full_y,
            "range_results": found_a + found_b,
        }
        if self.index_kind == "ivf":
            info.update(approximate=True, nlist=self.nlist or "auto", nprobe=self.nprobe,
                        note="IVF search can miss neighbours: radii may come out too large and ball counts off either way")
        return PrdcCounts(
            n_real=n, n_fake=m, k=k,
            precision_count=int((ball > 0).sum()), recall_count=int(recalled.sum()),
            density_count=int(ball.sum()), coverage_count=int(covered.sum()),
            real_radii=rx, fake_radii=ry, exact=self.exact, info=info,
        )

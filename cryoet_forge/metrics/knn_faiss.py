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
from importlib import metadata

import numpy as np

from cryoet_forge.errors import InputError
from cryoet_forge.metrics.knn import (
    BallMemberships,
    GemmKnn,
    WorkTicks,
    exact_pair_distances,
    gemm_margin_factor,
    in_ball,
    settle_block,
    settle_thresholds,
)

#: the distributions that ship the top-level ``faiss`` module (the ``faiss`` and ``gpu`` extras)
FAISS_DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-gpu")


@functools.cache
def import_faiss():
    """The ``faiss`` module, or an InputError saying what to install (or uninstall)."""
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
        import faiss  # optional dependency (the faiss or gpu extra)
    except ImportError:
        raise InputError("knn backend 'faiss' needs FAISS: pip install 'cryoet-forge[faiss]' (CPU) or "
                         "'cryoet-forge[gpu]' (CUDA); the exact and torch backends need neither") from None
    return faiss


class FaissKnn(GemmKnn):
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
            return import_faiss().index_cpu_to_all_gpus(index)
        return index

    def margin_factor(self, d: int) -> float:
        # FAISS may sum squared differences directly (error <= gamma_D * d <= 2 gamma_D (|x|^2+|y|^2))
        return 2.0 * gemm_margin_factor(d)

    def _describe(self) -> dict:
        return {"index": self.index_kind, "gpu": self.use_gpu}

    def _work_units(self, n: int, m: int) -> int:
        return 4  # the two radius searches, then the two range searches

    def _candidates(self, xs: np.ndarray, nx: np.ndarray, c: int, tick: WorkTicks):
        index = self._search_index(self._build(xs))
        sq, idx = index.search(xs, c)
        tick()
        return idx, np.where(idx < 0, np.inf, sq.astype(np.float64))

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
            inside[rows] = in_ball(dist, db_radii[ids[rows]], inclusive)
        return q[inside], ids[inside], int(rows.size), int(q.size)

    def _memberships(self, real, fake, xs, ys, nx, ny, rx, ry, inclusive, tick) -> BallMemberships:
        n, m = real.shape[0], fake.shape[0]
        factor = self.margin_factor(real.shape[1])
        # fakes (queries) inside real balls: precision, density, coverage
        fj, ri, exact_a, found_a = self._balls(fake, real, ys, xs, ny, nx, rx, inclusive, factor)
        tick()
        # reals (queries) inside fake balls: recall
        rq, _, exact_b, found_b = self._balls(real, fake, xs, ys, nx, ny, ry, inclusive, factor)
        tick()
        covered = np.zeros(n, dtype=bool)
        covered[ri] = True
        recalled = np.zeros(n, dtype=bool)
        recalled[rq] = True
        info: dict = {"range_results": found_a + found_b}
        if self.index_kind == "ivf":
            info.update(approximate=True, nlist=self.nlist or "auto", nprobe=self.nprobe,
                        note="IVF search can miss neighbours: radii may come out too large and ball counts off either way")
        return BallMemberships(np.bincount(fj, minlength=m), covered, recalled, exact_a + exact_b, info)

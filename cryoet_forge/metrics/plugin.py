"""Built-in metrics components, registered through the same hooks as any plugin."""

from __future__ import annotations

from cryoet_forge import hookimpl
from cryoet_forge.metrics.command import metrics_command
from cryoet_forge.metrics.knn import ExactKnn
from cryoet_forge.metrics.knn_faiss import FaissKnn
from cryoet_forge.metrics.knn_torch import TorchKnn
from cryoet_forge.options import check_options

# FAISS itself (an optional dependency) is imported only when a faiss backend is built (knn_faiss).


def _faiss_backend(**options):
    """FAISS flat (exact after refinement) or IVF (approximate) search; GPU when present."""
    check_options("knn-backend", "faiss", FaissKnn, options)
    return FaissKnn(**options)


def _torch_backend(**options):
    """Blockwise float32 GEMM distances in PyTorch (CUDA when present), settled exactly."""
    check_options("knn-backend", "torch", TorchKnn, options)
    return TorchKnn(**options)


@hookimpl
def forge_register_knn_backends(register):
    register("exact", ExactKnn)
    register("faiss", _faiss_backend)
    register("torch", _torch_backend)


@hookimpl
def forge_register_commands(cli):
    cli.add_command(metrics_command)

"""Built-in metrics components, registered through the same hooks as any plugin."""

from __future__ import annotations

from cryoet_forge import hookimpl
from cryoet_forge.metrics.knn import ExactKnn


@hookimpl
def forge_register_knn_backends(register):
    register("exact", ExactKnn)

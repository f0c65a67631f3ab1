"""Type stub of the Rust extension. Call it through ``cryoet_forge.metrics``, not directly."""

import numpy as np
import numpy.typing as npt

__version__: str

def kth_neighbour_distances(x: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.float32]:
    """Distance from each row of the C-contiguous float32 (N, D) array ``x`` to its k-th
    nearest other row. Raises ValueError for non-2-D input, NaN/Inf, or k outside 1..N-1."""

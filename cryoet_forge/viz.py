"""PNG figures: slice montages of volumes (matplotlib Figure objects rendered by Agg, atomic writes)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from cryoet_forge.io.atomic import atomic_path

# matplotlib is imported when a montage is drawn (start-up time).


def central_slice(volume: np.ndarray, axis: int = 0) -> np.ndarray:
    """The central 2D slice of a 3D volume along ``axis`` (a 2D array is returned as is)."""
    array = np.asarray(volume, dtype=np.float32)
    if array.ndim == 2:
        return array
    if array.ndim != 3:
        raise ValueError(f"expected a 2D slice or 3D volume, got shape {array.shape}")
    return np.take(array, array.shape[axis] // 2, axis=axis)


def save_slice_montage(path: str | os.PathLike, rows: Sequence[Sequence[np.ndarray]],
                       row_labels: Sequence[str], col_labels: Sequence[str] | None = None,
                       title: str | None = None) -> Path:
    """Save a grid of grey images (one row per label) as a PNG.

    Each cell is a 2D image or a 3D volume (its central z slice is shown). Each image is
    scaled to its own 1st-99th percentile so noisy and clean volumes are both visible.
    """
    # a bare Figure renders through Agg without touching pyplot's global backend; start-up:
    # matplotlib (about 0.4 s) is loaded only when a figure is drawn
    from matplotlib.figure import Figure

    rows = [list(r) for r in rows]
    if len(rows) != len(row_labels):
        raise ValueError(f"{len(rows)} rows but {len(row_labels)} row labels")
    n_rows = max(len(rows), 1)
    n_cols = max((len(r) for r in rows), default=1) or 1
    fig = Figure(figsize=(1.4 * n_cols + 1.2, 1.4 * n_rows + (0.5 if title else 0.2)))
    axes = np.array(fig.subplots(n_rows, n_cols, squeeze=False))
    for i in range(n_rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if i < len(rows) and j < len(rows[i]):
                image = central_slice(rows[i][j])
                lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
                if hi <= lo:
                    hi = lo + 1e-6
                ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            if j == 0 and i < len(row_labels):
                ax.set_ylabel(str(row_labels[i]), fontsize=8)
            if i == 0 and col_labels is not None and j < len(col_labels):
                ax.set_title(str(col_labels[j]), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)

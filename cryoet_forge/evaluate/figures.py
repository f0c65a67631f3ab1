"""PNG figures of the evaluation: confusion matrices, metric curves, uncertainty overlays, accuracy bars.

All use matplotlib's Agg backend and are written atomically (temporary file + rename).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from cryoet_forge.io.atomic import atomic_path
from cryoet_forge.viz import central_slice  # slice montages: cryoet_forge.viz.save_slice_montage


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        _pyplot().close(fig)
    return path


def save_confusion_png(path: str | Path, confusion: np.ndarray, class_names: Sequence[str],
                       title: str | None = None) -> Path:
    """Row-normalised confusion matrix (true class by row) with the raw counts written in each cell."""
    plt = _pyplot()
    confusion = np.asarray(confusion)
    totals = confusion.sum(axis=1, keepdims=True)
    fraction = np.divide(confusion, totals, out=np.zeros(confusion.shape, dtype=float), where=totals > 0)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * n, 0.8 + 0.75 * n))
    image = ax.imshow(fraction, vmin=0.0, vmax=1.0, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center",
                    color="white" if fraction[i, j] > 0.6 else "black", fontsize=9)
    ax.set_xticks(range(n), class_names, rotation=40, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    return _save(fig, path)


def save_metric_curves(path: str | Path, steps: Sequence[int], curves: Mapping[str, Sequence[float]],
                       title: str | None = None, reference: Mapping[str, float] | None = None) -> Path:
    """One panel per metric over training steps; optional horizontal reference lines (the baseline)."""
    plt = _pyplot()
    names = list(curves)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.plot(list(steps), list(curves[name]), marker="o", label="GAN")
        if reference and name in reference:
            ax.axhline(reference[name], color="gray", linestyle="--", label="traditional")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def save_uncertainty_overlay(path: str | Path, maps: Sequence[np.ndarray], means: Sequence[np.ndarray],
                             stds: Sequence[np.ndarray], labels: Sequence[str]) -> Path:
    """Per class: the input map, the mean generated volume, and the MC-dropout std overlaid on the mean."""
    plt = _pyplot()
    n = len(labels)
    fig, axes = plt.subplots(n, 3, figsize=(6.0, 1.9 * n + 0.3), squeeze=False)
    for i in range(n):
        mean_slice = central_slice(means[i])
        std_slice = central_slice(stds[i])
        for j, (image, heading) in enumerate(((central_slice(maps[i]), "density map"),
                                              (mean_slice, "mean of samples"),
                                              (mean_slice, "std over mean"))):
            ax = axes[i][j]
            ax.imshow(image, cmap="gray")
            if j == 2:
                overlay = ax.imshow(std_slice, cmap="magma", alpha=0.6)
                fig.colorbar(overlay, ax=ax, fraction=0.046, pad=0.04)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(heading, fontsize=9)
        axes[i][0].set_ylabel(labels[i], fontsize=9)
    return _save(fig, path)


def save_accuracy_bars(path: str | Path, groups: Mapping[str, tuple[float, float, float]],
                       title: str | None = None) -> Path:
    """Bars of mean accuracy with (low, high) interval whiskers: {label: (mean, low, high)}."""
    plt = _pyplot()
    labels = list(groups)
    means = [groups[k][0] for k in labels]
    lows = [groups[k][0] - groups[k][1] for k in labels]
    highs = [groups[k][2] - groups[k][0] for k in labels]
    fig, ax = plt.subplots(figsize=(1.4 * len(labels) + 1.5, 3.0))
    ax.bar(labels, means, yerr=[lows, highs], capsize=6, color=["#999999", "#3b75af", "#c44e52"][: len(labels)])
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy on real test split")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)

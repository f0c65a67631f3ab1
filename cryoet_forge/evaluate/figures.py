"""PNG figures of the evaluation: confusion matrices, metric curves, uncertainty overlays, accuracy bars,
per-class accuracy with intervals, the same particles as GAN input and output (XY and XZ), radially
averaged power spectra and intensity histograms of the sets.

All use matplotlib's Agg backend and are written atomically (temporary file + rename). The numbers
behind the spectra and histograms come from the plain functions here (``radial_power_spectrum``,
``mean_power_spectrum``, ``intensity_histogram``, ``per_class_intervals``), which the tests check.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from cryoet_forge.evaluate.verdict import confidence_interval
from cryoet_forge.io.atomic import atomic_path
from cryoet_forge.viz import central_slice  # slice montages: cryoet_forge.viz.save_slice_montage

# matplotlib is imported when a figure is drawn, with the Agg backend chosen first (start-up time).

#: one colour per role in every figure: experimental, traditional, GAN (then the GAN's input)
ROLE_COLOURS = ("#555555", "#3b75af", "#c44e52", "#8c6d31")


def wrap(label: str, width: int = 28) -> str:
    """``label`` broken into lines of at most ``width`` characters (long set names in legends and ticks)."""
    return textwrap.fill(str(label), width, break_long_words=False, break_on_hyphens=False)


def _pyplot():
    # start-up: matplotlib (about 0.4 s) only when a figure is drawn, with the Agg backend chosen before pyplot
    # loads (at import, choosing it would change the backend of any program that imports this module)
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # start-up: as above, after the backend is chosen

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
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator  # start-up: as in _pyplot

    names = list(curves)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.plot(list(steps), list(curves[name]), marker="o", label="GAN")
        if reference and name in reference:
            ax.axhline(reference[name], color="gray", linestyle="--", label="traditional")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        # no offset text ("1e-9+1") over the panel's title: each tick its own value
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.4g"))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def save_uncertainty_overlay(path: str | Path, maps: Sequence[np.ndarray], means: Sequence[np.ndarray],
                             stds: Sequence[np.ndarray], labels: Sequence[str], input_name: str = "GAN input") -> Path:
    """Per class: the generator's input (a density map, or a traditional volume when the GAN refines
    those), the mean generated volume, and the MC-dropout std overlaid on the mean."""
    plt = _pyplot()
    n = len(labels)
    fig, axes = plt.subplots(n, 3, figsize=(6.0, 1.9 * n + 0.3), squeeze=False)
    for i in range(n):
        mean_slice = central_slice(means[i])
        std_slice = central_slice(stds[i])
        for j, (image, heading) in enumerate(((central_slice(maps[i]), input_name),
                                              (mean_slice, "mean of GAN samples"),
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
    fig, ax = plt.subplots(figsize=(1.6 * len(labels) + 1.5, 3.2))
    ax.bar(range(len(labels)), means, yerr=[lows, highs], capsize=6, color=list(ROLE_COLOURS[: len(labels)]))
    ax.set_xticks(range(len(labels)), [wrap(label, 20) for label in labels], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy on the\nexperimental test split")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


# -- the numbers behind the spectra, histograms and per-class intervals --------------------------------


def zscore(volume: np.ndarray) -> np.ndarray:
    """``volume`` less its mean, over its standard deviation (a constant volume: its mean removed only);
    the per-volume normalisation of the classifiers (CB3D ``normalize = "zscore"``)."""
    array = np.asarray(volume, dtype=np.float64)
    centred = array - array.mean()
    std = float(array.std())
    return centred / std if std > 0 else centred


def radial_power_spectrum(volume: np.ndarray) -> np.ndarray:
    """Power ``|F(k)|^2 / N`` of a 2D or 3D array averaged over spherical shells of radius 0 .. n // 2
    (n its smallest side; shell s holds the frequencies within half a step of s / n cycles per
    voxel, the corners beyond n // 2 are left out). The division by the voxel count N makes white
    noise of variance v flat at v; a constant c puts all its power, N c^2, into shell 0."""
    array = np.asarray(volume, dtype=np.float64)
    if array.ndim not in (2, 3) or min(array.shape) < 2:
        raise ValueError(f"expected a 2D or 3D array of side >= 2, got shape {array.shape}")
    n = min(array.shape)
    power = (np.abs(np.fft.fftn(array)) ** 2 / array.size).ravel()
    grids = np.meshgrid(*(np.fft.fftfreq(size) for size in array.shape), indexing="ij")
    shell = np.rint(np.sqrt(sum(g ** 2 for g in grids)) * n).astype(np.int64).ravel()
    n_shells = n // 2 + 1
    inside = shell < n_shells
    sums = np.bincount(shell[inside], weights=power[inside], minlength=n_shells)
    counts = np.bincount(shell[inside], minlength=n_shells)
    return sums / np.maximum(counts, 1)


def spectrum_frequencies(n: int, voxel_size: float) -> np.ndarray:
    """Spatial frequency (1/Å) of each shell of ``radial_power_spectrum`` of a box of side ``n``."""
    return np.arange(n // 2 + 1) / (n * float(voxel_size))


def mean_power_spectrum(volumes: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """``radial_power_spectrum`` of each z-scored volume, averaged over the volumes."""
    spectra = [radial_power_spectrum(zscore(v)) for v in volumes]
    if not spectra:
        raise ValueError("no volumes")
    return np.mean(spectra, axis=0)


#: bin edges of the intensity histograms, in standard deviations of each volume
HISTOGRAM_EDGES = np.linspace(-5.0, 5.0, 81)


def intensity_histogram(volumes: Sequence[np.ndarray] | np.ndarray,
                        edges: np.ndarray = HISTOGRAM_EDGES) -> np.ndarray:
    """Probability density of the voxel values of the z-scored volumes, pooled, in the bins of
    ``edges``; values beyond the outer edges are counted in the outer bins (the area is 1)."""
    edges = np.asarray(edges, dtype=np.float64)
    values = np.concatenate([zscore(v).ravel() for v in volumes]) if len(volumes) else np.zeros(0)
    if not values.size:
        raise ValueError("no volumes")
    density, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges, density=True)
    return density


def per_class_intervals(per_class: Sequence[Mapping[str, float | None]], class_names: Sequence[str],
                        confidence: float) -> dict[str, tuple[float, float, float] | None]:
    """(mean, low, high) per class over seeds: the Student-t interval of ``verdict.confidence_interval``
    (one seed: zero width); the seeds where a class has no test volume (None) are left out, and a
    class absent from every seed is None."""
    out: dict[str, tuple[float, float, float] | None] = {}
    for name in class_names:
        values = [float(v) for seed in per_class if (v := seed.get(name)) is not None]
        out[name] = confidence_interval(values, confidence) if values else None
    return out


# -- the figures ------------------------------------------------------------------------------------


def save_per_class_accuracy(path: str | Path, class_names: Sequence[str],
                            groups: Mapping[str, Sequence[Mapping[str, float | None]]], confidence: float,
                            title: str | None = None) -> Path:
    """Per class, one bar per training set ({label: per-seed per-class accuracies}): the mean over
    seeds with its t-interval as whiskers and each seed as a dot; a set of one seed has no whisker."""
    plt = _pyplot()
    labels = list(groups)
    n_classes, n_groups = len(class_names), max(len(labels), 1)
    width = 0.8 / n_groups
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * n_classes * n_groups * 0.45 + 2.0), 3.4))
    for g, label in enumerate(labels):
        seeds = groups[label]
        intervals = per_class_intervals(seeds, class_names, confidence)
        x = np.arange(n_classes) + (g - (n_groups - 1) / 2) * width
        means = np.array([iv[0] if iv else np.nan for iv in intervals.values()])
        # an accuracy lies in [0, 1]: the t-interval of few seeds can reach past it, drawn clipped
        low = np.nan_to_num(means - np.clip([iv[1] if iv else np.nan for iv in intervals.values()], 0, 1))
        high = np.nan_to_num(np.clip([iv[2] if iv else np.nan for iv in intervals.values()], 0, 1) - means)
        suffix = (" (one run, no interval)" if len(seeds) < 2 else
                  f" (mean, {round(confidence * 100)}% CI over {len(seeds)} seeds, clipped to 0-1)")
        colour = ROLE_COLOURS[g % len(ROLE_COLOURS)]
        ax.bar(x, means, width=width * 0.92, color=colour, alpha=0.85,
               yerr=[low, high] if len(seeds) > 1 else None, capsize=3, label=wrap(label + suffix, 60))
        # the mean as a line across the bar, visible where the bar has no height (an accuracy of 0)
        ax.hlines(means, x - width * 0.46, x + width * 0.46, colors=colour, linewidth=2)
        if len(seeds) > 1:
            for seed in seeds:
                ax.scatter(x, [seed.get(name) if seed.get(name) is not None else np.nan for name in class_names],
                           s=9, color="black", zorder=3, linewidths=0)
    ax.axhline(1.0 / max(n_classes, 1), color="gray", linestyle=":", linewidth=1, label="uniform guess (1 / classes)")
    ax.set_xticks(range(n_classes), [wrap(name, 12) for name in class_names], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction of the class\ncorrectly classified", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _grey_limits(*images: np.ndarray) -> tuple[float, float]:
    values = np.concatenate([np.asarray(i, dtype=np.float64).ravel() for i in images])
    lo, hi = (float(v) for v in np.percentile(values, [1, 99]))
    return lo, hi if hi > lo else lo + 1e-6


def save_particle_pairs(path: str | Path, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
                        labels: Sequence[str], input_name: str, output_name: str = "GAN") -> Path:
    """Per particle (row): the GAN's input, its output and output minus input, as central XY (z = middle)
    and XZ (y = middle, z downwards) slices. Both volumes are z-scored first; input and output share one
    grey scale per row, the differences one red-blue scale for the whole figure (red: output brighter)."""
    if not (len(inputs) == len(outputs) == len(labels)):
        raise ValueError(f"{len(inputs)} inputs, {len(outputs)} outputs and {len(labels)} labels")
    plt = _pyplot()
    n = max(len(labels), 1)
    pairs = [(zscore(a), zscore(b)) for a, b in zip(inputs, outputs)]
    diffs = [b - a for a, b in pairs]
    limit = float(np.percentile(np.abs(np.concatenate([d.ravel() for d in diffs])), 99)) if diffs else 1.0
    limit = limit if limit > 0 else 1.0
    fig, axes = plt.subplots(n, 6, figsize=(10.0, 1.75 * n + 1.0), squeeze=False, layout="constrained")
    short_in = wrap(input_name, 22)
    heads = [f"{short_in}\nXY", f"{output_name}\nXY", f"{output_name} − input\nXY",
             f"{short_in}\nXZ", f"{output_name}\nXZ", f"{output_name} − input\nXZ"]
    shown = None
    for i, ((a, b), d) in enumerate(zip(pairs, diffs)):
        for view, axis in enumerate((0, 1)):  # axis 0: the XY plane at the central z; axis 1: XZ at the central y
            sa, sb, sd = central_slice(a, axis), central_slice(b, axis), central_slice(d, axis)
            lo, hi = _grey_limits(sa, sb)
            axes[i][3 * view].imshow(sa, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            axes[i][3 * view + 1].imshow(sb, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            shown = axes[i][3 * view + 2].imshow(sd, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        axes[i][0].set_ylabel(wrap(labels[i], 14), fontsize=9)
    for i in range(n):
        for j in range(6):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(heads[j], fontsize=8)
    if shown is not None:
        fig.colorbar(shown, ax=axes[:, 2::3].ravel().tolist(), shrink=0.8, location="right",
                     label="difference (std of each volume)")
    fig.suptitle("the same particle: input, output, difference (XY: central z slice; XZ: central y slice, "
                 "z downwards)", fontsize=9)
    return _save(fig, path)


def save_power_spectra(path: str | Path, sets: Mapping[str, Sequence[np.ndarray] | np.ndarray], voxel_size: float,
                       title: str | None = None) -> Path:
    """One curve per set: ``mean_power_spectrum`` (z-scored volumes) against spatial frequency, log scale;
    shell 0 (the mean, zero after z-scoring) left out."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    n = None
    for k, (label, volumes) in enumerate(sets.items()):
        spectrum = mean_power_spectrum(volumes)
        n = min(np.asarray(volumes[0]).shape)
        freq = spectrum_frequencies(n, voxel_size)
        ax.semilogy(freq[1:], spectrum[1:], marker="o", markersize=3, color=ROLE_COLOURS[k % len(ROLE_COLOURS)],
                    label=wrap(label, 50))
    ax.set_xlabel(f"spatial frequency (1/Å); Nyquist = 1 / (2 × {voxel_size:g} Å) at the right end", fontsize=8)
    ax.set_ylabel("mean power per shell\n(z-scored volumes)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def save_intensity_histograms(path: str | Path, sets: Mapping[str, Sequence[np.ndarray] | np.ndarray],
                              edges: np.ndarray = HISTOGRAM_EDGES, title: str | None = None) -> Path:
    """``intensity_histogram`` of each set (z-scored volumes, pooled voxels), linear and log scale side by side."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2), gridspec_kw={"wspace": 0.35})
    centres = (edges[:-1] + edges[1:]) / 2
    for k, (label, volumes) in enumerate(sets.items()):
        density = intensity_histogram(volumes, edges)
        for ax in axes:
            ax.step(centres, density, where="mid", color=ROLE_COLOURS[k % len(ROLE_COLOURS)], label=wrap(label, 50))
    axes[1].set_yscale("log")
    for ax, scale in zip(axes, ("linear", "log")):
        ax.set_xlabel("voxel value (standard deviations of its volume)", fontsize=8)
        ax.set_ylabel(f"probability density ({scale})", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper center", bbox_to_anchor=(1.1, -0.2), frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)

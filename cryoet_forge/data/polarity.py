"""The contrast convention, and a check that a set of subtomograms follows it.

**The convention** (one for the whole product): *subtomograms and tomograms show protein dark*,
as a tomogram reconstructed from underfocused images does (the CTF's low-frequency lobe is
negative); *density maps show protein bright* (positive Coulomb potential). Every simulator
writes protein-dark subtomograms, ``forge extract`` and the ``copick`` dataset keep a tomogram's
contrast unless told to invert it (``--invert`` / ``invert = true``: only for tomograms that were
inverted to protein-bright, e.g. by a denoiser or for display), and the GAN's domain S and the
classifiers expect protein dark.

The check needs no maps and no poses: after a Gaussian low-pass (sigma = box / 12 voxels) each
box's radial mean profile about the box centre is correlated with a centred sphere's (radius box
/ 4); a centred particle makes the score negative when protein is dark and positive when bright.
A one-sample t-test over the particles decides (two-sided p < ``ALPHA``); below that the
contrast is "undetermined" and nothing is stopped. Measured: Parakeet tomograms at 200 e/A^2
(independent physics, 185 boxes, inverted): t = +9.3; the ``fourier`` and ``tilt-series``
simulators: t = -10 to -13 with 50 boxes of 32^3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage, stats

from cryoet_forge.errors import InputError

#: two-sided p-value below which the contrast counts as measured
ALPHA = 1e-3
#: ``polarity`` setting: "check" stops on protein-bright subtomograms, "auto" inverts them, "off" skips
MODES = ("check", "auto", "off")
#: boxes the check looks at (evenly spaced through the set)
MAX_BOXES = 256
CONVENTION = ("forge's convention is protein dark in subtomograms and tomograms, as reconstructed "
              "from underfocused images (docs: guides/your-data, 'Contrast')")


@dataclass(frozen=True)
class Polarity:
    """The measured contrast of a set: ``contrast`` "dark", "bright" or "undetermined"."""

    contrast: str
    t: float
    p: float
    n: int

    def describe(self) -> str:
        if self.contrast == "undetermined":
            return f"contrast undetermined (t = {self.t:+.1f} over {self.n} boxes, p = {self.p:.2g})"
        return f"protein {self.contrast} (t = {self.t:+.1f} over {self.n} boxes)"

    def to_dict(self) -> dict[str, Any]:
        return {"contrast": self.contrast, "t": self.t, "p": self.p, "n": self.n}


def _radial_index(box: int) -> tuple[np.ndarray, int]:
    centre = box // 2  # the particle centre of every box in this product (forge extract, simulators)
    z, y, x = np.indices((box, box, box)) - centre
    bins = box // 2
    return np.minimum(np.sqrt(x * x + y * y + z * z).round().astype(np.int64), bins - 1).ravel(), bins


def box_scores(volumes: np.ndarray) -> np.ndarray:
    """Per box: the low-passed radial profile's projection on a centred sphere's (mean removed)."""
    volumes = np.asarray(volumes)
    if volumes.ndim == 5 and volumes.shape[1] == 1:
        volumes = volumes[:, 0]
    if volumes.ndim != 4 or len(set(volumes.shape[1:])) != 1:
        raise InputError(f"the contrast check needs cubic boxes (N, S, S, S), got shape {volumes.shape}")
    box = volumes.shape[-1]
    index, bins = _radial_index(box)
    counts = np.bincount(index, minlength=bins).astype(np.float64)
    template = (np.arange(bins) < box / 4).astype(np.float64)
    template -= template.mean()
    template /= np.linalg.norm(template)
    sigma = box / 12.0
    scores = np.empty(len(volumes))
    for i, volume in enumerate(volumes):
        smooth = ndimage.gaussian_filter(np.asarray(volume, dtype=np.float64), sigma, mode="wrap")
        profile = np.bincount(index, weights=smooth.ravel(), minlength=bins) / counts
        scores[i] = (profile - profile.mean()) @ template
    return scores


def measure_polarity(volumes: np.ndarray) -> Polarity:
    """The contrast of a set of centred boxes (at most ``MAX_BOXES`` of them, evenly spaced)."""
    n = len(volumes)
    if n > MAX_BOXES:
        volumes = volumes[np.linspace(0, n - 1, MAX_BOXES).round().astype(int)]
    scores = box_scores(volumes)
    finite = scores[np.isfinite(scores)]
    if len(finite) < 3 or float(np.std(finite)) == 0.0:
        return Polarity("undetermined", 0.0, 1.0, len(finite))
    result = stats.ttest_1samp(finite, 0.0)
    t, p = float(result.statistic), float(result.pvalue)
    contrast = "undetermined" if not p < ALPHA else ("bright" if t > 0 else "dark")
    return Polarity(contrast, t, p, len(finite))


def apply_polarity(volumes: np.ndarray, mode: str, source: str, option: str) -> tuple[np.ndarray, Polarity | None, str]:
    """Check ``volumes`` (a set of subtomograms) against the convention under ``mode``.

    Returns (the volumes, inverted where ``mode`` is "auto" and they are protein-bright; the
    measurement (None when ``mode`` is "off"); one line for the log). ``mode`` "check" raises an
    InputError naming ``source`` and the ``option`` that switches the check.
    """
    if mode == "off":
        return volumes, None, f"{source}: contrast not checked ({option} = off)"
    polarity = measure_polarity(volumes)
    if polarity.contrast != "bright":
        return volumes, polarity, f"{source}: {polarity.describe()}"
    if mode == "auto":
        return -volumes, polarity, f"{source}: {polarity.describe()}; inverted to protein dark ({option} = auto)"
    raise InputError(f"{source}: the subtomograms show {polarity.describe()}; {CONVENTION}. Extract "
                     f"them without --invert (copick: invert = false), or set {option} = \"auto\" to invert "
                     f"them here (\"off\" skips this check)")

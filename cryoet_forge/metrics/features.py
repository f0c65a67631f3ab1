"""Volumes -> features for ``forge metrics --features NAME``, through any registered feature extractor.

An extractor (hook ``forge_register_feature_extractors``) must offer ``extract(volumes)``
returning (N, D); it may offer ``probabilities(volumes)`` returning (N, C) class
probabilities (then the Inception Score is reported too), ``extract_with_probabilities``
doing both in one pass, a ``box`` attribute (the only edge length it takes) and a
``metadata`` dict whose ``voxel_size`` is the voxel size it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from cryoet_forge import registry
from cryoet_forge.classify import check_trained_voxel_size
from cryoet_forge.config import parse_override
from cryoet_forge.errors import ConfigError, ForgeError, InputError, PluginError
from cryoet_forge.metrics.knn import as_feature_matrix

KIND = "feature-extractor"


@dataclass
class ExtractedSet:
    """The features (and class probabilities, when the extractor gives them) of one volume set."""

    features: np.ndarray  # (N, D) float32
    probabilities: np.ndarray | None  # (N, C) or None
    source: str
    box: int
    voxel_size: float


def parse_feature_options(items: Sequence[str]) -> dict[str, Any]:
    """``["checkpoint=runs/cb3d", "batch_size=8"]`` -> keyword options, values read as TOML scalars."""
    options: dict[str, Any] = {}
    for text in items:
        if "=" not in text or not text.split("=", 1)[0].strip().isidentifier():
            raise ConfigError(f"--feature-option {text!r} must look like KEY=VALUE with KEY a Python name, "
                              "e.g. checkpoint=runs/cb3d")
        key, value = parse_override(text)
        options[key] = value
    return options


def create_extractor(name: str, options: dict[str, Any]) -> Any:
    """Build feature extractor ``name``; a bad option is one ForgeError line, never a traceback."""
    try:
        extractor = registry.create(KIND, name, **options)
    except ForgeError:
        raise
    except Exception as exc:  # wrong-typed values: int("abc"), Path(5), torch.device("gpu"), ...
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"{describe(name, options)} cannot be built: {type(exc).__name__}: {reason}") from exc
    if not callable(getattr(extractor, "extract", None)):
        raise PluginError(f"{KIND} {name!r} gave a {type(extractor).__name__} without an extract(volumes) method")
    return extractor


def has_probabilities(extractor: Any) -> bool:
    return callable(getattr(extractor, "probabilities", None))


def describe(name: str, options: dict[str, Any]) -> str:
    """``feature-extractor 'cb3d' (checkpoint='runs/cb3d')``: the extractor as errors name it."""
    shown = ", ".join(f"{k}={v!r}" for k, v in options.items())
    return f"{KIND} {name!r}" + (f" ({shown})" if shown else "")


def extract_set(extractor: Any, name: str, data: Any, options: dict[str, Any] | None = None,
                probabilities: bool = True) -> ExtractedSet:
    """Run ``data`` (a ``LabelledVolumes``) through ``extractor``; errors name ``data.source``."""
    box = getattr(extractor, "box", None)
    if isinstance(box, (int, np.integer)) and int(box) != data.box:
        raise InputError(f"{data.source}: volumes are {data.box}^3 but {describe(name, options or {})} "
                         f"takes {int(box)}^3 volumes only")
    metadata = getattr(extractor, "metadata", None)
    if isinstance(metadata, dict):
        check_trained_voxel_size(metadata, data)
    want = probabilities and has_probabilities(extractor)
    try:
        if want and callable(getattr(extractor, "extract_with_probabilities", None)):
            features, probs = extractor.extract_with_probabilities(data.volumes)
        else:
            features = extractor.extract(data.volumes)
            probs = extractor.probabilities(data.volumes) if want else None
    except InputError as exc:  # e.g. a box the network cannot take: say which set
        message = str(exc)
        raise InputError(message if data.source in message else f"{data.source}: {message}") from None
    features = as_feature_matrix(_numpy(features), name=f"{name} features of {data.source}")
    if probs is not None:
        probs = as_feature_matrix(_numpy(probs), name=f"{name} class probabilities of {data.source}")
    for what, array in (("feature", features), ("probability", probs)):
        if array is not None and array.shape[0] != len(data):
            raise PluginError(f"{KIND} {name!r} returned {array.shape[0]} {what} rows for the {len(data)} "
                              f"volumes of {data.source}")
    return ExtractedSet(features, probs, str(data.source), data.box, float(data.voxel_size))


def _numpy(array: Any) -> Any:
    """Torch tensors (CPU or GPU) as numpy; anything else as is."""
    if hasattr(array, "detach") and hasattr(array, "cpu"):
        return array.detach().cpu().numpy()
    return array

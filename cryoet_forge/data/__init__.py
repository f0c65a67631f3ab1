"""Torch datasets of volumes: MRC folders with STAR tables, labelled folders, .npz bundles,
and on-the-fly simulation. Items are dicts ``{"volume": (1, S, S, S), "label", "class_name", "index"}``.

The names below are imported on first use, so that ``forge extract --help`` does not load torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryoet_forge.data.bundle import load_bundle, save_bundle
    from cryoet_forge.data.folders import LabelledFolderDataset, VolumeFolderDataset
    from cryoet_forge.data.normalization import NORMALIZATIONS, normalize_volume
    from cryoet_forge.data.simulated import SimulatedDataset

_WHERE = {"load_bundle": "bundle", "save_bundle": "bundle", "LabelledFolderDataset": "folders",
          "VolumeFolderDataset": "folders", "NORMALIZATIONS": "normalization", "normalize_volume": "normalization",
          "SimulatedDataset": "simulated"}

__all__ = ["load_bundle", "save_bundle", "LabelledFolderDataset", "VolumeFolderDataset",
           "SimulatedDataset", "NORMALIZATIONS", "normalize_volume"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"cryoet_forge.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'cryoet_forge.data' has no attribute {name!r}")

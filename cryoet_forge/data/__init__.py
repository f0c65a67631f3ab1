"""Torch datasets of volumes: MRC folders with STAR tables, labelled folders, .npz bundles,
and on-the-fly simulation. Items are dicts ``{"volume": (1, S, S, S), "label", "class_name", "index"}``."""

from __future__ import annotations

from cryoet_forge.data.bundle import load_bundle, save_bundle
from cryoet_forge.data.folders import LabelledFolderDataset, VolumeFolderDataset
from cryoet_forge.data.normalization import NORMALIZATIONS, normalize_volume
from cryoet_forge.data.simulated import SimulatedDataset

__all__ = ["load_bundle", "save_bundle", "LabelledFolderDataset", "VolumeFolderDataset",
           "SimulatedDataset", "NORMALIZATIONS", "normalize_volume"]

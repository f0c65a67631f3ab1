"""On-the-fly simulated subtomograms, deterministic per index."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
from torch.utils.data import Dataset

from cryoet_forge import registry
from cryoet_forge.data.normalization import check_normalization, normalize_volume
from cryoet_forge.errors import ConfigError
from cryoet_forge.io.mrc import check_voxel_size
from cryoet_forge.simulate.templates import load_templates


def make_simulator(name: str, options: dict | None = None):
    """The registered simulator ``name`` built with ``options`` (``none`` is ``posed-map``)."""
    return registry.create("simulator", name, **dict(options or {}))


def item_seed(seed: int, index: int) -> int:
    """A 63-bit seed for item ``index`` of a dataset seeded with ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class SimulatedDataset(Dataset):
    """Subtomograms simulated on the fly from class templates; item i is class i % C."""

    def __init__(self, classes: str | Iterable[str] | None = None, simulator: str = "fourier",
                 box: int = 32, voxel_size: float = 10.0, length: int = 256, seed: int = 0,
                 normalize: str = "minmax", simulator_options: dict | None = None,
                 resolution: float | None = None):
        self.voxel_size = check_voxel_size(voxel_size)
        if int(length) != length or length < 1:
            raise ConfigError(f"length {length!r}: expected a positive integer")
        self.normalize = check_normalization(normalize)
        self.class_names, templates = load_templates(classes, box, self.voxel_size, seed, resolution)
        self.templates = torch.from_numpy(templates)
        self.box = int(box)
        self.length = int(length)
        self.seed = int(seed)
        self.simulator_name = simulator
        self.simulator = make_simulator(simulator, simulator_options)

    def __len__(self) -> int:
        return self.length

    def _simulate(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} volumes")
        index = index % self.length
        label = index % len(self.class_names)
        generator = torch.Generator().manual_seed(item_seed(self.seed, index))
        volume, records = self.simulator.simulate(self.templates[label:label + 1], self.voxel_size, generator)
        return volume[0], records[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        volume, _ = self._simulate(index)
        label = (index % self.length) % len(self.class_names)
        return {"volume": normalize_volume(volume, self.normalize).unsqueeze(0).float(), "label": label,
                "class_name": self.class_names[label], "index": index % self.length}

    def parameters(self, index: int) -> dict[str, Any]:
        """The recorded simulation parameters of item ``index``."""
        return self._simulate(index)[1]

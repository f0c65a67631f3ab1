"""Random crops of unlabelled tomograms: a GAN's domain S (or D) learnt from whole tomograms,
which every lab has in abundance, without a single pick.

``tomogram-crops`` (``forge list dataset --options``): ``root`` is a tomogram (MRC, or an OME-Zarr
folder), a folder of them, or a copick project's configuration file (``*.json``: every run's
``tomo_type`` tomogram at ``voxel_spacing``, or only the ``runs`` named; needs copick); each of the ``length`` items is a ``box``^3 crop at a uniformly random
position of a tomogram drawn in proportion to its volume, the same crop for the same ``seed`` and
index. ``z_margin`` keeps crops that many voxels away from the top and bottom faces (where a
reconstruction often holds vacuum or streaks). Tomograms are read lazily (memory-mapped MRC,
chunked OME-Zarr): memory stays that of one crop.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryoet_forge.data.copick import copick_tomograms
from cryoet_forge.data.folders import UNLABELLED
from cryoet_forge.data.normalization import check_normalization, normalize_volume
from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.io.mrc import write_mrc
from cryoet_forge.io.tomograms import open_tomogram

#: tomogram files a folder ``root`` is searched for
TOMOGRAM_SUFFIXES = (".mrc", ".rec", ".zarr")


def tomogram_files(root: Path) -> list[Path]:
    if root.is_dir() and root.suffix.lower() != ".zarr":
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in TOMOGRAM_SUFFIXES)
        if not files:
            raise InputError(f"{root}: no tomograms ({', '.join(TOMOGRAM_SUFFIXES)}) in this folder")
        return files
    if not root.exists():
        raise InputError(f"{root}: no such tomogram or folder")
    return [root]


class TomogramCropDataset:
    """Random ``box``^3 crops of unlabelled tomograms (see the module docstring)."""

    @staticmethod
    def contract_example(folder: Path) -> dict[str, Any]:
        """Options of a tiny instance (one 24^3 tomogram in ``folder``) for the contract tests."""
        volume = np.random.default_rng(0).standard_normal((24, 24, 24)).astype(np.float32)
        write_mrc(Path(folder) / "TS_01.mrc", volume, 10.0)
        return {"root": str(folder), "box": 16, "length": 4}

    def __init__(self, root: str | os.PathLike, box: int = 32, length: int = 1024, seed: int = 0,
                 normalize: str = "zscore", z_margin: int = 0, tomo_type: str = "wbp",
                 voxel_spacing: float | None = None, runs: list[str] | None = None):
        check_normalization(normalize)
        if box < 2 or length < 1 or z_margin < 0:
            raise ConfigError(f"tomogram-crops needs box >= 2, length >= 1 and z_margin >= 0; got {box}, {length}, "
                              f"{z_margin}")
        self.box, self.length, self.seed, self.normalize, self.z_margin = int(box), int(length), int(seed), normalize, int(z_margin)
        if Path(root).suffix.lower() == ".json":
            self.tomograms = copick_tomograms(root, tomo_type, voxel_spacing, None if runs is None else list(runs))
        elif voxel_spacing is not None or runs is not None:
            raise ConfigError(f"tomogram-crops: voxel_spacing and runs choose the tomograms of a copick project; "
                              f"root {root} is not a copick configuration (*.json)")
        else:
            self.tomograms = [open_tomogram(path) for path in tomogram_files(Path(root))]
        for t in self.tomograms:
            z, y, x = t.shape
            if z - 2 * self.z_margin < self.box or y < self.box or x < self.box:
                raise InputError(f"{t.source}: shape {t.shape} (z y x) holds no {self.box}^3 crop"
                                 f"{f' {self.z_margin} voxels from the z faces' if self.z_margin else ''}")
        sizes = [float(t.voxel_size) for t in self.tomograms]
        if not np.allclose(sizes, sizes[0], rtol=1e-3):
            raise InputError(f"{root}: tomograms at different voxel sizes ({', '.join(f'{s:g}' for s in sizes[:4])} A); "
                             "expected one")
        self.voxel_size = sizes[0]
        self.class_names = [UNLABELLED]
        volumes = np.array([float(np.prod(t.shape)) for t in self.tomograms])
        self._weights = volumes / volumes.sum()
        self.source = str(root)

    def __len__(self) -> int:
        return self.length

    def crop_start(self, index: int) -> tuple[int, tuple[int, int, int]]:
        """(tomogram number, (z, y, x) start) of crop ``index``."""
        rng = np.random.default_rng([self.seed, index])
        which = int(rng.choice(len(self.tomograms), p=self._weights))
        z, y, x = self.tomograms[which].shape
        m = self.z_margin
        start = (int(rng.integers(m, z - m - self.box + 1)), int(rng.integers(0, y - self.box + 1)),
                 int(rng.integers(0, x - self.box + 1)))
        return which, start

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} crops")
        index = index % len(self)
        which, start = self.crop_start(index)
        crop, _ = self.tomograms[which].region(start, (self.box,) * 3)
        volume = normalize_volume(torch.from_numpy(crop), self.normalize)
        return {"volume": volume.unsqueeze(0), "label": 0, "class_name": UNLABELLED, "index": index}

    def parameters(self, index: int) -> dict[str, Any]:
        """Where crop ``index`` comes from: its tomogram and start (z, y, x voxels)."""
        which, start = self.crop_start(index)
        return {"tomogram": self.tomograms[which].source, "start_zyx": list(start)}

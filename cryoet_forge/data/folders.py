"""Datasets read from disk: STAR-indexed MRC folders, plain MRC folders, class subfolders, bundles."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cryoet_forge.data.bundle import load_bundle
from cryoet_forge.data.normalization import check_normalization, normalize_volume
from cryoet_forge.errors import InputError
from cryoet_forge.io.mrc import read_mrc, write_mrc
from cryoet_forge.io.star import image_paths, read_particles

UNLABELLED = "unlabelled"


class _VolumeListDataset(Dataset):
    """Volumes given as files (read on access) or as an in-memory array, with labels."""

    def __init__(self, files: list[Path] | None, volumes: np.ndarray | None, labels: list[int],
                 class_names: list[str], voxel_size: float | None, normalize: str,
                 table: pd.DataFrame | None, source: str):
        self.files = files
        self._volumes = volumes
        self.labels = [int(label) for label in labels]
        self.class_names = list(class_names)
        self.normalize = check_normalization(normalize)
        self.table = table
        self.source = source
        if len(self.labels) == 0:
            raise InputError(f"{source}: no volumes found")
        first = None
        if voxel_size is None:  # files without a table: the first file's header sets the voxel size
            if self.files is None:
                raise InputError(f"{source}: in-memory volumes need a voxel size")
            first, voxel_size = read_mrc(self.files[0])
        self.voxel_size = float(voxel_size)
        if first is None:
            first = self._raw(0)
        if first.ndim != 3 or len(set(first.shape)) != 1:
            raise InputError(f"{self._name(0)}: expected a cubic volume, got shape {first.shape}")
        self.box = int(first.shape[0])

    def _name(self, index: int) -> str:
        return str(self.files[index]) if self.files is not None else f"{self.source}[{index}]"

    def _raw(self, index: int) -> np.ndarray:
        if self._volumes is not None or self.files is None:
            return self._volumes[index]  # type: ignore[index]  # one of the two is given (checked by the callers)
        volume, voxel = read_mrc(self.files[index])
        if not np.isclose(voxel, self.voxel_size, rtol=1e-3):
            raise InputError(f"{self.files[index]}: voxel size {voxel:g} A differs from the "
                             f"dataset's {self.voxel_size:g} A")
        return volume

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} volumes")
        index = index % len(self)
        raw = self._raw(index)
        if raw.shape != (self.box,) * 3:
            raise InputError(f"{self._name(index)}: shape {raw.shape} differs from the dataset's box {self.box}")
        volume = normalize_volume(torch.from_numpy(np.array(raw, dtype=np.float32)), self.normalize)
        label = self.labels[index]
        return {"volume": volume.unsqueeze(0), "label": label,
                "class_name": self.class_names[label], "index": index}

    def parameters(self, index: int) -> dict[str, Any]:
        """The table row (recorded simulation parameters) of volume ``index``, or {}."""
        if self.table is None or self.table.empty:
            return {}
        return {str(k): v for k, v in self.table.iloc[index].to_dict().items()}


def _class_names_from_table(df: pd.DataFrame) -> list[str]:
    numbers = df["rlnClassNumber"].astype(int)
    names: dict[int, str] = {}
    for number, name in zip(numbers, df["forgeClassName"].astype(str)):
        if names.setdefault(number, name) != name:
            raise InputError(f"class number {number} has two names: {names[number]!r} and {name!r}")
    return [names.get(k, f"class{k}") for k in range(1, int(numbers.max()) + 1)]


def _example_volumes(n: int) -> list[np.ndarray]:
    return [np.random.default_rng(i).normal(size=(16, 16, 16)).astype(np.float32) for i in range(n)]


class VolumeFolderDataset(_VolumeListDataset):
    """Volumes listed by a STAR table, all MRC files of a folder, or an .npz bundle."""

    @staticmethod
    def contract_example(folder: Path) -> dict[str, Any]:
        """Options of a tiny instance (four 16^3 volumes in ``folder``) for the contract tests."""
        for i, volume in enumerate(_example_volumes(4)):
            write_mrc(Path(folder) / f"v{i}.mrc", volume, 10.0)
        return {"root": str(folder)}

    def __init__(self, root: str | os.PathLike, normalize: str = "zscore"):
        root = Path(root)
        check_normalization(normalize)
        if root.is_dir():
            stars = sorted(root.glob("*.star"))
            if len(stars) > 1:
                raise InputError(f"{root}: {len(stars)} STAR files ({', '.join(s.name for s in stars)}); "
                                 f"pass one of them as root")
            if len(stars) == 1:
                root = stars[0]
        if root.is_dir():
            files = sorted(list(root.glob("*.mrc")) + list(root.glob("*.map")))
            if not files:
                raise InputError(f"{root}: no STAR file and no .mrc volumes in this folder")
            super().__init__(files, None, [0] * len(files), [UNLABELLED], None, normalize, None, str(root))
        elif root.suffix == ".npz":
            bundle = load_bundle(root)
            super().__init__(None, bundle["volumes"], bundle["labels"].tolist(), bundle["class_names"],
                             bundle["voxel_size"], normalize, bundle["parameters"], str(root))
        elif root.suffix == ".star":
            df = read_particles(root)
            if df.empty:
                raise InputError(f"{root}: the STAR table has no rows")
            sizes = df["rlnImagePixelSize"].unique()
            if not np.allclose(sizes, sizes[0], rtol=1e-3):
                shown = ", ".join(f"{float(v):g}" for v in sorted(sizes)[:4])
                raise InputError(f"{root}: mixed rlnImagePixelSize values ({shown} A); expected one")
            files = image_paths(root, df["rlnImageName"])
            super().__init__(files, None, (df["rlnClassNumber"] - 1).tolist(), _class_names_from_table(df),
                             float(sizes[0]), normalize, df, str(root))
        elif root.exists():
            raise InputError(f"{root}: expected a folder, a .star table or an .npz bundle")
        else:
            raise InputError(f"{root}: no such file or folder")


class LabelledFolderDataset(_VolumeListDataset):
    """One subfolder per class (ROOT/<class>/*.mrc), like torchvision's ImageFolder."""

    @staticmethod
    def contract_example(folder: Path) -> dict[str, Any]:
        """Options of a tiny instance (two classes of two 16^3 volumes) for the contract tests."""
        for i, volume in enumerate(_example_volumes(4)):
            (Path(folder) / ("a", "b")[i % 2]).mkdir(parents=True, exist_ok=True)
            write_mrc(Path(folder) / ("a", "b")[i % 2] / f"v{i}.mrc", volume, 10.0)
        return {"root": str(folder)}

    def __init__(self, root: str | os.PathLike, normalize: str = "zscore"):
        root = Path(root)
        check_normalization(normalize)
        if not root.is_dir():
            raise InputError(f"{root}: expected a folder with one subfolder of .mrc volumes per class")
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("*.mrc")))
        if not classes:
            raise InputError(f"{root}: no class subfolders containing .mrc volumes")
        files, labels = [], []
        for label, name in enumerate(classes):
            for f in sorted((root / name).glob("*.mrc")):
                files.append(f)
                labels.append(label)
        super().__init__(files, None, labels, classes, None, normalize, None, str(root))

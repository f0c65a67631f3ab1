"""The ``copick`` dataset: subtomograms around the picks of a copick project, cut on access.

``create("dataset", "copick", config="project.json", objects=["ribosome", ...], voxel_spacing=10.0,
tomo_type="wbp", box=32, ...)`` reads the project with copick's own library (a local project, or
one copick builds from CryoET Data Portal dataset ids, where the network is reachable), plans
every box once (edge skipping, background boxes, as ``forge extract``) and cuts each box from the
run's OME-Zarr tomogram when it is read. ``runs`` keeps only those runs: split train and test by
run, never by particle, so the two never share a tomogram (``split_runs``). The classes are the
objects in the order given (``background`` last when ``background > 0``).

Picks are copick points in Angstrom (plus the translation of their transform, copick's
``full_positions``), voxel ``i`` centred at ``i * voxel_spacing``; all users and sessions unless
``user_id`` / ``session_id`` choose.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cryoet_forge.data.normalization import check_normalization, normalize_volume
from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.extract import ExtractOptions, plan_extraction
from cryoet_forge.io.files import outside_paths_allowed
from cryoet_forge.io.tomograms import open_zarr_tomogram


def _copick():
    try:
        import copick  # optional dependency (the copick extra)
    except ImportError:
        raise ConfigError("the copick dataset needs the copick library: pip install 'cryoet-forge[copick]'") from None
    return copick


def open_project(config: str | os.PathLike):
    copick = _copick()
    if not os.path.isfile(config):
        raise InputError(f"{config}: no such copick configuration file")
    try:
        return copick.from_file(str(config))
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"{config}: not a readable copick configuration ({reason})") from None


def _positions(picks) -> np.ndarray:
    if hasattr(picks, "full_positions"):
        return np.asarray(picks.full_positions(), dtype=float).reshape(-1, 3)
    points, transforms = picks.numpy()
    return (np.asarray(points) + np.asarray(transforms)[:, :3, 3]).reshape(-1, 3)


def _local_root(uri) -> Path | None:
    """A local copick root (``local:///data/project``, ``/data/project``) as a path, else None."""
    if not uri:
        return None
    text = str(uri)
    for prefix in ("local://", "file://"):
        if text.startswith(prefix):
            return Path(text[len(prefix):])
    return None if "://" in text else Path(text)


def _check_inside_project(project, store, config, run: str) -> None:
    """A run's local tomogram must lie, symbolic links followed, under the project's overlay or
    static root, unless ``forge --allow-outside-paths`` allows it."""
    path = getattr(store, "path", None)
    protocol = getattr(getattr(store, "fs", None), "protocol", None)
    protocols = set(protocol) if isinstance(protocol, (tuple, list)) else {protocol}
    if outside_paths_allowed() or not isinstance(path, str) or not protocols & {"file", "local"}:
        return
    roots = [r.resolve() for r in (_local_root(getattr(project.config, "overlay_root", None)),
                                   _local_root(getattr(project.config, "static_root", None))) if r is not None]
    real = Path(path).resolve()
    if roots and not any(real == r or r in real.parents for r in roots):
        raise InputError(f"{config}: run {run!r}: tomogram {path} leads outside the project's roots "
                         f"({', '.join(map(str, roots))}) (to {real}, through a symbolic link); move it under "
                         "them, or allow it with forge --allow-outside-paths")


def _run_tomogram(root, config, run, voxel_spacing: float | None, tomo_type: str, scale: str | int):
    """The ``tomo_type`` tomogram of one run at ``voxel_spacing`` (the run's only one when None), opened lazily."""
    name = run.name
    spacings = [vs.voxel_size for vs in run.voxel_spacings]
    if voxel_spacing is None:
        if len(spacings) != 1:
            raise InputError(f"{config}: run {name!r} has voxel spacings {spacings}; choose one (voxel_spacing)")
        chosen = spacings[0]
    else:
        chosen = float(voxel_spacing)
    vs = run.get_voxel_spacing(chosen)
    found = vs.get_tomograms(tomo_type) if vs is not None else []
    tomogram = found[0] if found else None
    if tomogram is None:
        types = [t.tomo_type for t in vs.tomograms] if vs is not None else []
        raise InputError(f"{config}: run {name!r} has no {tomo_type!r} tomogram at {chosen} A "
                         f"(voxel spacings {spacings}; tomogram types there: {', '.join(types) or 'none'})")
    store = tomogram.zarr()
    _check_inside_project(root, store, config, name)
    return open_zarr_tomogram(store, scale, name=name, source=f"{config}: run {name} ({tomo_type})")


def _runs(root, config, runs: list[str] | None) -> list:
    """The project's runs named ``runs`` (all of them, sorted by name, when None)."""
    all_runs = {r.name: r for r in root.runs}
    if runs is not None:
        missing = [r for r in runs if r not in all_runs]
        if missing:
            raise InputError(f"{config}: no run {', '.join(map(repr, missing))}; the project has "
                             f"{', '.join(sorted(all_runs)) or 'none'}")
    return [all_runs[name] for name in (runs if runs is not None else sorted(all_runs))]


def copick_tomograms(config, tomo_type: str = "wbp", voxel_spacing: float | None = None,
                     runs: list[str] | None = None, scale: str | int = 0) -> list:
    """Every run's (or the ``runs``') ``tomo_type`` tomogram of a copick project, picks or not, opened lazily."""
    root = open_project(config)
    found = [_run_tomogram(root, config, run, voxel_spacing, tomo_type, scale) for run in _runs(root, config, runs)]
    if not found:
        raise InputError(f"{config}: the project has no runs")
    return found


def copick_jobs(config, objects: list[str] | None, voxel_spacing: float | None, tomo_type: str = "wbp",
                runs: list[str] | None = None, scale: str | int = 0, user_id: str | None = None,
                session_id: str | None = None):
    """(tomogram, picks, "angstrom") per run of a copick project, for ``plan_extraction``."""
    root = open_project(config)
    known = [o.name for o in root.pickable_objects if getattr(o, "is_particle", True)]
    objects = list(objects or known)
    unknown = [o for o in objects if o not in known]
    if unknown:
        raise InputError(f"{config}: no pickable particle object {', '.join(map(repr, unknown))}; "
                         f"the project has {', '.join(known) or 'none'}")
    jobs = []
    for run in _runs(root, config, runs):
        rows: list[dict[str, Any]] = []
        for obj in objects:
            for picks in run.get_picks(object_name=obj, user_id=user_id, session_id=session_id):
                xyz = _positions(picks)
                rows.extend({"x": x, "y": y, "z": z, "class_name": obj} for x, y, z in xyz)
        if not rows:
            continue
        tomo = _run_tomogram(root, config, run, voxel_spacing, tomo_type, scale)
        table = pd.DataFrame(rows)
        table[["shift_x", "shift_y", "shift_z"]] = 0.0
        table.attrs["source"] = f"{config}: run {run.name}"
        jobs.append((tomo, table, "angstrom"))
    if not jobs:
        raise InputError(f"{config}: the pick set is empty (objects {', '.join(objects)}"
                         + (f", runs {', '.join(runs)}" if runs else "") + ")")
    return jobs


def split_runs(config, fraction: float = 0.25, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train runs, test runs) of a project: a seeded shuffle of the run names, about ``fraction``
    of them (at least one) for testing; train and test never share a tomogram."""
    names = sorted(r.name for r in open_project(config).runs)
    if len(names) < 2:
        raise InputError(f"{config}: {len(names)} run(s); a split by run needs at least two")
    order = np.random.default_rng(seed).permutation(len(names))
    n_test = min(len(names) - 1, max(1, round(fraction * len(names))))
    test = sorted(names[i] for i in order[:n_test])
    return [n for n in names if n not in test], test


class CopickDataset(Dataset):
    """Labelled subtomograms of a copick project (see the module docstring)."""

    def __init__(self, config: str, objects: list[str] | None = None, voxel_spacing: float | None = None,
                 tomo_type: str = "wbp", box: int = 32, voxel_size: float | None = None, invert: bool = False,
                 extract_normalize: str = "zscore", normalize: str = "zscore", edge: str = "skip",
                 background: int = 0, min_distance: float = 0.0, runs: list[str] | None = None,
                 scale: str | int = 0, user_id: str | None = None, session_id: str | None = None, seed: int = 0):
        self.normalize = check_normalization(normalize)
        options = ExtractOptions(box=box, voxel_size=voxel_size, invert=invert, normalize=extract_normalize,
                                 edge=edge, background=background, min_distance=min_distance, seed=seed)
        jobs = copick_jobs(config, objects, voxel_spacing, tomo_type, runs, scale, user_id, session_id)
        self.plan = plan_extraction(jobs, options)
        self.table = self.plan.table
        self.class_names = list(self.plan.class_names)
        self.labels = (self.table["rlnClassNumber"] - 1).astype(int).tolist()
        self.box, self.voxel_size = int(box), float(self.plan.voxel_size)
        self.runs = sorted({t.name for t, _, _ in jobs})
        self.source = str(config)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} subtomograms")
        index = index % len(self)
        volume = normalize_volume(torch.from_numpy(self.plan.cut(index)), self.normalize)
        label = self.labels[index]
        return {"volume": volume.unsqueeze(0), "label": label, "class_name": self.class_names[label], "index": index}

    def parameters(self, index: int) -> dict[str, Any]:
        return {str(k): v for k, v in self.table.iloc[index].to_dict().items()}

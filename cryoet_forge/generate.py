"""Generate subtomograms from density maps with a trained run's D -> S generator.

Input maps are normalised the way the run's domain D was (``data.density.options.normalize``,
default of the dataset kind), unless ``normalize`` says otherwise. Each output sample gets
its own Gaussian noise volume drawn from a generator seeded with ``seed``, so one seed
gives identical outputs and different seeds give different ones. Dropout, if the run has
any, is off here (see ``cryoet_forge.uncertainty`` for Monte-Carlo dropout).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cryoet_forge import progress
from cryoet_forge.config import TrainConfig
from cryoet_forge.contracts import noise_shape, run_generator, takes_noise
from cryoet_forge.data.folders import VolumeFolderDataset
from cryoet_forge.data.normalization import normalize_volume
from cryoet_forge.errors import InputError, PluginError
from cryoet_forge.io.atomic import atomic_folder, check_output_folder
from cryoet_forge.io.mrc import write_mrc
from cryoet_forge.io.star import write_particles
from cryoet_forge.simulate.poses import PoseSimulator
from cryoet_forge.simulate.templates import MAP_SUFFIXES, load_templates
from cryoet_forge.train import checkpoint as ckpt
from cryoet_forge.train.loop import (
    RUN_DATA,
    build_networks,
    factory_parameters,
    resume_config,
)
from cryoet_forge.viz import save_slice_montage


def run_metadata(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_DATA
    if not path.is_file():
        raise InputError(f"{path}: run metadata missing; is {run_dir} a training run folder?")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"{path}: corrupt run metadata ({exc})") from None


def density_normalization(cfg: TrainConfig) -> str:
    """The normalisation domain D had: its ``normalize`` option, else its dataset's default."""
    d = cfg.data.density
    if "normalize" in d.options:
        return str(d.options["normalize"])
    try:
        param = factory_parameters("dataset", d.dataset).get("normalize")
    except PluginError:  # the run's dataset plugin is not installed here
        param = None
    if param is None or param.default is param.empty:
        return "none"
    return str(param.default)


def load_generator(run_dir: str | os.PathLike, network: str = "g_ds", checkpoint: str | os.PathLike | None = None,
                   **option_overrides: Any) -> tuple[nn.Module, TrainConfig]:
    """A generator of a run with the weights of ``checkpoint`` (default: the run's newest), in eval mode on CPU."""
    run_dir = Path(run_dir)
    cfg = resume_config(run_dir)
    if option_overrides:
        key = "generator_options" if network == "g_ds" else "inverse_generator_options"
        setattr(cfg.model, key, {**getattr(cfg.model, key), **option_overrides})
    model = build_networks(cfg, [network])[network]
    if checkpoint is None:  # the newest one that is intact
        path, weights = ckpt.load_newest_intact(run_dir, ckpt.load_weights)
    else:  # the one asked for, or its error
        path = Path(checkpoint)
        weights = ckpt.load_weights(path)
    weights = ckpt.sub_state_dict(weights, network)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not fit the run's {network} "
                         f"({ckpt.error_text(exc)})") from None
    return model.eval(), cfg


def _as_batch(maps: np.ndarray, box: int, normalize: str) -> torch.Tensor:
    array = np.asarray(maps, dtype=np.float32)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or len(set(array.shape[1:])) != 1:
        raise InputError(f"maps must be shaped (B, S, S, S), got {array.shape}")
    if array.shape[-1] != box:
        raise InputError(f"maps are {array.shape[-1]}^3 but the run was trained on {box}^3 volumes")
    if not np.isfinite(array).all():
        raise InputError("maps contain NaN or infinite voxels")
    batch = torch.from_numpy(array.copy())
    return torch.stack([normalize_volume(v, normalize) for v in batch])[:, None]


@torch.no_grad()
def run_seeded(model: nn.Module, inputs: torch.Tensor, seed: int, batch_size: int = 8,
               noise: torch.Tensor | None = None, label: str = "generate", unit: str = "volumes") -> torch.Tensor:
    """A generator on (B, 1, S, S, S) ``inputs`` in batches, the same for the same ``seed``: torch's
    global generator is seeded inside and restored after (generators that draw their own noise),
    and a noise-taking generator gets its noise drawn per batch from a generator seeded with
    ``seed``, or ``noise`` (one draw, (1, ...)) for every row when given. Returns (B, S, S, S)."""
    noise_gen = torch.Generator().manual_seed(int(seed))
    outputs = []
    with torch.random.fork_rng(devices=[]), progress.stage(label, len(inputs), unit) as bar:
        torch.manual_seed(int(seed))
        for start in range(0, len(inputs), batch_size):
            x = inputs[start:start + batch_size]
            z = None
            if noise is not None:
                z = noise.expand(len(x), *noise.shape[1:]).contiguous()
            elif takes_noise(model):
                z = torch.randn(noise_shape(model, tuple(x.shape)), generator=noise_gen)
            outputs.append(run_generator(model, x, z)[:, 0])
            bar.advance(x.shape[0])
    return torch.cat(outputs)


@torch.no_grad()
def generate_from_maps(run_dir: str | os.PathLike, maps: np.ndarray, n_per_map: int, seed: int,
                       batch_size: int = 8, normalize: str | None = None,
                       checkpoint: str | os.PathLike | None = None) -> np.ndarray:
    """(B, S, S, S) density maps -> (B * n_per_map, S, S, S) subtomograms; sample j of map i at i*n+j.

    ``checkpoint``: a checkpoint folder of the run (default: its newest intact one).
    """
    if n_per_map < 1:
        raise InputError(f"n_per_map must be >= 1, got {n_per_map}")
    model, cfg = load_generator(run_dir, checkpoint=checkpoint)
    box = int(run_metadata(Path(run_dir))["box"])
    inputs = _as_batch(maps, box, normalize or density_normalization(cfg))
    inputs = inputs.repeat_interleave(n_per_map, dim=0)
    return run_seeded(model, inputs, seed, batch_size).numpy().astype(np.float32)


def check_run_voxel_size(run_dir: Path, voxel: float, source: str) -> None:
    """InputError when maps at ``voxel`` A go into a run trained at another voxel size (a run
    that records none, or a map header without one, is not checked)."""
    trained = float(run_metadata(Path(run_dir)).get("voxel_size") or 0.0)
    if trained > 0 and voxel > 0 and abs(trained - voxel) > 1e-3 * max(trained, voxel):
        raise InputError(f"{source}: density maps at {voxel:g} A, but the run {run_dir} was trained at "
                         f"{trained:g} A; resample the maps to {trained:g} A")


def _maps_from_source(run_dir: Path, maps: Path | None, structures: list[Path]):
    """-> (volumes (B,S,S,S), (class number, class name) per map, source per map, voxel size (A),
    recorded parameters per map)."""
    meta = run_metadata(run_dir)
    box, voxel = int(meta["box"]), float(meta.get("voxel_size") or 0.0)
    if maps is not None:
        dataset = VolumeFolderDataset(maps, normalize="none")
        items = [dataset[i] for i in range(len(dataset))]
        volumes = np.stack([it["volume"][0].numpy() for it in items])
        classes = [(int(it["label"]) + 1, it["class_name"]) for it in items]
        files = getattr(dataset, "files", None)
        sources = [str(files[i]) if files else f"{maps}[{i}]" for i in range(len(dataset))]
        check_run_voxel_size(run_dir, float(dataset.voxel_size), str(maps))
        return volumes, classes, sources, float(dataset.voxel_size), [_carried(dataset, i) for i in range(len(dataset))]

    if voxel <= 0:
        raise InputError(f"{run_dir}: the run records no voxel size; use --maps instead of --structures")
    names, volumes = load_templates([str(p) for p in structures], box, voxel)
    return volumes, list(enumerate(names, 1)), [str(p) for p in structures], voxel, [{} for _ in names]


#: columns the output STAR file writes itself
OWN_COLUMNS = {"rlnImageName", "rlnClassNumber", "forgeClassName", "rlnImagePixelSize"}


def _carried(dataset, index: int) -> dict[str, Any]:
    """The input map's recorded parameters (pose, ...) to carry into the output table."""
    row = dataset.parameters(index) if hasattr(dataset, "parameters") else {}
    return {k: v for k, v in row.items() if k not in OWN_COLUMNS and not k.startswith("forgeSource")}


def template_maps(maps: Path | None) -> list[Path]:
    """The map files of ``maps`` when it is a folder of class templates (map files and no STAR
    table): each file one class named by its stem, centred, posed at random per sample like
    ``--structures``. Empty for a STAR table, a bundle or a folder holding a table (posed maps
    whose rows say class and pose)."""
    if maps is None or not maps.is_dir() or any(p.suffix.lower() == ".star" for p in maps.iterdir()):
        return []

    return sorted(p for p in maps.iterdir() if p.is_file() and p.suffix.lower() in MAP_SUFFIXES)


#: what ``generate_to_folder`` writes into OUT
OUTPUT_NAMES = ("subtomograms", "particles.star", "montage.png")


def generate_to_folder(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, maps=None,
                       structures=(), n_per_map: int = 1, seed: int = 0, batch_size: int = 8,
                       overwrite: bool = False) -> Path:
    """Write OUT/subtomograms/*.mrc, OUT/particles.star (classes carried over: a STAR table's or
    bundle's classes and poses, or the file stems of a folder of class maps) and OUT/montage.png;
    return the STAR path. The three appear together once all are written, replacing (with
    ``overwrite``) an earlier generation's as a whole, so no old volume stays beside a new table."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    existing = check_output_folder(out_dir, OUTPUT_NAMES, "a generation", overwrite)
    templates = template_maps(Path(maps) if maps else None)
    if templates:  # a folder of class maps: the --structures route (class = file stem, random poses)
        maps, structures = None, templates
    volumes, classes, sources, voxel, carried = _maps_from_source(
        run_dir, Path(maps) if maps else None, [Path(p) for p in structures])
    poses = [carried[k // n_per_map] for k in range(len(volumes) * n_per_map)]
    if structures:
        # centred templates: give every sample its own random pose, as domain D had in training

        repeated = torch.from_numpy(np.repeat(volumes, n_per_map, axis=0))
        posed, poses = PoseSimulator().simulate(repeated, voxel, torch.Generator().manual_seed(int(seed) + 1))
        generated = generate_from_maps(run_dir, posed.numpy(), 1, seed, batch_size=batch_size)
        volumes = posed.numpy()[::n_per_map]  # what the first sample of each map was made from
    else:
        generated = generate_from_maps(run_dir, volumes, n_per_map, seed, batch_size=batch_size)

    with atomic_folder(out_dir, stale=tuple(existing)) as work:
        rows = []
        for k, volume in enumerate(generated):
            i, j = divmod(k, n_per_map)
            name = f"subtomograms/{k:06d}.mrc"
            write_mrc(work / name, volume, voxel)
            rows.append({"rlnImageName": name, "rlnClassNumber": classes[i][0],
                         "forgeClassName": classes[i][1], "rlnImagePixelSize": voxel,
                         "forgeSourceMap": sources[i], "forgeSampleIndex": j, "forgeSeed": int(seed),
                         **poses[k]})
        write_particles(work / "particles.star", pd.DataFrame(rows))
        shown = min(len(volumes), 6)
        save_slice_montage(work / "montage.png",
                           [[volumes[i] for i in range(shown)], [generated[i * n_per_map] for i in range(shown)]],
                           row_labels=["density map", "generated"],
                           col_labels=[classes[i][1] for i in range(shown)])
    return out_dir / "particles.star"

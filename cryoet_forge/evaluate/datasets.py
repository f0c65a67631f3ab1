"""The data of one evaluation: real train/test splits, clean maps (domain D), traditional simulation.

"Real" data is either read from labelled folders (MRC + STAR) or, in the embedded default,
made by the ``experimental`` simulator (``tilt-series`` with crowding, ice and realistic SNR)
from per-particle phantom variants, so that the traditional baseline (``fourier`` with
textbook parameters on the canonical maps) faces a genuine domain gap, as in the paper.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from cryoet_forge import progress, registry
from cryoet_forge.classify import LabelledVolumes, check_splits, load_labelled
from cryoet_forge.data.copick import CopickDataset, split_runs
from cryoet_forge.data.extract_command import jobs_from_tables
from cryoet_forge.data.polarity import apply_polarity
from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.evaluate.config import (  # noqa: F401  (the shared-folder paths, also read from here)
    SHARED_PREFIX,
    EvaluationConfig,
    resolve_maps_dir,
    shared_data_folder,
    traditional_acquisition,
)
from cryoet_forge.extract import ExtractOptions, extract
from cryoet_forge.io.mrc import read_mrc, write_mrc
from cryoet_forge.io.star import write_particles
from cryoet_forge.simulate.density import density_from_structure
from cryoet_forge.simulate.phantoms import PHANTOM_CLASSES, make_phantom
from cryoet_forge.simulate.templates import STRUCTURE_SUFFIXES

#: particles simulated per simulator call (bounds memory at large boxes)
SIMULATION_CHUNK = 32


def fit_map(volume: np.ndarray, source_voxel: float, voxel_size: float, box: int) -> np.ndarray:
    """Resample a map to ``voxel_size`` and centre-crop/pad it to ``box``^3, values scaled to max 1."""
    volume = np.asarray(volume, dtype=np.float32)
    factor = source_voxel / voxel_size
    if not math.isclose(factor, 1.0, rel_tol=1e-3):
        volume = ndimage.zoom(volume, factor, order=1)
    out = np.zeros((box, box, box), dtype=np.float32)
    src, dst = [], []
    for n in volume.shape:
        if n >= box:
            start = (n - box) // 2
            src.append(slice(start, start + box))
            dst.append(slice(0, box))
        else:
            start = (box - n) // 2
            src.append(slice(0, n))
            dst.append(slice(start, start + n))
    out[tuple(dst)] = volume[tuple(src)]
    out -= float(np.median(out))  # solvent at 0
    out = np.clip(out, 0.0, None)
    peak = float(out.max())
    if peak <= 0:
        raise InputError(f"map is empty after fitting it into a {box}^3 box at {voxel_size:g} A")
    return out / peak


def class_templates(class_names: list[str], maps_dir: Path | None, box: int, voxel_size: float,
                    assembly: int = 0) -> dict[str, np.ndarray]:
    """One clean centred map per class: ``maps_dir/<class>.mrc`` when there, else the atomic model
    ``maps_dir/<class>.pdb`` (``.cif``, gzipped or not; biological assembly ``assembly`` when > 0,
    centred on its centre of mass), else a phantom of that name."""
    if maps_dir is not None and not maps_dir.is_dir():
        raise ConfigError(f"data.maps_dir {maps_dir}: no such folder")
    templates = {}
    for name in class_names:
        path = maps_dir / f"{name}.mrc" if maps_dir is not None else None
        structures = ([maps_dir / f"{name}{suffix}" for suffix in STRUCTURE_SUFFIXES]
                      if maps_dir is not None else [])
        structure = next((p for p in structures if p.is_file()), None)
        if path is not None and path.is_file():
            volume, source_voxel = read_mrc(path)
            templates[name] = fit_map(volume, source_voxel, voxel_size, box)
        elif structure is not None:
            with warnings.catch_warnings():  # tails beyond the box are cut, as fit_map cuts a map's
                warnings.simplefilter("ignore")
                templates[name] = density_from_structure(structure, voxel_size, box, crop=True,
                                                         assembly=assembly or None)
        elif name in PHANTOM_CLASSES:
            templates[name] = make_phantom(name, box, voxel_size, seed=0)
        else:
            where = (f" and no {path} or {name}.pdb / .cif there" if path is not None
                     else " (set data.maps_dir to a folder of <class>.mrc or <class>.pdb)")
            raise ConfigError(f"class {name!r} is not a phantom ({', '.join(PHANTOM_CLASSES)}){where}")
    return templates


def simulate_labelled(simulator: str, options: dict, maps: dict[str, np.ndarray] | Callable[[str, int], np.ndarray],
                      class_names: list[str], n_per_class: int, voxel_size: float, seed: int,
                      source: str) -> tuple[LabelledVolumes, list[dict]]:
    """``n_per_class`` volumes per class from ``simulator``; ``maps`` gives each particle's clean map.

    ``maps`` is a dict of one template per class, or a callable (class name, particle index) ->
    map for per-particle structural variants. Deterministic for a seed.
    """
    sim = registry.create("simulator", simulator, **options)  # "none"/"posed-map": domain D
    generator = torch.Generator().manual_seed(int(seed))
    # classes interleaved in a seeded order: simulators that crowd a particle with other maps
    # of its batch (tilt-series) then get neighbours of every class, as in a cell
    particles = [(label, i) for label in range(len(class_names)) for i in range(n_per_class)]
    order = np.random.default_rng(int(seed)).permutation(len(particles))
    particles = [particles[k] for k in order]

    volumes: list[np.ndarray] = []
    labels: list[int] = []
    records: list[dict] = []
    with progress.stage(f"simulate {source}", len(particles), "volumes") as bar:
        for begin in range(0, len(particles), SIMULATION_CHUNK):
            chunk = particles[begin:begin + SIMULATION_CHUNK]
            if callable(maps):
                batch = np.stack([maps(class_names[label], i) for label, i in chunk])
            else:
                batch = np.stack([maps[class_names[label]] for label, _ in chunk])
            out, recs = sim.simulate(torch.from_numpy(batch), voxel_size, generator)
            volumes.append(out.detach().cpu().float().numpy())
            records.extend(recs)
            labels.extend(label for label, _ in chunk)
            bar.advance(len(chunk))
    data = LabelledVolumes(np.concatenate(volumes), np.asarray(labels), class_names, voxel_size, source)
    return data, records


def write_labelled_folder(folder: Path, data: LabelledVolumes, records: list[dict] | None = None) -> Path:
    """MRC volumes + ``particles.star`` (the format of forge simulate); returns the STAR path."""
    folder = Path(folder)
    (folder / "volumes").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(len(data)):
        name = f"volumes/{i + 1:06d}.mrc"
        write_mrc(folder / name, data.volumes[i], data.voxel_size)
        row = {"rlnImageName": name, "rlnClassNumber": int(data.labels[i]) + 1,
               "forgeClassName": data.class_names[int(data.labels[i])], "rlnImagePixelSize": data.voxel_size}
        if records is not None:
            row.update({k: v for k, v in records[i].items() if k not in row})
        rows.append(row)
    return write_particles(folder / "particles.star", pd.DataFrame(rows))


@dataclass
class EvaluationData:
    class_names: list[str]
    box: int
    voxel_size: float
    templates: dict[str, np.ndarray]
    real_train: LabelledVolumes
    real_test: LabelledVolumes
    density_train: LabelledVolumes  # GAN domain D: randomly posed clean maps (or their traditional simulation)
    density_generate: LabelledVolumes  # the GAN's inputs at generation (other posed maps, or `traditional`)
    traditional: LabelledVolumes
    real_train_star: Path
    density_star: Path
    description: str


def load_copick_splits(d) -> tuple[LabelledVolumes, LabelledVolumes, list[str], list[str]]:
    """The real train and test splits of a copick project, split by run (never by particle)."""
    options = {k: v for k, v in d.copick.items() if k != "config"}
    if "runs" in options:
        raise ConfigError("data.copick.runs: the evaluation splits by run itself; use data.test_runs")
    config = d.copick["config"]
    if d.test_runs:
        train_runs, test_runs = split_runs(config, 0.5, d.seed)
        names = train_runs + test_runs
        missing = [r for r in d.test_runs if r not in names]
        if missing:
            raise InputError(f"data.test_runs: no run {', '.join(map(repr, missing))} in {config}")
        test_runs = sorted(str(r) for r in d.test_runs)
        train_runs = [r for r in sorted(names) if r not in test_runs]
        if not train_runs:
            raise InputError(f"data.test_runs: every run of {config} is a test run; keep one for training")
    else:
        train_runs, test_runs = split_runs(config, d.test_fraction, d.seed)
    options.setdefault("box", d.box)
    options.setdefault("voxel_size", d.voxel_size)
    options.setdefault("normalize", "none")  # the evaluation normalises like the other sources
    splits = []
    for runs, what in ((train_runs, "train"), (test_runs, "test")):
        dataset = CopickDataset(config, runs=runs, **options)
        volumes = np.stack([dataset[i]["volume"][0].numpy() for i in range(len(dataset))])
        splits.append(LabelledVolumes(volumes, np.asarray(dataset.labels), dataset.class_names,
                                      dataset.voxel_size, f"{config} ({what} runs)"))
    return splits[0], splits[1], train_runs, test_runs


def load_picks_splits(d, log: Callable[[str], None]) -> tuple[LabelledVolumes, LabelledVolumes]:
    """``data.source = "picks"``: the training and test splits cut from their tomograms, as
    ``forge extract --tomo-name`` would (box ``data.box`` at ``data.voxel_size``, z-scored)."""
    picks, tomograms = resolve_maps_dir(d.picks), resolve_maps_dir(d.tomograms)
    assert picks is not None and tomograms is not None  # validate() requires both
    for key, path in (("data.picks", picks), ("data.tomograms", tomograms)):
        if not path.exists():
            raise InputError(f"{key} {path}: no such file or folder")
    splits = []
    for key, names in (("data.train_tomograms", d.train_tomograms), ("data.test_tomograms", d.test_tomograms)):
        try:
            jobs = jobs_from_tables([picks], [tomograms], d.unit or None, None, None, "0", None, only=list(names))
        except InputError as exc:
            raise InputError(str(exc).replace("--tomo-name", key)) from None
        result = extract(jobs, ExtractOptions(box=d.box, voxel_size=d.voxel_size).check())
        labels = [result.class_names.index(name) for name in result.table["forgeClassName"]]
        split = LabelledVolumes(result.volumes, np.asarray(labels), result.class_names, result.voxel_size,
                                f"{picks} ({', '.join(names)})")
        log(f"{key}: {len(split)} boxes cut from {', '.join(names)}")
        splits.append(split)
    return splits[0], splits[1]


def at_most_per_class(data: LabelledVolumes, n: int, seed: int) -> LabelledVolumes:
    """At most ``n`` volumes of each class, drawn with ``seed`` (order kept)."""
    rng = np.random.default_rng(seed)
    keep = [index for label in np.unique(data.labels)
            for index in rng.permutation(np.flatnonzero(data.labels == label))[:n]]
    return data.subset(np.sort(np.asarray(keep, dtype=np.int64)))


def _apply_polarity(train: LabelledVolumes, test: LabelledVolumes, mode: str,
                    log: Callable[[str], None]) -> tuple[LabelledVolumes, LabelledVolumes, bool]:
    """The real splits under the contrast convention: measured on the training split (the test
    split is inverted with it, never looked at for the choice); "check" stops on protein-bright."""
    volumes, polarity, line = apply_polarity(train.volumes, mode, f"{train.source} (data.real_train)",
                                             "data.polarity")
    log(line)
    if volumes is train.volumes:
        return train, test, False
    return (dataclasses.replace(train, volumes=volumes),
            dataclasses.replace(test, volumes=-test.volumes), True)


def prepare_data(config: EvaluationConfig, folder: Path, log: Callable[[str], None]) -> EvaluationData:
    d = config.data
    folder = Path(folder)
    maps_dir = resolve_maps_dir(d.maps_dir)
    if d.source in ("folders", "copick", "picks"):
        if d.source == "copick":
            real_train, real_test, train_runs, test_runs = load_copick_splits(d)
            log(f"copick project {d.copick['config']}: train runs {', '.join(train_runs)}; "
                f"test runs {', '.join(test_runs)}")
        elif d.source == "picks":
            real_train, real_test = load_picks_splits(d, log)
        else:
            real_train = load_labelled(d.real_train)
            real_test = load_labelled(d.real_test)
            check_disjoint(real_train, real_test, d.real_train, d.real_test)
        class_names = check_splits(real_train, real_test)
        real_train = real_train.relabelled(class_names)
        real_test = real_test.relabelled(class_names)
        real_train, real_test, inverted = _apply_polarity(real_train, real_test, d.polarity, log)
        if d.real_train_per_class:
            real_train = at_most_per_class(real_train, d.real_train_per_class, d.seed)
            log(f"data.real_train_per_class = {d.real_train_per_class}: {len(real_train)} training particles kept")
        box, voxel_size = real_train.box, real_train.voxel_size
        templates = class_templates(class_names, maps_dir, box, voxel_size, d.assembly)
        if d.source != "folders" or inverted or d.real_train_per_class:  # the GAN reads domain S from this folder
            real_train_star = write_labelled_folder(folder / "real_train", real_train)
        if d.source == "copick":
            description = (f"real data from copick project {d.copick['config']}: runs {', '.join(train_runs)} "
                           f"(train), {', '.join(test_runs)} (test)")
        elif d.source == "picks":
            description = (f"boxes cut from {d.tomograms} at {d.picks}: tomograms {', '.join(d.train_tomograms)} "
                           f"(train), {', '.join(d.test_tomograms)} (test)" + (", contrast inverted" if inverted else ""))
        else:
            if not inverted:
                real_train_star = Path(real_train.source)
            description = (f"real data from {d.real_train} (train) and {d.real_test} (test)"
                           + (", contrast inverted" if inverted else ""))
    else:
        class_names = [str(c) for c in d.classes]
        box, voxel_size = d.box, d.voxel_size
        templates = class_templates(class_names, maps_dir, box, voxel_size, d.assembly)
        exp = config.experimental
        log(f"simulating the 'experimental' domain with {exp.simulator} "
            f"({d.n_train_per_class} + {d.n_test_per_class} per class, {box}^3, {voxel_size:g} A)")
        variants = _particle_variants(templates, box, voxel_size, d.vary_shapes, d.seed)
        real_train, train_records = simulate_labelled(
            exp.simulator, exp.options, lambda name, i: variants(name, i, 0), class_names,
            d.n_train_per_class, voxel_size, d.seed * 1000 + 11, "real train split")
        real_test, _ = simulate_labelled(
            exp.simulator, exp.options, lambda name, i: variants(name, i, 1), class_names,
            d.n_test_per_class, voxel_size, d.seed * 1000 + 12, "real test split")
        real_train_star = write_labelled_folder(folder / "real_train", real_train, train_records)
        description = (f"embedded: 'experimental' = {exp.simulator} {exp.options or '(defaults)'} on "
                       f"{'per-particle variants of ' if d.vary_shapes else ''}the class maps")

    density_train, density_generate, traditional, density_star = _simulate_domain_d_and_traditional(
        config, folder, templates, class_names, voxel_size, log)
    return EvaluationData(class_names, box, voxel_size, templates, real_train, real_test, density_train,
                          density_generate, traditional, Path(real_train_star), Path(density_star), description)


def _simulate_domain_d_and_traditional(
        config: EvaluationConfig, folder: Path, templates: dict[str, np.ndarray], class_names: list[str],
        voxel_size: float, log: Callable[[str], None],
) -> tuple[LabelledVolumes, LabelledVolumes, LabelledVolumes, Path]:
    """The GAN's input (domain D: posed clean maps, or with ``gan.input = "traditional"`` the
    traditional simulation itself), written to ``folder/density``, the traditional baseline set and
    the volumes the trained GAN generates from."""
    d = config.data
    trad = config.traditional
    trad_options, _, notes = traditional_acquisition(trad)  # [traditional.acquisition] merged in
    for note in notes:
        log(f"note: {note}")
    refine = config.gan.input == "traditional"
    log(f"posing clean maps (domain D) and simulating the traditional baseline with {trad.simulator}"
        + (" (also the GAN's input: refinement)" if refine else ""))
    if refine:  # D = traditional simulation of the maps; the GAN refines the baseline's own volumes
        density_train, density_records = simulate_labelled(
            trad.simulator, trad_options, templates, class_names, d.n_density_per_class, voxel_size,
            d.seed * 1000 + 16, f"traditional ({trad.simulator}) as GAN input")
    else:
        density_train, density_records = simulate_labelled(
            "posed-map", {}, templates, class_names, d.n_density_per_class, voxel_size, d.seed * 1000 + 13, "density maps")
    density_star = write_labelled_folder(folder / "density", density_train, density_records)
    traditional, _ = simulate_labelled(trad.simulator, trad_options, templates, class_names,
                                       config.downstream.n_per_class, voxel_size, d.seed * 1000 + 15,
                                       f"traditional ({trad.simulator})")
    if refine:
        density_generate = traditional
    else:
        density_generate, _ = simulate_labelled(
            "posed-map", {}, templates, class_names, config.downstream.n_per_class, voxel_size, d.seed * 1000 + 14,
            "density maps for generation")
    return density_train, density_generate, traditional, density_star


def _volume_digests(data: LabelledVolumes) -> list[bytes]:
    """One digest per volume of its exact bytes (and shape)."""
    digests = []
    for volume in data.volumes:
        volume = np.ascontiguousarray(volume)
        h = hashlib.blake2b(str(volume.shape).encode(), digest_size=20)
        h.update(volume.data.cast("B"))
        digests.append(h.digest())
    return digests


def check_disjoint(train: LabelledVolumes, test: LabelledVolumes, train_path: str | Path,
                   test_path: str | Path) -> None:
    """The real train and test splits must share no data: not one STAR table given twice and no
    byte-identical volume in both (InputError naming both paths and how many volumes overlap).

    ``train_path``/``test_path`` are the paths as given (``data.real_train``/``data.real_test``).
    """
    where = f"data.real_train {train_path} and data.real_test {test_path}"
    if Path(train.source).resolve() == Path(test.source).resolve():
        raise InputError(f"{where} are the same STAR table {train.source} (all {len(test)} volumes "
                         "overlap); the train and test splits must be disjoint")
    in_train = set(_volume_digests(train))
    shared = sum(digest in in_train for digest in _volume_digests(test))
    if shared:
        raise InputError(f"{where} overlap: {shared} of the {len(test)} test volumes are byte-identical "
                         "to train volumes; the train and test splits must be disjoint")


def _particle_variants(templates: dict[str, np.ndarray], box: int, voxel_size: float, vary: bool,
                       seed: int) -> Callable[[str, int, int], np.ndarray]:
    """(class, index, split) -> clean map of that particle: a seeded phantom variant, or the template."""
    def variant(name: str, index: int, split: int) -> np.ndarray:
        if vary and name in PHANTOM_CLASSES:
            # distinct seeds per split so train and test particles are never the same instance
            return make_phantom(name, box, voxel_size, seed=1 + seed * 1_000_003 + split * 100_003 + index)
        return templates[name]

    return variant

"""``forge simulate`` and ``forge fetch-structures``."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from cryoet_forge import progress, registry
from cryoet_forge.devices import SEED, NonEmptyPath, check_device, device_callback
from cryoet_forge.errors import ConfigError
from cryoet_forge.io.atomic import atomic_folder, check_output_folder, write_json_atomic
from cryoet_forge.io.files import check_output_target
from cryoet_forge.limits import check_allocation, format_bytes
from cryoet_forge.simulate import acquisition as acq
from cryoet_forge.simulate.acquisition import PHANTOM_VOXEL_SIZE, positive_flag

# `forge --help` imports this module: what only a command's work needs (numpy, torch, pandas and the
# modules built on them) is imported inside the functions that use it (start-up time).

OUTPUT_NAMES = ("templates", "density", "subtomograms", "density.star", "particles.star", "montage.png",
                "density.npz", "particles.npz", "simulation.json")


def _parse_options(pairs: tuple[str, ...]) -> dict:
    """``KEY=VALUE`` strings -> dict; values parsed as JSON when possible (numbers, lists, true)."""
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--option {pair!r}: expected KEY=VALUE, e.g. snr=0.1 or tilt_range=[-50,50]")
        key, value = pair.split("=", 1)
        try:
            options[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip().replace("-", "_")] = value
    return options


#: float32 volumes held per particle of a batch: the template copy, the posed map, the simulated
#: subtomogram, the simulator's complex64 Fourier transforms (two volumes each) and the NumPy copies
_VOLUMES_PER_PARTICLE = 8


def _check_memory(box: int, batch_size: int, n_per_class: int, bundle: bool) -> None:
    """One line when a batch of ``box``^3 volumes (and, with ``--bundle``, every volume of a class)
    cannot fit in the available memory, before anything is allocated."""
    if box < 1:
        raise ConfigError(f"--box {box}: expected >= 1")
    volume = 4 * box**3
    batch = min(batch_size, n_per_class)
    nbytes = volume * (1 + _VOLUMES_PER_PARTICLE * batch + (2 * n_per_class if bundle else 0))
    kept = f" and --bundle keeping {2 * n_per_class}" if bundle else ""
    check_allocation(nbytes, f"--box {box} ({batch} per batch{kept}, volumes of {box}^3 voxels)",
                     "a smaller --box (or --batch-size)", error=ConfigError)


def _check_disk(out: Path, n_volumes: int, box: int) -> None:
    """One line when ``n_volumes`` MRC files of ``box``^3 (two per particle) cannot fit on the
    disk that holds ``out``, before anything is written (or listed in memory)."""
    folder = Path(os.path.abspath(out))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    needed = n_volumes * (4 * box**3 + 1024)  # float32 voxels and the MRC header
    usage = shutil.disk_usage(folder)
    free = usage.free
    if usage.total > 0 and needed > free:  # a pseudo file system (/proc) reports no size: writing there fails by name
        raise ConfigError(f"--n-per-class and --box ask for {n_volumes:,} volumes of {box}^3 voxels, "
                          f"{format_bytes(needed)} of files, more than the {format_bytes(free)} free under "
                          f"{folder}; expected fewer particles or a smaller box")


def _make_simulator(simulator_name: str, options: dict, shift, box: int):
    """The simulator (told not to pose the maps: they are posed before it) and the poser."""
    # start-up: torch and numpy
    from cryoet_forge.data.simulated import make_simulator
    from cryoet_forge.simulate.poses import PoseSimulator, check_max_shift

    component = registry.get("simulator", simulator_name)
    # the maps are posed by ``poser``: a simulator that poses maps itself (rotate, max_shift) must not
    # pose them again; one without these options (a plugin's, say) does not pose them at all
    posing = {k: v for k, v in {"rotate": False, "max_shift": 0.0}.items() if component.accepts(k)}
    simulator = make_simulator(simulator_name, {**options, **posing})
    poser = PoseSimulator(max_shift=shift)
    check_max_shift(poser.max_shift, box)
    return simulator, poser


@dataclass
class _Particles:
    """What the batches of :func:`run_simulation` leave beside their MRC files."""

    density_rows: list[dict] = field(default_factory=list)
    particle_rows: list[dict] = field(default_factory=list)
    #: class -> its first (posed map, subtomogram) pairs, for the montage
    examples: dict[int, list[tuple[Any, Any]]] = field(default_factory=dict)
    #: the batches' posed maps and subtomograms (kept with --bundle only)
    density: list = field(default_factory=list)
    subtomograms: list = field(default_factory=list)


def _star_rows(name: str, c: int, k: int, class_names: list[str], voxel_size: float, pose_record: dict,
               sim_record: dict) -> tuple[dict, dict]:
    """The density.star and particles.star rows of particle ``k`` of class ``c`` (file ``name``)."""
    common = {"rlnClassNumber": c + 1, "forgeClassName": class_names[c],
              "rlnImagePixelSize": voxel_size, "forgeParticleIndex": k}
    pose = {key: v for key, v in pose_record.items() if key != "forgeSimulator"}
    density_row = {"rlnImageName": f"density/{name}", **common, **pose}
    params = {**sim_record, **pose}
    particle_row = {"rlnImageName": f"subtomograms/{name}", **common, **params,
                    "forgeDensityName": f"density/{name}"}
    return density_row, particle_row


def _simulate_batches(work: Path, jobs: list[tuple[int, int]], class_names: list[str], templates, simulator,
                      poser, voxel_size: float, seed: int, batch_size: int, bundle: bool, device: str,
                      bar) -> _Particles:
    """Pose and simulate the particles ``jobs`` ((class, index) pairs) batch by batch, each batch
    seeded from (seed, batch index), writing their MRC files into ``work``."""
    # start-up: torch and numpy, and the modules built on them
    import torch

    # start-up: as above
    from cryoet_forge.data.simulated import item_seed
    from cryoet_forge.io.mrc import write_mrc

    out = _Particles(examples={c: [] for c in range(len(class_names))})
    template_tensor = torch.from_numpy(templates).to(device)
    for batch_index, start in enumerate(range(0, len(jobs), batch_size)):
        batch = jobs[start:start + batch_size]
        generator = torch.Generator().manual_seed(item_seed(seed, batch_index))
        maps = template_tensor[[c for c, _ in batch]]
        posed, pose_records = poser.simulate(maps, voxel_size, generator)
        simulated, sim_records = simulator.simulate(posed, voxel_size, generator)
        posed_np, simulated_np = posed.cpu().numpy(), simulated.cpu().numpy()
        for i, (c, k) in enumerate(batch):
            name = f"{class_names[c]}_{k:05d}.mrc"
            write_mrc(work / "density" / name, posed_np[i], voxel_size)
            write_mrc(work / "subtomograms" / name, simulated_np[i], voxel_size)
            density_row, particle_row = _star_rows(name, c, k, class_names, voxel_size, pose_records[i],
                                                   sim_records[i])
            out.density_rows.append(density_row)
            out.particle_rows.append(particle_row)
            if len(out.examples[c]) < 3:
                out.examples[c].append((posed_np[i], simulated_np[i]))
        if bundle:
            out.density.append(posed_np)
            out.subtomograms.append(simulated_np)
        bar.advance(len(batch))
    return out


def _write_tables(work: Path, particles: _Particles, jobs: list[tuple[int, int]], class_names: list[str],
                  voxel_size: float, bundle: bool) -> None:
    """density.star and particles.star, and with ``bundle`` density.npz and particles.npz."""
    # start-up: numpy and pandas, and the modules built on them
    import numpy as np
    import pandas as pd

    # start-up: as above
    from cryoet_forge.data.bundle import save_bundle
    from cryoet_forge.io.star import write_particles

    density_table = pd.DataFrame(particles.density_rows)
    particle_table = pd.DataFrame(particles.particle_rows)
    write_particles(work / "density.star", density_table)
    write_particles(work / "particles.star", particle_table)
    if bundle:
        labels = [c for c, _ in jobs]
        save_bundle(work / "density.npz", np.concatenate(particles.density), labels, class_names, voxel_size,
                    density_table)
        save_bundle(work / "particles.npz", np.concatenate(particles.subtomograms), labels, class_names,
                    voxel_size, particle_table.drop(columns=["forgeSimulator"], errors="ignore"))


def _write_montage(work: Path, templates, examples: dict[int, list[tuple[Any, Any]]], class_names: list[str],
                   simulator_name: str, box: int, voxel_size: float) -> None:
    """montage.png: per class its template, then its example posed maps (D) and subtomograms (S)."""
    from cryoet_forge.viz import save_slice_montage  # start-up: numpy

    rows = [[templates[c]] + [d for d, _ in examples[c]] + [s for _, s in examples[c]]
            for c in range(len(class_names))]
    n_ex = max(len(v) for v in examples.values())
    save_slice_montage(work / "montage.png", rows, class_names,
                       ["template"] + [f"D {i + 1}" for i in range(n_ex)] + [f"S {i + 1}" for i in range(n_ex)],
                       title=f"{simulator_name}, {box}^3 at {voxel_size:g} A (central z slices)")


def run_simulation(out: Path, specs, simulator_name: str, n_per_class: int, box: int, voxel_size: float,
                   seed: int, options: dict, batch_size: int = 32, resolution: float | None = None,
                   crop: bool = False, bundle: bool = False, device: str = "cpu", quiet: bool = True,
                   overwrite: bool = False, assembly: int | None = None, acquisition: dict | None = None) -> dict:
    """Write templates, paired clean posed maps (domain D) and subtomograms (domain S) to ``out``.

    Particle i of class c gets one random pose shared by its density map and its
    subtomogram (so the pairs are known); training uses the two folders unpaired. Batches are
    seeded from (seed, batch index): the same seed and batch size give identical files.
    The outputs appear in ``out`` together, once all are written; a failure leaves ``out`` as it was.
    ``acquisition`` (what ``forge simulate`` resolved from its flags) is written into simulation.json.
    """
    # start-up: numpy, scipy, mrcfile, gemmi
    from cryoet_forge.io.mrc import check_voxel_size, write_mrc
    from cryoet_forge.simulate.templates import load_templates

    voxel_size = check_voxel_size(voxel_size)
    existing = check_output_folder(out, OUTPUT_NAMES, "a simulation", overwrite)
    if n_per_class < 1:
        raise ConfigError(f"--n-per-class {n_per_class}: expected >= 1")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: expected >= 1")
    _check_memory(box, batch_size, n_per_class, bundle)
    options = dict(options)  # the caller's dict stays as it was
    shift = options.pop("max_shift", 2.0)
    simulator, poser = _make_simulator(simulator_name, options, shift, box)
    class_names, templates = load_templates(specs, box, voxel_size, seed, resolution, crop, assembly)
    _check_disk(out, 2 * n_per_class * len(class_names), box)
    # everything is written into a temporary folder beside OUT and appears in OUT only when
    # the whole simulation succeeded; a failure leaves OUT (and a previous simulation in it) as it was
    with atomic_folder(out, stale=tuple(existing)) as work:
        for name, volume in zip(class_names, templates):
            write_mrc(work / "templates" / f"{name}.mrc", volume, voxel_size)
        jobs = [(c, k) for c in range(len(class_names)) for k in range(n_per_class)]
        with progress.stage(f"simulate {simulator_name} x {len(class_names)} classes", len(jobs),
                            "particles", enabled=not quiet) as bar:
            particles = _simulate_batches(work, jobs, class_names, templates, simulator, poser, voxel_size, seed,
                                          batch_size, bundle, device, bar)
        _write_tables(work, particles, jobs, class_names, voxel_size, bundle)
        _write_montage(work, templates, particles.examples, class_names, simulator_name, box, voxel_size)
        summary = {"classes": class_names, "simulator": simulator_name, "options": options, "max_shift": shift,
                   "assembly": assembly, "crop": crop,
                   "n_per_class": n_per_class, "box": box, "voxel_size": voxel_size, "seed": seed,
                   "batch_size": batch_size, "resolution": resolution, "particles": len(jobs)}
        if acquisition is not None:
            summary["acquisition"] = acquisition
        write_json_atomic(work / "simulation.json", summary, default=str)
    return summary


def _check_flags(voxel_size: float | None, snr: float | None, resolution: float | None,
                 assembly: int | None) -> None:
    """The numeric flags of ``forge simulate`` and ``forge density``, each refused by name before
    any work (even where the chosen classes do not use it, such as --resolution with --phantoms)."""
    from cryoet_forge.io.mrc import check_voxel_size  # start-up: numpy, mrcfile

    if voxel_size is not None:
        check_voxel_size(voxel_size, "--voxel-size")
    positive_flag(snr, "--snr", "var(signal)/var(noise)")
    positive_flag(resolution, "--resolution", "Angstrom")
    if assembly is not None and assembly < 1:
        raise ConfigError(f"--assembly {assembly}: expected a biological assembly number >= 1")


@click.command("simulate")
@click.option("--phantoms", "use_phantoms", is_flag=True, help="Use the procedural phantom classes (offline).")
@click.option("--structures", "structures", metavar="IDS_OR_DIR",
              help="Comma-separated PDB ids / structure or map files, or a folder of them.")
@click.option("--simulator", "simulator_name", default="fourier", show_default=True,
              help="A registered simulator: fourier, tilt-series, posed-map (clean posed maps; also 'none').")
@click.option("--n-per-class", type=int, default=10, show_default=True)
@click.option("--box", type=int, default=40, show_default=True, help="Box edge in voxels.")
@click.option("--voxel-size", type=float, default=None,
              help="Angstrom per voxel. Default: from --acquisition, else from the MRC maps of --structures; "
                   f"required with PDB structures; {PHANTOM_VOXEL_SIZE:g} for --phantoms.")
@click.option("--acquisition", type=NonEmptyPath(dir_okay=False, path_type=Path), default=None,
              metavar="TOMOGRAMS.STAR",
              help="A RELION 5 tomograms STAR: voxel size (pixel size x binning), voltage, Cs, amplitude contrast, "
                   "and from its tilt-series STARs the tilt range and step, dose and defocus. Flags win.")
@click.option("--tilt-range", metavar="MIN,MAX", default=None,
              help="Tilt range in degrees, e.g. -60,60 (fourier: the missing wedge; tilt-series: the tilts).")
@click.option("--tilt-step", type=float, default=None, help="Tilt increment in degrees (tilt-series).")
@click.option("--dose", type=float, default=None, help="Total electron dose in e/A^2 over the tilt series "
              "(tilt-series).")
@click.option("--voltage", type=float, default=None, help="Acceleration voltage in kV (fourier, tilt-series).")
@click.option("--defocus", metavar="UM|MIN,MAX", default=None,
              help="Defocus in micrometres, underfocus positive as in Warp and RELION: 4, or a range 2,6 drawn "
                   "per particle (fourier, tilt-series).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--out", "out", type=NonEmptyPath(file_okay=False, path_type=Path), required=True)
@click.option("--snr", type=float, default=None, help="Target SNR (fourier), var(signal)/var(noise).")
@click.option("--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
              help="Another simulator option, e.g. --option bfactor=150 (repeatable; the simulator's own names, "
                   "e.g. defocus_um with underfocus negative).")
@click.option("--resolution", type=float, default=None, help="Low-pass of structure maps in A (default 2 x voxel).")
@click.option("--crop", is_flag=True, help="Crop structures larger than the box (with a warning) instead of failing.")
@click.option("--assembly", type=int, default=None, help="Build biological assembly N of each structure (e.g. 1).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--bundle", is_flag=True, help="Also write density.npz and particles.npz bundles.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.", callback=device_callback)
@click.option("--quiet", "-q", is_flag=True, help="No progress output (results still print).")
@click.option("--overwrite", is_flag=True, help="Replace a previous simulation in OUT.")
def simulate_command(use_phantoms, structures, simulator_name, n_per_class, box, voxel_size, acquisition,
                     tilt_range, tilt_step, dose, voltage, defocus, seed, out, snr, option_pairs, resolution, crop,
                     assembly, batch_size, bundle, device, quiet, overwrite):
    """Simulate density maps and subtomograms per class into OUT (STAR tables + montage).

    Defocus is underfocus positive (--defocus 4 is 4 um underfocus); simulation.json records the
    acquisition used and where each value came from.
    """
    from cryoet_forge.simulate.templates import check_specs, expand_specs  # start-up: numpy, scipy, gemmi

    if structures is not None and not structures.strip(" ,"):
        raise ConfigError(f"--structures {structures!r} names no structure; expected PDB ids, structure or map "
                          "files, or a folder of them")
    if use_phantoms == bool(structures):
        raise ConfigError("give exactly one of --phantoms or --structures IDS_OR_DIR")
    _check_flags(voxel_size, snr, resolution, assembly)
    options = _parse_options(option_pairs)
    if snr is not None:
        if "snr" in options:
            raise ConfigError(f"--snr {snr:g} and --option snr={options['snr']} both set the SNR; give one")
        options["snr"] = snr
    flags, notes = acq.acquisition_flags(tilt_range, tilt_step, dose, voltage, defocus)
    star = acq.read_star_acquisition(acquisition) if acquisition is not None else None
    factory = registry.get("simulator", simulator_name).factory
    options, used, more = acq.apply_acquisition(simulator_name, factory, flags, options, star)
    notes += more
    specs = None if use_phantoms else expand_specs(structures)
    if specs is not None:
        check_specs(specs)
    voxel_size, voxel_source = acq.resolve_voxel_size(voxel_size, specs, star)
    used = {"voxel_size": voxel_size, **used}
    used["sources"] = {"voxel_size": voxel_source, **used["sources"]}
    for line in notes:
        click.echo(f"forge: note: {line}", err=True)

    device = str(check_device(device))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run_simulation(out, specs, simulator_name, n_per_class, box,
                                 voxel_size, seed, options, batch_size, resolution, crop, bundle, device, quiet,
                                 overwrite, assembly, used)
    for w in caught:
        if issubclass(w.category, UserWarning):
            click.echo(f"forge: warning: {w.message}", err=True)
    click.echo(f"wrote {summary['particles']} particles of {len(summary['classes'])} classes "
               f"({', '.join(summary['classes'])}) to {out} at {voxel_size:g} A/voxel")


@click.command("fetch-structures")
@click.argument("pdb_ids", nargs=-1, required=True)
@click.option("--cache", type=NonEmptyPath(file_okay=False, path_type=Path), default=None,
              help="Cache folder (default $FORGE_CACHE_DIR or ~/.cache/cryoet-forge).")
@click.option("--base-url", default=None, help="Archive URL (default $FORGE_PDB_URL or RCSB).")
def fetch_structures_command(pdb_ids, cache, base_url):
    """Download PDB entries (mmCIF) into the cache; cached entries are never downloaded again."""
    from cryoet_forge.io.structures import (  # start-up: gemmi
        cached_structure_path,
        check_pdb_id,
        fetch_structure,
    )

    ids = [check_pdb_id(i) for raw in pdb_ids for i in raw.split(",") if i.strip()]
    if not ids:
        raise ConfigError(f"PDB_IDS {' '.join(map(repr, pdb_ids))} names no PDB id; expected ids such as 3j9i "
                          "(separated by spaces or commas)")
    for pdb_id in ids:
        cached = cached_structure_path(pdb_id, cache)
        was_cached = cached.is_file() and cached.stat().st_size > 0  # as fetch_structure decides
        path = fetch_structure(pdb_id, cache=cache, base_url=base_url)
        click.echo(f"{pdb_id} {'cached' if was_cached else 'downloaded'} {path}")


@click.command("density")
@click.argument("structure", type=NonEmptyPath(path_type=Path))
@click.option("--out", "out", type=NonEmptyPath(dir_okay=False, path_type=Path), required=True, help="Output .mrc")
@click.option("--voxel-size", type=float, default=9.4, show_default=True, help="Angstrom per voxel.")
@click.option("--box", type=int, default=40, show_default=True, help="Box edge in voxels.")
@click.option("--resolution", type=float, default=None, help="Low-pass in A (default 2 x voxel size).")
@click.option("--assembly", type=int, default=None, help="Build biological assembly N (e.g. 1).")
@click.option("--crop", is_flag=True, help="Crop a structure larger than the box (with a warning).")
def density_command(structure, out, voxel_size, box, resolution, assembly, crop):
    """Compute the density map of a PDB/mmCIF file (or a cached PDB id) as MRC."""
    # start-up: gemmi, numpy
    from cryoet_forge.io.structures import PDB_ID, fetch_structure
    from cryoet_forge.simulate.density import write_structure_map

    _check_flags(voxel_size, None, resolution, assembly)
    if box < 4:
        raise ConfigError(f"--box {box}: expected an integer >= 4 voxels")
    check_allocation(12 * box**3, f"--box {box} (a density grid of at least {box}^3 voxels)", "a smaller --box",
                     error=ConfigError)
    check_output_target(out, folder=False)
    if not structure.exists() and PDB_ID.match(str(structure)):
        structure = fetch_structure(str(structure))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = write_structure_map(out, structure, voxel_size, box, resolution, crop, assembly)
    for w in caught:
        if issubclass(w.category, UserWarning):
            click.echo(f"forge: warning: {w.message}", err=True)
    click.echo(f"wrote {path} ({box}^3 at {voxel_size:g} A)")

"""``forge simulate-tomogram``: labelled synthetic tomograms (see ``simulate.tomogram``).

Heavy libraries (torch, numpy, pandas) are imported inside the functions, so ``forge
simulate-tomogram --help`` stays fast.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Sequence

import click

from cryoet_forge.devices import SEED, NonEmptyPath, check_device, device_callback
from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.io.atomic import atomic_folder, check_output_folder, write_json_atomic
from cryoet_forge.limits import check_allocation, format_bytes
from cryoet_forge.simulate import acquisition as acq
from cryoet_forge.simulate.acquisition import PHANTOM_VOXEL_SIZE, simulator_parameters
from cryoet_forge.simulate.commands import _check_flags, _parse_options

# `forge --help` imports this module: what only a command's work needs (numpy, torch, pandas and the
# modules built on them) is imported inside the functions that use it (start-up time).

#: the largest fraction of the sample the particle spheres may fill (random close packing is ~0.64)
MAX_FRACTION = 0.6
#: the largest edge (voxels) of a simulated tomogram
MAX_SIZE = 16384
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def parse_size(text: str) -> tuple[int, int, int]:
    """``"64"`` (a cube) or ``"Z,Y,X"`` -> (z, y, x) voxels; ConfigError naming --size."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 3) or any(not 8 <= v <= MAX_SIZE for v in values):
        raise ConfigError(f"--size {text!r}: expected N (a cube) or Z,Y,X, whole numbers of voxels from 8 to "
                          f"{MAX_SIZE}")
    z, y, x = values * 3 if len(values) == 1 else values
    return z, y, x


def parse_counts(text: str, n_classes: int) -> list[int]:
    """``--n-per-class`` ``"10"`` (every class) or ``"10,5,..."`` (one per class, in order)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if not values or any(v < 0 for v in values) or sum(values) < 1 or len(values) not in (1, n_classes):
        raise ConfigError(f"--n-per-class {text!r}: expected one whole number >= 1 for every class, or "
                          f"{n_classes} comma-separated numbers >= 0 (one per class, in order)")
    return values * n_classes if len(values) == 1 else values


def parse_radius_range(text: str) -> tuple[float, float]:
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"--membrane-radius {text!r}: expected MIN,MAX (or one value) in Angstrom > 0")
    return (min(values), max(values))


def _positive(value: float | None, flag: str, unit: str, zero_ok: bool = False) -> None:
    if value is None:
        return
    if not (math.isfinite(value) and (value > 0 or (zero_ok and value == 0))):
        raise ConfigError(f"{flag} {value!r}: expected a number {'>= 0' if zero_ok else '> 0'} ({unit})")


def physics_from_options(options: dict[str, Any]):
    """``TomogramPhysics(**options)``; an unknown key is a ConfigError naming it and the keys taken."""
    from cryoet_forge.simulate.tomogram import TomogramPhysics  # start-up: torch, numpy

    accepted, _ = simulator_parameters(TomogramPhysics)
    unknown = [key for key in options if key not in accepted]
    if unknown:
        raise ConfigError(f"--option {unknown[0]}: the tomogram simulation has no such option; it takes "
                          f"{', '.join(accepted)}")
    try:
        return TomogramPhysics(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--option: {' '.join(str(exc).split())}") from None


def _check_disk(out: Path, nbytes: int) -> None:
    folder = Path(os.path.abspath(out))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    usage = shutil.disk_usage(folder)
    if usage.total > 0 and nbytes > usage.free:
        raise ConfigError(f"--size and --n-tomograms ask for {format_bytes(nbytes)} of files, more than the "
                          f"{format_bytes(usage.free)} free under {folder}; expected fewer or smaller tomograms")


def load_class_templates(specs: Sequence[str] | None, voxel_size: float, template_box: int | None, seed: int,
                         resolution: float | None, crop: bool, assembly: int | None):
    """Every class's ``ClassTemplate`` (loaded as ``forge simulate`` loads them) and its box."""
    # start-up: torch, numpy, scipy
    from cryoet_forge.simulate.phantoms import PHANTOM_CLASSES
    from cryoet_forge.simulate.templates import load_template
    from cryoet_forge.simulate.tomogram import ClassTemplate, auto_template_box, prepare_template

    templates: list[ClassTemplate] = []
    boxes: list[int] = []
    for spec in (PHANTOM_CLASSES if specs is None else specs):
        box = template_box if template_box is not None else auto_template_box(spec, voxel_size, assembly)
        name, volume = load_template(spec, box, voxel_size, seed, resolution, crop, assembly)
        if any(t.name == name for t in templates):
            raise InputError(f"two classes are both named {name!r}")
        templates.append(prepare_template(name, volume))
        boxes.append(box)
    return templates, boxes


def _particle_counts(n_per_class: str | None, volume_fraction: float | None, radii: Sequence[float],
                     shape: tuple[int, int, int], slab: tuple[int, int]) -> list[int]:
    """Particles per class and tomogram (--n-per-class, or enough of each class for
    --volume-fraction); ConfigError when they cannot be packed into the sample."""
    from cryoet_forge.simulate.tomogram import counts_for_fraction  # start-up: torch, numpy

    if volume_fraction is not None:
        n = counts_for_fraction(volume_fraction, radii, shape, slab)
        if n < 1:
            raise ConfigError(f"--volume-fraction {volume_fraction:g}: not one particle of each class fits that "
                              f"fraction of the sample; ask for more, or give --n-per-class")
        counts = [n] * len(radii)
    else:
        counts = parse_counts(n_per_class or "10", len(radii))
    sample = (slab[1] - slab[0]) * shape[1] * shape[2]
    filled = sum(c * 4.0 / 3.0 * math.pi * r**3 for c, r in zip(counts, radii)) / sample
    if filled > MAX_FRACTION:
        asked = f"--volume-fraction {volume_fraction:g}" if volume_fraction is not None else \
            f"--n-per-class {n_per_class or 10}"
        raise ConfigError(f"{asked}: {sum(counts)} particles would fill {100 * filled:.0f}% of the sample (at most "
                          f"{100 * MAX_FRACTION:.0f}% can be packed); ask for fewer or give a larger --size")
    return counts


def _tomogram_record(tomo_name: str, result, names: Sequence[str], voxel_size: float) -> dict[str, Any]:
    """simulation.json's entry for the simulated tomogram ``tomo_name``."""
    import numpy as np  # start-up

    return {
        "name": tomo_name, "underfocus_um": result.underfocus_A / 1e4,
        "particles": {n: int((result.layout.classes == c).sum()) for c, n in enumerate(names)},
        "vesicles": [{"centre_zyx_voxels": [float(v) for v in row[:3]], "radius_A": float(row[3]) * voxel_size}
                     for row in result.layout.vesicles],
        "detector_width": result.detector_width,
        "tomogram_std": float(np.std(result.tomogram)),
    }


def run_tomogram_simulation(out: Path, specs: Sequence[str] | None, shape: tuple[int, int, int], voxel_size: float,
                            physics, n_per_class: str | None = None, volume_fraction: float | None = None,
                            gap_A: float = 10.0, ice_thickness_A: float | None = None, membranes=None,
                            label_fraction: float = 0.2, n_tomograms: int = 1, name: str = "TS", seed: int = 0,
                            template_box: int | None = None, resolution: float | None = None, crop: bool = False,
                            assembly: int | None = None, batch_size: int = 32, device: str = "cpu",
                            zarr: bool = False, copick: bool = False, tilt_series: bool = False,
                            quiet: bool = True, overwrite: bool = False,
                            acquisition: dict | None = None) -> dict[str, Any]:
    """Simulate ``n_tomograms`` labelled tomograms into ``out`` (layout: ``simulate.tomogram_output``);
    returns the summary written to simulation.json. The outputs appear in ``out`` together, once
    every one is written; a failure leaves ``out`` as it was."""
    # start-up: torch, numpy, pandas, and the modules built on them
    import pandas as pd

    # start-up: as above
    from cryoet_forge.simulate import tomogram_output as output
    from cryoet_forge.simulate.tomogram import MembraneSpec, simulate_tomogram, slab_of

    membranes = membranes or MembraneSpec()
    slab = slab_of(shape, voxel_size, ice_thickness_A)
    voxels = shape[0] * shape[1] * shape[2]
    # density, labels, the reconstruction (and its copy on the CPU), the ice field and its spectrum
    check_allocation(voxels * 24 + physics.work_bytes(shape, voxel_size),
                     f"--size {','.join(map(str, shape))} ({voxels:,} voxels, {len(physics.angles)} tilts)",
                     "a smaller --size", error=ConfigError)
    existing = check_output_folder(out, output.OUTPUT_NAMES, "a tomogram simulation", overwrite)
    templates, boxes = load_class_templates(specs, voxel_size, template_box, seed, resolution, crop, assembly)
    names = [t.name for t in templates]
    radii = [t.radius for t in templates]
    counts = _particle_counts(n_per_class, volume_fraction, radii, shape, slab)
    disk = n_tomograms * voxels * (4 + 1 + (4 if zarr else 0) + (5 if copick else 0))
    if tilt_series:
        disk += n_tomograms * len(physics.angles) * shape[1] * physics.detector_width(shape) * 4
    _check_disk(out, disk)
    radii_A = [r * voxel_size for r in radii]
    names_of = [f"{name}_{i + 1:02d}" for i in range(n_tomograms)]
    label_of = {n: i + 1 for i, n in enumerate(names)}
    if membranes.count:
        label_of[output.MEMBRANE if output.MEMBRANE not in label_of else f"{output.MEMBRANE} (vesicles)"] = len(names) + 1
    records, picks, sizes = [], [], []
    with atomic_folder(out, stale=tuple(existing)) as work:
        writer = output.CopickWriter(work / "copick", Path(out) / "copick", names, radii_A, voxel_size,
                                     membranes.count > 0) if copick else None
        for index, tomo_name in enumerate(names_of):
            result = simulate_tomogram(tomo_name, templates, shape, voxel_size, physics, counts, slab, gap_A,
                                       membranes, label_fraction, seed, index, device, batch_size, tilt_series,
                                       quiet)
            output.write_result(work, result, voxel_size, zarr, tilt_series)
            if writer is not None:
                writer.add(result)
            picks.append(output.particles_table([result], names, radii_A))
            sizes.append((tomo_name, shape))
            records.append(_tomogram_record(tomo_name, result, names, voxel_size))
            del result
        if writer is not None:
            writer.finish()
        output.write_star(work / "particles.star", {"particles": pd.concat(picks, ignore_index=True)})
        output.write_star(work / "tomograms.star", {"global": output.tomograms_table(sizes, physics, voxel_size)})
        summary = {
            "command": "simulate-tomogram", "contrast": "protein dark (as reconstructed from underfocused images)",
            "size_zyx": list(shape), "voxel_size": voxel_size, "seed": seed, "n_tomograms": n_tomograms,
            "classes": [{"name": n, "class_number": i + 1, "radius_A": radii_A[i], "template_box": boxes[i],
                         "per_tomogram": counts[i], "copick_object": writer.names[n] if writer else None}
                        for i, n in enumerate(names)],
            "labels": label_of, "label_threshold": label_fraction, "gap_A": gap_A,
            "ice_thickness_A": (slab[1] - slab[0]) * voxel_size, "slab_z_voxels": list(slab),
            "membranes": {"count": membranes.count, "radius_A": list(membranes.radius_A),
                          "thickness_A": membranes.thickness_A},
            "volume_fraction": volume_fraction, "physics": physics.describe(), "tomograms": records,
            "resolution": resolution, "assembly": assembly, "crop": crop,
        }
        if acquisition is not None:
            summary["acquisition"] = acquisition
        write_json_atomic(work / "simulation.json", summary, default=str)
    return summary


def _check_sample_flags(size: str, n_per_class: str | None, volume_fraction: float | None, gap: float,
                        ice_thickness: float | None, membranes: int, membrane_radius: str, membrane_thickness: float,
                        label_threshold: float) -> tuple[tuple[int, int, int], tuple[float, float]]:
    """The flags of ``forge simulate-tomogram`` that describe the sample, each refused by name before any
    work; (the tomogram's shape, the vesicles' radius range)."""
    shape = parse_size(size)
    if n_per_class is not None and volume_fraction is not None:
        raise ConfigError("give one of --n-per-class and --volume-fraction")
    if n_per_class is not None:
        parse_counts(n_per_class, len(n_per_class.split(",")))  # the numbers themselves; the count per class later
    if volume_fraction is not None and not (math.isfinite(volume_fraction) and 0 < volume_fraction <= MAX_FRACTION):
        raise ConfigError(f"--volume-fraction {volume_fraction!r}: expected a fraction > 0 and <= {MAX_FRACTION:g}")
    _positive(gap, "--gap", "Angstrom", zero_ok=True)
    _positive(ice_thickness, "--ice-thickness", "Angstrom")
    if membranes < 0:
        raise ConfigError(f"--membranes {membranes}: expected a number of vesicles >= 0")
    radius_range = parse_radius_range(membrane_radius)
    _positive(membrane_thickness, "--membrane-thickness", "Angstrom")
    if not (math.isfinite(label_threshold) and 0 < label_threshold < 1):
        raise ConfigError(f"--label-threshold {label_threshold!r}: expected a fraction of the map's peak, "
                          "between 0 and 1")
    return shape, radius_range


def _check_vesicles_fit(shape: tuple[int, int, int], voxel_size: float, ice_thickness: float | None,
                        radius_range: tuple[float, float], membrane_thickness: float, membrane_radius: str) -> None:
    """ConfigError when the smallest vesicle does not fit in the sample's smallest extent."""
    from cryoet_forge.simulate.tomogram import slab_of  # start-up: torch, numpy

    slab = slab_of(shape, voxel_size, ice_thickness)
    room = min(slab[1] - slab[0], shape[1], shape[2]) * voxel_size / 2
    if radius_range[0] + membrane_thickness / 2 > room:
        raise ConfigError(f"--membrane-radius {membrane_radius}: a vesicle of radius {radius_range[0]:g} A "
                          f"does not fit in a sample of {2 * room:g} A (its smallest extent)")


@click.command("simulate-tomogram")
@click.option("--phantoms", "use_phantoms", is_flag=True, help="Use the procedural phantom classes (offline).")
@click.option("--structures", "structures", metavar="IDS_OR_DIR",
              help="Comma-separated PDB ids / structure or map files / phantom names, or a folder of them "
                   "(as forge simulate).")
@click.option("--size", "size", required=True, metavar="N|Z,Y,X",
              help="Tomogram size in voxels: N (a cube) or Z,Y,X, e.g. 100,400,400.")
@click.option("--voxel-size", type=float, default=None,
              help="Angstrom per voxel. Default: from --acquisition, else from the MRC maps of --structures; "
                   f"required with PDB structures; {PHANTOM_VOXEL_SIZE:g} for --phantoms.")
@click.option("--n-per-class", default=None, metavar="N|N1,N2,...",
              help="Particles per class and tomogram: one number, or one per class in order (default 10).")
@click.option("--volume-fraction", type=float, default=None,
              help="Instead of --n-per-class: the fraction of the sample (the ice slab) the particles' spheres "
                   "fill, e.g. 0.1, the same number of each class (random placement reaches about 0.2-0.3).")
@click.option("--gap", type=float, default=10.0, show_default=True,
              help="Smallest distance (A) between two particles' spheres (and a particle and a membrane).")
@click.option("--ice-thickness", type=float, default=None,
              help="The sample is the central slab of this thickness (A), vacuum above and below "
                   "(default: the whole z extent).")
@click.option("--membranes", type=int, default=0, show_default=True,
              help="Vesicles: spherical lipid-bilayer shells, labelled after the classes.")
@click.option("--membrane-radius", default="150,400", show_default=True, metavar="MIN,MAX",
              help="Vesicle radius range (A, to the bilayer's mid-surface).")
@click.option("--membrane-thickness", type=float, default=40.0, show_default=True,
              help="Bilayer thickness (A, head group to head group).")
@click.option("--label-threshold", type=float, default=0.2, show_default=True,
              help="A voxel is labelled with a particle's class where its posed map exceeds this fraction of the "
                   "map's peak.")
@click.option("--template-box", type=int, default=None,
              help="Box (voxels) the class maps are made in (default: large enough for each class).")
@click.option("--n-tomograms", type=int, default=1, show_default=True,
              help="Tomograms to simulate (NAME_01, NAME_02, ...), each with its own layout and noise.")
@click.option("--name", "name", default="TS", show_default=True, help="Tomogram name prefix (rlnTomoName NAME_01).")
@click.option("--acquisition", type=NonEmptyPath(dir_okay=False, path_type=Path), default=None,
              metavar="TOMOGRAMS.STAR",
              help="A RELION 5 tomograms STAR: voxel size, voltage, Cs, amplitude contrast, and from its "
                   "tilt-series STARs the tilt range and step, dose and defocus. Flags win.")
@click.option("--tilt-range", metavar="MIN,MAX", default=None, help="Tilt range in degrees (default -60,60).")
@click.option("--tilt-step", type=float, default=None, help="Tilt increment in degrees (default 3).")
@click.option("--dose", type=float, default=None, help="Total electron dose in e/A^2 over the tilt series "
              "(default 120).")
@click.option("--voltage", type=float, default=None, help="Acceleration voltage in kV (default 300).")
@click.option("--defocus", metavar="UM|MIN,MAX", default=None,
              help="Defocus in micrometres, underfocus positive: 4, or a range 2,6 drawn per tomogram (default 2,6).")
@click.option("--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
              help="Another imaging option, e.g. --option bfactor=150, shot_noise=poisson, ice=0, ctf=false, "
                   "defocus_step_A=100 (repeatable).")
@click.option("--resolution", type=float, default=None, help="Low-pass of structure maps in A (default 2 x voxel).")
@click.option("--crop", is_flag=True, help="Crop structures larger than --template-box instead of failing.")
@click.option("--assembly", type=int, default=None, help="Build biological assembly N of each structure (e.g. 1).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True,
              help="Particles rotated at once (one grid_sample).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.", callback=device_callback)
@click.option("--zarr", "zarr", is_flag=True, help="Also write each tomogram as OME-Zarr (needs zarr).")
@click.option("--copick", "copick", is_flag=True,
              help="Also write a copick project (copick/copick.json; needs copick): tomograms, picks, label maps.")
@click.option("--tilt-series", "tilt_series", is_flag=True, help="Also write the tilt images (tilt_series/NAME.mrcs).")
@click.option("--out", "out", type=NonEmptyPath(file_okay=False, path_type=Path), required=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress output (results still print).")
@click.option("--overwrite", is_flag=True, help="Replace a previous tomogram simulation in OUT.")
def simulate_tomogram_command(use_phantoms, structures, size, voxel_size, n_per_class, volume_fraction, gap,
                              ice_thickness, membranes, membrane_radius, membrane_thickness, label_threshold,
                              template_box, n_tomograms, name, acquisition, tilt_range, tilt_step, dose, voltage,
                              defocus, option_pairs, resolution, crop, assembly, seed, batch_size, device, zarr,
                              copick, tilt_series, out, quiet, overwrite):
    """Simulate labelled tomograms into OUT: particles of every class placed without overlap at random
    orientations, imaged as a tilt series (CTF, dose, shot noise, MTF) and reconstructed by weighted
    back-projection.

    Writes tomograms/NAME.mrc (protein DARK, as reconstructed from underfocused images: the
    project's contrast convention; density maps are bright), labels/NAME.mrc (0 background, class
    number where a particle's map exceeds --label-threshold of its peak, membranes after the classes),
    particles.star (RELION: rlnTomoName, rlnCoordinateX/Y/Z in voxels, rlnAngleRot/Tilt/Psi ZYZ,
    rlnClassNumber, forgeClassName), tomograms.star + tilt_series/NAME.star (RELION 5; usable as
    --acquisition), simulation.json, and with --copick a copick project. Read the picks back with
    forge extract --picks OUT/particles.star --tomograms OUT/tomograms --class-column forgeClassName.
    Defocus is underfocus positive. The same --seed gives the same files.
    """
    from cryoet_forge.simulate.templates import check_specs, expand_specs  # start-up: numpy, scipy, gemmi

    if structures is not None and not structures.strip(" ,"):
        raise ConfigError(f"--structures {structures!r} names no structure; expected PDB ids, structure or map "
                          "files, phantom names, or a folder of them")
    if use_phantoms == bool(structures):
        raise ConfigError("give exactly one of --phantoms or --structures IDS_OR_DIR")
    _check_flags(voxel_size, None, resolution, assembly)
    shape, radius_range = _check_sample_flags(size, n_per_class, volume_fraction, gap, ice_thickness, membranes,
                                              membrane_radius, membrane_thickness, label_threshold)
    if template_box is not None and not 8 <= template_box <= 1024:
        raise ConfigError(f"--template-box {template_box}: expected 8..1024 voxels")
    if not 1 <= n_tomograms <= 9999:
        raise ConfigError(f"--n-tomograms {n_tomograms}: expected 1..9999")
    if not NAME.fullmatch(name):
        raise ConfigError(f"--name {name!r}: expected letters, digits, '_', '.', '-' (starting with a letter or digit)")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: expected >= 1")
    options = _parse_options(option_pairs)
    flags, notes = acq.acquisition_flags(tilt_range, tilt_step, dose, voltage, defocus)
    if "tilt_range" in flags and not (-90 < flags["tilt_range"][0] and flags["tilt_range"][1] < 90):
        raise ConfigError(f"--tilt-range {tilt_range!r}: expected angles strictly within -90..90 degrees")
    star = acq.read_star_acquisition(acquisition) if acquisition is not None else None
    from cryoet_forge.simulate.tomogram import MembraneSpec, TomogramPhysics  # start-up: torch

    options, used, more = acq.apply_acquisition("simulate-tomogram", TomogramPhysics, flags, options, star)
    notes += more
    physics = physics_from_options(options)
    specs = None if use_phantoms else expand_specs(structures)
    if specs is not None:
        check_specs(specs)
    voxel_size, voxel_source = acq.resolve_voxel_size(voxel_size, specs, star)
    used = {"voxel_size": voxel_size, **used}
    used["sources"] = {"voxel_size": voxel_source, **used["sources"]}
    if membranes:
        _check_vesicles_fit(shape, voxel_size, ice_thickness, radius_range, membrane_thickness, membrane_radius)
    for line in notes:
        click.echo(f"forge: note: {line}", err=True)

    device = str(check_device(device))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run_tomogram_simulation(
            out, specs, shape, voxel_size, physics, n_per_class, volume_fraction, gap, ice_thickness,
            MembraneSpec(membranes, radius_range, membrane_thickness), label_threshold, n_tomograms, name, seed,
            template_box, resolution, crop, assembly, batch_size, device, zarr, copick, tilt_series, quiet,
            overwrite, used)
    for w in caught:
        if issubclass(w.category, UserWarning):
            click.echo(f"forge: warning: {w.message}", err=True)
    counts = ", ".join(f"{c['name']} {c['per_tomogram']}" for c in summary["classes"])
    click.echo(f"wrote {n_tomograms} tomogram{'s' if n_tomograms > 1 else ''} of {'x'.join(map(str, shape))} "
               f"voxels (z y x) at {voxel_size:g} A/voxel, per tomogram {counts} particles, to {out}")

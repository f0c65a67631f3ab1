"""``forge extract``: tomograms + picks -> a labelled folder (MRC + particles.star) or an .npz bundle."""

from __future__ import annotations

import re
from pathlib import Path

import click

from cryoet_forge import progress
from cryoet_forge.devices import SEED, NonEmptyPath
from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.io.atomic import check_output_folder, lock_output
from cryoet_forge.io.files import check_output_target
from cryoet_forge.progress import quiet_option

# `forge --help` imports this module: what only a command's work needs (numpy, torch, pandas and the
# modules built on them) is imported inside the functions that use it (start-up time).

#: what forge extract writes into --out (a folder)
OUTPUT_NAMES = ("volumes", "particles.star", "summary.json")

WARP_NAME = re.compile(r"(.+)_\d+(?:\.\d+)?Apx")


def tomogram_files(paths: list[Path]) -> dict[str, Path]:
    """name -> tomogram path for the given files and folders (MRC files and OME-Zarr folders)."""
    from cryoet_forge.io.tomograms import MRC_SUFFIXES  # start-up: the module imports numpy and mrcfile

    found: dict[str, Path] = {}
    for path in paths:
        if not path.exists():
            raise InputError(f"--tomograms {path}: no such file or folder")
        if path.is_dir() and path.suffix != ".zarr":
            entries = sorted(p for p in path.iterdir()
                             if p.suffix.lower() in MRC_SUFFIXES or (p.is_dir() and p.suffix == ".zarr"))
            if not entries:
                raise InputError(f"--tomograms {path}: no MRC tomogram or .zarr folder in it")
        elif path.is_dir() or path.suffix.lower() in MRC_SUFFIXES:
            entries = [path]
        else:
            raise InputError(f"--tomograms {path}: not a tomogram; expected an MRC file "
                             f"({', '.join(sorted(MRC_SUFFIXES))}), an OME-Zarr folder (.zarr) or a folder of them")
        for entry in entries:
            name = entry.name.removesuffix(".zarr") if entry.suffix == ".zarr" else entry.stem
            found.setdefault(name, entry)
    return found


def resolve(names: list[str], given: dict[str, Path], table_paths: dict, picks_source: str) -> dict[str, Path]:
    """The tomogram file of each name: --tomograms by name (``NAME.mrc``; else the file name the
    table gives, such as RELION's ``rec_NAME.mrc``; else one of Warp's ``NAME_10.00Apx.mrc``),
    or without --tomograms the path the pick table gives (``TablePath``, resolved here). A name
    no tomogram matches is an error, even when a single tomogram is given."""
    out: dict[str, Path] = {}
    for name in names:
        table_path = table_paths.get(name)
        stem = getattr(table_path, "stem", None)
        prefixed = [key for key in given if (warp := WARP_NAME.fullmatch(key)) and warp[1] == name]
        if name in given:
            out[name] = given[name]
        elif stem is not None and stem in given:
            out[name] = given[stem]
        elif len(prefixed) == 1:
            out[name] = given[prefixed[0]]
        elif not given and table_path is not None:
            out[name] = table_path.resolve() if hasattr(table_path, "resolve") else Path(table_path)
        else:
            choices = ", ".join(sorted(given)) or "none given (--tomograms)"
            several = f"; several match it: {', '.join(sorted(prefixed))}" if len(prefixed) > 1 else ""
            raise InputError(f"{picks_source}: tomogram {name!r} named in the picks has no tomogram file "
                             f"(tomograms: {choices}){several}")
    return out


def jobs_from_tables(picks_paths: list[Path], tomograms: list[Path], unit: str | None, tomograms_star: Path | None,
                     class_column: str | None, scale: str, tomogram_voxel_size: float | None,
                     coords_pixel_size: float | None = None, only: list[str] | None = None):
    """(tomogram, picks, unit) per tomogram and pick source; ``only``: keep the picks of these
    tomogram names (``--tomo-name``), each of which must appear in the picks."""
    import pandas as pd  # start-up: pandas

    # start-up: the readers of picks and tomograms import numpy, pandas, starfile and mrcfile
    from cryoet_forge.io.picks import read_picks
    from cryoet_forge.io.tomograms import open_tomogram

    given = tomogram_files(tomograms)
    tables = []
    for path in picks_paths:
        picks = read_picks(path, unit=unit, tomograms_star=tomograms_star, class_column=class_column)
        if coords_pixel_size is not None and picks.unit == "px":  # pixels of another tomogram (Warp, M)
            picks.table[["x", "y", "z"]] *= float(coords_pixel_size)
            picks.unit = "angstrom"
        table = picks.table.copy()
        table["_unit"], table["_source"], table["_row"] = picks.unit, picks.source, range(len(table))
        tables.append(table)
    table = pd.concat(tables, ignore_index=True)
    names = list(dict.fromkeys(table["tomogram"]))
    if only:
        missing = [name for name in only if name not in names]
        if missing:
            raise InputError(f"--tomo-name {', '.join(map(repr, missing))}: no pick in {', '.join(map(str, picks_paths))} "
                             f"names this tomogram (tomograms of the picks: {', '.join(map(str, names))})")
        names = [name for name in names if name in only]
        table = table[table["tomogram"].isin(names)]
    paths = {}
    if "tomogram_path" in table.columns:
        paths = {n: p for n, p in zip(table["tomogram"], table["tomogram_path"]) if pd.notna(p)}
    files = resolve(names, given, paths, ", ".join(map(str, picks_paths)))
    jobs = []
    for name in names:
        tomo = open_tomogram(files[name], scale=scale, name=name, voxel_size=tomogram_voxel_size)
        for (unit_, source), part in table[table["tomogram"] == name].groupby(["_unit", "_source"], sort=False):
            part = part.set_index("_row")
            part.index.name = None
            part.attrs["source"] = source
            jobs.append((tomo, part, unit_))
    return jobs


def parse_class_names(text: str | None) -> dict[str, str]:
    """``--class-names 1=proteasome,2=ribosome`` -> {"1": "proteasome", "2": "ribosome"}."""
    if text is None:
        return {}
    mapping: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        key, sep, name = (s.strip() for s in part.partition("="))
        if not sep or not key or not name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise InputError(f"--class-names {text!r}: expected VALUE=NAME pairs separated by commas (e.g. "
                             "1=proteasome,2=ribosome), names of letters, digits, '_', '.', '-'")
        if key in mapping:
            raise InputError(f"--class-names {text!r}: class {key} is named twice")
        mapping[key] = name
    if len(set(mapping.values())) != len(mapping):
        raise InputError(f"--class-names {text!r}: two classes get the same name")
    return mapping


def rename_classes(jobs: list, mapping: dict[str, str], option_text: str) -> None:
    """Give every pick its class name from ``mapping`` (keys: a class column's value, or the
    rlnClassNumber N of ``classN``); a class the mapping does not name is an InputError."""
    if not mapping:
        return
    found: set[str] = set()
    for _, part, _ in jobs:
        found.update(str(v) for v in part["class_name"])

    def key_of(value: str) -> str | None:
        number = re.fullmatch(r"class(\d+)", value)
        for key in (value, number[1] if number else None):
            if key is not None and key in mapping:
                return key
        return None

    missing = sorted(v for v in found if key_of(v) is None)
    if missing:
        raise InputError(f"--class-names {option_text!r} does not name the picks' class(es) "
                         f"{', '.join(missing)}; name every class")
    for _, part, _ in jobs:
        part["class_name"] = [mapping[str(key_of(str(v)))] for v in part["class_name"]]


def check_flags(tomogram_voxel_size: float | None, copick_voxel_spacing: float | None,
                coords_pixel_size: float | None, class_column: str | None, tomograms_star: Path | None) -> None:
    """Before any work, each flag refused by its name: voxel sizes (Angstrom, 0.01-1000), an empty
    class column, a --tomograms-star that is not a RELION 5 tomograms STAR (read even where the
    picks do not need it)."""
    from cryoet_forge.io.mrc import check_voxel_size  # start-up: the module imports numpy and mrcfile

    for flag, value in (("--tomogram-voxel-size", tomogram_voxel_size), ("--copick-voxel-spacing", copick_voxel_spacing),
                        ("--coords-pixel-size", coords_pixel_size)):
        if value is not None:
            check_voxel_size(value, flag)
    if class_column is not None and not class_column.strip():
        raise InputError(f"--class-column {class_column!r} is empty; expected the name of the picks' class column")
    if tomograms_star is not None:
        from cryoet_forge.io.picks import read_relion_tomograms  # start-up: pandas and starfile

        read_relion_tomograms(tomograms_star)


def check_extract_target(out: Path, bundle: bool, overwrite: bool) -> None:
    """Before any work: an earlier result at ``out`` is replaced only with ``--overwrite``."""
    if not bundle:
        check_output_folder(out, OUTPUT_NAMES, "extracted particles", overwrite)
        return
    target = check_output_target(out, folder=False)
    lock_output(target)
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise ConfigError(f"{target} already exists; choose another --out or pass --overwrite")


@click.command("extract")
@quiet_option
@click.option("--picks", "picks_paths", multiple=True, type=NonEmptyPath(path_type=Path),
              help="particle table: RELION 5 / RELION 4 / Warp / M .star, or .csv/.tsv tomogram,x,y,z[,class] "
                   "(repeat: without a class column each file is one class, named after it)")
@click.option("--tomograms", multiple=True, type=NonEmptyPath(path_type=Path),
              help="tomogram files (MRC, OME-Zarr) or folders of them, matched to the picks by name")
@click.option("--tomograms-star", type=NonEmptyPath(path_type=Path), default=None,
              help="RELION 5 tomograms STAR (sizes and pixel size for centred coordinates; tomogram paths)")
@click.option("--unit", type=str, default=None, help="unit of CSV coordinates: px or angstrom")
@click.option("--coords-pixel-size", type=float, default=None,
              help="pixel coordinates (rlnCoordinate*, CSV px) are in pixels of this size (A), not the tomogram's")
@click.option("--class-column", default=None, help="column holding the class (default: rlnClassNumber / class)")
@click.option("--copick", "copick_config", type=NonEmptyPath(path_type=Path), default=None,
              help="a copick project (its config JSON) instead of --picks/--tomograms")
@click.option("--object", "objects", multiple=True, help="copick: pickable object(s) to extract (default: all)")
@click.option("--copick-voxel-spacing", type=float, default=None, help="copick: the tomograms' voxel spacing (A)")
@click.option("--tomo-type", default="wbp", show_default=True, help="copick: tomogram type")
@click.option("--tomo-name", "--run", "runs", multiple=True,
              help="only the picks of this tomogram (rlnTomoName, the picks' tomogram name, or a copick run; "
                   "repeatable): split train and test by tomogram")
@click.option("--scale", default="0", show_default=True, help="OME-Zarr scale level")
@click.option("--tomogram-voxel-size", type=float, default=None,
              help="override the tomograms' header voxel size (A)")
@click.option("--box", type=int, required=True, help="box size in voxels")
@click.option("--voxel-size", type=float, default=None,
              help="output voxel size (A); the tomogram is Fourier-rescaled when it differs (default: keep)")
@click.option("--invert", is_flag=True, help="multiply by -1: only for tomograms inverted to protein bright (forge expects protein dark, as reconstructed)")
@click.option("--normalize", type=str, default="zscore", show_default=True,
              help="none, or zscore (mean 0, std 1 outside a sphere of radius 0.4 box)")
@click.option("--pad-edge/--skip-edge", default=False, show_default=True,
              help="keep particles whose box leaves the tomogram (padded with the mean) or skip and count them")
@click.option("--background", type=int, default=0, help="also N background boxes per tomogram")
@click.option("--min-distance", type=float, default=0.0, help="background boxes at least this far from every pick (A)")
@click.option("--seed", type=SEED, default=0, show_default=True, help="seed of the background positions")
@click.option("--bundle", is_flag=True, help="write one .npz bundle (OUT must end in .npz) instead of a folder")
@click.option("--overwrite", is_flag=True, help="replace earlier extracted particles in OUT (or the bundle OUT)")
@click.option("--class-names", "class_names", metavar="VALUE=NAME,...",
              help="name the classes, e.g. 1=proteasome,2=ribosome (rlnClassNumber or class-column values), so "
                   "they match the map names of forge generate/evaluate")
@click.option("--out", required=True, type=NonEmptyPath(path_type=Path))
def extract_command(picks_paths, tomograms, tomograms_star, unit, coords_pixel_size, class_column, copick_config, objects,
                    copick_voxel_spacing, tomo_type, runs, scale, tomogram_voxel_size, box, voxel_size, invert,
                    normalize, pad_edge, background, min_distance, seed, bundle, overwrite, class_names, out) -> None:
    """Cut labelled subtomograms out of tomograms around particle picks."""
    # start-up: the extraction imports numpy, scipy, pandas, mrcfile and starfile
    from cryoet_forge.data.extracted import write_plan
    from cryoet_forge.extract import ExtractOptions, plan_extraction, summary_lines

    if bundle and out.suffix != ".npz":
        raise click.UsageError("--bundle writes an .npz file: give --out NAME.npz")
    if (copick_config is None) == (not picks_paths):
        raise click.UsageError("give --picks (with --tomograms or a RELION 5 --tomograms-star) or --copick")
    check_flags(tomogram_voxel_size, copick_voxel_spacing, coords_pixel_size, class_column, tomograms_star)
    check_extract_target(out, bundle, overwrite)
    mapping = parse_class_names(class_names)
    options = ExtractOptions(box=box, voxel_size=voxel_size, invert=invert, normalize=normalize,
                             edge="pad" if pad_edge else "skip", background=background,
                             min_distance=min_distance, seed=seed).check()
    if copick_config is not None:
        from cryoet_forge.data.copick import copick_jobs  # start-up: torch, scipy; copick (optional) in it

        jobs = copick_jobs(copick_config, list(objects) or None, copick_voxel_spacing, tomo_type,
                           list(runs) or None, scale)
    else:
        jobs = jobs_from_tables(list(picks_paths), list(tomograms), unit, tomograms_star, class_column, scale,
                                tomogram_voxel_size, coords_pixel_size, list(runs) or None)
    try:
        rename_classes(jobs, mapping, class_names)
        plan = plan_extraction(jobs, options)
        written = write_plan(plan, out, bundle=bundle, quiet=progress.mode() == "off")
    finally:
        for tomo in {id(t): t for t, _, _ in jobs}.values():
            tomo.close()
    for line in summary_lines(plan.class_names, plan.counts, plan.notes):
        click.echo(line)
    click.echo(f"wrote {len(plan.table)} subtomograms ({box}^3 at {plan.voxel_size:g} A) to {written}")

"""``forge pick train`` and ``forge pick apply``: a particle picker trained on labelled tomograms
(synthetic, GAN-refined or real), saved, and applied to new tomograms, its picks written as a
RELION 5 particle STAR and, for a copick project, as the project's picks.

A saved picker is a folder: ``picker.json`` (the picker kind, its options, the seed, the classes
and radii, what it was trained on) and ``model/`` (what the picker's ``save(folder)`` writes; its
``load(folder)`` reads it back). Pickers without ``save`` and ``load`` still work in ``forge
evaluate-picking``, which trains and scores in one run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from cryoet_forge import __version__, registry
from cryoet_forge.devices import SEED, NonEmptyPath
from cryoet_forge.errors import InputError
from cryoet_forge.evaluate.commands import _radii, _real_from_copick, _real_from_picks, picker_options
from cryoet_forge.io.atomic import atomic_folder, check_output_folder, write_json_atomic
from cryoet_forge.io.mrc import check_voxel_size
from cryoet_forge.progress import quiet_option

#: what ``forge pick train`` writes into its output folder
RUN_NAMES = ("picker.json", "model")
#: what ``forge pick apply`` writes into its output folder
APPLY_NAMES = ("particles.star",)
#: the particle STAR's columns (those of forge simulate-tomogram's particles.star, coordinates in
#: voxels) before the picker's score (rlnAutopickFigureOfMerit, when it gives one)
STAR_COLUMNS = ["rlnTomoName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ", "rlnClassNumber", "forgeClassName",
                "forgeRadiusAngst"]
#: the copick pick set ``forge pick apply`` writes by default
COPICK_USER, COPICK_SESSION = "forge-picker", "0"


@click.group("pick")
def pick_group() -> None:
    """Train a particle picker on labelled tomograms and pick new tomograms (STAR, copick)."""


def _training_tomograms(synthetic, refined, picks_path, tomograms, copick_config, train, unit, class_column,
                        radius_pairs, radius_column, tomo_type, voxel_spacing, user_id, session_id) -> list:
    """The labelled tomograms ``forge pick train`` learns from: a simulate-tomogram folder (its
    tomograms or their refined copies), a pick table with its tomograms, or a copick project's runs."""
    # start-up: numpy, pandas and starfile only when the command runs
    from cryoet_forge.evaluate.picking import load_real_tomograms, synthetic_source
    from cryoet_forge.picking.tomograms import read_radii

    sources = [flag for flag, value in (("--synthetic", synthetic), ("--picks", picks_path), ("--copick", copick_config))
               if value is not None]
    if len(sources) != 1:
        raise InputError("give the training tomograms by exactly one of --synthetic DIR, --picks FILE with "
                         f"--tomograms DIR, or --copick CONFIG (got {', '.join(sources) or 'none'})")
    if refined is not None and synthetic is None:
        raise InputError("--refined needs --synthetic (the refined tomograms take its picks)")
    if synthetic is not None:
        table = synthetic / "particles.star"
        radii = read_radii(table, "forgeRadiusAngst") if table.is_file() else {}
        return synthetic_source(synthetic, {**radii, **_radii(radius_pairs)}, refined)
    if not train:
        raise InputError("--train NAME: name the tomograms (or copick runs) to train on")
    if copick_config is not None:
        real = _real_from_copick(copick_config, train, (), radius_pairs, tomo_type, voxel_spacing, user_id, session_id)
    else:
        real = _real_from_picks(picks_path, tomograms, train, (), unit, class_column, radius_pairs, radius_column)
    return load_real_tomograms(real)[0]


def _saving_picker(picker: str, options: dict[str, Any]) -> Any:
    made = registry.create("picker", picker, **options)  # options checked before any work
    missing = [name for name in ("save", "load") if not callable(getattr(made, name, None))]
    if missing:
        raise InputError(f"picker {picker!r} has no {' or '.join(missing)} method: forge pick needs a picker that "
                         "saves and loads itself (forge evaluate-picking works with any picker)")
    return made


@pick_group.command("train")
@quiet_option
@click.option("--synthetic", type=NonEmptyPath(exists=True, file_okay=False, path_type=Path),
              help="A forge simulate-tomogram output folder: its tomograms and picks.")
@click.option("--refined", type=NonEmptyPath(exists=True, file_okay=False, path_type=Path),
              help="With --synthetic: train on its tomograms refined by forge refine-tomogram (same names) instead.")
@click.option("--picks", "picks_path", type=NonEmptyPath(exists=True, dir_okay=False, path_type=Path),
              help="A pick table (RELION/Warp STAR, CSV) of labelled tomograms; with --tomograms and --train.")
@click.option("--tomograms", type=NonEmptyPath(exists=True, file_okay=False, path_type=Path),
              help="With --picks: the folder of the tomograms (NAME.mrc, .rec or .zarr).")
@click.option("--copick", "copick_config", type=NonEmptyPath(exists=True, dir_okay=False, path_type=Path),
              help="A copick project's configuration: its runs named by --train, with their picks.")
@click.option("--train", "train", multiple=True, help="With --picks or --copick: a tomogram or run to train on (repeatable).")
@click.option("--unit", type=click.Choice(["px", "angstrom"]), help="Unit of CSV pick coordinates.")
@click.option("--class-column", help="The picks' class column (default: as forge extract reads it).")
@click.option("--radius", "radius_pairs", multiple=True, metavar="CLASS=A", help="A class's particle radius in A (repeatable).")
@click.option("--radius-column", help="With --picks: a per-particle radius column (Angstrom), e.g. radius_A.")
@click.option("--tomo-type", default="wbp", show_default=True, help="With --copick: the tomogram type to read.")
@click.option("--voxel-spacing", type=float, help="With --copick: the voxel spacing (A) to read.")
@click.option("--copick-user", help="With --copick: the pick set's user id (default: every particle pick set).")
@click.option("--copick-session", help="With --copick: the pick set's session id.")
@click.option("--picker", default="unet-segmentation", show_default=True, help="A picker kind (forge list picker).")
@click.option("--option", "option_pairs", multiple=True, metavar="KEY=VALUE", help="A picker option (repeatable).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="The training seed.")
@click.option("--out", "out_dir", required=True, type=NonEmptyPath(file_okay=False, path_type=Path),
              help="The folder of the saved picker.")
@click.option("--overwrite", is_flag=True, help="Replace a picker saved in OUT earlier.")
def pick_train_command(synthetic, refined, picks_path, tomograms, copick_config, train, unit, class_column,
                       radius_pairs, radius_column, tomo_type, voxel_spacing, copick_user, copick_session, picker,
                       option_pairs, seed, out_dir, overwrite) -> None:
    """Train a picker on labelled tomograms and save it into OUT (for forge pick apply)."""
    options = picker_options(option_pairs)
    made = _saving_picker(picker, options)
    labelled = _training_tomograms(synthetic, refined, picks_path, tomograms, copick_config, train, unit,
                                   class_column, radius_pairs, radius_column, tomo_type, voxel_spacing, copick_user,
                                   copick_session)
    stale = check_output_folder(out_dir, RUN_NAMES, "a saved picker", overwrite)
    made.fit(labelled, seed=seed)
    radii = {c: float(r) for t in labelled for c, r in t.radii_A.items()}
    record = {"picker": picker, "options": options, "seed": seed, "classes": sorted(radii), "radii_A": radii,
              "trained_on": [t.name for t in labelled], "voxel_sizes_A": sorted({t.voxel_size for t in labelled}),
              "forge_version": __version__}
    with atomic_folder(out_dir, stale=tuple(stale)) as work:
        (work / "model").mkdir()
        made.save(work / "model")
        write_json_atomic(work / "picker.json", record)
    click.echo(f"trained picker {picker} on {len(labelled)} tomogram(s) ({', '.join(record['classes'])}); "
               f"saved in {out_dir}")


def load_picker(run: Path, overrides: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """The picker ``forge pick train`` saved in ``run`` and its record (picker.json); ``overrides``
    replace options it was saved with (those of picking: threshold, tile, device...)."""
    try:
        record = json.loads((run / "picker.json").read_text())
        kind, options = str(record["picker"]), {**dict(record["options"]), **(overrides or {})}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{run}: not a picker saved by forge pick train (picker.json: {exc})") from None
    made = _saving_picker(kind, options)
    made.load(run / "model")
    return made, record


def _targets(tomogram_paths: Sequence[Path], copick_config: Path | None, runs: Sequence[str], tomo_type: str,
             voxel_spacing: float | None, voxel_size: float | None) -> list:
    """The tomograms to pick, opened lazily: files given, or a copick project's runs."""
    # start-up: the tomogram readers only when the command runs
    from cryoet_forge.data.copick import copick_tomograms
    from cryoet_forge.io.tomograms import open_tomogram

    if bool(tomogram_paths) == (copick_config is not None):
        raise InputError("give the tomograms to pick by --tomogram FILE (repeatable) or by --copick CONFIG, one of them")
    if copick_config is not None:
        return copick_tomograms(copick_config, tomo_type, voxel_spacing, list(runs) or None)
    names = [p.name.split(".")[0] for p in tomogram_paths]
    shared = sorted({n for n in names if names.count(n) > 1})
    if shared:
        raise InputError(f"--tomogram: two files share the tomogram name {shared[0]!r}")
    return [open_tomogram(p, name=n, voxel_size=voxel_size) for p, n in zip(tomogram_paths, names)]


def _picks_rows(made: Any, record: dict[str, Any], tomogram: Any) -> list[dict[str, Any]]:
    """One STAR row per pick in ``tomogram`` (simulate-tomogram's columns; coordinates in voxels)."""
    # start-up: numpy only when the command runs
    import numpy as np

    volume = np.asarray(tomogram.data[:], dtype=np.float32)
    size = float(tomogram.voxel_size)
    if callable(getattr(made, "pick_with_scores", None)):
        found = made.pick_with_scores(volume, size)
    else:
        found = {c: (p, None) for c, p in made.pick(volume, size).items()}
    classes = list(record["classes"])
    rows = []
    for name in sorted(found):
        points, scores = found[name]
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        number = classes.index(name) + 1 if name in classes else 0
        for i, (x, y, z) in enumerate(points):
            row = {"rlnTomoName": tomogram.name, "rlnCoordinateX": x, "rlnCoordinateY": y,
                   "rlnCoordinateZ": z, "rlnClassNumber": number, "forgeClassName": name,
                   "forgeRadiusAngst": float(record["radii_A"].get(name, 0.0))}
            if scores is not None:
                row["rlnAutopickFigureOfMerit"] = float(scores[i])
            rows.append(row)
    return rows


def _check_copick(config: Path, runs: Sequence[str], classes: Sequence[str], user_id: str, session_id: str,
                  overwrite: bool) -> None:
    """Before any picking: every class the picker knows is a pickable object of the project, and no
    pick set ``user_id`` / ``session_id`` of those objects exists in ``runs`` (unless ``overwrite``)."""
    # start-up: copick only when the command runs
    from cryoet_forge.data.copick import open_project

    root = open_project(config)
    objects = {o.name for o in root.pickable_objects if getattr(o, "is_particle", True)}
    unknown = sorted(set(classes) - objects)
    if unknown:
        raise InputError(f"{config}: the picker's class(es) {', '.join(unknown)} are not pickable objects of the "
                         f"project ({', '.join(sorted(objects)) or 'none'}); its picks could not be written there")
    by_name = {r.name: r for r in root.runs}
    taken = [f"{run}/{c}" for run in runs for c in classes
             if run in by_name and by_name[run].get_picks(object_name=c, user_id=user_id, session_id=session_id)]
    if taken and not overwrite:
        raise InputError(f"{config}: pick set {user_id}/{session_id} already exists for {', '.join(taken[:5])}; pass "
                         "--overwrite or choose --copick-user / --copick-session")


def _write_copick(config: Path, found: dict[str, list[dict[str, Any]]], sizes: dict[str, float], user_id: str,
                  session_id: str) -> int:
    """Each run's picks (STAR rows by run, in voxels of ``sizes[run]`` A) into the copick project as
    the pick set ``user_id`` / ``session_id`` (positions in Angstrom, scores when the picker gives
    them; checked first by ``_check_copick``). The number of pick sets written."""
    # start-up: numpy and copick only when the command runs
    import numpy as np

    from cryoet_forge.data.copick import open_project  # start-up: copick and torch

    runs = {r.name: r for r in open_project(config).runs}
    written = 0
    for run, rows in found.items():
        for name in sorted({r["forgeClassName"] for r in rows}):
            members = [r for r in rows if r["forgeClassName"] == name]
            xyz = np.array([[r["rlnCoordinateX"], r["rlnCoordinateY"], r["rlnCoordinateZ"]] for r in members])
            scores = (np.array([r["rlnAutopickFigureOfMerit"] for r in members])
                      if "rlnAutopickFigureOfMerit" in members[0] else None)
            picks = runs[run].new_picks(object_name=name, session_id=session_id, user_id=user_id, exist_ok=True)
            picks.from_numpy(np.ascontiguousarray(xyz * sizes[run]), scores=scores)
            picks.store()
            written += 1
    return written


@pick_group.command("apply")
@quiet_option
@click.option("--run", "run_dir", required=True, type=NonEmptyPath(exists=True, file_okay=False, path_type=Path),
              help="A picker saved by forge pick train.")
@click.option("--tomogram", "tomogram_paths", multiple=True,
              type=NonEmptyPath(exists=True, path_type=Path), help="A tomogram to pick (MRC or OME-Zarr; repeatable).")
@click.option("--voxel-size", type=float, help="With --tomogram: the voxel size in A (default: the file's).")
@click.option("--copick", "copick_config", type=NonEmptyPath(exists=True, dir_okay=False, path_type=Path),
              help="A copick project: pick its runs (--runs) and write the picks into it as well.")
@click.option("--runs", "runs", multiple=True, help="With --copick: a run to pick (repeatable; default: every run).")
@click.option("--tomo-type", default="wbp", show_default=True, help="With --copick: the tomogram type to read.")
@click.option("--voxel-spacing", type=float, help="With --copick: the voxel spacing (A) to read.")
@click.option("--copick-user", default=COPICK_USER, show_default=True, help="With --copick: the user id of the picks written.")
@click.option("--copick-session", default=COPICK_SESSION, show_default=True,
              help="With --copick: the session id of the picks written.")
@click.option("--out", "out_dir", required=True, type=NonEmptyPath(file_okay=False, path_type=Path),
              help="The folder of particles.star (RELION 5 columns, coordinates in voxels of each tomogram).")
@click.option("--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
              help="Replace a picker option it was saved with, for picking (e.g. threshold=0.3, device=cuda).")
@click.option("--overwrite", is_flag=True, help="Replace picks written earlier (OUT, and the copick pick set).")
def pick_apply_command(run_dir, tomogram_paths, voxel_size, copick_config, runs, tomo_type, voxel_spacing,
                       copick_user, copick_session, out_dir, option_pairs, overwrite) -> None:
    """Pick tomograms with a saved picker: particles.star in OUT (and the copick project's picks)."""
    # start-up: pandas and starfile only when the command runs
    import pandas as pd

    from cryoet_forge.simulate.tomogram_output import write_star  # start-up: pandas, starfile

    if runs and copick_config is None:
        raise InputError("--runs needs --copick (the project whose runs to pick)")
    if voxel_size is not None:
        check_voxel_size(voxel_size, "--voxel-size")
    made, record = load_picker(run_dir, picker_options(option_pairs))
    targets = _targets(tomogram_paths, copick_config, runs, tomo_type, voxel_spacing, voxel_size)
    if copick_config is not None:
        _check_copick(copick_config, [t.name for t in targets], record["classes"], copick_user, copick_session,
                      overwrite)
    stale = check_output_folder(out_dir, APPLY_NAMES, "picks", overwrite)
    found: dict[str, list[dict[str, Any]]] = {}
    sizes: dict[str, float] = {}
    for tomogram in targets:
        sizes[tomogram.name] = float(tomogram.voxel_size)
        try:
            found[tomogram.name] = _picks_rows(made, record, tomogram)
        finally:
            tomogram.close()
        click.echo(f"{tomogram.name}: {len(found[tomogram.name])} picks")
    rows = [r for picked in found.values() for r in picked]
    scored = callable(getattr(made, "pick_with_scores", None))  # the score column even where nothing was picked
    table = pd.DataFrame(rows, columns=[*STAR_COLUMNS, *(["rlnAutopickFigureOfMerit"] if scored else [])])
    written = 0
    if copick_config is not None:
        written = _write_copick(copick_config, found, sizes, copick_user, copick_session)
    with atomic_folder(out_dir, stale=tuple(stale)) as work:
        write_star(work / "particles.star", {"particles": table})
    click.echo(f"{len(rows)} picks in {len(found)} tomogram(s): {out_dir / 'particles.star'}"
               + (f"; {written} copick pick set(s) {copick_user}/{copick_session}" if copick_config else ""))

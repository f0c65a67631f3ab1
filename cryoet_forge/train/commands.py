"""The ``forge train``, ``forge generate`` and ``forge uncertainty`` commands."""

from __future__ import annotations

import os
from pathlib import Path

import click

from cryoet_forge import progress, registry
from cryoet_forge.config import load_config, parse_override
from cryoet_forge.devices import SEED, NonEmptyPath, check_device
from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.io.atomic import check_output_folder
from cryoet_forge.io.files import check_output_target
from cryoet_forge.limits import INT64_MAX
from cryoet_forge.progress import quiet_option
from cryoet_forge.train.data_options import real_data_overrides

# `forge --help` imports this module: what only a command's work needs (the training loop, the
# checkpoints, generation: torch, numpy and the modules built on them) is imported inside the
# functions that use it (start-up time).


def strict_option(command):
    """The ``--strict`` option of a command that reads checkpoints: sets ``checkpoint.configure(strict=...)``
    on every invocation (so one call's setting never leaks into the next), importing the checkpoint
    module (and torch) only when the command runs, so that ``--help`` stays fast."""

    def callback(ctx, param, value):
        from cryoet_forge.train.checkpoint import configure  # start-up: torch

        configure(strict=bool(value))
        return value

    return click.option("--strict", is_flag=True, expose_value=False, callback=callback,
                        help="Refuse a checkpoint without checksums.json (one that cannot be verified) instead of "
                             "reading it with a warning.")(command)


def _overrides(pairs: tuple[str, ...]) -> dict:
    return dict(parse_override(p) for p in pairs)


@click.command("train")
@quiet_option
@strict_option
@click.option("--config", "config_path", type=NonEmptyPath(dir_okay=False, path_type=Path),
              help="TOML run configuration (defaults apply to keys it leaves out).")
@click.option("--out", "run_dir", type=NonEmptyPath(file_okay=False, path_type=Path),
              help="Run folder to create (default: runs/<config name>).")
@click.option("--resume", "resume_dir", type=NonEmptyPath(file_okay=False, path_type=Path),
              help="Continue the run in this folder from its newest checkpoint.")
@click.option("--generator", help="Generator name (forge list generator).")
@click.option("--critic", help="Critic name (forge list critic).")
@click.option("--loss", help="Adversarial loss name (forge list loss).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16", "auto"]),
              help="Numeric precision; auto = bf16 autocast where the device computes bf16 natively "
                   "(CPU: AVX512-BF16 or AMX), else fp32.")
@click.option("--steps", type=int, help="Total number of generator steps.")
@click.option("--compile/--no-compile", "compile_", default=None, help="Use torch.compile.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set train.batch_size=4 (repeatable).")
@click.option("--real", type=NonEmptyPath(path_type=Path),
              help="Your particles as domain S: a labelled STAR table, a folder, an .npz bundle (forge extract's "
                   "output) or a copick project .json; needs --maps or --structures.")
@click.option("--maps", type=NonEmptyPath(path_type=Path),
              help="With --real: a folder of clean maps, one per class (class = file stem), as domain D.")
@click.option("--structures", multiple=True, metavar="SPEC",
              help="With --real: a structure/map file, PDB id or phantom per class, as domain D (repeatable).")
@click.option("--gan-input", type=click.Choice(["traditional", "density"]), default="traditional",
              show_default=True,
              help="With --real: domain D as the traditional (fourier) simulation of the maps (refinement) or "
                   "the posed clean maps.")
def train_command(config_path, run_dir, resume_dir, generator, critic, loss, precision, steps,
                  compile_, sets, real, maps, structures, gan_input):
    """Train CryoETGAN (density maps D <-> subtomograms S); works under torchrun too."""
    # start-up: the names load cryoet_forge.train.loop (torch)
    from cryoet_forge.train import resume_config, train

    if resume_dir is not None and (real is not None or maps is not None or structures):
        raise ConfigError("--resume uses the run folder's own data; drop --real/--maps/--structures")
    if steps is not None and not 0 <= steps <= INT64_MAX:
        raise ConfigError(f"--steps {steps}: expected a number of generator steps in [0, {INT64_MAX}]")
    overrides = {**real_data_overrides(real, maps, tuple(structures), gan_input), **_overrides(sets)}
    for key, value in (("model.generator", generator), ("model.critic", critic),
                       ("loss.adversarial", loss), ("train.precision", precision),
                       ("train.steps", steps), ("train.compile", compile_)):
        if value is not None:
            overrides[key] = value
    if resume_dir is not None:
        if config_path is not None:
            raise ConfigError("--resume uses the run folder's own config.toml; drop --config")
        if run_dir is not None:
            raise ConfigError("--resume continues the run in its own folder; drop --out")
        cfg = resume_config(resume_dir, overrides)
        _check_components(cfg)
        from cryoet_forge.train.checkpoint import list_checkpoints  # start-up: torch

        started = bool(list_checkpoints(resume_dir))
        if not started and os.environ.get("RANK", "0") == "0":
            progress.warn(f"{resume_dir}: no checkpoint yet (the run stopped before its first one); "
                          "starting it from step 0")
        out = train(cfg, resume_dir, resume=started)
    else:
        cfg = load_config(config_path, overrides)
        _check_components(cfg)
        if run_dir is None:
            name = config_path.stem if config_path is not None else "default"
            run_dir = Path("runs") / name
        check_output_target(run_dir, folder=True)
        out = train(cfg, run_dir)
    if os.environ.get("RANK", "0") == "0":
        click.echo(f"run folder: {out}")


def _check_components(cfg) -> None:
    """Fail on an unknown name before any data is generated (lists the valid choices)."""
    registry.get("generator", cfg.model.generator)
    registry.get("critic", cfg.model.critic)
    registry.get("loss", cfg.loss.adversarial)
    registry.get("dataset", cfg.data.density.dataset)
    registry.get("dataset", cfg.data.subtomograms.dataset)


@click.command("generate")
@quiet_option
@strict_option
@click.option("--run", "run_dir", required=True, type=NonEmptyPath(file_okay=False, path_type=Path),
              help="Training run folder (its newest checkpoint is used).")
@click.option("--maps", "maps", type=NonEmptyPath(path_type=Path),
              help="Density maps: a STAR file (or a folder with one; classes and poses from its rows), or a "
                   "folder of class maps (.mrc; class = file stem, a random pose per sample).")
@click.option("--structures", "structures", multiple=True, metavar="SPEC",
              help="A PDB/mmCIF file, MRC map, PDB id or phantom class, turned into a density map at "
                   "the run's box and voxel size and given a random pose per sample (repeatable).")
@click.option("--n-per-map", "n_per_map", default=1, show_default=True, type=click.IntRange(1),
              help="Subtomograms generated per map (different noise draws).")
@click.option("--out", "out_dir", required=True, type=NonEmptyPath(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--overwrite", is_flag=True, help="Replace an earlier generation in OUT (as a whole).")
def generate_command(run_dir, maps, structures, n_per_map, out_dir, seed, batch_size, overwrite):
    """Generate realistic subtomograms (MRC + particles.star) from density maps."""
    from cryoet_forge.generate import generate_to_folder  # start-up: torch

    if (maps is None) == (not structures):
        raise InputError("give exactly one of --maps DIR|STAR or --structures FILE...")
    if structures:
        from cryoet_forge.simulate.templates import check_specs  # start-up: numpy, scipy

        check_specs(structures)
    star = generate_to_folder(run_dir, out_dir, maps=maps, structures=list(structures),
                              n_per_map=n_per_map, seed=seed, batch_size=batch_size, overwrite=overwrite)
    click.echo(f"wrote {star}")


@click.command("uncertainty")
@quiet_option
@strict_option
@click.option("--run", "run_dir", required=True, type=NonEmptyPath(file_okay=False, path_type=Path))
@click.option("--map", "map_path", required=True, type=NonEmptyPath(dir_okay=False, path_type=Path),
              help="Density map (MRC) at the run's box size.")
@click.option("--samples", default=20, show_default=True, type=click.IntRange(2))
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True),
              help="Dropout probability to use when the run trained without dropout.")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--out", "out_dir", type=NonEmptyPath(file_okay=False, path_type=Path),
              help="Output folder (default: beside the map, <map>-uncertainty/).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier result in OUT.")
def uncertainty_command(run_dir, map_path, samples, dropout, seed, out_dir, overwrite):
    """Monte-Carlo-dropout uncertainty: per-voxel mean and std of generated subtomograms."""
    from cryoet_forge.uncertainty import uncertainty_to_folder  # start-up: torch

    if dropout is not None and not 0 <= dropout < 1:  # click's FloatRange lets NaN through
        raise ConfigError(f"--dropout {dropout}: expected a probability in [0, 1)")
    out_dir = out_dir or map_path.with_name(map_path.stem + "-uncertainty")
    paths = uncertainty_to_folder(run_dir, map_path, out_dir, samples=samples, seed=seed, dropout=dropout,
                                  overwrite=overwrite)
    for p in paths:
        click.echo(f"wrote {p}")


@click.command("refine-tomogram")
@quiet_option
@strict_option
@click.option("--run", "run_dir", required=True, type=NonEmptyPath(file_okay=False, path_type=Path),
              help="Training run folder (its newest intact checkpoint unless --checkpoint).")
@click.option("--tomogram", "tomograms", required=True, multiple=True,
              type=NonEmptyPath(exists=True, dir_okay=False, path_type=Path),
              help="A tomogram MRC (protein dark) at the run's voxel size (repeatable).")
@click.option("--out", "out_dir", required=True, type=NonEmptyPath(file_okay=False, path_type=Path),
              help="Output folder: one refined NAME.mrc per input, the input's voxel size.")
@click.option("--tile", type=click.IntRange(2), help="Tile edge in voxels (default: twice the run's box).")
@click.option("--overlap", type=click.IntRange(0), help="Tile overlap in voxels (default: half the run's box).")
@click.option("--checkpoint", type=NonEmptyPath(exists=True, file_okay=False, path_type=Path),
              help="A checkpoint folder of the run instead of its newest.")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--batch-size", default=2, show_default=True, type=click.IntRange(1), help="Tiles per pass.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--overwrite", is_flag=True, help="Replace refined tomograms of the same names in OUT.")
def refine_tomogram_command(run_dir, tomograms, out_dir, tile, overlap, checkpoint, seed, batch_size, device,
                            overwrite):
    """Refine whole tomograms with a run's generator by overlapping, blended tiles (no seams)."""
    # start-up: torch, numpy, mrcfile
    from cryoet_forge.generate import check_run_voxel_size
    from cryoet_forge.io.mrc import read_mrc, write_mrc
    from cryoet_forge.refine import refine_tomogram

    check_device(device, "--device")
    names = [f"{Path(t).stem}.mrc" for t in tomograms]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"--tomogram: two inputs would both be written as {', '.join(twice)}; rename one")
    if tile is not None and overlap is not None and overlap >= tile:
        raise InputError(f"--overlap {overlap} must be below --tile {tile}")
    for path in tomograms:  # every input checked before anything is written
        check_run_voxel_size(run_dir, read_mrc(path)[1], str(path))
    check_output_folder(out_dir, tuple(names), "refined tomograms", overwrite)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for path, name in zip(tomograms, names):
        volume, voxel = read_mrc(path)
        refined = refine_tomogram(run_dir, volume, seed=seed, tile=tile, overlap=overlap, batch_size=batch_size,
                                  checkpoint=checkpoint, device=device)
        click.echo(f"wrote {write_mrc(Path(out_dir) / name, refined, voxel)}")

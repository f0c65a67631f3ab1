"""``forge classify train|eval|features``, ``forge evaluate``, ``forge evaluate-picking`` and ``forge quickstart``."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click

from cryoet_forge import progress
from cryoet_forge.devices import SEED, NonEmptyPath, device_callback
from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.evaluate.report import number
from cryoet_forge.io.atomic import lock_output
from cryoet_forge.io.files import check_output_target
from cryoet_forge.limits import check_allocation
from cryoet_forge.metrics.reliability import rule_names
from cryoet_forge.options import VALIDATED_RULE
from cryoet_forge.progress import log, quiet_option
from cryoet_forge.simulate.commands import _parse_options

# `forge --help` imports this module: what only a command's work needs (numpy, torch, pandas and the
# modules built on them) is imported inside the functions that use it (start-up time), each run of
# such imports marked `# start-up`.


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected comma-separated integers such as 64,128,256,512") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{option} {text!r}: expected positive integers")
    return values


@click.group("classify")
def classify_group() -> None:
    """Train and apply the CB3D subtomogram classifier on labelled folders (MRC + STAR)."""


def _check_classifier_flags(epochs: int, batch_size: int, lr: float, channels: list[int], convs: list[int],
                            fc_width: int, dropout: float, validation_fraction: float, patience: int) -> None:
    """``forge classify train``'s numbers, each refused by its option's name before any data is read;
    a network whose weights (with their gradients and the optimizer's two moments) cannot fit in
    memory too."""
    for flag, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--fc-width", fc_width),
                        ("--patience", patience)):
        if value < 1:
            raise ConfigError(f"{flag} {value}: expected an integer >= 1")
    if len(channels) != len(convs):
        raise ConfigError(f"--channels {','.join(map(str, channels))} and --convs-per-block "
                          f"{','.join(map(str, convs))}: expected one entry per block in each")
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"--lr {lr}: expected a finite learning rate > 0")
    if not 0 <= dropout < 1:
        raise ConfigError(f"--dropout {dropout}: expected a probability in [0, 1)")
    if not 0 <= validation_fraction < 0.9:
        raise ConfigError(f"--validation-fraction {validation_fraction}: expected a fraction in [0, 0.9) (0 = off)")
    weights, previous = fc_width * fc_width, 1
    for width, n in zip(channels, convs):
        weights += 27 * width * (previous + (n - 1) * width)
        previous = width
    weights += previous * fc_width
    check_allocation(16 * weights, f"--channels {','.join(map(str, channels))} and --fc-width {fc_width} "
                     f"({weights:,} weights)", "smaller --channels / --fc-width", error=ConfigError)


@classify_group.command("train")
@quiet_option
@click.option("--data", "data_path", required=True, type=NonEmptyPath(path_type=Path),
              help="training set: a STAR file or a folder holding one")
@click.option("--test", "test_path", type=NonEmptyPath(path_type=Path), default=None,
              help="optional test set, scored after training")
@click.option("--out", "out_dir", required=True, type=NonEmptyPath(path_type=Path),
              help="folder for cb3d.safetensors, cb3d.json and scores")
@click.option("--epochs", default=VALIDATED_RULE["epochs"], show_default=True, type=int,
              help="the most epochs (with a validation part: it stops earlier)")
@click.option("--batch-size", default=VALIDATED_RULE["batch_size"], show_default=True, type=int)
@click.option("--lr", default=VALIDATED_RULE["lr"], show_default=True, type=float)
@click.option("--channels", default=",".join(map(str, VALIDATED_RULE["channels"])), show_default=True,
              help="conv widths per block (the paper's CB3D: 64,128,256,512 with --fc-width 4096 --dropout 0.5)")
@click.option("--convs-per-block", default=",".join(map(str, VALIDATED_RULE["convs_per_block"])), show_default=True)
@click.option("--fc-width", default=VALIDATED_RULE["fc_width"], show_default=True, type=int,
              help="width of both dense layers")
@click.option("--dropout", default=VALIDATED_RULE["dropout"], show_default=True, type=float)
@click.option("--normalize", default="zscore", show_default=True,
              type=click.Choice(["zscore", "minmax", "none"]), help="per-volume input normalisation")
@click.option("--no-augment", is_flag=True, help="no random axis flips")
@click.option("--validation-fraction", default=VALIDATED_RULE["validation_fraction"], show_default=True, type=float,
              help="hold out this fraction of each class, keep the best epoch on it and stop early (0 = off)")
@click.option("--patience", default=VALIDATED_RULE["patience"], show_default=True, type=int,
              help="with --validation-fraction: stop this many epochs after the best one")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--device", default="cpu", show_default=True, callback=device_callback)
@click.option("--overwrite", is_flag=True, help="replace a classifier already saved at OUT")
def classify_train(data_path, test_path, out_dir, epochs, batch_size, lr, channels, convs_per_block,
                   fc_width, dropout, normalize, no_augment, validation_fraction, patience, seed, device,
                   overwrite) -> None:
    """Train CB3D on a labelled folder and save it (safetensors + JSON metadata)."""
    # start-up: torch and pandas only when the command runs
    from cryoet_forge.classify import ClassifierOptions, check_splits, load_labelled, train_cb3d
    from cryoet_forge.evaluate.classification_report import score_and_write
    from cryoet_forge.models.cb3d import checkpoint_paths, save_cb3d

    check_output_target(out_dir, folder=out_dir.suffix != ".safetensors")
    lock_output(out_dir)
    existing = [p.name for p in checkpoint_paths(out_dir) if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise ConfigError(f"{out_dir} already holds a classifier ({', '.join(existing)}); choose another --out "
                          "or pass --overwrite")
    widths, convs = _int_list(channels, "--channels"), _int_list(convs_per_block, "--convs-per-block")
    _check_classifier_flags(epochs, batch_size, lr, widths, convs, fc_width, dropout, validation_fraction, patience)
    options = ClassifierOptions(channels=widths, convs_per_block=convs, fc_width=fc_width, dropout=dropout, epochs=epochs, batch_size=batch_size,
                                lr=lr, normalize=normalize, augment=not no_augment,
                                validation_fraction=validation_fraction, patience=patience, device=device)
    train = load_labelled(data_path)
    test = load_labelled(test_path) if test_path is not None else None
    if test is not None:
        check_splits(train, test)

    model, history = train_cb3d(train, options, seed=seed)
    save_cb3d(model, out_dir, train.class_names, normalize=normalize,
              extra={"voxel_size": train.voxel_size, "training": {
                  "data": str(train.source), "n": len(train), "seed": seed, "options": options.to_dict(),
                  **history.summary()}})
    kept = "" if history.best_epoch is None else (
        f"; kept epoch {history.best_epoch} of {len(history.loss)}, validation accuracy "
        f"{history.val_accuracy[history.best_epoch - 1]:.3f} on {history.n_validation} held-out volumes")
    click.echo(f"saved {out_dir / 'cb3d.safetensors'} ({len(train)} volumes, {len(train.class_names)} classes, "
               f"{history.seconds:.1f} s{kept})")
    if test is not None:
        result = score_and_write(model, test, train.class_names, normalize, out_dir, device=device)
        _print_scores(result)


def _print_scores(result) -> None:
    click.echo(f"accuracy {result.accuracy:.4f} on {result.labels.shape[0]} volumes")
    width = max(len(c) for c in result.class_names)
    for name, value in result.per_class_accuracy.items():
        shown = "n/a (absent)" if value is None else f"{value:.4f}"
        click.echo(f"  {name:<{width}}  {shown}")


@classify_group.command("eval")
@quiet_option
@click.option("--model", "model_path", required=True, type=NonEmptyPath(path_type=Path),
              help="folder (or .safetensors) written by 'forge classify train'")
@click.option("--data", "data_path", required=True, type=NonEmptyPath(path_type=Path))
@click.option("--out", "out_dir", required=True, type=NonEmptyPath(path_type=Path),
              help="folder for scores.json and confusion.png")
@click.option("--device", default="cpu", show_default=True, callback=device_callback)
def classify_eval(model_path, data_path, out_dir, device) -> None:
    """Score a trained CB3D on a labelled folder: accuracy, per-class accuracy, confusion matrix PNG."""
    # start-up: torch and pandas only when the command runs
    from cryoet_forge.classify import check_trained_voxel_size, load_labelled
    from cryoet_forge.evaluate.classification_report import score_and_write
    from cryoet_forge.models.cb3d import load_cb3d

    check_output_target(out_dir, folder=True)
    model, metadata = load_cb3d(model_path, device=device)
    data = load_labelled(data_path)
    check_trained_voxel_size(metadata, data)
    result = score_and_write(model, data, metadata["class_names"], metadata.get("normalize", "zscore"),
                             out_dir, device=device)
    _print_scores(result)
    click.echo(f"wrote {out_dir / 'scores.json'} and {out_dir / 'confusion.png'}")


def _check_feature_outputs(out_path: Path, probs_path: Path | None) -> None:
    """Before the network runs: each feature file can be written, with a suffix forge metrics reads."""
    from cryoet_forge.io.embeddings import FEATURE_SUFFIXES  # start-up: numpy only when the command runs

    for flag, path in (("--out", out_path), ("--probabilities", probs_path)):
        if path is None:
            continue
        check_output_target(path, folder=False, option=flag)
        if path.suffix.lower() not in FEATURE_SUFFIXES:
            raise InputError(f"{flag} {path}: unsupported feature file type {path.suffix or '(none)'!r}; expected "
                             f"one of {', '.join(FEATURE_SUFFIXES)}")


@classify_group.command("features")
@quiet_option
@click.option("--model", "model_path", required=True, type=NonEmptyPath(path_type=Path))
@click.option("--data", "data_path", required=True, type=NonEmptyPath(path_type=Path),
              help="labelled folder (STAR) whose volumes are embedded")
@click.option("--out", "out_path", required=True, type=NonEmptyPath(path_type=Path),
              help="feature file (.npy, .npz or .safetensors) for 'forge metrics'")
@click.option("--probabilities", "probs_path", type=NonEmptyPath(path_type=Path), default=None,
              help="also write softmax class probabilities (for the Inception Score)")
@click.option("--device", default="cpu", show_default=True, callback=device_callback)
def classify_features(model_path, data_path, out_path, probs_path, device) -> None:
    """Write the CB3D dense-layer features (N x 4096) of a folder's volumes."""
    # start-up: torch and pandas only when the command runs
    from cryoet_forge.classify import check_trained_voxel_size, load_labelled
    from cryoet_forge.io.embeddings import save_features
    from cryoet_forge.models.cb3d import load_cb3d, run_inference

    _check_feature_outputs(out_path, probs_path)
    model, metadata = load_cb3d(model_path, device=device)
    data = load_labelled(data_path)
    check_trained_voxel_size(metadata, data)

    if data.box != model.config.box:
        raise InputError(f"{data.source}: volumes are {data.box}^3 but the classifier was trained on "
                         f"{model.config.box}^3")
    features, probabilities = run_inference(model, data.volumes, metadata.get("normalize", "zscore"),
                                            device=device)
    save_features(out_path, features)
    click.echo(f"wrote {out_path} ({features.shape[0]} x {features.shape[1]})")
    if probs_path is not None:
        save_features(probs_path, probabilities)
        click.echo(f"wrote {probs_path} ({probabilities.shape[0]} x {probabilities.shape[1]})")


@click.command("evaluate")
@quiet_option
@click.option("--config", "config_path", type=NonEmptyPath(path_type=Path), default=None,
              help="evaluation TOML (see configs/evaluate-*.toml)")
@click.option("--suite", "suite_path", type=NonEmptyPath(path_type=Path), default=None,
              help="suite TOML (see configs/suite.toml): every domain x method, one table in OUT/suite.md")
@click.option("--out", "out_dir", required=True, type=NonEmptyPath(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override a config value, e.g. --set downstream.seeds=[0,1,2] (with --suite: every cell)")
@click.option("--domain", "only_domains", multiple=True, metavar="NAME",
              help="with --suite: run only this domain (repeat for several); other cells already in OUT are read back")
@click.option("--method", "only_methods", multiple=True, metavar="NAME",
              help="with --suite: run only this method (repeat for several)")
@click.option("--budget-minutes", type=float, default=None,
              help="scale GAN steps, classifier epochs (and set sizes if needed) to finish in about N minutes "
                   "on this machine, measured first; the report says what was scaled")
@click.option("--resume", is_flag=True,
              help="reuse the stages an earlier run of this command finished in OUT (those whose inputs and "
                   "configuration are unchanged); a GAN stopped half-way continues from its newest checkpoint")
def evaluate_command(config_path, suite_path, out_dir, overrides, only_domains, only_methods,
                     budget_minutes, resume) -> None:
    """Run the paper's evaluation protocol end to end and write report.md, results.json and PNGs."""
    # start-up: the evaluation's configuration imports torch, scipy and pandas
    from cryoet_forge.evaluate.config import load_evaluation_config, parse_overrides

    if (config_path is None) == (suite_path is None):
        raise click.UsageError("give exactly one of --config (one evaluation) or --suite (domains x methods)")
    if suite_path is not None:
        if budget_minutes is not None:
            raise click.UsageError("--budget-minutes applies to one evaluation (--config), not to --suite")
        if resume:
            raise click.UsageError("--resume applies to one evaluation (--config); a suite always reuses what "
                                   "its cells finished")
        check_output_target(out_dir, folder=True)
        _run_suite(suite_path, out_dir, parse_overrides(overrides), list(only_domains) or None,
                   list(only_methods) or None)
        return
    if only_domains or only_methods:
        raise click.UsageError("--domain and --method choose cells of a --suite")
    _check_budget(budget_minutes)
    check_output_target(out_dir, folder=True)
    _run(load_evaluation_config(config_path, parse_overrides(overrides), overrides_label="--set"), out_dir,
         budget_minutes, resume)


def _check_budget(minutes: float | None) -> None:
    """``--budget-minutes``: a finite number of minutes > 0, refused by name before any work."""
    if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
        raise ConfigError(f"--budget-minutes {minutes}: expected a finite number of minutes > 0")


def _run_suite(suite_path: Path, out_dir: Path, overrides: dict, domains: list[str] | None,
               methods: list[str] | None) -> None:
    # start-up: the suite runs evaluations (torch, scipy, pandas)
    from cryoet_forge.evaluate.suite import OUTCOME_TEXT, load_suite, run_suite

    suite = load_suite(suite_path, overrides)
    record = run_suite(suite, out_dir, log=progress.log, domains=domains, methods=methods)
    for row in record["rows"]:
        if row["status"] != "done":
            click.echo(f"{row['domain']} / {row['method']}: skipped, {row['reason']}")
            continue
        p = row["paired"]
        click.echo(f"{row['domain']} / {row['method']}: real {row['real']:.3f}, traditional "
                   f"{row['traditional']['mean']:.3f}, GAN {row['gan']['mean']:.3f}, GAN - traditional "
                   f"{p['mean']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]: {OUTCOME_TEXT[row['outcome']]}")
    best = record["tally"]["best"]
    if best is not None:
        click.echo(f"most domains won: {best}")
    click.echo(f"suite table: {Path(out_dir) / 'suite.md'}")


def _run(config, out_dir: Path, budget_minutes: float | None, resume: bool = False) -> None:
    """Fit to the time budget (if one is given), run the evaluation, print the headline numbers last."""
    from cryoet_forge.evaluate.pipeline import run_evaluation  # start-up: torch, scipy, pandas

    budget = None
    if budget_minutes is not None:
        config, budget = _fit_to_budget(config, budget_minutes, out_dir, resume)
    report = run_evaluation(config, out_dir, log=progress.log, budget=budget, resume=resume)
    _print_summary(out_dir)
    click.echo(f"report: {report}")
    sys.stdout.flush()


def _fit_to_budget(config, minutes: float, out_dir: Path, resume: bool):
    """``fit_to_budget`` as a stage of the evaluation: with ``resume`` the scaled configuration of the
    earlier run (same configuration, same minutes) is reused, not measured again (a new measurement
    would scale differently and so recompute every stage)."""
    # start-up: the budget's measurement and the stages import torch, scipy and pandas
    from cryoet_forge.evaluate.budget import fit_to_budget
    from cryoet_forge.evaluate.config import config_from_dict
    from cryoet_forge.evaluate.stages import Stages

    def fit() -> dict:
        scaled, record = fit_to_budget(config, minutes, log=progress.log)
        return {"config": scaled.to_dict(), "budget": record}

    value = Stages(out_dir, resume, progress.log).run("budget", {"config": config.to_dict(), "minutes": minutes},
                                                      fit)
    return config_from_dict(value["config"], origin=config.origin), value["budget"]


def _print_summary(out_dir: Path) -> None:
    from cryoet_forge.evaluate.pipeline import load_results  # start-up: torch, scipy, pandas

    results = load_results(out_dir)
    verdict = results.get("verdict")
    if verdict is not None:
        click.echo(f"chance {number(results['chance'])}; radial-profile baseline on the real split "
                   f"{number(results['baseline']['accuracy'])}")
        if not verdict["metrics_reliable"]:
            click.echo("warning: the inception network is near chance: FID, PRDC and IS below are unreliable")
    click.echo(f"train on real, test on real: accuracy {results['inception']['real_test']['accuracy']:.3f}")
    for key, label in (("traditional", "traditional simulation"), ("cryoetgan", "CryoETGAN")):
        d, q = results["downstream"][key], results["quality"][key]
        fid_rules = (q.get("reliability") or {}).get("fid")
        mark = (" (unreliable)" if not q.get("reliable", True) else
                f" (unreliable: {rule_names(fid_rules)})" if fid_rules else "")
        click.echo(f"train on {label}, test on real: accuracy {d['mean']:.3f} "
                   f"[{d['ci_low']:.3f}, {d['ci_high']:.3f}]; FID vs real test {number(q['fid'])}{mark}")
    if verdict is not None:
        for note in verdict["notes"]:
            click.echo(f"warning: {note}")
        click.echo(verdict["sentence"])
        for kind, answer in (verdict.get("by_classifier") or {}).items():
            if kind != "cb3d":  # cb3d's answer is the sentence above
                click.echo(f"  {answer['sentence']}")


@click.command("quickstart")
@quiet_option
@click.option("--out", "out_dir", default=Path("quickstart-out"), show_default=True,
              type=NonEmptyPath(path_type=Path))
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--budget-minutes", type=float, default=None,
              help="scale GAN steps, classifier epochs (and set sizes if needed) to finish in about N minutes "
                   "on this machine, measured first; the report says what was scaled")
@click.option("--resume", is_flag=True, help="reuse the stages an earlier run finished in OUT (as forge evaluate)")
def quickstart_command(out_dir, seed, budget_minutes, resume) -> None:
    """The whole loop, small, on a CPU: simulate, train the GAN, generate, classify, metrics, report."""
    from cryoet_forge.evaluate.config import quickstart_config  # start-up: torch, scipy, pandas

    _check_budget(budget_minutes)
    check_output_target(out_dir, folder=True)
    _run(quickstart_config(seed=seed, log=log), out_dir, budget_minutes, resume)


def picker_options(pairs: tuple[str, ...]) -> dict:
    """A picker's ``--option KEY=VALUE`` pairs as keyword options (``min-distance`` -> ``min_distance``)."""
    return {key.replace("-", "_"): value for key, value in _parse_options(pairs).items()}


def _radii(pairs: tuple[str, ...]) -> dict[str, float]:
    radii = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            radius = float(value)
        except ValueError:
            radius = float("nan")
        if not name.strip() or not radius > 0 or radius == float("inf"):
            raise InputError(f"--radius {pair!r}: expected CLASS=RADIUS with a radius > 0 in Angstrom, e.g. 3cf3=87.8")
        radii[name.strip()] = radius
    return radii


def _real_from_picks(picks_path, tomograms, train, test, unit, class_column, radius_pairs, radius_column) -> dict:
    """The real domain of ``forge evaluate-picking`` from a pick table and a folder of tomograms, checked."""
    # start-up: pandas and starfile only when the command runs
    from cryoet_forge.io.picks import read_picks
    from cryoet_forge.picking.tomograms import read_radii, tomogram_names

    if picks_path is None or tomograms is None:
        raise InputError("give the real tomograms by --picks FILE and --tomograms DIR, or by --copick CONFIG")
    if bool(radius_pairs) == bool(radius_column):
        raise InputError("give the particle radii by --radius CLASS=A (per class) or --radius-column NAME, one of them")
    known = tomogram_names(picks_path, unit, class_column)
    _check_names(train, test, known, f"no picks of that tomogram in {picks_path} (its tomograms: ")
    radii = _radii(radius_pairs) if radius_pairs else read_radii(picks_path, radius_column, class_column)
    classes = sorted(set(read_picks(picks_path, unit=unit, class_column=class_column).table["class_name"].astype(str)))
    missing = [c for c in classes if c not in radii]
    if missing:
        by = f"its class column {class_column!r}" if class_column else "its classes as forge extract reads them"
        raise InputError(f"--radius: no particle radius for class(es) {', '.join(missing[:5])} of {picks_path} ({by}); "
                         "give --radius CLASS=A for each class or --radius-column")
    return {"picks": picks_path, "tomograms": tomograms, "train": list(train), "test": list(test), "radii_A": radii,
            "unit": unit, "class_column": class_column}


def _real_from_copick(config, train, test, radius_pairs, tomo_type, voxel_spacing, user_id, session_id) -> dict:
    """The real domain of ``forge evaluate-picking`` from a copick project (runs as tomograms), checked."""
    # start-up: copick's readers bring pandas and numpy
    from cryoet_forge.picking.tomograms import copick_radii, copick_run_names

    _check_names(train, test, copick_run_names(config), f"no run of that name in {config} (its runs: ")
    radii = {**copick_radii(config), **_radii(radius_pairs)}
    return {"copick": config, "train": list(train), "test": list(test), "radii_A": radii, "tomo_type": tomo_type,
            "voxel_spacing": voxel_spacing, "user_id": user_id, "session_id": session_id}


def _check_names(train, test, known: list[str], unknown_text: str) -> None:
    overlap = sorted(set(train) & set(test))
    if overlap:
        raise InputError(f"--train and --test share tomogram(s) {', '.join(overlap)}; test on held-out tomograms")
    for flag, names in (("--train", train), ("--test", test)):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise InputError(f"{flag} {unknown[0]!r}: {unknown_text}{', '.join(known[:10])})")


@click.command("evaluate-picking")
@quiet_option
@click.option("--picks", "picks_path", type=NonEmptyPath(exists=True, dir_okay=False, path_type=Path),
              help="The real tomograms' picks (RELION 5/4, Warp/M STAR or a CSV/TSV list); or --copick.")
@click.option("--tomograms", "tomograms", type=NonEmptyPath(exists=True, file_okay=False, path_type=Path),
              help="The folder of the real tomograms (NAME.mrc, .rec or .zarr, as the picks name them).")
@click.option("--copick", "copick_config", type=NonEmptyPath(exists=True, dir_okay=False, path_type=Path),
              help="Instead of --picks and --tomograms: a copick project's configuration; --train and --test "
                   "name its runs, radii come from its objects (or --radius).")
@click.option("--tomo-type", default="wbp", show_default=True, help="With --copick: the tomogram type to read.")
@click.option("--voxel-spacing", type=float, help="With --copick: the voxel spacing (A) to read (a run's only one if not given).")
@click.option("--copick-user", help="With --copick: the pick set's user id (default: every particle pick set).")
@click.option("--copick-session", help="With --copick: the pick set's session id.")
@click.option("--train", "train", required=True, multiple=True, help="A real tomogram to train on (repeatable): the ceiling.")
@click.option("--test", "test", required=True, multiple=True, help="A held-out real tomogram to score on (repeatable).")
@click.option("--unit", type=click.Choice(["px", "angstrom"]), help="Unit of CSV pick coordinates.")
@click.option("--class-column", help="The picks' class column (default: as forge extract reads it).")
@click.option("--radius", "radius_pairs", multiple=True, metavar="CLASS=A",
              help="A class's particle radius in Angstrom (repeatable); or --radius-column.")
@click.option("--radius-column", help="A per-particle radius column (Angstrom) of --picks, e.g. radius_A.")
@click.option("--synthetic", type=NonEmptyPath(exists=True, file_okay=False, path_type=Path),
              help="A forge simulate-tomogram folder: the traditional source.")
@click.option("--refined", type=NonEmptyPath(exists=True, file_okay=False, path_type=Path),
              help="Its tomograms refined by forge refine-tomogram: the GAN source (picks from --synthetic).")
@click.option("--picker", default="unet-segmentation", show_default=True, help="A picker kind (forge list picker).")
@click.option("--option", "option_pairs", multiple=True, metavar="KEY=VALUE", help="A picker option (repeatable).")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds: one picker per source and seed.")
@click.option("--margin", default=0.1, show_default=True, type=click.FloatRange(0, 1),
              help="Below this F-beta of the real-trained pickers the data cannot tell sources apart.")
@click.option("--out", "out_dir", required=True, type=NonEmptyPath(file_okay=False, path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace an earlier picking evaluation in OUT.")
@click.option("--resume", is_flag=True,
              help="Reuse the pickers an earlier run in OUT finished (kept per source and seed as each ends) "
                   "where the picker, its options and the tomograms are unchanged.")
def evaluate_picking_command(picks_path, tomograms, copick_config, tomo_type, voxel_spacing, copick_user,
                             copick_session, train, test, unit, class_column, radius_pairs, radius_column,
                             synthetic, refined, picker, option_pairs, seeds, margin, out_dir, overwrite,
                             resume) -> None:
    """Pickers trained on traditional, GAN-refined and real tomograms, scored on held-out real ones."""
    # start-up: numpy, scipy and pandas only when the command runs
    from cryoet_forge.evaluate.picking import run_picking_evaluation

    try:
        seed_list = [int(v) for v in seeds.split(",") if v.strip()]
    except ValueError:
        seed_list = []
    if not seed_list or min(seed_list) < 0 or max(seed_list) >= 2 ** 32 or len(set(seed_list)) < len(seed_list):
        raise InputError(f"--seeds {seeds!r}: expected distinct comma-separated integers in [0, 2^32), e.g. 0,1,2")
    if not 0 <= margin <= 1:  # click's FloatRange lets NaN through
        raise InputError(f"--margin {margin}: expected an F-beta in [0, 1]")
    if copick_config is not None:
        given = [flag for flag, value in (("--picks", picks_path), ("--tomograms", tomograms), ("--unit", unit),
                                          ("--class-column", class_column), ("--radius-column", radius_column))
                 if value is not None]
        if given:
            raise InputError(f"--copick reads tomograms, picks and radii from the project; drop {', '.join(given)}")
        real = _real_from_copick(copick_config, train, test, radius_pairs, tomo_type, voxel_spacing, copick_user,
                                 copick_session)
    else:
        real = _real_from_picks(picks_path, tomograms, train, test, unit, class_column, radius_pairs, radius_column)
    options = picker_options(option_pairs)
    results = run_picking_evaluation(out_dir, real, synthetic, refined, picker, options, seed_list, margin,
                                     overwrite, log=click.echo, resume=resume)
    outcome = results["verdict"].get("outcome") or "no comparison"
    click.echo(f"verdict: {outcome}; wrote {Path(out_dir) / 'report.md'}")

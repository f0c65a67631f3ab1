"""``forge metrics``: PRDC and FID (and IS) of two feature files, or of two volume sets run through a
feature extractor (``--features NAME``), as a table and optionally JSON."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import click

from cryoet_forge import progress
from cryoet_forge.devices import LauncherWorld, NonEmptyPath, launcher_world
from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.io.atomic import write_json_atomic
from cryoet_forge.io.files import check_not_an_input, check_output_target
from cryoet_forge.limits import check_int_range
from cryoet_forge.metrics.reliability import assess_metrics, bundle_reliability, rule_names
from cryoet_forge.progress import quiet_option

# `forge --help` imports this module: what only a command's work needs (numpy, torch, pandas and the
# modules built on them) is imported inside the functions that use it (start-up time).

#: above this many distance evaluations (N^2 + M^2 + N M) * D a progress bar is shown
_PROGRESS_WORK = 2e10


@click.command("metrics")
@quiet_option
@click.option("--real", "real_path", required=True, type=NonEmptyPath(path_type=Path),
              help="Real features (N x D): .npy, .npz or .safetensors; with --features, real volumes.")
@click.option("--fake", "fake_path", required=True, type=NonEmptyPath(path_type=Path),
              help="Fake (generated) features (M x D), same formats; with --features, fake volumes.")
@click.option("--features", "extractor_name", metavar="NAME", default=None,
              help="Feature extractor (forge list feature-extractor), e.g. cb3d: --real and --fake are then "
                   "volumes (a STAR file or a folder with one, a folder of .mrc files, an .npz bundle, one .mrc).")
@click.option("--feature-option", "feature_options", multiple=True, metavar="KEY=VALUE",
              help="Option for the extractor (repeatable; values read as TOML), e.g. checkpoint=runs/cb3d.")
@click.option("--save-features", "save_dir", type=NonEmptyPath(file_okay=False, path_type=Path), default=None,
              help="With --features: write real/fake.features.npy (and .probabilities.npy) to this folder.")
@click.option("--is-splits", "is_splits", type=int, default=None,
              help="With --features and an extractor giving class probabilities: Inception Score splits "
                   "[default: 10, at most the set size].")
@click.option("--k", "k", default=5, show_default=True, type=int, help="Neighbours for the PRDC radii.")
@click.option("--backend", default="exact", show_default=True,
              help="kNN backend (forge list knn-backend): exact, faiss, torch, or a plugin's.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where the kNN backend runs (exact: CPU only).")
@click.option("--strict/--inclusive", default=True, show_default=True,
              help="Ball membership: distance < radius (prdc's) or <= radius.")
@click.option("--fid/--no-fid", "with_fid", default=True, show_default=True, help="Also compute FID.")
@click.option("--bootstrap", default=0, show_default=True, type=int,
              help="Bootstrap resamples (0: none, else 50 to 100000) for the bias-corrected FID and its "
                   "95% confidence interval (basic bootstrap); the raw FID gets no interval.")
@click.option("--json", "json_path", type=NonEmptyPath(dir_okay=False, path_type=Path),
              help="Also write all values and diagnostics to this JSON file.")
@click.option("--progress/--no-progress", "show_progress", default=None,
              help="Progress bar on stderr (default: on long runs in a terminal).")
@click.option("--approximate", is_flag=True, default=False,
              help="Certified approximate PRDC for large sets: each value from --samples queries evaluated "
                   "exactly, with its interval (Clopper-Pearson; Student t for density). Needs FAISS.")
@click.option("--samples", default=1000, show_default=True, type=int,
              help="With --approximate: queries drawn from each set (all of them when the set is smaller).")
@click.option("--confidence", default=0.95, show_default=True, type=float,
              help="With --approximate: confidence level of the intervals.")
@click.option("--seed", default=0, show_default=True, type=int, help="With --approximate: seed of the query draws.")
def metrics_command(real_path, fake_path, extractor_name, feature_options, save_dir, is_splits, k, backend,
                    device, strict, with_fid, bootstrap, json_path, show_progress, approximate, samples,
                    confidence, seed) -> None:
    """Precision, recall, density, coverage (and FID, IS) of fake against real features or volumes."""
    _check_bootstrap(bootstrap)
    if k < 1:
        raise ConfigError(f"--k {k}: expected an integer >= 1 (neighbours for the PRDC radii)")
    _check_outputs(real_path, fake_path, json_path, save_dir)
    _check_approximate_options(approximate, backend, samples, confidence, seed)
    if approximate and extractor_name is not None:
        raise ConfigError("--approximate reads feature files: extract once (forge metrics --features NAME "
                          "--save-features DIR) and give the saved files to the approximate run")
    world = _distributed_world(approximate, backend, extractor_name)
    real, fake, extracted = _read_inputs(real_path, fake_path, k, extractor_name, feature_options, save_dir,
                                         is_splits)
    n, m, d = real.shape[0], fake.shape[0], real.shape[1]

    if show_progress is None:
        show_progress = progress.mode() == "bar" and (n * n + m * m + n * m) * d > _PROGRESS_WORK
    if approximate:
        _approximate_report(real, fake, real_path, fake_path, k, strict, samples, confidence, seed, with_fid,
                            bootstrap, json_path, bool(show_progress))
        return
    lead = world is None or world.rank == 0  # the first process reports; the others compute their share
    bundle = _exact_bundle(real, fake, extracted, world, k=k, backend=backend, device=device, strict=strict,
                           with_fid=with_fid and lead, bootstrap=bootstrap, is_splits=is_splits,
                           show_progress=bool(show_progress and lead))
    if not lead:
        return
    reliability = bundle_reliability(bundle)
    _print_exact_report(bundle, reliability, n, m, d, k, strict, extractor_name, extracted, save_dir, world)
    if json_path is not None:
        doc = _exact_json(bundle, reliability, real_path, fake_path, n, m, d, k, strict, extracted)
        _write_json(json_path, doc, bundle.fid, bundle.fid_seconds)


def _distributed_world(approximate: bool, backend: str, extractor_name: str | None) -> LauncherWorld | None:
    """This process's place when a launcher such as torchrun started it as one of several
    (``WORLD_SIZE`` > 1; the exact kernel's tiles are then split, and each process gets its part of
    the cores), else None; the options the distributed run does not take refused first."""
    world = launcher_world()
    if world.world_size <= 1:
        return None
    if approximate:
        raise ConfigError(f"--approximate under torchrun (WORLD_SIZE={world.world_size}): the approximate mode "
                          "runs in one process; start it without the launcher")
    if backend != "exact":
        raise ConfigError(f"under torchrun (WORLD_SIZE={world.world_size}) forge metrics splits the exact backend "
                          f"only; got --backend {backend}")
    if extractor_name is not None:
        raise ConfigError("--features under torchrun: extract once (forge metrics --features NAME "
                          "--save-features DIR) and give the saved feature files to the distributed run")
    # start-up: torch.distributed, only under a launcher
    from cryoet_forge.metrics import sharded

    sharded.share_threads(world.local_world_size)
    return world


def _read_inputs(real_path: Path, fake_path: Path, k: int, extractor_name: str | None, feature_options: tuple,
                 save_dir: Path | None, is_splits: int | None) -> tuple[Any, Any, dict | None]:
    """(real, fake, extracted): the two feature matrices, checked as a pair for ``k`` neighbours,
    read from the feature files or (``--features NAME``) extracted from the volumes; ``extracted``
    is ``_extract_features``'s result then, else None."""
    # start-up: numpy and the modules built on it, when the command runs
    from cryoet_forge.io.embeddings import load_features
    from cryoet_forge.metrics.prdc import validate_pair

    extracted = None
    if extractor_name is None:
        for flag, given in (("--feature-option", feature_options), ("--save-features", save_dir),
                            ("--is-splits", is_splits)):
            if given is not None and given != ():
                raise ConfigError(f"{flag} needs --features NAME (feature extraction from volumes)")
        for path in (real_path, fake_path):
            if path.is_dir():
                raise InputError(f"{path}: a folder, not a feature file (.npy, .npz, .safetensors); "
                                 "add --features NAME to extract features from its volumes")
        real = load_features(real_path)
        fake = load_features(fake_path)
    else:
        if is_splits is not None and is_splits < 1:
            raise ConfigError(f"--is-splits must be >= 1, got {is_splits}")
        extracted = _extract_features(extractor_name, feature_options, real_path, fake_path, save_dir)
        real, fake = extracted["real"].features, extracted["fake"].features
    try:
        real, fake = validate_pair(real, fake, k)
    except InputError as exc:  # say which file the problem is in
        message = str(exc).replace("real features", f"real features ({real_path})", 1)
        message = message.replace("fake features", f"fake features ({fake_path})", 1)
        raise InputError(message) from None
    return real, fake, extracted


def _exact_bundle(real, fake, extracted: dict | None, world: LauncherWorld | None, *, k: int, backend: str,
                  device: str, strict: bool, with_fid: bool, bootstrap: int, is_splits: int | None,
                  show_progress: bool):
    """The metric bundle of the exact (or a plugin's) kNN backend; under a launcher, this process's
    share of the exact kernel's tiles, in the job's process group."""
    # start-up: numpy and scipy, when the command runs
    from cryoet_forge.metrics.bundle import compute_bundle

    probabilities, sources = {}, {}
    if extracted is not None:
        probabilities = {which: extracted[which].probabilities for which in ("fake", "real")}
        sources = {which: str(extracted[which].source) for which in ("fake", "real")}
    engine: object = backend
    if world is not None:
        # start-up: torch.distributed, only under a launcher
        from cryoet_forge.metrics import sharded

        sharded.init_process_group()
        engine = sharded.ShardedExactKnn()
    try:
        with progress.stage("PRDC distances", 0, "tiles", enabled=show_progress) as bar:
            def callback(done: int, total: int) -> None:
                bar.update(done, total=total)

            return compute_bundle(real, fake, k=k, backend=engine, device=device, strict=strict, with_fid=with_fid,
                                  bootstrap=bootstrap, probabilities=probabilities,
                                  is_splits=10 if is_splits is None else is_splits, sources=sources,
                                  progress=callback if show_progress else None)
    finally:
        if world is not None:
            sharded.leave_process_group()


def _print_exact_report(bundle, reliability: dict[str, list[str]], n: int, m: int, d: int, k: int, strict: bool,
                        extractor_name: str | None, extracted: dict | None, save_dir: Path | None,
                        world: LauncherWorld | None) -> None:
    """The table of the exact run's metrics, and a line each on reliability, ball membership, FID's
    warnings and the extracted features."""
    # start-up: rich's console and table (tens of ms), when the command runs
    from rich.console import Console
    from rich.table import Table

    values, fid, scores = bundle.prdc, bundle.fid, bundle.inception

    def mark(key: str) -> str:
        return f"no: {rule_names(reliability[key])}" if reliability.get(key) else "yes"

    source = f", features={extractor_name}" if extracted is not None else ""
    processes = f" x {world.world_size} processes" if world is not None else ""
    table = Table(title=f"forge metrics: {n} real x {m} fake{source}, D={d}, k={k}, "
                        f"backend={bundle.backend}{processes}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("reliable")
    for name in ("precision", "recall", "density", "coverage"):
        table.add_row(name, f"{values[name]:.6f}", mark(name))
    if fid is not None:
        for label, value in _fid_rows(fid):
            table.add_row(label, value, mark("fid"))
    for which, score in scores.items():
        table.add_row(f"IS {which}", f"{score['mean']:.6f} (std {score['std']:.4f}, {score['splits']} splits)",
                      mark("inception_score" if which == "fake" else "inception_score_real"))
    Console(soft_wrap=True).print(table)
    _echo_reliability(reliability)
    rule = "distance < radius" if strict else "distance <= radius"
    click.echo(f"ball membership: {rule}; exact: {bundle.counts.exact}; PRDC {bundle.prdc_seconds:.2f} s")
    if fid is not None:
        for message in fid.warnings:
            click.echo(f"FID warning: {message}")
    if extracted is not None:
        info = extracted["info"]
        click.echo(f"features: {extractor_name}, {n} real + {m} fake volumes of {info['box']}^3, "
                   f"{info['seconds']:.2f} s" + (f"; saved in {save_dir}" if save_dir is not None else ""))


def _exact_json(bundle, reliability: dict[str, list[str]], real_path: Path, fake_path: Path, n: int, m: int, d: int,
                k: int, strict: bool, extracted: dict | None) -> dict:
    """The ``--json`` document of the exact run, less FID's values (``_write_json`` adds them)."""
    # start-up: numpy, when the command runs
    import numpy as np

    counts, values, scores = bundle.counts, bundle.prdc, bundle.inception
    doc = {
        "real": str(real_path), "fake": str(fake_path), "n_real": n, "n_fake": m, "dim": d, "k": k,
        "backend": bundle.backend, "strict": strict, "exact": counts.exact, **values,
        "counts": {
            "precision": counts.precision_count, "recall": counts.recall_count,
            "density": counts.density_count, "coverage": counts.coverage_count,
        },
        "prdc_info": counts.info, "prdc_seconds": bundle.prdc_seconds,
        "real_radius_median": float(np.median(counts.real_radii)),
        "fake_radius_median": float(np.median(counts.fake_radii)),
    }
    if extracted is not None:
        doc["features"] = extracted["info"]
        if scores:
            doc["inception_score"] = scores["fake"]["mean"]
            doc["inception_score_details"] = scores
    doc["reliability"] = reliability
    return doc


def _write_json(path: Path, doc: dict, fid, fid_seconds: float | None) -> None:
    """The ``--json`` document, with FID's values when it was computed, written atomically.

    ``fid`` is the raw FID; with a bootstrap, ``fid_bias_corrected`` and its interval
    ``fid_bias_corrected_ci`` (the interval of the corrected value, not of ``fid``)."""
    if fid is not None:
        doc.update(fid=fid.fid, fid_details=fid.as_dict(), fid_seconds=fid_seconds)
        if fid.fid_bias_corrected_ci is not None:
            doc.update(fid_bias_corrected=fid.fid_bias_corrected,
                       fid_bias_corrected_ci=list(fid.fid_bias_corrected_ci), fid_ci_level=fid.ci_level,
                       fid_bootstrap=fid.bootstrap)
    write_json_atomic(path, doc, default=_json_default)


def _fid_rows(fid) -> list[tuple[str, str]]:
    """(label, value) rows of FID: the raw value, and with a bootstrap the bias-corrected value with
    its own interval (labelled as the corrected value's; the raw value has none)."""
    rows = [("FID", f"{fid.fid:.6f}")]
    if fid.fid_bias_corrected_ci is not None and fid.ci_level is not None:
        low, high = fid.fid_bias_corrected_ci
        clipped = " (clipped at 0)" if fid.fid_bias_corrected_clipped else ""
        rows.append((f"FID bias-corrected{clipped}", f"{fid.fid_bias_corrected:.6f}"))
        rows.append((f"  its {round(fid.ci_level * 100)}% CI (basic bootstrap, {fid.bootstrap})",
                     f"[{low:.4f}, {high:.4f}]"))
    return rows


def _echo_reliability(reliability: dict[str, list[str]]) -> None:
    """One line per metric a reliability rule marks, each rule's sentence after it."""
    metrics_of: dict[str, list[str]] = {}
    for key, sentences in reliability.items():
        for sentence in sentences:
            metrics_of.setdefault(sentence, []).append(_METRIC_LABELS.get(key, key))
    for sentence, names in metrics_of.items():
        click.echo(f"unreliable {', '.join(names)}: {sentence}")


_METRIC_LABELS = {"fid": "FID", "inception_score": "IS fake", "inception_score_real": "IS real"}


def _check_bootstrap(bootstrap: int) -> None:
    """``--bootstrap`` is 0 or in [MIN_BOOTSTRAP, MAX_BOOTSTRAP]: one line otherwise, before any work."""
    # start-up: the FID module imports numpy and scipy
    from cryoet_forge.metrics.fid import MAX_BOOTSTRAP, MIN_BOOTSTRAP

    if bootstrap < 0:
        raise InputError(f"--bootstrap must be >= 0, got {bootstrap}")
    if bootstrap == 0:
        return
    if bootstrap < MIN_BOOTSTRAP:
        raise InputError(f"--bootstrap {bootstrap}: expected 0 (no interval) or at least {MIN_BOOTSTRAP} "
                         f"resamples; fewer put a 95% interval's ends at the one or two most extreme resamples")
    check_int_range(bootstrap, "--bootstrap", MIN_BOOTSTRAP, MAX_BOOTSTRAP, error=InputError)


def _check_outputs(real_path: Path, fake_path: Path, json_path: Path | None, save_dir: Path | None) -> None:
    """No output (``--json``, the files ``--save-features`` writes) may be one of the inputs, and
    each can be written (not a folder where a file goes, nothing under a file)."""
    inputs = [real_path, fake_path]
    if json_path is not None:
        check_output_target(json_path, folder=False, option="--json")
        check_not_an_input(json_path, inputs, "--json")
    if save_dir is not None:
        check_output_target(save_dir, folder=True, option="--save-features")
        for which in ("real", "fake"):
            for kind in ("features", "probabilities"):
                check_not_an_input(save_dir / f"{which}.{kind}.npy", inputs, "--save-features")


def _check_approximate_options(approximate: bool, backend: str, samples: int, confidence: float, seed: int) -> None:
    """One clear line for options of the approximate mode given without it, or given badly."""
    defaults = {"--samples": (samples, 1000), "--confidence": (confidence, 0.95), "--seed": (seed, 0)}
    if not approximate:
        for flag, (given, default) in defaults.items():
            if given != default:
                raise ConfigError(f"{flag} needs --approximate (it sets how the approximate mode samples)")
        return
    if backend != "exact":
        raise ConfigError(f"--approximate and --backend {backend}: the approximate mode has its own search "
                          "(FAISS to nominate, the exact kernel to check); leave --backend out")
    if samples < 2:
        raise InputError(f"--samples must be >= 2, got {samples}")
    if not 0.5 <= confidence < 1.0:
        raise InputError(f"--confidence must be in [0.5, 1), got {confidence}")


def _approximate_report(real, fake, real_path, fake_path, k, strict, samples, confidence, seed, with_fid,
                        bootstrap, json_path, show_progress) -> None:
    """``forge metrics --approximate``: the sampled PRDC with its intervals (and the exact FID)."""
    # start-up: numpy and rich's console and table, when the command runs
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    # start-up: numpy and scipy
    from cryoet_forge.metrics.approximate import approximate_prdc
    from cryoet_forge.metrics.fid import FIDWarning, fid_details

    n, m, d = real.shape[0], fake.shape[0], real.shape[1]
    started = time.perf_counter()
    with progress.stage("approximate PRDC", 0, "steps", enabled=show_progress) as bar:
        result = approximate_prdc(real, fake, k=k, strict=strict, samples=samples, confidence=confidence, seed=seed,
                                  progress=lambda done, total: bar.update(done, total=total))
    prdc_seconds = time.perf_counter() - started
    fid, fid_seconds = None, None
    if with_fid:
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FIDWarning)
            fid = fid_details(real, fake, bootstrap=bootstrap)
        fid_seconds = time.perf_counter() - started
    level = f"{round(confidence * 100)}%"
    table = Table(title=f"forge metrics --approximate: {n} real x {m} fake, D={d}, k={k}, "
                        f"{result.samples['fake']} fake and {result.samples['real']} real queries")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column(f"{level} interval", justify="right")
    table.add_column("interval")
    for name, est in result.estimates.items():
        table.add_row(name, f"{est.value:.6f}", f"[{est.low:.4f}, {est.high:.4f}]", est.method)
    if fid is not None:
        table.add_row("FID", f"{fid.fid:.6f}", "", "exact")
        ci = fid.fid_bias_corrected_ci
        if ci is not None and fid.ci_level is not None:
            clipped = " (clipped at 0)" if fid.fid_bias_corrected_clipped else ""
            table.add_row(f"FID bias-corrected{clipped}", f"{fid.fid_bias_corrected:.6f}",
                          f"[{ci[0]:.4f}, {ci[1]:.4f}]",
                          f"{round(fid.ci_level * 100)}% basic bootstrap, {fid.bootstrap} resamples")
    Console(soft_wrap=True).print(table)
    reliability = assess_metrics(n_real=n, n_fake=m, dim=d, fid=fid is not None, prdc=result.values())
    _echo_reliability(reliability)
    info = result.info
    rule = "distance < radius" if strict else "distance <= radius"
    scope = ("every query evaluated: the values are exact" if result.census else
             "each sampled query evaluated exactly; the intervals are the sampling error")
    click.echo(f"ball membership: {rule}; {scope}; PRDC {prdc_seconds:.2f} s "
               f"({info['exact_pairs_index'] + info['exact_pairs_queries']} exact distances, "
               f"{info['exact_radii']} exact radii)")
    if any(info["all_radii_exact"].values()):
        click.echo("note: the sampled queries needed more than a fifth of a set's radii, so all of them were "
                   "computed exactly (small sets, or variance in many directions); the exact backend (without "
                   "--approximate) is as fast or faster on these features")
    if json_path is not None:
        doc = {
            "real": str(real_path), "fake": str(fake_path), "n_real": n, "n_fake": m, "dim": d, "k": k,
            "backend": "approximate", "strict": strict, "exact": result.census, **result.values(),
            "intervals": {name: est.as_dict() for name, est in result.estimates.items()},
            "confidence": confidence, "samples": result.samples, "prdc_info": info, "prdc_seconds": prdc_seconds,
            "real_upper_radius_median": float(np.median(result.real_upper_radii)),
            "fake_upper_radius_median": float(np.median(result.fake_upper_radii)),
            "reliability": reliability,
        }
        _write_json(json_path, doc, fid, fid_seconds)


def _extract_features(name, option_items, real_path, fake_path, save_dir) -> dict:
    """{"real": ExtractedSet, "fake": ExtractedSet, "info": {...}}; features saved when asked."""
    # start-up: the classifier and the extractors import torch and numpy
    from cryoet_forge.classify import check_same_grid, load_volumes
    from cryoet_forge.metrics.features import create_extractor, extract_set, parse_feature_options

    options = parse_feature_options(option_items)
    extractor = create_extractor(name, options)
    real_volumes = load_volumes(real_path)
    fake_volumes = load_volumes(fake_path)
    check_same_grid(real_volumes, fake_volumes)
    started = time.perf_counter()
    sets = {which: extract_set(extractor, name, volumes, options)
            for which, volumes in (("real", real_volumes), ("fake", fake_volumes))}
    seconds = time.perf_counter() - started
    saved = {}
    if save_dir is not None:
        from cryoet_forge.io.embeddings import save_features  # start-up: numpy

        for which, extracted in sets.items():
            saved[f"{which}_features"] = str(save_features(save_dir / f"{which}.features.npy", extracted.features))
            if extracted.probabilities is not None:
                saved[f"{which}_probabilities"] = str(
                    save_features(save_dir / f"{which}.probabilities.npy", extracted.probabilities))
    info = {"extractor": name, "options": {key: _plain(value) for key, value in options.items()},
            "box": real_volumes.box, "voxel_size": real_volumes.voxel_size, "seconds": seconds, "saved": saved}
    return {**sets, "info": info}


def _plain(value):
    """A TOML value as JSON can hold it (dates and times as ISO text)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _json_default(value):
    import numpy as np  # start-up: numpy, when a document is written

    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

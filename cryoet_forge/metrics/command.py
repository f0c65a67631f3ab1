"""``forge metrics``: PRDC and FID of two feature files, as a table and optionally JSON."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from cryoet_forge.errors import InputError

#: above this many distance evaluations (N^2 + M^2 + N M) * D a progress bar is shown
_PROGRESS_WORK = 2e10


def _progress_bar(enabled: bool):
    """A rich progress bar on stderr and its callback, or (None, None) when disabled."""
    if not enabled:
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("PRDC distances"), BarColumn(), TextColumn("{task.completed}/{task.total} tiles"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True,
    )
    task = bar.add_task("prdc", total=None)

    def callback(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total or None)

    return bar, callback


@click.command("metrics")
@click.option("--real", "real_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Real features (N x D): .npy, .npz or .safetensors.")
@click.option("--fake", "fake_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Fake (generated) features (M x D), same formats.")
@click.option("--k", "k", default=5, show_default=True, type=int, help="Neighbours for the PRDC radii.")
@click.option("--backend", default="exact", show_default=True,
              help="kNN backend (forge list knn-backend): exact, faiss, torch, or a plugin's.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where the kNN backend runs (exact: CPU only).")
@click.option("--strict/--inclusive", default=True, show_default=True,
              help="Ball membership: distance < radius (prdc's) or <= radius.")
@click.option("--fid/--no-fid", "with_fid", default=True, show_default=True, help="Also compute FID.")
@click.option("--bootstrap", default=0, show_default=True, type=int,
              help="Bootstrap resamples for an FID 95% confidence interval (0: none).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write all values and diagnostics to this JSON file.")
@click.option("--progress/--no-progress", "show_progress", default=None,
              help="Progress bar on stderr (default: on long runs in a terminal).")
def metrics_command(real_path, fake_path, k, backend, device, strict, with_fid, bootstrap, json_path,
                    show_progress) -> None:
    """Precision, recall, density, coverage (and FID) of fake against real features."""
    import warnings

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from cryoet_forge.io.embeddings import load_features
    from cryoet_forge.metrics.fid import FIDWarning, fid_details
    from cryoet_forge.metrics.prdc import prdc_counts, resolve_backend, validate_pair

    if bootstrap < 0:
        raise InputError(f"--bootstrap must be >= 0, got {bootstrap}")
    real = load_features(real_path)
    fake = load_features(fake_path)
    try:
        real, fake = validate_pair(real, fake, k)
    except InputError as exc:  # say which file the problem is in
        message = str(exc).replace("real features", f"real features ({real_path})", 1)
        message = message.replace("fake features", f"fake features ({fake_path})", 1)
        raise InputError(message) from None
    engine = resolve_backend(backend, device)
    n, m, d = real.shape[0], fake.shape[0], real.shape[1]
    if show_progress is None:
        show_progress = sys.stderr.isatty() and (n * n + m * m + n * m) * d > _PROGRESS_WORK
    bar, callback = _progress_bar(show_progress)
    started = time.perf_counter()
    if bar is not None:
        with bar:
            counts = prdc_counts(real, fake, k, engine, strict, progress=callback)
    else:
        counts = prdc_counts(real, fake, k, engine, strict)
    prdc_seconds = time.perf_counter() - started
    values = counts.metrics()

    fid = None
    if with_fid:
        started = time.perf_counter()
        with warnings.catch_warnings(record=True):  # reported below from fid.warnings
            warnings.simplefilter("always", FIDWarning)
            fid = fid_details(real, fake, bootstrap=bootstrap)
        fid_seconds = time.perf_counter() - started

    table = Table(title=f"forge metrics: {n} real x {m} fake, D={d}, k={k}, backend={engine.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in ("precision", "recall", "density", "coverage"):
        table.add_row(name, f"{values[name]:.6f}")
    if fid is not None:
        table.add_row("FID", f"{fid.fid:.6f}")
        if fid.ci is not None:
            table.add_row(f"FID {int(fid.ci_level * 100)}% CI", f"[{fid.ci[0]:.4f}, {fid.ci[1]:.4f}]")
    Console(soft_wrap=True).print(table)
    rule = "distance < radius" if strict else "distance <= radius"
    click.echo(f"ball membership: {rule}; exact: {counts.exact}; PRDC {prdc_seconds:.2f} s")
    if fid is not None:
        for message in fid.warnings:
            click.echo(f"FID warning: {message}")

    if json_path is not None:
        from cryoet_forge.io.atomic import write_bytes_atomic

        doc = {
            "real": str(real_path), "fake": str(fake_path), "n_real": n, "n_fake": m, "dim": d, "k": k,
            "backend": engine.name, "strict": strict, "exact": counts.exact, **values,
            "counts": {
                "precision": counts.precision_count, "recall": counts.recall_count,
                "density": counts.density_count, "coverage": counts.coverage_count,
            },
            "prdc_info": counts.info, "prdc_seconds": prdc_seconds,
            "real_radius_median": float(np.median(counts.real_radii)),
            "fake_radius_median": float(np.median(counts.fake_radii)),
        }
        if fid is not None:
            doc["fid"] = fid.fid
            doc["fid_details"] = fid.as_dict()
            doc["fid_seconds"] = fid_seconds
        write_bytes_atomic(json_path, (json.dumps(doc, indent=2, default=_json_default) + "\n").encode())


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

"""The picking protocol: pickers trained on each source of labelled tomograms (traditional
synthetic, GAN-refined synthetic, the real training tomograms: the ceiling), one per seed, all
scored on the held-out real tomograms with the challenge's per-class precision, recall and
F-beta (:mod:`cryoet_forge.picking.score`); GAN minus traditional F-beta paired over seeds.

Verdict, as the classification protocol's: where the pickers trained on the real tomograms reach
an F-beta below ``margin`` the data cannot tell sources apart ("cannot-tell"); where those trained
on traditional and on GAN-refined tomograms both stay below it, neither source transfers
("neither-transfers"); otherwise the paired interval's outcome (``verdict.interval_outcome``) and
the GAN's share of the ceiling.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cryoet_forge import registry
from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.evaluate.stages import Stages, jsonable
from cryoet_forge.evaluate.verdict import confidence_interval, interval_outcome, paired_difference
from cryoet_forge.io.atomic import (
    atomic_folder,
    atomic_path,
    check_output_folder,
    write_bytes_atomic,
    write_json_atomic,
)
from cryoet_forge.picking.score import BETA, score_tomograms
from cryoet_forge.picking.tomograms import (
    LabelledTomogram,
    load_copick_tomograms,
    load_labelled_tomograms,
    tomogram_names,
)

# matplotlib is imported when the figure is drawn, with the Agg backend chosen first (start-up time).

#: the sources the protocol compares, in report order
REAL, TRADITIONAL, GAN = "real", "traditional", "gan"


def score_picker(picker: Any, test: Sequence[LabelledTomogram], radii_A: Mapping[str, float],
                 beta: float = BETA) -> dict[str, Any]:
    """A trained picker's scores over the ``test`` tomograms (radii in Angstrom; picks and truth
    compared in Angstrom so tomograms of different voxel sizes add up), with ``test_picks``: its
    picks on the first test tomogram, class -> (N, 3) (x, y, z) voxels (the report's figure)."""
    pairs = []
    shown: dict[str, np.ndarray] = {}
    for tomogram in test:
        found = picker.pick(tomogram.volume, tomogram.voxel_size)
        if not isinstance(found, Mapping):
            raise InputError(f"picker {type(picker).__name__} returned {type(found).__name__}; expected a "
                             f"mapping of class name to (N, 3) (x, y, z) voxel coordinates")
        found = {str(c): np.asarray(p, dtype=np.float64).reshape(-1, 3) for c, p in found.items()}
        shown = shown or found
        truth = {c: p * tomogram.voxel_size for c, p in tomogram.picks.items()}
        pairs.append((truth, {c: p * tomogram.voxel_size for c, p in found.items()}))
    return {**score_tomograms(pairs, radii_A, beta), "test_picks": shown}


#: stores one (source, seed) run: ``store(source, seed, compute)`` returns ``compute()``'s scores
#: or the same scores kept from an earlier run
RunStore = Callable[[str, int, Callable[[], dict[str, Any]]], dict[str, Any]]


def _compute(name: str, seed: int, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    return compute()


def picking_protocol(sources: Mapping[str, Sequence[LabelledTomogram]], test: Sequence[LabelledTomogram],
                     make_picker: Callable[[], Any], seeds: Sequence[int], margin: float = 0.1,
                     confidence: float = 0.95, beta: float = BETA,
                     log: Callable[[str], None] = lambda _: None, store: RunStore = _compute) -> dict[str, Any]:
    """Train ``make_picker()`` on each source for each seed and score it on ``test``.

    ``sources``: name -> training tomograms (any of "real", "traditional", "gan"; others are
    scored too). Returns per source and seed the scores (each with ``test_picks``, its picks on
    the first test tomogram), per source the mean F-beta and its interval, the paired
    GAN-minus-traditional difference and the verdict. ``store`` runs or reads back each source
    and seed (``forge evaluate-picking --resume``).
    """
    if not test:
        raise InputError("the picking protocol needs at least one held-out real tomogram")
    if not seeds:
        raise ConfigError("the picking protocol needs at least one seed")
    radii: dict[str, float] = {}
    for tomogram in test:
        radii.update(tomogram.radii_A)
    results: dict[str, Any] = {"seeds": [int(s) for s in seeds], "beta": beta, "sources": {}}
    for name, tomograms in sources.items():
        runs = []
        for seed in seeds:
            def compute(tomograms: Sequence[LabelledTomogram] = tomograms, seed: int = int(seed)) -> dict[str, Any]:
                return score_picker(make_picker().fit(list(tomograms), seed=seed), test, radii, beta)

            scores = store(name, int(seed), compute)
            log(f"picker trained on {name} (seed {seed}): F-beta {scores['fbeta']:.3f}")
            runs.append(scores)
        values = [r["fbeta"] for r in runs]
        mean, low, high = confidence_interval(values, confidence)
        results["sources"][name] = {"runs": runs, "fbeta": values, "mean": mean, "ci_low": low, "ci_high": high}
    results["verdict"] = picking_verdict(results["sources"], seeds, margin, confidence)
    if GAN in results["sources"] and TRADITIONAL in results["sources"]:
        results["paired"] = paired_difference(results["sources"][GAN]["fbeta"],
                                              results["sources"][TRADITIONAL]["fbeta"], seeds, confidence)
        results["verdict"]["outcome"] = (results["verdict"]["outcome"] or interval_outcome(results["paired"]))
    return results


def picking_verdict(sources: Mapping[str, Any], seeds: Sequence[int], margin: float,
                    confidence: float) -> dict[str, Any]:
    """``outcome`` "cannot-tell" when the real-trained pickers' mean F-beta is below ``margin``
    (else None: the paired interval decides), and the GAN's share of that ceiling."""
    verdict: dict[str, Any] = {"outcome": None, "margin": margin}
    if REAL in sources:
        ceiling = float(sources[REAL]["mean"])
        verdict["ceiling"] = ceiling
        if ceiling < margin:
            verdict["outcome"] = "cannot-tell"
            verdict["reason"] = (f"pickers trained on the real tomograms reach F-beta {ceiling:.3f}, below "
                                 f"{margin:g}: these data cannot tell the sources apart")
        elif GAN in sources:
            verdict["gan_share_of_ceiling"] = float(sources[GAN]["mean"]) / ceiling
    synthetic = [float(sources[name]["mean"]) for name in (TRADITIONAL, GAN) if name in sources]
    if verdict["outcome"] is None and len(synthetic) == 2 and max(synthetic) < margin:
        verdict["outcome"] = "neither-transfers"
        verdict["reason"] = (f"pickers trained on traditional ({synthetic[0]:.3f}) and on GAN-refined tomograms "
                             f"({synthetic[1]:.3f}) both stay below F-beta {margin:g} on the real test tomograms: "
                             "their difference is between two failures")
    return verdict


# -- forge evaluate-picking: the protocol on files ------------------------------------------------

#: what ``forge evaluate-picking`` writes into its output folder
OUTPUT_NAMES = ("results.json", "report.md", "picks.png")
#: where each source and seed's scores are kept as they finish (``--resume``)
STAGES = "stages"


def synthetic_source(folder: str | os.PathLike, radii_A: Mapping[str, float],
                     tomograms: str | os.PathLike | None = None) -> list[LabelledTomogram]:
    """The labelled tomograms of a ``forge simulate-tomogram`` folder (its particles.star), read
    from its tomograms/ or, for refined ones, from ``tomograms`` (``forge refine-tomogram``'s
    output: the same names)."""
    folder = Path(folder)
    table = folder / "particles.star"
    if not table.is_file():
        raise InputError(f"{folder}: no particles.star; expected a forge simulate-tomogram output folder")
    names = tomogram_names(table)
    return load_labelled_tomograms(table, tomograms or folder / "tomograms", names, radii_A)


def _slice_figure(path: Path, tomogram: LabelledTomogram, found: Mapping[str, np.ndarray], title: str) -> None:
    """The central z slice (a 5-slice average) with the true centres within 3 slices (circles) and
    the picks there (crosses), one colour per class."""
    # start-up: matplotlib (about 0.4 s) only when the figure is drawn, its Agg backend chosen before pyplot loads
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # start-up: as above, after the backend is chosen

    z = tomogram.volume.shape[0] // 2
    image = tomogram.volume[max(z - 2, 0):z + 3].mean(0)
    fig, ax = plt.subplots(figsize=(7, 7 * image.shape[0] / max(image.shape[1], 1) + 0.5))
    ax.imshow(image, cmap="gray", origin="lower")
    colours = plt.get_cmap("tab10")
    for i, name in enumerate(sorted(tomogram.picks)):
        truth = tomogram.picks[name]
        near = truth[np.abs(truth[:, 2] - z) <= 3]
        ax.scatter(near[:, 0], near[:, 1], s=80, facecolors="none", edgecolors=[colours(i)], label=f"{name} true")
        picks = np.asarray(found.get(name, np.zeros((0, 3)))).reshape(-1, 3)
        close = picks[np.abs(picks[:, 2] - z) <= 3]
        ax.scatter(close[:, 0], close[:, 1], s=40, marker="x", c=[colours(i)], label=f"{name} picked")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, loc="upper right", ncol=2)
    ax.set_axis_off()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def report_text(results: Mapping[str, Any]) -> str:
    """report.md: the verdict, then each source's F-beta with its interval and per-class scores."""
    verdict = results["verdict"]
    lines = ["# Picking evaluation", "",
             f"Pickers ({results['picker']}) trained on each source, {len(results['seeds'])} seeds "
             f"({', '.join(map(str, results['seeds']))}), scored on the held-out real tomograms "
             f"({', '.join(results['test_tomograms'])}): F-beta with beta = {results['beta']:g}, a pick "
             "counting within 0.5 x the particle radius of a true centre (the CZ Imaging Institute "
             "challenge's scoring).", ""]
    outcome = verdict.get("outcome") or "no comparison (GAN or traditional source missing)"
    lines.append(f"**Verdict: {outcome}.** " + verdict.get("reason", ""))
    if "paired" in results:
        p = results["paired"]
        lines.append(f"GAN minus traditional F-beta: {p['mean']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}] "
                     f"({p['confidence']:.0%} t-interval over {p['n']} paired seeds; GAN ahead in {p['gan_wins']}).")
    if "gan_share_of_ceiling" in verdict:
        lines.append(f"The GAN-trained pickers reach {verdict['gan_share_of_ceiling']:.2f} x the F-beta of those "
                     f"trained on the real tomograms.")
    lines += ["", "| source | mean F-beta | 95% interval | per seed |", "|---|---|---|---|"]
    for name, source in results["sources"].items():
        lines.append(f"| {name} | {source['mean']:.3f} | [{source['ci_low']:.3f}, {source['ci_high']:.3f}] | "
                     f"{', '.join(f'{v:.3f}' for v in source['fbeta'])} |")
    lines += ["", "Per class (first seed): precision / recall / F-beta", ""]
    classes = sorted({c for s in results["sources"].values() for c in s["runs"][0]["classes"]})
    lines += ["| source | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for name, source in results["sources"].items():
        cells = [source["runs"][0]["classes"].get(c) for c in classes]
        lines.append(f"| {name} | " + " | ".join(f"{c['precision']:.2f} / {c['recall']:.2f} / {c['fbeta']:.2f}"
                                                for c in cells if c) + " |")
    lines += ["", "![picks](picks.png)", ""]
    return "\n".join(lines)


def load_real_tomograms(real: Mapping[str, Any]) -> tuple[list[LabelledTomogram], list[LabelledTomogram]]:
    """The real training and test tomograms (none where no names are given), from a pick table and a
    folder or from a copick project."""
    if real.get("copick") is not None:
        load = {key: real.get(key) for key in ("radii_A", "voxel_spacing", "user_id", "session_id")}
        tomo_type = real.get("tomo_type") or "wbp"
        train, test = (load_copick_tomograms(real["copick"], real[part], tomo_type=tomo_type, **load)
                       if real[part] else [] for part in ("train", "test"))
        return train, test
    radii = dict(real["radii_A"])
    options = dict(unit=real.get("unit"), class_column=real.get("class_column"))
    return (load_labelled_tomograms(real["picks"], real["tomograms"], real["train"], radii, **options),
            load_labelled_tomograms(real["picks"], real["tomograms"], real["test"], radii, **options))


def _digest(array: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(array).view(np.uint8).data, digest_size=16).hexdigest()


def describe_tomograms(tomograms: Sequence[LabelledTomogram]) -> list[dict[str, Any]]:
    """What a picker's result depends on in its tomograms: names, voxel sizes, radii and digests
    of the volumes and picks (so a resumed run reuses a picker only for the same data)."""
    return [{"name": t.name, "voxel_size": t.voxel_size, "volume": _digest(t.volume), "radii_A": t.radii_A,
             "picks": {c: _digest(p) for c, p in sorted(t.picks.items())}} for t in tomograms]


def stage_store(out: str | os.PathLike, resume: bool, picker: str, picker_options: Mapping[str, Any],
                sources: Mapping[str, Sequence[LabelledTomogram]], test: Sequence[LabelledTomogram],
                log: Callable[[str], None]) -> RunStore:
    """Each source and seed's scores kept in ``out/stages/picker-SOURCE-seedN`` as it finishes;
    with ``resume`` one whose picker, options, seed and tomograms are unchanged is read back."""
    stages = Stages(Path(out), resume, log)
    described = {name: describe_tomograms(tomograms) for name, tomograms in sources.items()}
    tested = describe_tomograms(test)

    def store(name: str, seed: int, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        inputs = {"picker": picker, "options": dict(picker_options), "seed": seed, "train": described[name],
                  "test": tested}
        return stages.run(f"picker-{name}-seed{seed}", jsonable(inputs), compute)

    return store


def run_picking_evaluation(out: str | os.PathLike, real: Mapping[str, Any], synthetic: str | os.PathLike | None,
                           refined: str | os.PathLike | None, picker: str, picker_options: Mapping[str, Any],
                           seeds: Sequence[int], margin: float = 0.1, overwrite: bool = False,
                           log: Callable[[str], None] = lambda _: None, resume: bool = False) -> dict[str, Any]:
    """``real``: ``train`` and ``test`` (tomogram or run names) and either ``picks``, ``tomograms``,
    ``radii_A`` and optional ``unit`` and ``class_column``, or ``copick`` (a project's configuration
    file) with optional ``radii_A`` (default: the project's), ``tomo_type``, ``voxel_spacing``,
    ``user_id`` and ``session_id``. ``synthetic``: a ``forge simulate-tomogram`` folder
    (the traditional source); ``refined``: its tomograms refined by ``forge refine-tomogram``
    (the GAN source). Writes results.json, report.md and picks.png into ``out``, and each
    picker's scores into ``out/stages`` as it finishes (``resume`` reads back the unchanged ones)."""

    if refined is not None and synthetic is None:
        raise InputError("--refined needs --synthetic (the refined tomograms take its picks)")
    registry.create("picker", picker, **picker_options)  # options checked before any work
    train, test = load_real_tomograms(real)
    radii = {c: r for t in train + test for c, r in t.radii_A.items()}
    sources: dict[str, list[LabelledTomogram]] = {REAL: train}
    if synthetic is not None:
        sources[TRADITIONAL] = synthetic_source(synthetic, radii)
        if refined is not None:
            sources[GAN] = synthetic_source(synthetic, radii, refined)
    classes = {c for t in test for c in t.picks}
    for name, tomograms in sources.items():
        extra = sorted({c for t in tomograms for c in t.picks} - classes)
        if extra:
            raise InputError(f"the {name} tomograms have class(es) {', '.join(extra)} that the test tomograms do not "
                             f"have ({', '.join(sorted(classes))})")
    existing = check_output_folder(out, (*OUTPUT_NAMES, STAGES), "a picking evaluation", True)
    if existing and not (overwrite or resume):
        raise ConfigError(f"{out} already holds a picking evaluation ({', '.join(existing)}); pass --resume to reuse "
                          "the pickers it finished, --overwrite to start again, or choose another --out")
    results = picking_protocol(sources, test, lambda: registry.create("picker", picker, **picker_options), seeds,
                               margin=margin, log=log,
                               store=stage_store(out, resume, picker, picker_options, sources, test, log))
    shown = GAN if GAN in sources else REAL
    found = results["sources"][shown]["runs"][0]["test_picks"]
    for source in results["sources"].values():
        for run in source["runs"]:
            run.pop("test_picks")
    results.update(picker=picker, picker_options=dict(picker_options), test_tomograms=[t.name for t in test],
                   train_tomograms={k: [t.name for t in v] for k, v in sources.items()})
    with atomic_folder(out, stale=tuple(name for name in existing if name != STAGES)) as work:
        write_json_atomic(work / "results.json", results)
        write_bytes_atomic(work / "report.md", report_text(results).encode())
        _slice_figure(work / "picks.png", test[0], found,
                      f"{test[0].name}: picks (x) of a picker trained on {shown} (seed {seeds[0]}); true centres (o)")
    return results

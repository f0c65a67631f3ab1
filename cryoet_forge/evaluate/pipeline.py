"""``forge evaluate``: the paper's protocol end to end.

1. CB3D trained on the real training split is the "Inception network".
2. IS of generated data; FID and PRDC of generated vs real test features (metrics engine),
   for traditional simulation and for the GAN side by side (and the real test split's own IS).
3. Downstream: CB3D trained on traditional vs GAN volumes (same count, same classes) per seed,
   tested on the real test split; mean accuracy with a t-interval over seeds.
4. Ablations from the config: density-map noise std values, lsgan, patchgan critic.
5. report.md, results.json, PNG figures; the features behind every metric under features/.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cryoet_forge.classify import (
    ClassificationResult,
    ClassifierOptions,
    LabelledVolumes,
    evaluate_cb3d,
    train_cb3d,
    write_json,
)
from cryoet_forge.errors import ForgeError, InputError
from cryoet_forge.evaluate import figures
from cryoet_forge.evaluate.config import EvaluationConfig, traditional_acquisition
from cryoet_forge.evaluate.datasets import EvaluationData, prepare_data, write_labelled_folder
from cryoet_forge.evaluate.downstream import (
    CB3D_KIND,
    DownstreamResult,
    resolve_workers,
    score_sources,
    train_on_synthetic_test_on_real,
)
from cryoet_forge.evaluate.gan import generate_labelled, run_checkpoints, train_gan
from cryoet_forge.models.cb3d import CB3D, normalize_volumes, run_inference, save_cb3d
from cryoet_forge.viz import save_slice_montage

Log = Callable[[str], None]


def classifier_options(config: EvaluationConfig) -> ClassifierOptions:
    c = config.classifier
    device = c.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return ClassifierOptions(**{**dataclasses.asdict(c), "device": device})


class InceptionNet:
    """The CB3D trained on real data, used to embed every set the same way (features + probabilities)."""

    kind = CB3D_KIND

    def __init__(self, model: CB3D, class_names: list[str], normalize: str, device: str, feature_dir: Path):
        self.model, self.class_names, self.normalize, self.device = model, class_names, normalize, device
        self.feature_dir = feature_dir

    def infer(self, volumes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(features (N, D), class probabilities (N, C))."""
        return run_inference(self.model, volumes, self.normalize, device=self.device)

    def embed(self, name: str, data: LabelledVolumes) -> tuple[np.ndarray, np.ndarray]:
        from cryoet_forge.io.embeddings import save_features

        features, probs = self.infer(data.volumes)
        save_features(self.feature_dir / f"{name}.features.npy", features)  # atomic, like every output
        save_features(self.feature_dir / f"{name}.probabilities.npy", probs)
        return features, probs


class ClassifierInception(InceptionNet):
    """Another classifier kind as the inception network: one with ``features(volumes)``, fitted on
    the real training split with the data seed (refitted, not stored: the same data and seed give
    the same model, the ``Classifier`` contract)."""

    def __init__(self, kind: str, classifier: Any, class_names: list[str], feature_dir: Path):
        self.kind, self.classifier, self.class_names, self.feature_dir = kind, classifier, class_names, feature_dir

    def infer(self, volumes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(self.classifier.features(volumes), dtype=np.float32),
                np.asarray(self.classifier.probabilities(volumes), dtype=np.float32))


def inception_candidates(config: EvaluationConfig) -> list[str]:
    """The kinds ``metrics.inception`` may choose: cb3d and each downstream kind with ``features``."""
    from cryoet_forge.registry import create

    if config.metrics.inception != "best":
        return [config.metrics.inception]
    kinds = [CB3D_KIND]
    for kind in config.downstream.classifiers:
        if kind != CB3D_KIND and callable(getattr(create("classifier", kind, **config.downstream.classifier_options.get(
                kind, {})), "features", None)):
            kinds.append(kind)
    return kinds


def fitted_classifier(config: EvaluationConfig, kind: str, train: LabelledVolumes) -> Any:
    """Classifier ``kind`` (its ``[downstream] classifier_options``) fitted on ``train`` with the data seed."""
    from cryoet_forge.registry import create

    classifier = create("classifier", kind, **config.downstream.classifier_options.get(kind, {}))
    classifier.fit(train, config.data.seed)
    return classifier


def quality_metrics(real_features: np.ndarray, features: np.ndarray, probs: np.ndarray,
                    config: EvaluationConfig) -> dict[str, Any]:
    """IS of ``probs``; FID and PRDC of ``features`` against the real test features (the metric
    bundle of ``forge metrics``, with the [metrics] settings)."""
    from cryoet_forge.metrics.bundle import PRDC_NAMES, compute_bundle

    m = config.metrics
    bundle = compute_bundle(real_features, features, k=m.k, backend=m.backend, probabilities={"fake": probs},
                            is_splits=m.is_splits)
    # small sets have singular covariances (N < D): the engine notes it; keep its notes with the number
    assert bundle.fid is not None
    return {"is_mean": bundle.inception["fake"]["mean"], "is_std": bundle.inception["fake"]["std"],
            "fid": float(bundle.fid.fid), **{key: float(bundle.prdc[key]) for key in PRDC_NAMES},
            "fid_notes": sorted({message.split(" (")[0] for message in bundle.fid.warnings}),
            "n_real": bundle.n_real, "n_fake": bundle.n_fake, "dim": bundle.dim}


def downstream_inputs(config: EvaluationConfig) -> dict[str, Any]:
    """What the downstream scores depend on: ``[downstream]`` without ``workers`` (any count >= 1
    gives the same scores), with whether the classifiers run in worker processes (single-threaded;
    never on CUDA, see ``resolve_workers``)."""
    table = {key: value for key, value in dataclasses.asdict(config.downstream).items() if key != "workers"}
    in_workers = resolve_workers(config.downstream.workers, 1, classifier_options(config).device) > 0
    return {**table, "in_workers": in_workers}


def _per_class_rows(data: LabelledVolumes, per_class: int) -> list[np.ndarray]:
    row: list[np.ndarray] = []
    for label in range(len(data.class_names)):
        index = np.where(data.labels == label)[0][:per_class]
        row.extend(data.volumes[i] for i in index)
    return row


def _stamps(*paths: Path | None) -> list[list[Any]]:
    """(path, size, mtime) of the given files, or of every file in the given folders: a read
    input that changed on disk changes the key of the stage that read it."""
    rows: list[list[Any]] = []
    for path in paths:
        if path is None or not path.exists():
            continue
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        rows.extend([str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files[:10000])
    return rows


def _data_inputs(config: EvaluationConfig) -> dict[str, Any]:
    from cryoet_forge.evaluate.datasets import resolve_maps_dir

    d = config.data
    read = [resolve_maps_dir(d.maps_dir)]
    if d.source == "folders":
        read += [Path(d.real_train).parent, Path(d.real_test).parent]
    if d.source == "copick" and d.copick.get("config"):
        read.append(Path(str(d.copick["config"])))
    if d.source == "picks":
        read += [resolve_maps_dir(d.picks), resolve_maps_dir(d.tomograms)]
    return {"data": dataclasses.asdict(d), "experimental": dataclasses.asdict(config.experimental),
            "traditional": dataclasses.asdict(config.traditional), "gan.input": config.gan.input,
            "downstream.n_per_class": config.downstream.n_per_class, "files": _stamps(*read)}


def _gan_inputs(config: EvaluationConfig, data: EvaluationData, variant: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """What a GAN run depends on: its whole TrainConfig (the [gan] file read), and the classifier
    rule when the semantic loss trains a classifier for it."""
    from cryoet_forge.evaluate.gan import train_config_for

    if config.gan.run and variant is None:
        run = Path(config.gan.run)
        return {"run": str(run), "files": _stamps(run / "config.toml", run / "checkpoints")}
    cfg = train_config_for(config, data.density_star, data.real_train_star, variant).to_dict()
    inputs: dict[str, Any] = {"train": cfg}
    if cfg["loss"]["semantic_weight"] > 0 and not cfg["loss"]["semantic_classifier"]:
        inputs["classifier"] = dataclasses.asdict(config.classifier)
    return inputs


#: the stages of one evaluation, in order (``results.json`` "timings_s" names them the same way)
STAGES = ("data", "inception", "gan", "generation", "metrics", "downstream", "classifiers", "verdict", "curves",
          "ablations", "uncertainty", "report")


#: the folders ``run_evaluation`` makes in OUT before the first stage
SKELETON = ("data", "features", "figures", "runs", "models")


def run_evaluation(config: EvaluationConfig, out_dir: str | Path, log: Log = print,
                   budget: dict[str, Any] | None = None, cache_dir: Path | None = None,
                   resume: bool = False) -> Path:
    """``_run_evaluation``; when it fails, the folders it made that hold no file yet are removed
    again (a bad input leaves no empty folder skeleton; nothing written is ever removed)."""
    out = Path(out_dir)
    made = [folder for folder in (out, *(out / sub for sub in SKELETON)) if not folder.exists()]
    while made and made[0] == out and not out.parent.exists() and out.parent != out:
        out = out.parent
        made.insert(0, out)
    try:
        return _run_evaluation(config, out_dir, log, budget, cache_dir, resume)
    except BaseException:
        import shutil

        for folder in reversed(made):
            if folder.is_dir() and not folder.is_symlink() and not any(
                    p.is_file() or p.is_symlink() for p in folder.rglob("*")):
                shutil.rmtree(folder, ignore_errors=True)
        raise


def _run_evaluation(config: EvaluationConfig, out_dir: str | Path, log: Log = print,
                    budget: dict[str, Any] | None = None, cache_dir: Path | None = None,
                    resume: bool = False) -> Path:
    """Run the whole protocol, stage by stage (``STAGES``); returns the path of report.md.

    Each stage stores its result under ``OUT/stages`` (``cryoet_forge.evaluate.stages``). With
    ``resume``, stages whose inputs and configuration are unchanged are read back and the rest
    computed; without it an ``OUT`` that holds a trained GAN is an error.
    ``budget``: the record of ``budget.fit_to_budget`` that scaled ``config`` (kept in the results).
    ``cache_dir``: where downstream scores are kept by content digest and read back (the suite).
    """
    from cryoet_forge.evaluate.stages import Stages
    from cryoet_forge.models.cb3d import load_cb3d

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for sub in SKELETON:
        (out / sub).mkdir(exist_ok=True)
    started = time.perf_counter()
    stages = Stages(out, resume, log)
    options = classifier_options(config)
    seeds = [int(s) for s in config.downstream.seeds]
    classifier = {"classifier": dataclasses.asdict(config.classifier), "device": options.device,
                  "seed": config.data.seed}
    main_run = Path(config.gan.run) if config.gan.run else out / "runs" / "cryoetgan"
    if not resume and not config.gan.run:
        from cryoet_forge.train.checkpoint import list_checkpoints

        if list_checkpoints(main_run):  # say so now, not after the data and the inception network
            raise InputError(f"{out}: holds an earlier evaluation ({main_run} has checkpoints); rerun with "
                             "--resume to reuse its finished stages, or pick a new --out")

    # -- data ---------------------------------------------------------------------------
    def data_stage() -> EvaluationData:
        data = prepare_data(config, out / "data", log)
        write_labelled_folder(out / "data" / "real_test", data.real_test)
        return data

    data = stages.run("data", _data_inputs(config), data_stage)
    class_names = data.class_names

    # -- inception network ------------------------------------------------------------------
    built: dict[str, InceptionNet] = {}  # the network the stage built, when it ran here

    def inception_stage() -> dict[str, Any]:
        from cryoet_forge.classify import score_probabilities, validation_split

        log(f"training the inception CB3D on the real training split ({len(data.real_train)} volumes)")
        trained, history = train_cb3d(data.real_train, options, seed=config.data.seed,
                                      label="inception CB3D (real training split)")
        folder = out / "models" / "inception"
        save_cb3d(trained, folder, class_names, normalize=options.normalize,
                  extra={"voxel_size": data.voxel_size, "training": {"data": "real train split",
                                                                     "loss": history.loss}})
        net = InceptionNet(load_cb3d(folder, device=options.device)[0], class_names, options.normalize,
                           options.device, out / "features")
        on_test = evaluate_cb3d(net.model, data.real_test, class_names, options.normalize, device=options.device)
        # which network embeds every set for FID, PRDC and IS: the best on the real validation part
        validation: dict[str, float] = {}
        if history.best_epoch:
            validation[CB3D_KIND] = float(history.val_accuracy[history.best_epoch - 1])
        kinds = inception_candidates(config)
        if kinds != [CB3D_KIND]:
            fit_index, val_index = validation_split(data.real_train.labels, options.validation_fraction,
                                                    config.data.seed)
            if len(val_index):
                part, held_out = data.real_train.subset(fit_index), data.real_train.subset(val_index)
                for kind in kinds:
                    if kind != CB3D_KIND:
                        probs = fitted_classifier(config, kind, part).probabilities(held_out.volumes)
                        validation[kind] = score_probabilities(probs, held_out, class_names).accuracy
        chosen = (kinds[0] if len(kinds) == 1 else
                  max(kinds, key=lambda k: (validation.get(k, -1.0), k == CB3D_KIND)))
        if chosen != CB3D_KIND:
            net = ClassifierInception(chosen, fitted_classifier(config, chosen, data.real_train), class_names,
                                      out / "features")
            log(f"inception network: {chosen} (real validation part: "
                + ", ".join(f"{k} {v:.3f}" for k, v in validation.items()) + ")")
        real_features, real_probs = net.embed("real_test", data.real_test)
        train_features, _ = net.infer(data.real_train.volumes)
        built["net"] = net
        chosen_on_test = score_probabilities(real_probs, data.real_test, class_names)
        return {"model": folder, "on_test": on_test, "real_features": real_features, "real_probs": real_probs,
                "train_features": train_features, "chosen": chosen, "validation": validation,
                "chosen_on_test": chosen_on_test}

    stage = stages.run("inception", {"data": stages.key("data"), **classifier,
                                     "inception": config.metrics.inception,
                                     "candidates": {k: config.downstream.classifier_options.get(k, {})
                                                    for k in config.downstream.classifiers}}, inception_stage)
    if "net" in built:  # computed just now: no second fit
        inception = built["net"]
    elif stage["chosen"] == CB3D_KIND:
        inception = InceptionNet(load_cb3d(stage["model"], device=options.device)[0], class_names,
                                               options.normalize, options.device, out / "features")
    else:
        inception = ClassifierInception(stage["chosen"], fitted_classifier(config, stage["chosen"], data.real_train),
                                        class_names, out / "features")
    inception_on_test = stage["on_test"]  # CB3D trained on the real split: cb3d's ceiling
    metric_network = {"kind": stage["chosen"], "validation_accuracy": stage["validation"],
                      "real_test": stage["chosen_on_test"].summary()}
    real_features, real_probs, train_features = stage["real_features"], stage["real_probs"], stage["train_features"]

    # -- main GAN -----------------------------------------------------------------------------
    def gan_stage() -> dict[str, Any]:
        if config.gan.run:
            log(f"using the trained GAN run {main_run}")
            run = main_run
        else:
            run = train_gan(config, main_run, data.density_train, data.real_train, data.density_star,
                            data.real_train_star, log=log, resume=resume)
        return {"run": run, "summary": gan_summary(run)}

    stage = stages.run("gan", {"data": stages.key("data"), **_gan_inputs(config, data)}, gan_stage)
    run_dir, summary = stage["run"], stage["summary"]

    # -- generation (the checkpoint the rule picks) -------------------------------------------
    def generation_stage() -> dict[str, Any]:
        # inception outputs of the curve checkpoints already generated during the selection, so
        # the curves stage does not generate and embed them a second time
        cache: dict[Path, tuple[np.ndarray, np.ndarray]] = {}
        volumes, chosen = select_and_generate(config, run_dir, data, inception, train_features, "CryoETGAN",
                                              curve_cache=cache)
        # both synthetic sets on disk in the labelled-folder format, for `forge classify` / inspection
        write_labelled_folder(out / "data" / "traditional", data.traditional)
        write_labelled_folder(out / "data" / "cryoetgan", volumes)
        return {"volumes": volumes, "checkpoint": chosen,
                "curve_cache": [[path, features, probs] for path, (features, probs) in cache.items()]}

    stage = stages.run("generation", {"gan": stages.key("gan"), "inception": stages.key("inception"),
                                      "select_checkpoint": config.gan.select_checkpoint,
                                      "curve_points": config.gan.curve_points}, generation_stage)
    gan, gan_checkpoint = stage["volumes"], stage["checkpoint"]
    curve_cache = {Path(path): (features, probs) for path, features, probs in stage["curve_cache"]}
    metric_config = {"metrics": {k: v for k, v in dataclasses.asdict(config.metrics).items()
                                 if k != "reliability_margin"}}

    # -- metrics ---------------------------------------------------------------------------------
    def metrics_stage() -> dict[str, Any]:
        from cryoet_forge.metrics.bundle import inception_scores

        traditional_features, traditional_probs = inception.embed("traditional", data.traditional)
        gan_features, gan_probs = inception.embed("cryoetgan", gan)
        real_is = inception_scores({"real": real_probs}, config.metrics.is_splits)["real"]
        return {"real_is": [real_is["mean"], real_is["std"]], "quality": {
            "traditional": quality_metrics(real_features, traditional_features, traditional_probs, config),
            "cryoetgan": quality_metrics(real_features, gan_features, gan_probs, config)}}

    stage = stages.run("metrics", {"generation": stages.key("generation"), **metric_config}, metrics_stage)
    quality, real_is = stage["quality"], stage["real_is"]

    # -- downstream ------------------------------------------------------------------------------
    def downstream_stage() -> dict[str, DownstreamResult]:
        log(f"downstream: CB3D on traditional vs GAN data ({config.downstream.n_per_class} per class, "
            f"seeds {seeds})")
        return score_sources({"traditional": data.traditional, "cryoetgan": gan}, data.real_test, class_names,
                             options, seeds, config.downstream.confidence, log, cache_dir=cache_dir,
                             workers=config.downstream.workers)

    downstream = stages.run("downstream", {"generation": stages.key("generation"), **classifier,
                                           "downstream": downstream_inputs(config)}, downstream_stage)

    # -- the other classifier kinds: each on the real training split, traditional and GAN data --
    others = [kind for kind in config.downstream.classifiers if kind != CB3D_KIND]

    def classifiers_stage() -> dict[str, dict[str, DownstreamResult]]:
        by_kind = {}
        for kind in others:
            log(f"downstream: {kind} on the real training split, traditional and GAN data (seeds {seeds})")
            by_kind[kind] = score_sources(
                {"real": data.real_train, "traditional": data.traditional, "cryoetgan": gan}, data.real_test,
                class_names, options, seeds, config.downstream.confidence, log, cache_dir=cache_dir,
                workers=config.downstream.workers, kind=kind,
                kind_options=config.downstream.classifier_options.get(kind, {}))
        return by_kind

    by_kind = stages.run("classifiers", {"generation": stages.key("generation"), "classifiers": others,
                                         "options": config.downstream.classifier_options,
                                         "downstream": downstream_inputs(config)}, classifiers_stage)

    # -- what the evaluation can say: chance, the real ceiling, a simple baseline, paired seeds --
    def verdict_stage() -> dict[str, Any]:
        from cryoet_forge.evaluate.baseline import radial_baseline
        from cryoet_forge.evaluate.verdict import assess, assess_classifier, chance_level, paired_difference

        chance = chance_level(data.real_test.labels, len(class_names))
        baseline = radial_baseline(data.real_train, data.real_test, seed=config.data.seed)
        margin = config.metrics.reliability_margin
        paired = paired_difference(downstream["cryoetgan"].accuracies, downstream["traditional"].accuracies,
                                   seeds, config.downstream.confidence)
        verdict = assess(inception_on_test.accuracy, chance, margin, paired, baseline.accuracy,
                         metric_network["real_test"]["accuracy"], metric_network["kind"])
        # one answer per classifier kind; cb3d's real ceiling is the inception network (one seed)
        verdict["by_classifier"] = {CB3D_KIND: assess_classifier(
            CB3D_KIND, inception_on_test.accuracy, chance, margin, paired, baseline.accuracy,
            (downstream["traditional"].mean, downstream["cryoetgan"].mean))}
        for kind, scores in by_kind.items():
            kind_paired = paired_difference(scores["cryoetgan"].accuracies, scores["traditional"].accuracies,
                                            seeds, config.downstream.confidence)
            verdict["by_classifier"][kind] = assess_classifier(
                kind, scores["real"].mean, chance, margin, kind_paired, baseline.accuracy,
                (scores["traditional"].mean, scores["cryoetgan"].mean))
        return {"chance": chance, "baseline": baseline.to_dict(), "paired": paired, "verdict": verdict}

    stage = stages.run("verdict", {"inception": stages.key("inception"), "downstream": stages.key("downstream"),
                                   "metrics_network": metric_network["kind"],
                                   "classifiers": stages.key("classifiers"),
                                   "reliability_margin": config.metrics.reliability_margin}, verdict_stage)
    chance, baseline, paired, verdict = stage["chance"], stage["baseline"], stage["paired"], stage["verdict"]
    for note in verdict["notes"]:
        log(f"warning: {note}")
    reliable = verdict["metrics_reliable"]

    # -- curves over checkpoints -------------------------------------------------------------
    curves = stages.run("curves", {"generation": stages.key("generation"), **metric_config},
                        lambda: metric_curves(config, run_dir, data, inception, real_features, cache=curve_cache))

    # -- ablations, one stage per variant ---------------------------------------------------------
    ablations = []
    variants = ablation_variants(config)
    from cryoet_forge import progress

    with progress.stage("ablations", len(variants), "variants", enabled=bool(variants)) as bar:
        for index, variant in enumerate(variants):
            slug = f"ablation-{index + 1}"
            inputs = {"inception": stages.key("inception"), "variant": list(variant), **classifier,
                      **_gan_inputs(config, data, variant[2]), **metric_config,
                      "select_checkpoint": config.gan.select_checkpoint, "seeds": list(config.ablations.seeds),
                      "confidence": config.downstream.confidence}
            ablations.append(stages.run(slug, inputs, lambda: run_ablation(
                config, out, slug, variant, data, inception, real_features, train_features, options, log, resume)))
            bar.advance(info=variant[1])
    from cryoet_forge.evaluate.verdict import quality_reliability

    margin = config.metrics.reliability_margin
    ablations = [{**row, "reliable": reliable, "reliability": quality_reliability(row, margin)} for row in ablations]

    # -- uncertainty -----------------------------------------------------------------------------
    uncertainty = stages.run("uncertainty", {"generation": stages.key("generation"),
                                             "uncertainty": dataclasses.asdict(config.uncertainty)},
                             lambda: uncertainty_overlay(config, run_dir, data, out / "figures" / "uncertainty.png",
                                                         log, checkpoint=gan_checkpoint.get("checkpoint")))

    # -- report: figures, results.json, report.md (always rendered) -------------------------------
    tic = time.perf_counter()
    quality = {key: {**scores, "reliable": reliable, "reliability": quality_reliability(scores, margin)}
               for key, scores in quality.items()}
    save_figures(config, out, data, gan, inception_on_test, downstream, curves, quality, seeds, gan_info=summary)
    from cryoet_forge.evaluate.verdict import class_counts

    results: dict[str, Any] = {
        "title": config.report.title,
        "config": config.to_dict(),
        # the traditional simulation's acquisition, each value with its source (config, STAR, default)
        "traditional_acquisition": traditional_acquisition(config.traditional)[1],
        "data": {"description": data.description, "class_names": class_names, "box": data.box,
                 "voxel_size": data.voxel_size, "n_real_train": len(data.real_train),
                 "n_real_test": len(data.real_test), "n_density_train": len(data.density_train),
                 "n_generated": len(gan), "n_traditional": len(data.traditional)},
        "gan_run": str(run_dir),
        "gan": summary,
        "gan_checkpoint": gan_checkpoint,
        # the network whose features and probabilities FID, PRDC and IS use (metrics.inception)
        "metrics_network": metric_network,
        "inception": {"real_test": inception_on_test.summary(),
                      "is_mean": float(real_is[0]), "is_std": float(real_is[1])},
        "quality": quality,
        "downstream": {k: v.to_dict() for k, v in downstream.items()},
        # CryoETGAN minus traditional mean accuracy, the "mean difference" of the report
        "downstream_difference": downstream["cryoetgan"].mean - downstream["traditional"].mean,
        "downstream_paired": paired,
        # every other classifier kind: {kind: {"real"|"traditional"|"cryoetgan": scores}}; its
        # paired difference and verdict are in verdict["by_classifier"]
        "downstream_by_classifier": {kind: {k: v.to_dict() for k, v in scores.items()}
                                     for kind, scores in by_kind.items()},
        "chance": chance,
        "baseline": baseline,
        "verdict": verdict,
        "counts": {"real_train": class_counts(data.real_train.labels, class_names),
                   "real_test": class_counts(data.real_test.labels, class_names),
                   "traditional": class_counts(data.traditional.labels, class_names),
                   "cryoetgan": class_counts(gan.labels, class_names)},
        "curves": curves,
        "ablations": ablations,
        "uncertainty": uncertainty,
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "threads": torch.get_num_threads(),
                        "device": options.device},
    }
    # how this run went (not what it found): seconds each stage took when it was computed, and
    # which stages were read back from an earlier run of the same command (--resume)
    timings: dict[str, float] = {}
    for name, record in stages.done.items():
        key = "ablations" if name.startswith("ablation-") else name
        timings[key] = round(timings.get(key, 0.0) + record["seconds"], 2)
    timings["report"] = round(time.perf_counter() - tic, 2)
    timings["total"] = round(time.perf_counter() - started, 2)
    results["timings_s"] = timings
    results["stages_reused"] = [name for name, record in stages.done.items() if record["status"] == "reused"]
    if budget is not None:
        results["budget"] = budget
    write_json(out / "results.json", results)
    from cryoet_forge.evaluate.report import render_report
    from cryoet_forge.io.atomic import write_bytes_atomic

    report = out / "report.md"
    write_bytes_atomic(report, render_report(results).encode())
    log(f"done in {timings['total']:.0f} s")
    return report


def save_figures(config: EvaluationConfig, out: Path, data: EvaluationData, gan: LabelledVolumes,
                 inception_on_test: ClassificationResult, downstream: dict[str, DownstreamResult],
                 curves: dict[str, list], quality: dict[str, dict[str, Any]], seeds: list[int],
                 gan_info: dict[str, Any] | None = None) -> None:
    """The report's PNGs: slice montage (XY and XZ), the same particles as GAN input and output,
    power spectra, intensity histograms, confusion matrices, downstream bars (overall and per class),
    metric curves. Sets are named by role (``report.set_names``; ``gan_info``: the run's ``gan_summary``)."""
    from cryoet_forge.evaluate.report import set_names
    from cryoet_forge.viz import central_slice

    names = set_names(config.to_dict(), gan_info)
    class_names = data.class_names
    n_show = config.report.montage_per_class
    column_labels = [f"{name} {plane}" for name in class_names for _ in range(n_show) for plane in ("XY", "XZ")]

    def planes(row: list[np.ndarray]) -> list[np.ndarray]:  # each volume as its central XY and XZ slices
        return [central_slice(volume, axis) for volume in row for axis in (0, 1)]

    refine = config.gan.input == "traditional"  # the GAN's input is the traditional set: one row for both
    rows = [] if refine else [(data.density_generate, f"GAN input: {names.gan_input}")]
    rows += [(data.real_test, f"{names.experimental} test"),
             (data.traditional, f"{names.traditional}" + (" = GAN input" if refine else "")), (gan, "GAN output")]
    save_slice_montage(out / "figures" / "montage.png",
                       [planes(_per_class_rows(volumes, n_show)) for volumes, _ in rows],
                       [figures.wrap(label, 16) for _, label in rows], column_labels,
                       title="central slices per class (XY: central z; XZ: central y, z downwards)")
    # the same particle in and out of the generator: generated volume i is G(density_generate volume i)
    picks = [int(np.where(gan.labels == label)[0][0]) for label in range(len(class_names))
             if np.any(gan.labels == label)]
    figures.save_particle_pairs(out / "figures" / "particle_pairs.png",
                                [data.density_generate.volumes[i] for i in picks], [gan.volumes[i] for i in picks],
                                [class_names[int(gan.labels[i])] for i in picks], f"input: {names.gan_input}")
    spectra_sets = {f"{names.experimental} test": data.real_test.volumes, names.traditional: data.traditional.volumes,
                    names.gan: gan.volumes}
    figures.save_power_spectra(out / "figures" / "power_spectra.png", spectra_sets, data.voxel_size,
                               title="radially averaged power spectra (mean over volumes)")
    figures.save_intensity_histograms(out / "figures" / "intensity_histograms.png", spectra_sets,
                                      title="voxel intensities (each volume z-scored)")
    figures.save_confusion_png(out / "figures" / "confusion_inception.png", inception_on_test.confusion,
                               class_names, f"experimental -> experimental (inception net): "
                                            f"{inception_on_test.accuracy:.3f}")
    for key, label in (("traditional", names.traditional), ("cryoetgan", "GAN")):
        first = downstream[key].first
        assert first is not None  # a downstream result always holds its first seed's scores
        figures.save_confusion_png(out / "figures" / f"confusion_{key}.png", first.confusion, class_names,
                                   f"trained on {label}, tested on experimental\n(seed {seeds[0]}): "
                                   f"{first.accuracy:.3f}")
    figures.save_accuracy_bars(out / "figures" / "downstream_accuracy.png", {
        names.experimental: (inception_on_test.accuracy, inception_on_test.accuracy, inception_on_test.accuracy),
        names.traditional: (downstream["traditional"].mean, downstream["traditional"].low,
                            downstream["traditional"].high),
        names.gan: (downstream["cryoetgan"].mean, downstream["cryoetgan"].low, downstream["cryoetgan"].high),
    }, title="train on X, test on experimental")
    figures.save_per_class_accuracy(out / "figures" / "per_class_accuracy.png", class_names, {
        f"train on {names.experimental}": [dict(inception_on_test.per_class_accuracy)],
        f"train on {names.traditional}": downstream["traditional"].per_class,
        f"train on {names.gan}": downstream["cryoetgan"].per_class,
    }, config.downstream.confidence, title="per-class accuracy on the experimental test split")
    if curves["steps"]:
        figures.save_metric_curves(out / "figures" / "curves.png", curves["steps"],
                                   {"FID": curves["fid"], "IS": curves["is_mean"], "coverage": curves["coverage"],
                                    "density": curves["density"]},
                                   title=f"{names.gan} over training checkpoints",
                                   reference={"FID": quality["traditional"]["fid"],
                                              "IS": quality["traditional"]["is_mean"],
                                              "coverage": quality["traditional"]["coverage"],
                                              "density": quality["traditional"]["density"]})


def select_and_generate(config: EvaluationConfig, run_dir: Path, data: EvaluationData, inception: InceptionNet,
                        train_features: np.ndarray, source: str,
                        curve_cache: dict[Path, tuple[np.ndarray, np.ndarray]] | None = None,
                        ) -> tuple[LabelledVolumes, dict[str, Any]]:
    """Generated volumes from the checkpoint the config's rule picks, and a record of the choice.

    ``curve_cache``, when given, receives (features, probabilities) of the checkpoints that
    ``metric_curves`` scores, keyed by checkpoint folder.
    """
    from cryoet_forge.metrics import compute_fid

    checkpoints = run_checkpoints(run_dir)
    if config.gan.select_checkpoint == "last" or len(checkpoints) < 2:
        step, path = checkpoints[-1] if checkpoints else (None, None)
        generated = generate_labelled(run_dir, data.density_generate, seed=config.data.seed, source=source)
        return generated, {"rule": "last", "step": step, "checkpoint": None if path is None else str(path)}
    from cryoet_forge import progress

    fid_train: dict[str, float] = {}
    best: tuple[float, int, LabelledVolumes, Path] | None = None
    on_curves = {checkpoints[i][1] for i in curve_picks(config, len(checkpoints))}
    with progress.stage(f"{source}: checkpoint selection (FID to the real training split)", len(checkpoints),
                        "checkpoints") as bar:
        for step, path in checkpoints:
            generated = generate_labelled(run_dir, data.density_generate, seed=config.data.seed, source=source,
                                          checkpoint=path)
            features, probs = inception.infer(generated.volumes)
            if curve_cache is not None and path in on_curves:
                curve_cache[path] = (features, probs)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fid = float(compute_fid(train_features, features))
            fid_train[str(step)] = fid
            if best is None or fid < best[0]:
                best = (fid, step, generated, path)
            bar.advance(info=f"step {step}: FID {fid:.3g}")
    assert best is not None  # at least two checkpoints here
    return best[2], {"rule": "best-fid-train", "step": best[1], "checkpoint": str(best[3]), "fid_train": fid_train}


def gan_summary(run_dir: Path) -> dict[str, Any]:
    """The settings of a trained run that a reader of the report needs (from its saved config)."""
    from cryoet_forge.evaluate.report import extra_loss_terms
    from cryoet_forge.train import resume_config

    cfg = resume_config(run_dir)
    steps = [step for step, _ in run_checkpoints(run_dir)]
    return {"steps": steps[-1] if steps else 0, "batch_size": cfg.train.batch_size, "loss": cfg.loss.adversarial,
            "critic": cfg.model.critic, "generator": cfg.model.generator,
            "generator_options": dict(cfg.model.generator_options), "critic_options": dict(cfg.model.critic_options),
            "extra_losses": extra_loss_terms(cfg.loss),
            "density_noise_std": cfg.data.density_noise_std, "n_critic": cfg.train.n_critic}


def curve_picks(config: EvaluationConfig, n_checkpoints: int) -> list[int]:
    """Indices of the ``gan.curve_points`` evenly spaced checkpoints (the first and last included)."""
    n = min(config.gan.curve_points, n_checkpoints)
    return sorted({int(round(i)) for i in np.linspace(0, n_checkpoints - 1, n)})


def metric_curves(config: EvaluationConfig, run_dir: Path, data: EvaluationData, inception: InceptionNet,
                  real_features: np.ndarray,
                  cache: dict[Path, tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, list]:
    """IS/FID/PRDC of the GAN at evenly spaced checkpoints of its run (the last included).

    ``cache``: (features, probabilities) already computed for some checkpoint folders.
    """
    checkpoints = run_checkpoints(run_dir)
    curves: dict[str, list] = {"steps": [], "is_mean": [], "fid": [], "precision": [], "recall": [],
                               "density": [], "coverage": []}
    if not checkpoints:
        return curves
    for index in curve_picks(config, len(checkpoints)):
        step, path = checkpoints[index]
        if cache is not None and path in cache:
            features, probs = cache[path]
        else:
            generated = generate_labelled(run_dir, data.density_generate, seed=config.data.seed,
                                          source=f"step {step}", checkpoint=path)
            features, probs = inception.infer(generated.volumes)
        scores = quality_metrics(real_features, features, probs, config)
        curves["steps"].append(step)
        for key in ("is_mean", "fid", "precision", "recall", "density", "coverage"):
            curves[key].append(scores[key])
    return curves


def ablation_variants(config: EvaluationConfig) -> list[tuple[str, str, dict[str, Any]]]:
    """(table, label, TrainConfig overrides) for every ablation the config selects."""
    variants: list[tuple[str, str, dict[str, Any]]] = []
    for std in config.ablations.noise_std:
        variants.append(("noise", f"{float(std):g}", {"data.density_noise_std": float(std)}))
    if config.ablations.lsgan:
        variants.append(("components", "without Wasserstein (lsgan)", {"loss.adversarial": "lsgan"}))
    if config.ablations.patchgan:
        variants.append(("components", "without spectral norm (patchgan critic)", {"model.critic": "patchgan"}))
    return variants


def run_ablation(config: EvaluationConfig, out: Path, slug: str, variant: tuple[str, str, dict[str, Any]],
                 data: EvaluationData, inception: InceptionNet, real_features: np.ndarray,
                 train_features: np.ndarray, options: ClassifierOptions, log: Log,
                 resume: bool = False) -> dict[str, Any]:
    """One ablation variant: its GAN trained into ``OUT/runs/<slug>``, scored like the main one."""
    table, label, overrides = variant
    run_dir = train_gan(config, out / "runs" / slug, data.density_train, data.real_train, data.density_star,
                        data.real_train_star, variant=overrides, log=log, resume=resume)
    generated, checkpoint = select_and_generate(config, run_dir, data, inception, train_features, label)
    features, probs = inception.embed(slug, generated)
    scores = quality_metrics(real_features, features, probs, config)
    result = train_on_synthetic_test_on_real(label, generated, data.real_test, data.class_names, options,
                                             [int(s) for s in config.ablations.seeds],
                                             config.downstream.confidence, log, workers=config.downstream.workers)
    return {"table": table, "label": label, "overrides": overrides, "run": str(run_dir), "checkpoint": checkpoint,
            "features": f"features/{slug}.features.npy", **scores, "downstream": result.to_dict()}


def uncertainty_overlay(config: EvaluationConfig, run_dir: Path, data: EvaluationData, path: Path,
                        log: Log, checkpoint: str | None = None) -> dict[str, Any]:
    """MC-dropout mean/std of the generator (of ``checkpoint``, default the run's newest) on one
    posed map per class, as a PNG overlay."""
    if not config.uncertainty.enabled:
        return {"status": "disabled"}
    from cryoet_forge.uncertainty import mc_dropout

    maps, means, stds, summary = [], [], [], {}
    for label, name in enumerate(data.class_names):
        index = int(np.where(data.density_generate.labels == label)[0][0])
        # scaled to [-1, 1] like the generator's inputs in generate_labelled
        volume = data.density_generate.volumes[index:index + 1]
        volume = normalize_volumes(torch.from_numpy(volume), "minmax")[0].numpy()
        try:
            mean, std = mc_dropout(run_dir, volume, samples=config.uncertainty.samples, seed=config.data.seed,
                                   checkpoint=checkpoint)
        except ForgeError as exc:
            log(f"uncertainty skipped: {exc}")
            return {"status": f"skipped: {exc}"}
        maps.append(volume)
        means.append(np.asarray(mean))
        stds.append(np.asarray(std))
        summary[name] = float(np.asarray(std).mean())
    figures.save_uncertainty_overlay(path, maps, means, stds, data.class_names)
    return {"status": "ok", "samples": config.uncertainty.samples, "checkpoint": checkpoint,
            "mean_std_per_class": summary}


def load_results(out_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / "results.json").read_text())

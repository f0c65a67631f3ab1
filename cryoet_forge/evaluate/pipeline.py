"""``forge evaluate``: the paper's protocol end to end.

1. CB3D trained on the real training split is the "Inception network".
2. IS of generated data; FID and PRDC of generated vs real test features (metrics engine),
   for traditional simulation and for the GAN side by side (and the real test split's own IS).
3. Downstream: CB3D trained on traditional vs GAN volumes (same count, same classes) per seed,
   tested on the real test split; mean accuracy with a t-interval over seeds.
4. Ablations from the config: density-map noise std values, lsgan, patchgan critic.
5. report.md, results.json, PNG figures; the features behind every metric under features/.

The protocol is a table of stages (``BUILTIN_STAGES``), each declaring the values it reads and
adds; ``cryoet_forge.evaluate.stages.StageTable`` runs it over the base values ``run_evaluation``
provides (``BASE_VALUES``), storing and resuming each stage. Plugins add stages through the
``forge_register_evaluation_stages`` hook (``plugin_stages``).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cryoet_forge import progress
from cryoet_forge.classify import (
    ClassificationResult,
    ClassifierOptions,
    LabelledVolumes,
    evaluate_cb3d,
    score_probabilities,
    train_cb3d,
)
from cryoet_forge.errors import ForgeError, InputError
from cryoet_forge.evaluate import figures
from cryoet_forge.evaluate.baseline import radial_baseline
from cryoet_forge.evaluate.config import EvaluationConfig, classifier_options, traditional_acquisition
from cryoet_forge.evaluate.datasets import EvaluationData, prepare_data, resolve_maps_dir, write_labelled_folder
from cryoet_forge.evaluate.downstream import (
    CB3D_KIND,
    DownstreamResult,
    resolve_workers,
    score_sources,
    train_on_synthetic_test_on_real,
)
from cryoet_forge.evaluate.gan import gan_summary, metric_curves, select_and_generate, train_config_for, train_gan
from cryoet_forge.evaluate.inception import (
    ClassifierInception,
    InceptionNet,
    choose_inception,
    fitted_classifier,
    quality_metrics,
)
from cryoet_forge.evaluate.report import render_report, set_names
from cryoet_forge.evaluate.stages import (
    EvaluationStage,
    Stages,
    StageTable,
    StageView,
    check_stage,
    insert_stages,
    jsonable,
)
from cryoet_forge.evaluate.verdict import (
    assess,
    assess_classifier,
    chance_level,
    class_counts,
    paired_difference,
    quality_reliability,
)
from cryoet_forge.io.atomic import write_bytes_atomic, write_json_atomic
from cryoet_forge.metrics.bundle import inception_scores
from cryoet_forge.models.cb3d import load_cb3d, normalize_volumes, save_cb3d
from cryoet_forge.registry import get_registry
from cryoet_forge.train.checkpoint import list_checkpoints
from cryoet_forge.uncertainty import mc_dropout
from cryoet_forge.viz import central_slice, save_slice_montage

Log = Callable[[str], None]


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
    if config.gan.run and variant is None:
        run = Path(config.gan.run)
        return {"run": str(run), "files": _stamps(run / "config.toml", run / "checkpoints")}
    cfg = train_config_for(config, data.density_star, data.real_train_star, variant).to_dict()
    inputs: dict[str, Any] = {"train": cfg}
    if cfg["loss"]["semantic_weight"] > 0 and not cfg["loss"]["semantic_classifier"]:
        inputs["classifier"] = dataclasses.asdict(config.classifier)
    return inputs


#: the folders ``run_evaluation`` makes in OUT before the first stage
SKELETON = ("data", "features", "figures", "runs", "models")

#: the base values every stage may read (``EvaluationStage.inputs``), besides earlier stages' outputs
BASE_VALUES = ("config", "out", "resume", "cache_dir", "budget", "started", "options", "seeds", "classifier",
               "main_run")
#: the base values that say what is computed (a stage without its own fingerprint depends on them)
DESCRIBED = ("config", "options", "seeds", "classifier")


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
        for folder in reversed(made):
            if folder.is_dir() and not folder.is_symlink() and not any(
                    p.is_file() or p.is_symlink() for p in folder.rglob("*")):
                shutil.rmtree(folder, ignore_errors=True)
        raise


def _run_evaluation(config: EvaluationConfig, out_dir: str | Path, log: Log = print,
                    budget: dict[str, Any] | None = None, cache_dir: Path | None = None,
                    resume: bool = False) -> Path:
    """Run the whole protocol, stage by stage (``STAGES``, then the stages plugins add); returns
    the path of report.md.

    Each stage stores its result under ``OUT/stages`` (``cryoet_forge.evaluate.stages``). With
    ``resume``, stages whose inputs and configuration are unchanged are read back and the rest
    computed; without it an ``OUT`` that holds a trained GAN is an error.
    ``budget``: the record of ``budget.fit_to_budget`` that scaled ``config`` (kept in the results).
    ``cache_dir``: where downstream scores are kept by content digest and read back (the suite).
    """
    out = Path(out_dir)
    options = classifier_options(config)
    main_run = Path(config.gan.run) if config.gan.run else out / "runs" / "cryoetgan"
    values = {"config": config, "out": out, "resume": resume, "cache_dir": cache_dir, "budget": budget,
              "started": time.perf_counter(), "options": options,
              "seeds": [int(s) for s in config.downstream.seeds],
              "classifier": {"classifier": dataclasses.asdict(config.classifier), "device": options.device,
                             "seed": config.data.seed},
              "main_run": main_run}
    table = StageTable(insert_stages(BUILTIN_STAGES, plugin_stages()), values, Stages(out, resume, log),
                       described=DESCRIBED)  # checked here: a stage reading what nobody makes stops it now
    out.mkdir(parents=True, exist_ok=True)
    for sub in SKELETON:
        (out / sub).mkdir(exist_ok=True)
    if not resume and not config.gan.run:
        if list_checkpoints(main_run):  # say so now, not after the data and the inception network
            raise InputError(f"{out}: holds an earlier evaluation ({main_run} has checkpoints); rerun with "
                             "--resume to reuse its finished stages, or pick a new --out")
    return table.run()["report"]


def plugin_stages() -> list[EvaluationStage]:
    """The stages plugins add through ``forge_register_evaluation_stages``, each checked; a plugin
    whose registration fails stops the evaluation (PluginError) rather than leave its stage out."""
    return get_registry().collect("forge_register_evaluation_stages", check_stage)


def _metric_config(config: EvaluationConfig) -> dict[str, Any]:
    """The [metrics] settings the scores depend on (the reliability margin is applied in the report)."""
    return {"metrics": {k: v for k, v in dataclasses.asdict(config.metrics).items() if k != "reliability_margin"}}


# -- the stages -------------------------------------------------------------------------------------

def _data_stage(view: StageView) -> EvaluationData:
    out = view["out"]
    data = prepare_data(view["config"], out / "data", view.log)
    write_labelled_folder(out / "data" / "real_test", data.real_test)
    return data


def _inception_stage(view: StageView) -> dict[str, Any]:
    """The inception CB3D trained on the real training split, the network chosen to embed every set
    (``metrics.inception``), and the real sets' features."""
    config, data, options, out = view["config"], view["data"], view["options"], view["out"]
    class_names = data.class_names
    view.log(f"training the inception CB3D on the real training split ({len(data.real_train)} volumes)")
    trained, history = train_cb3d(data.real_train, options, seed=config.data.seed,
                                  label="inception CB3D (real training split)")
    folder = out / "models" / "inception"
    save_cb3d(trained, folder, class_names, normalize=options.normalize,
              extra={"voxel_size": data.voxel_size, "training": {"data": "real train split", "loss": history.loss}})
    net = InceptionNet(load_cb3d(folder, device=options.device)[0], class_names, options.normalize,
                       options.device, out / "features")
    on_test = evaluate_cb3d(net.model, data.real_test, class_names, options.normalize, device=options.device)
    # which network embeds every set for FID, PRDC and IS: the best on the real validation part
    validation: dict[str, float] = {}
    if history.best_epoch:
        validation[CB3D_KIND] = float(history.val_accuracy[history.best_epoch - 1])
    net, chosen = choose_inception(config, data.real_train, options.validation_fraction, net, validation,
                                   view.log)
    real_features, real_probs = net.embed("real_test", data.real_test)
    train_features, _ = net.infer(data.real_train.volumes)
    view.scratch["net"] = net  # computed just now: no second fit in _inception_outputs
    chosen_on_test = score_probabilities(real_probs, data.real_test, class_names)
    return {"model": folder, "on_test": on_test, "real_features": real_features, "real_probs": real_probs,
            "train_features": train_features, "chosen": chosen, "validation": validation,
            "chosen_on_test": chosen_on_test}


def _inception_outputs(view: StageView, stage: dict[str, Any]) -> dict[str, Any]:
    config, data, options = view["config"], view["data"], view["options"]
    net = view.scratch.get("net")
    if net is None and stage["chosen"] == CB3D_KIND:
        net = InceptionNet(load_cb3d(stage["model"], device=options.device)[0], data.class_names,
                           options.normalize, options.device, view["out"] / "features")
    elif net is None:
        net = ClassifierInception(stage["chosen"], fitted_classifier(config, stage["chosen"], data.real_train),
                                  data.class_names, view["out"] / "features")
    return {"inception_net": net,
            "inception_on_test": stage["on_test"],  # CB3D trained on the real split: cb3d's ceiling
            "metric_network": {"kind": stage["chosen"], "validation_accuracy": stage["validation"],
                               "real_test": stage["chosen_on_test"].summary()},
            "real_features": stage["real_features"], "real_probs": stage["real_probs"],
            "train_features": stage["train_features"]}


def _inception_fingerprint(view: StageView) -> dict[str, Any]:
    config = view["config"]
    return {"data": view.key("data"), **view["classifier"], "inception": config.metrics.inception,
            "candidates": {k: config.downstream.classifier_options.get(k, {}) for k in config.downstream.classifiers}}


def _gan_stage(view: StageView) -> dict[str, Any]:
    """The main GAN: trained into OUT/runs/cryoetgan, or the trained run ``gan.run`` names."""
    config, data, run = view["config"], view["data"], view["main_run"]
    if config.gan.run:
        view.log(f"using the trained GAN run {run}")
    else:
        run = train_gan(config, run, data.density_train, data.real_train, data.density_star,
                        data.real_train_star, log=view.log, resume=view["resume"])
    return {"run": run, "summary": gan_summary(run)}


def _generation_stage(view: StageView) -> dict[str, Any]:
    """The GAN's volumes from the checkpoint the rule picks; both synthetic sets on disk."""
    data, out = view["data"], view["out"]
    # inception outputs of the curve checkpoints already generated during the selection, so
    # the curves stage does not generate and embed them a second time
    cache: dict[Path, tuple[np.ndarray, np.ndarray]] = {}
    volumes, chosen = select_and_generate(view["config"], view["gan_run"], data, view["inception_net"],
                                          view["train_features"], "CryoETGAN", curve_cache=cache)
    # both synthetic sets on disk in the labelled-folder format, for `forge classify` / inspection
    write_labelled_folder(out / "data" / "traditional", data.traditional)
    write_labelled_folder(out / "data" / "cryoetgan", volumes)
    return {"volumes": volumes, "checkpoint": chosen,
            "curve_cache": [[path, features, probs] for path, (features, probs) in cache.items()]}


def _metrics_stage(view: StageView) -> dict[str, Any]:
    """IS, FID and PRDC of the traditional and GAN sets (and the real test split's IS)."""
    config, data, inception, real_features = view["config"], view["data"], view["inception_net"], view["real_features"]
    traditional_features, traditional_probs = inception.embed("traditional", data.traditional)
    gan_features, gan_probs = inception.embed("cryoetgan", view["gan_volumes"])
    real_is = inception_scores({"real": view["real_probs"]}, config.metrics.is_splits)["real"]
    return {"real_is": [real_is["mean"], real_is["std"]], "quality": {
        "traditional": quality_metrics(real_features, traditional_features, traditional_probs, config),
        "cryoetgan": quality_metrics(real_features, gan_features, gan_probs, config)}}


def _downstream_stage(view: StageView) -> dict[str, DownstreamResult]:
    """CB3D trained on the traditional and GAN sets per seed, tested on the real test split."""
    config, data, seeds = view["config"], view["data"], view["seeds"]
    view.log(f"downstream: CB3D on traditional vs GAN data ({config.downstream.n_per_class} per class, "
             f"seeds {seeds})")
    return score_sources({"traditional": data.traditional, "cryoetgan": view["gan_volumes"]}, data.real_test,
                         data.class_names, view["options"], seeds, config.downstream.confidence, view.log,
                         cache_dir=view["cache_dir"], workers=config.downstream.workers)


def _other_kinds(config: EvaluationConfig) -> list[str]:
    return [kind for kind in config.downstream.classifiers if kind != CB3D_KIND]


def _classifiers_stage(view: StageView) -> dict[str, dict[str, DownstreamResult]]:
    """Each other classifier kind on the real training split, traditional and GAN data."""
    config, data, seeds = view["config"], view["data"], view["seeds"]
    by_kind = {}
    for kind in _other_kinds(config):
        view.log(f"downstream: {kind} on the real training split, traditional and GAN data (seeds {seeds})")
        by_kind[kind] = score_sources(
            {"real": data.real_train, "traditional": data.traditional, "cryoetgan": view["gan_volumes"]},
            data.real_test, data.class_names, view["options"], seeds, config.downstream.confidence, view.log,
            cache_dir=view["cache_dir"], workers=config.downstream.workers, kind=kind,
            kind_options=config.downstream.classifier_options.get(kind, {}))
    return by_kind


def _verdict_stage(view: StageView) -> dict[str, Any]:
    """What the evaluation can say: chance, the real ceiling, a simple baseline, paired seeds."""
    config, data, seeds = view["config"], view["data"], view["seeds"]
    downstream, inception_on_test, network = view["downstream"], view["inception_on_test"], view["metric_network"]
    confidence = config.downstream.confidence
    chance = chance_level(data.real_test.labels, len(data.class_names))
    baseline = radial_baseline(data.real_train, data.real_test, seed=config.data.seed)
    margin = config.metrics.reliability_margin
    paired = paired_difference(downstream["cryoetgan"].accuracies, downstream["traditional"].accuracies,
                               seeds, confidence)
    verdict = assess(inception_on_test.accuracy, chance, margin, paired, baseline.accuracy,
                     network["real_test"]["accuracy"], network["kind"],
                     (downstream["traditional"].mean, downstream["cryoetgan"].mean))
    # one answer per classifier kind; cb3d's real ceiling is the inception network (one seed)
    verdict["by_classifier"] = {CB3D_KIND: assess_classifier(
        CB3D_KIND, inception_on_test.accuracy, chance, margin, paired, baseline.accuracy,
        (downstream["traditional"].mean, downstream["cryoetgan"].mean))}
    for kind, scores in view["downstream_by_classifier"].items():
        kind_paired = paired_difference(scores["cryoetgan"].accuracies, scores["traditional"].accuracies,
                                        seeds, confidence)
        verdict["by_classifier"][kind] = assess_classifier(
            kind, scores["real"].mean, chance, margin, kind_paired, baseline.accuracy,
            (scores["traditional"].mean, scores["cryoetgan"].mean))
    return {"chance": chance, "baseline": baseline.to_dict(), "paired": paired, "verdict": verdict}


def _verdict_outputs(view: StageView, stage: dict[str, Any]) -> dict[str, Any]:
    for note in stage["verdict"]["notes"]:
        view.log(f"warning: {note}")
    return stage


def _ablations_stage(view: StageView) -> list[dict[str, Any]]:
    """Each ablation variant, a stored stage of its own (``ablation-N``)."""
    config, data = view["config"], view["data"]
    rows = []
    variants = ablation_variants(config)
    with progress.stage("ablations", len(variants), "variants", enabled=bool(variants)) as bar:
        for index, variant in enumerate(variants):
            slug = f"ablation-{index + 1}"
            inputs = {"inception": view.key("inception"), "variant": list(variant), **view["classifier"],
                      **_gan_inputs(config, data, variant[2]), **_metric_config(config),
                      "select_checkpoint": config.gan.select_checkpoint, "seeds": list(config.ablations.seeds),
                      "confidence": config.downstream.confidence}
            rows.append(view.store.run(slug, inputs, lambda: run_ablation(
                config, view["out"], slug, variant, data, view["inception_net"], view["real_features"],
                view["train_features"], view["options"], view.log, view["resume"])))
            bar.advance(info=variant[1])
    return rows


def _uncertainty_stage(view: StageView) -> dict[str, Any]:
    return uncertainty_overlay(view["config"], view["gan_run"], view["data"],
                               view["out"] / "figures" / "uncertainty.png", view.log,
                               checkpoint=view["gan_checkpoint"].get("checkpoint"))


def _report_stage(view: StageView) -> Path:
    """Figures, results.json and report.md (always rendered, never stored)."""
    tic = time.perf_counter()
    config, out = view["config"], view["out"]
    margin, reliable = config.metrics.reliability_margin, view["verdict"]["metrics_reliable"]
    quality = {key: {**scores, "reliable": reliable, "reliability": quality_reliability(scores, margin)}
               for key, scores in view["quality"].items()}
    ablations = [{**row, "reliable": reliable, "reliability": quality_reliability(row, margin)}
                 for row in view["ablations"]]
    save_figures(config, out, view["data"], view["gan_volumes"], view["inception_on_test"], view["downstream"],
                 view["curves"], quality, view["seeds"], gan_info=view["gan_summary"])
    results = _results(view, quality, ablations)
    extra = _plugin_results(view)
    if extra:
        results["plugin_stages"] = extra
    # how this run went (not what it found): seconds each stage took when it was computed, and
    # which stages were read back from an earlier run of the same command (--resume)
    timings: dict[str, float] = {}
    for name, record in view.store.done.items():
        key = "ablations" if name.startswith("ablation-") else name
        timings[key] = round(timings.get(key, 0.0) + record["seconds"], 2)
    timings["report"] = round(time.perf_counter() - tic, 2)
    timings["total"] = round(time.perf_counter() - view["started"], 2)
    results["timings_s"] = timings
    results["stages_reused"] = [name for name, record in view.store.done.items() if record["status"] == "reused"]
    if view["budget"] is not None:
        results["budget"] = view["budget"]
    write_json_atomic(out / "results.json", results, allow_nan=False)
    report = out / "report.md"
    write_bytes_atomic(report, render_report(results).encode())
    view.log(f"done in {timings['total']:.0f} s")
    return report


def _results(view: StageView, quality: dict[str, Any], ablations: list[dict[str, Any]]) -> dict[str, Any]:
    """What the evaluation found, as results.json holds it (the run's timings added by the report)."""
    config, data, gan = view["config"], view["data"], view["gan_volumes"]
    downstream, by_kind, inception_on_test = view["downstream"], view["downstream_by_classifier"], \
        view["inception_on_test"]
    class_names, real_is = data.class_names, view["real_is"]
    return {
        "title": config.report.title,
        "config": config.to_dict(),
        # the traditional simulation's acquisition, each value with its source (config, STAR, default)
        "traditional_acquisition": traditional_acquisition(config.traditional)[1],
        "data": {"description": data.description, "class_names": class_names, "box": data.box,
                 "voxel_size": data.voxel_size, "n_real_train": len(data.real_train),
                 "n_real_test": len(data.real_test), "n_density_train": len(data.density_train),
                 "n_generated": len(gan), "n_traditional": len(data.traditional)},
        "gan_run": str(view["gan_run"]),
        "gan": view["gan_summary"],
        "gan_checkpoint": view["gan_checkpoint"],
        # the network whose features and probabilities FID, PRDC and IS use (metrics.inception)
        "metrics_network": view["metric_network"],
        "inception": {"real_test": inception_on_test.summary(),
                      "is_mean": float(real_is[0]), "is_std": float(real_is[1])},
        "quality": quality,
        "downstream": {k: v.to_dict() for k, v in downstream.items()},
        # CryoETGAN minus traditional mean accuracy, the "mean difference" of the report
        "downstream_difference": downstream["cryoetgan"].mean - downstream["traditional"].mean,
        "downstream_paired": view["paired"],
        # every other classifier kind: {kind: {"real"|"traditional"|"cryoetgan": scores}}; its
        # paired difference and verdict are in verdict["by_classifier"]
        "downstream_by_classifier": {kind: {k: v.to_dict() for k, v in scores.items()}
                                     for kind, scores in by_kind.items()},
        "chance": view["chance"],
        "baseline": view["baseline"],
        "verdict": view["verdict"],
        "counts": {"real_train": class_counts(data.real_train.labels, class_names),
                   "real_test": class_counts(data.real_test.labels, class_names),
                   "traditional": class_counts(data.traditional.labels, class_names),
                   "cryoetgan": class_counts(gan.labels, class_names)},
        "curves": view["curves"],
        "ablations": ablations,
        "uncertainty": view["uncertainty"],
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "threads": torch.get_num_threads(),
                        "device": view["options"].device},
    }


def _plugin_results(view: StageView) -> dict[str, dict[str, Any]]:
    """The outputs of the stages plugins added (those that ran), as JSON, by stage name."""
    table = view.table
    return {stage.name: {name: jsonable(table.values[name]) for name in stage.outputs}
            for stage in table.stages if stage.name not in STAGES and stage.name in table.ran}


def _declare(name: str, function: Callable[[StageView], Any], inputs: str, outputs: str = "",
             fingerprint: Callable[[StageView], Any] | None = None,
             unpack: Callable[[StageView, Any], dict[str, Any]] | None = None, stored: bool = True
             ) -> EvaluationStage:
    return EvaluationStage(name, function, tuple(inputs.split()), tuple(outputs.split()), fingerprint, unpack,
                           stored=stored)


def _unpacked(**names: str) -> Callable[[StageView, dict[str, Any]], dict[str, Any]]:
    """``unpack`` that renames the stored value's keys: output name = stored key."""
    return lambda view, value: {output: value[key] for output, key in names.items()}


#: the stages of one evaluation, in order, each with the values it reads and adds
BUILTIN_STAGES: tuple[EvaluationStage, ...] = (
    _declare("data", _data_stage, "config out", fingerprint=lambda v: _data_inputs(v["config"])),
    _declare("inception", _inception_stage, "config data options out classifier",
             "inception_net inception_on_test metric_network real_features real_probs train_features",
             _inception_fingerprint, _inception_outputs),
    _declare("gan", _gan_stage, "config data main_run resume", "gan_run gan_summary",
             lambda v: {"data": v.key("data"), **_gan_inputs(v["config"], v["data"])},
             _unpacked(gan_run="run", gan_summary="summary")),
    _declare("generation", _generation_stage, "config data out gan_run inception_net train_features",
             "gan_volumes gan_checkpoint curve_cache",
             lambda v: {"gan": v.key("gan"), "inception": v.key("inception"),
                        "select_checkpoint": v["config"].gan.select_checkpoint,
                        "curve_points": v["config"].gan.curve_points},
             lambda v, stage: {"gan_volumes": stage["volumes"], "gan_checkpoint": stage["checkpoint"],
                               "curve_cache": {Path(path): (features, probs)
                                               for path, features, probs in stage["curve_cache"]}}),
    _declare("metrics", _metrics_stage, "config data gan_volumes inception_net real_features real_probs",
             "quality real_is", lambda v: {"generation": v.key("generation"), **_metric_config(v["config"])}),
    _declare("downstream", _downstream_stage, "config data gan_volumes options seeds cache_dir classifier",
             "downstream",
             lambda v: {"generation": v.key("generation"), **v["classifier"],
                        "downstream": downstream_inputs(v["config"])}),
    _declare("classifiers", _classifiers_stage, "config data gan_volumes options seeds cache_dir",
             "downstream_by_classifier",
             lambda v: {"generation": v.key("generation"), "classifiers": _other_kinds(v["config"]),
                        "options": v["config"].downstream.classifier_options,
                        "downstream": downstream_inputs(v["config"])}),
    _declare("verdict", _verdict_stage, "config data seeds downstream downstream_by_classifier inception_on_test "
             "metric_network", "chance baseline paired verdict",
             lambda v: {"inception": v.key("inception"), "downstream": v.key("downstream"),
                        "metrics_network": v["metric_network"]["kind"], "classifiers": v.key("classifiers"),
                        "reliability_margin": v["config"].metrics.reliability_margin}, _verdict_outputs),
    _declare("curves", lambda v: metric_curves(v["config"], v["gan_run"], v["data"], v["inception_net"],
                                               v["real_features"], cache=v["curve_cache"]),
             "config data gan_run inception_net real_features curve_cache", "curves",
             lambda v: {"generation": v.key("generation"), **_metric_config(v["config"])}),
    _declare("ablations", _ablations_stage, "config data out options classifier resume inception_net "
             "real_features train_features", "ablations", stored=False),
    _declare("uncertainty", _uncertainty_stage, "config data out gan_run gan_checkpoint", "uncertainty",
             lambda v: {"generation": v.key("generation"), "uncertainty": dataclasses.asdict(v["config"].uncertainty)}),
    _declare("report", _report_stage, "config out budget started options seeds data inception_on_test "
             "metric_network real_is gan_run gan_summary gan_volumes gan_checkpoint quality downstream "
             "downstream_by_classifier chance baseline paired verdict curves ablations uncertainty", "report",
             stored=False),
)

#: the stages of one evaluation, in order (``results.json`` "timings_s" names them the same way)
STAGES = tuple(stage.name for stage in BUILTIN_STAGES)


def save_figures(config: EvaluationConfig, out: Path, data: EvaluationData, gan: LabelledVolumes,
                 inception_on_test: ClassificationResult, downstream: dict[str, DownstreamResult],
                 curves: dict[str, list], quality: dict[str, dict[str, Any]], seeds: list[int],
                 gan_info: dict[str, Any] | None = None) -> None:
    """The report's PNGs: slice montage (XY and XZ), the same particles as GAN input and output,
    power spectra, intensity histograms, confusion matrices, downstream bars (overall and per class),
    metric curves. Sets are named by role (``report.set_names``; ``gan_info``: the run's ``gan_summary``)."""
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

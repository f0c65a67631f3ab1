"""report.md from results.json, in the paper's table layout.

Every number in the report is read from the results dictionary and printed with ``number``
(three decimals), so ``results.json`` holds every figure the report shows.

Sets are named by their role (``set_names``): the experimental set (and, where it is simulated, by
which simulator), the traditional simulation (its simulator), and the GAN by what it is (input
mode, generator, critic, extra loss terms), never by the name of one implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from cryoet_forge.metrics.reliability import rule_names

METRIC_COLUMNS = ("IS", "FID", "Precision", "Recall", "Density", "Coverage")
#: the report's title unless ``[report] title`` sets one (``evaluate.config.ReportSection``)
DEFAULT_TITLE = "CryoETGAN evaluation"


def number(value: float | int | None) -> str:
    """The one format of every figure in the report."""
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    if value != 0 and abs(value) < 0.01:
        return f"{value:.2e}"  # tiny FIDs of near-identical sets keep their magnitude
    return f"{value:.3f}"


@dataclass(frozen=True)
class SetNames:
    """How the report and its figures name the sets."""

    #: the reference set: "experimental (simulated by tilt-series)" in the embedded mode, else "experimental"
    experimental: str
    #: "traditional (fourier)"
    traditional: str
    #: the GAN's method: "refinement: unet3d + sn-wgan, identity loss"
    method: str
    #: the GAN's row in the tables: "CryoETGAN" for the paper's setting (its generator and critic from
    #: density maps, no extra loss term), else "GAN (<method>)"
    gan: str
    #: what the GAN reads: "traditional (fourier)" (refinement) or "density map"
    gan_input: str
    #: every set is simulated (no real data): the report opens with a banner saying so
    all_simulated: bool
    #: the simulator of the experimental set (embedded mode), else ""
    experimental_simulator: str = ""
    #: the simulator of the traditional set
    traditional_simulator: str = ""


def extra_loss_terms(loss: Any) -> dict[str, float]:
    """The generator's loss terms beyond the adversarial and cycle terms, by name, with their weights
    (the non-zero ones only): ``identity``, ``semantic`` and each ``[loss.regularizers]`` entry.
    ``loss``: a training configuration's ``LossConfig``."""
    terms = {"identity": float(loss.identity_weight), "semantic": float(loss.semantic_weight)}
    for name, options in dict(loss.regularizers).items():
        terms[str(name)] = float(dict(options).get("weight", 1.0))
    return {name: weight for name, weight in terms.items() if weight > 0}


def method_description(gan: Mapping[str, Any] | None, gan_input: str) -> str:
    """"refinement: unet3d + sn-wgan, identity loss": the input mode (refinement of the traditional
    simulation, or from density maps), generator + critic, the non-zero extra loss terms (``gan``: the
    ``gan_summary`` of the run; a summary without ``extra_losses`` names no loss term)."""
    mode = "refinement" if gan_input == "traditional" else "from density maps"
    if not gan:
        return f"{mode}: GAN"
    text = f"{mode}: {gan['generator']} + {gan['critic']}"
    extras = gan.get("extra_losses")
    if extras:
        text += ", " + ", ".join(f"{name} loss" for name in extras)
    return text


def set_names(config: Mapping[str, Any], gan: Mapping[str, Any] | None) -> SetNames:
    """The names of the sets of one evaluation, from its resolved configuration (``config.to_dict()``)
    and the ``gan_summary`` of its GAN run."""
    gan_input = config["gan"].get("input", "density")
    embedded = config["data"]["source"] == "embedded"
    simulator = str(config["experimental"]["simulator"]) if embedded else ""
    experimental = f"experimental (simulated by {simulator})" if embedded else "experimental"
    traditional_simulator = str(config["traditional"]["simulator"])
    traditional = f"traditional ({traditional_simulator})"
    method = method_description(gan, gan_input)
    paper = gan is not None and gan_input == "density" and gan["generator"] == "cryoetgan" \
        and gan["critic"] == "sn-wgan" and "extra_losses" in gan and not gan["extra_losses"]
    return SetNames(experimental=experimental, traditional=traditional, method=method,
                    gan="CryoETGAN" if paper else f"GAN ({method})",
                    gan_input=traditional if gan_input == "traditional" else "density map",
                    all_simulated=embedded, experimental_simulator=simulator,
                    traditional_simulator=traditional_simulator)


def _title(title: str, names: SetNames) -> str:
    """The configured title; the default one ("CryoETGAN evaluation") names the GAN that was evaluated."""
    if title == DEFAULT_TITLE and names.gan != "CryoETGAN":
        return DEFAULT_TITLE.replace("CryoETGAN", names.gan)
    return title


def _banner(names: SetNames) -> list[str]:
    if not names.all_simulated:
        return []
    return [f"> **Simulation against simulation: no real data.** The experimental set is simulated by "
            f"{names.experimental_simulator}, the traditional set by "
            f"{names.traditional_simulator}, and the GAN is trained on "
            "and applied to simulations. Every figure and number below compares simulators with one another; "
            "none of it shows how any set compares with real tomograms.", ""]


#: one line per metric: (name, which direction is better, what it measures)
METRIC_MEANINGS = (
    ("IS", "higher is better, from 1 up to the number of classes",
     "Inception Score, exp of the mean KL divergence between each volume's class probabilities and their "
     "average: high when each volume is confidently one class and all classes occur."),
    ("FID", "lower is better, 0 at best",
     "Fréchet distance between Gaussians fitted to the set's features and to the experimental test split's "
     "(0: the same mean and covariance)."),
    ("Precision", "higher is better, 0 to 1",
     "realism: the fraction of the set's volumes inside the k-nearest-neighbour balls of the experimental "
     "features."),
    ("Recall", "higher is better, 0 to 1",
     "diversity: the fraction of experimental volumes inside the k-nearest-neighbour balls of the set's "
     "features."),
    ("Density", "higher is better, about 1 when the set is distributed like the experimental data",
     "realism robust to outliers: how many experimental k-nearest-neighbour balls hold each of the set's "
     "volumes, over k (can exceed 1)."),
    ("Coverage", "higher is better, 0 to 1",
     "the fraction of experimental volumes whose k-nearest-neighbour ball holds at least one of the set's "
     "volumes."),
    ("Accuracy", "higher is better, 0 to 1",
     "the fraction of the experimental test split that a CB3D trained on the set classifies correctly, mean "
     "over seeds with a Student-t interval (chance: always answering the most common class)."),
    ("Per-class accuracy", "higher is better, 0 to 1",
     "the same for the test volumes of one class (that class's recall)."),
    ("GAN minus traditional", "above 0 favours the GAN",
     "the accuracy difference per seed (same seed, same classifier initialisation); an interval that holds 0 "
     "decides nothing."),
)


def _metric_meanings() -> list[str]:
    return (["### What the columns mean", ""]
            + [f"- **{name}** ({direction}): {text}" for name, direction, text in METRIC_MEANINGS] + [""])


def _interval(downstream: dict[str, Any]) -> str:
    return (f"{number(downstream['mean'])} [{number(downstream['ci_low'])}, {number(downstream['ci_high'])}]")


#: the key of each metric column in a quality row's ``reliability`` (cryoet_forge.metrics.reliability)
RELIABILITY_KEYS = ("inception_score", "fid", "precision", "recall", "density", "coverage")


def _metric_cells(q: dict[str, Any]) -> list[str]:
    cells = [f"{number(q['is_mean'])} ± {number(q['is_std'])}", number(q["fid"]), number(q["precision"]),
             number(q["recall"]), number(q["density"]), number(q["coverage"])]
    if q.get("reliable") is False:  # the inception network is near chance (see the verdict section)
        return [f"{cell} (unreliable)" for cell in cells]

    rules = q.get("reliability") or {}  # the per-metric rules, by name (N <= D, all-zero PRDC, IS near 1)
    return [f"{cell} (unreliable: {rule_names(rules[key])})" if rules.get(key) else cell
            for cell, key in zip(cells, RELIABILITY_KEYS)]


def _verdict_section(results: dict[str, Any], names: SetNames) -> list[str]:
    """Chance, the experimental ceiling, the baseline, the inception network's own scores, the counts, the verdict."""
    verdict, paired = results.get("verdict"), results.get("downstream_paired")
    if not verdict or not paired:
        return []
    inception, baseline = results["inception"], results["baseline"]
    counts = results["counts"]
    lines = ["## What this evaluation can say", "",
             f"**{verdict['sentence']}**", ""]
    lines += [f"- Chance (always the most common test class): {number(results['chance'])}.",
              f"- Ceiling: CB3D trained on the experimental training split scores "
              f"{number(inception['real_test']['accuracy'])} on the experimental test split; its Inception Score "
              f"there is {number(inception['is_mean'])} "
              f"± {number(inception['is_std'])}. FID, PRDC and IS are "
              + ("reliable" if verdict["metrics_reliable"] else "**unreliable**")
              + f" (the rule: the ceiling must be at least {number(verdict['margin'])} above chance).",
              f"- Baseline: a radial-profile logistic regression trained on the same experimental split scores "
              f"{number(baseline['accuracy'])} (train {number(baseline['train_accuracy'])}).",
              "- GAN minus traditional accuracy per seed (same seed, same classifier initialisation): "
              + ", ".join(number(d) for d in paired["differences"])
              + f"; mean {number(paired['mean'])}, paired interval [{number(paired['ci_low'])}, "
              f"{number(paired['ci_high'])}]; the GAN wins {paired['gan_wins']} of {paired['n']} seeds."]
    lines += [f"- Warning: {note}." for note in verdict["notes"]]
    lines += _classifier_kinds(results, names)
    classes = list(counts["real_test"])
    lines += ["", "Volumes per class:", ""]
    lines += _table(["Set", *classes], [[label, *(str(counts[key][n]) for n in classes)] for key, label in
                                      (("real_train", f"{names.experimental} train"),
                                       ("real_test", f"{names.experimental} test"),
                                       ("traditional", names.traditional), ("cryoetgan", names.gan))])
    return lines + [""]


def _metrics_network_line(results: dict[str, Any]) -> str:
    """Which network's features and probabilities FID, PRDC and IS use, and why."""
    network = results.get("metrics_network") or {"kind": "cb3d"}
    chosen = ""
    if network.get("validation_accuracy"):
        chosen = (" (the most accurate on the real validation part: "
                  + ", ".join(f"{kind} {number(value)}" for kind, value in network["validation_accuracy"].items())
                  + ")")
    what = ("the features (fc7, the last dense layer) and class probabilities of a CB3D" if network["kind"] == "cb3d"
            else f"the features and class probabilities of the {network['kind']} classifier")
    return (f"All metrics use {what} trained on the experimental training split (the \"Inception network\")"
            f"{chosen}; FID and PRDC compare each set with the experimental test split.")


#: simulation.json-style acquisition keys -> (label, unit) in the report
ACQUISITION_LABELS = {"tilt_range_deg": ("tilt range", "°"), "tilt_step_deg": ("tilt step", "°"),
                      "dose_e_per_A2": ("dose", " e/Å²"), "voltage_kv": ("voltage", " kV"),
                      "defocus_underfocus_um": ("defocus (underfocus)", " µm"), "cs_mm": ("Cs", " mm"),
                      "amplitude_contrast": ("amplitude contrast", "")}


def _acquisition_line(results: dict[str, Any]) -> list[str]:
    """The traditional simulation's acquisition, each value with where it came from."""
    used = results.get("traditional_acquisition")
    if not used:
        return []
    simulator = results.get("config", {}).get("traditional", {}).get("simulator", "the traditional simulator")
    sources = used.get("sources", {})
    parts = []
    for key, (label, unit) in ACQUISITION_LABELS.items():
        if key not in used:
            continue
        value = used[key]
        text = " to ".join(number(v) for v in value) if isinstance(value, list) else number(value)
        source = sources.get(key, "")
        parts.append(f"{label} {text}{unit}" + (f" ({source})" if source else ""))
    return [f"Traditional simulation ({simulator}) acquisition: {'; '.join(parts)}."]


#: what each verdict outcome of a classifier kind reads as in the report
OUTCOMES = {"does-not-learn": "does not learn the experimental data: says nothing", "inconclusive": "inconclusive",
            "neither-transfers": "neither synthetic set teaches it more than chance: says nothing",
            "gan-ahead": "GAN ahead", "traditional-ahead": "traditional ahead",
            "no-clear-difference": "no clear difference"}


def _classifier_kinds(results: dict[str, Any], names: SetNames) -> list[str]:
    """One row per downstream classifier kind (``[downstream] classifiers``): its ceiling, its
    accuracy on each synthetic set, its paired difference and its own verdict."""
    answers = (results.get("verdict") or {}).get("by_classifier")
    if not answers:
        return []
    scores = {"cb3d": results["downstream"], **results.get("downstream_by_classifier", {})}
    rows = []
    for kind, answer in answers.items():
        paired = answer["paired"]
        real = (number(answer["real_accuracy"]) + " (one seed: the inception network)" if kind == "cb3d"
                else _interval(scores[kind]["real"]))
        rows.append([kind, real, _interval(scores[kind]["traditional"]), _interval(scores[kind]["cryoetgan"]),
                     f"{number(paired['mean'])} [{number(paired['ci_low'])}, {number(paired['ci_high'])}]",
                     OUTCOMES.get(answer["outcome"], answer["outcome"])])
    return ["", "Each downstream classifier kind, trained on each set and scored on the experimental test split "
            "(mean and interval over seeds); the GAN-against-traditional question has an answer only where the "
            "kind learns the experimental data:", "",
            *_table(["Classifier", f"trained on {names.experimental}", f"on {names.traditional}",
                     f"on {names.gan}", "GAN minus traditional (paired)", "verdict"], rows)]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render_report(results: dict[str, Any]) -> str:
    """report.md: one section after another, each from ``results`` alone."""
    names = set_names(results["config"], results.get("gan"))
    downstream = results["downstream"]
    confidence = downstream["cryoetgan"]["confidence"]
    ci = f"{round(confidence * 100)}% CI over {len(downstream['cryoetgan']['seeds'])} seeds"
    lines = _header(results, names)
    lines += _data_section(results)
    lines += _verdict_section(results, names)
    lines += _table_2(results, names, ci)
    lines += _per_class_section(results, ci)
    lines += _ablation_tables(results, names)
    lines += _figures_section(results, names, ci)
    lines += _reproduce_section(results)
    lines += _budget_section(results)
    return "\n".join(lines)


def _refines(results: dict[str, Any]) -> bool:
    """The GAN refines the traditional simulation (else it maps density maps to subtomograms)."""
    return results["config"]["gan"].get("input") == "traditional"


def _header(results: dict[str, Any], names: SetNames) -> list[str]:
    """The title, the simulation-only banner and the sets of the report by role."""
    gan = results.get("gan")
    extras = (gan or {}).get("extra_losses")
    loss_terms = ("; extra loss terms (weight): " + ", ".join(f"{k} {number(v)}" for k, v in extras.items())
                  if extras else "; no extra loss term" if extras is not None else "")
    lines = [f"# {_title(results['title'], names)}", ""]
    lines += _banner(names)
    lines += [
        "Sets in this report, by role:", "",
        f"- **{names.experimental}**: the reference. Its training split trains the inception network "
        "(and is the GAN's target domain); its test split is what every metric and classifier is scored on.",
        f"- **{names.traditional}**: the baseline, traditional simulation of the clean class maps.",
        f"- **{names.gan}**" + ("" if names.gan.endswith(f"({names.method})") else f" ({names.method})") + ": "
        + ("the GAN's generator refines the traditional simulation (its input is the traditional set itself)"
           if _refines(results) else "the GAN's generator maps posed clean density maps to subtomograms")
        + (f"; {gan['generator']} generator, {gan['critic']} critic, {gan['loss']} adversarial loss{loss_terms}."
           if gan else "."),
        "",
    ]
    return lines


def _data_section(results: dict[str, Any]) -> list[str]:
    """The data, its classes and split sizes, the traditional acquisition and the metrics' network."""
    data = results["data"]
    return [
        f"Data: {data['description']}.",
        f"Classes: {', '.join(data['class_names'])}; box {data['box']}^3 voxels at {number(data['voxel_size'])} Å.",
        *_acquisition_line(results),
        f"Experimental train split: {data['n_real_train']} subtomograms; experimental test split: "
        f"{data['n_real_test']}; "
        + ("traditional volumes (domain D: the GAN refines traditional simulation) for GAN training: "
           if _refines(results) else "density maps (domain D) for GAN training: ")
        + f"{data['n_density_train']}; "
        f"traditional and GAN sets: {data['n_traditional']} and {data['n_generated']} volumes.",
        "",
        _metrics_network_line(results),
        "",
    ]


def _table_2(results: dict[str, Any], names: SetNames, ci: str) -> list[str]:
    """Table 2 (every metric and the downstream accuracy of each set), the comparison sentence under
    it and what the columns mean."""
    quality, downstream, inception = results["quality"], results["downstream"], results["inception"]
    lines = ["## Table 2: simulated data against the experimental test split", ""]
    chance = results.get("chance")
    beside = (f"; chance {number(chance)}, train-on-experimental ceiling "
              f"{number(inception['real_test']['accuracy'])}" if chance is not None else "")
    header = ["Method", *METRIC_COLUMNS, f"Accuracy ({ci}{beside})"]
    rows = [
        [f"{names.experimental} test split (reference)",
         f"{number(inception['is_mean'])} ± {number(inception['is_std'])}",
         "", "", "", "", "", f"{number(inception['real_test']['accuracy'])} (train on experimental)"],
        [names.traditional, *_metric_cells(quality["traditional"]), _interval(downstream["traditional"])],
        [names.gan, *_metric_cells(quality["cryoetgan"]), _interval(downstream["cryoetgan"])],
    ]
    lines += _table(header, rows)
    lines += ["", f"Accuracy is CB3D trained on each set ({downstream['cryoetgan']['n_train']} volumes) and tested "
              f"on the experimental test split. {_comparison(results)}{_gan_training(results)}", ""]
    return lines + _metric_meanings()


def _comparison(results: dict[str, Any]) -> str:
    """The verdict's sentence; for results written before the verdict existed, the comparison of the
    two accuracy intervals."""
    if results.get("verdict"):
        return f"{results['verdict']['sentence']}"
    downstream, gain = results["downstream"], results["downstream_difference"]
    word = "beats" if downstream["cryoetgan"]["ci_low"] > downstream["traditional"]["ci_high"] else (
        "is ahead of (intervals overlap)" if gain > 0 else "does not beat")
    return (f"The classifier trained on GAN output {word} the one trained on traditional simulation "
            f"(mean difference {number(gain)}).")


def _gan_training(results: dict[str, Any]) -> str:
    """How long the GAN trained and, where the lowest training FID chose it, which checkpoint made the data."""
    gan = results.get("gan")
    trained = (f" The GAN was trained for {gan['steps']} steps of batch {gan['batch_size']}." if gan else "")
    chosen = results.get("gan_checkpoint")
    if chosen and chosen.get("rule") == "best-fid-train":
        trained += (f" Its data come from the checkpoint at step {chosen['step']}, the lowest FID against the "
                    f"experimental training split ({number(chosen['fid_train'][str(chosen['step'])])}).")
    return trained


def _per_class_section(results: dict[str, Any], ci: str) -> list[str]:
    """Per-class accuracy of the classifier trained on each set, the per-seed accuracies and their figure."""
    downstream = results["downstream"]
    lines = ["### Per-class accuracy on the experimental test split", ""]
    per_class_rows = []
    real_pc = results["inception"]["real_test"]["per_class_accuracy"]
    for name in results["data"]["class_names"]:
        per_class_rows.append([name, number(real_pc[name]),
                               number(downstream["traditional"]["per_class_accuracy_mean"][name]),
                               number(downstream["cryoetgan"]["per_class_accuracy_mean"][name])])
    lines += _table(["Class", "train on experimental", "train on traditional (mean over seeds)",
                     "train on GAN (mean over seeds)"], per_class_rows)
    lines += ["", "Per-seed accuracies: traditional "
              + ", ".join(number(a) for a in downstream["traditional"]["accuracies"])
              + "; GAN " + ", ".join(number(a) for a in downstream["cryoetgan"]["accuracies"]) + ".", "",
              f"Per-class accuracy with its {ci} (Student-t; dots: the seeds). The classifier trained on "
              "experimental data is one training run, drawn without an interval:", "",
              "![per-class accuracy](figures/per_class_accuracy.png)", ""]
    return lines


def _ablation_tables(results: dict[str, Any], names: SetNames) -> list[str]:
    """Table 3 (density-map noise) and Table 4 (component ablations), each where it was run."""
    ablations = results["ablations"]
    noise = [a for a in ablations if a["table"] == "noise"]
    components = [a for a in ablations if a["table"] == "components"]
    lines: list[str] = []
    if noise:
        lines += ["## Table 3: density-map noise std during training", ""]
        lines += _table(["Noise std", *METRIC_COLUMNS, "Accuracy"],
                        [[a["label"], *_metric_cells(a), _interval(a["downstream"])] for a in noise])
        lines += [""]
    if components:
        gan_quality, gan_downstream = results["quality"]["cryoetgan"], results["downstream"]["cryoetgan"]
        lines += ["## Table 4: ablations", ""]
        rows = [[f"{names.gan} (full)", *_metric_cells(gan_quality), _interval(gan_downstream)]]
        rows += [[a["label"], *_metric_cells(a), _interval(a["downstream"])] for a in components]
        lines += _table(["Variant", *METRIC_COLUMNS, "Accuracy"], rows)
        lines += [""]
    if ablations:
        seeds = ablations[0]["downstream"]["seeds"]
        lines += [f"Ablation accuracies use {len(seeds)} seed(s) each; a single seed gives a zero-width interval.", ""]
    return lines


def _figures_section(results: dict[str, Any], names: SetNames, ci: str) -> list[str]:
    """The figures: montages, particle pairs, spectra and histograms, then the training curves, the
    confusion matrices, the accuracy bars and the uncertainty overlay."""
    refine = _refines(results)
    lines = ["## Figures", "",
             "Central slices per class, each particle as XY (the central z slice) and XZ (the central y slice, "
             "z downwards: the missing wedge of a tilt series about y elongates densities along z and leaves "
             "streaks there); rows: "
             + ("" if refine else "clean density map (the GAN's input), ")
             + f"{names.experimental} test, {names.traditional}"
             + (" (also the GAN's input: the GAN refines these volumes)" if refine else "")
             + ", GAN output. Each image is scaled to its own 1st-99th percentile:", "",
             "![montage](figures/montage.png)", "",
             f"The same particle as GAN input ({names.gan_input}), GAN output and output minus input, one "
             "particle per class, XY and XZ. Both volumes are z-scored first; the difference is red where the "
             "output is brighter, blue where darker:", "",
             "![particle pairs](figures/particle_pairs.png)", "",
             f"Radially averaged power spectra (mean over the volumes of each set, each volume z-scored, log "
             f"scale) of the {names.experimental} test split, the {names.traditional} set and the GAN set. "
             "Where a set's curve lies on the experimental one, it distributes its power over spatial "
             "frequencies like the experimental set (contrast, resolution, noise colour):", "",
             "![power spectra](figures/power_spectra.png)", "",
             "Intensity histograms of the same sets, normalised the same way (each volume z-scored, all voxels "
             "pooled; linear and log scale):", "",
             "![intensity histograms](figures/intensity_histograms.png)", ""]
    lines += _curves_section(results["curves"])
    lines += ["Confusion matrices on the experimental test split (first seed):", "",
              "| train on experimental | train on traditional | train on GAN |", "|---|---|---|",
              "| ![](figures/confusion_inception.png) | ![](figures/confusion_traditional.png) | "
              "![](figures/confusion_cryoetgan.png) |", "",
              f"Accuracy on the experimental test split per training set (whiskers: the {ci}):", "",
              "![accuracy](figures/downstream_accuracy.png)", ""]
    return lines + _uncertainty_lines(results["uncertainty"])


def _curves_section(curves: dict[str, Any]) -> list[str]:
    """The GAN's metrics at its training checkpoints (figure and table), where there were checkpoints."""
    if not curves["steps"]:
        return []
    lines = ["Metrics of the GAN at its training checkpoints (dashed: traditional simulation):", "",
             "![curves](figures/curves.png)", ""]
    lines += _table(["Step", "IS", "FID", "Precision", "Recall", "Density", "Coverage"],
                    [[str(s), number(curves["is_mean"][i]), number(curves["fid"][i]),
                      number(curves["precision"][i]), number(curves["recall"][i]),
                      number(curves["density"][i]), number(curves["coverage"][i])]
                     for i, s in enumerate(curves["steps"])])
    return lines + [""]


def _uncertainty_lines(uncertainty: dict[str, Any]) -> list[str]:
    """The generator's Monte-Carlo-dropout uncertainty overlay, or why there is none."""
    if uncertainty.get("status") == "ok":
        return [f"Monte-Carlo-dropout uncertainty of the generator ({uncertainty['samples']} samples; mean "
                "per-voxel std: " + ", ".join(f"{k} {number(v)}" for k, v in
                                              uncertainty["mean_std_per_class"].items()) + "):", "",
                "![uncertainty](figures/uncertainty.png)", ""]
    return [f"Uncertainty overlay: {uncertainty.get('status')}.", ""]


def _reproduce_section(results: dict[str, Any]) -> list[str]:
    """Where the configuration, the GAN run and the features are, and how long each stage took."""
    timings = results["timings_s"]
    return ["## Reproduce", "",
            f"Configuration: `{results['config']['origin']}` (the full resolved configuration is in results.json). "
            f"GAN run folder: `{results['gan_run']}`. Features behind every metric: `features/*.npy`; "
            "the inception CB3D: `models/inception/`.",
            "",
            "Time (s): " + ", ".join(f"{k} {number(float(v))}" for k, v in timings.items()) + ".", ""]


def _budget_section(results: dict[str, Any]) -> list[str]:
    """What ``--budget-minutes`` measured and scaled, and the time predicted against the time taken."""
    budget = results.get("budget")
    if not budget:
        return []
    scaled = budget["scaled"]
    shown = ("; ".join(f"`{key}` {change['from']} -> {change['to']}" for key, change in scaled.items())
             if scaled else "nothing (the configured run fits)")
    lines = ["## Time budget", "",
             f"Asked for {number(budget['minutes'])} min. Measured on this machine before the run "
             f"({number(budget['costs']['calibration_s'])} s): "
             f"{number(budget['costs']['gan_step_s'])} s per GAN step, "
             f"{number(budget['costs']['classifier_volume_epoch_s'])} s per classifier volume-epoch. "
             f"Scaled: {shown}. Predicted {number(budget['predicted_s']['total'])} s "
             f"(unscaled {number(budget['predicted_unscaled_s'])} s); the run took "
             f"{number(float(results['timings_s']['total']))} s.", ""]
    if budget.get("warning"):
        lines += [f"Warning: {budget['warning']}.", ""]
    return lines

"""report.md from results.json, in the paper's table layout.

Every number in the report is read from the results dictionary and printed with ``number``
(three decimals), so ``results.json`` holds every figure the report shows.
"""

from __future__ import annotations

from typing import Any

METRIC_COLUMNS = ("IS", "FID", "Precision", "Recall", "Density", "Coverage")


def number(value: float | int | None) -> str:
    """The one format of every figure in the report."""
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    if value != 0 and abs(value) < 0.01:
        return f"{value:.2e}"  # tiny FIDs of near-identical sets keep their magnitude
    return f"{value:.3f}"


def _interval(downstream: dict[str, Any]) -> str:
    return (f"{number(downstream['mean'])} [{number(downstream['ci_low'])}, {number(downstream['ci_high'])}]")


#: the key of each metric column in a quality row's ``reliability`` (cryoet_forge.metrics.reliability)
RELIABILITY_KEYS = ("inception_score", "fid", "precision", "recall", "density", "coverage")


def _metric_cells(q: dict[str, Any]) -> list[str]:
    cells = [f"{number(q['is_mean'])} ± {number(q['is_std'])}", number(q["fid"]), number(q["precision"]),
             number(q["recall"]), number(q["density"]), number(q["coverage"])]
    if q.get("reliable") is False:  # the inception network is near chance (see the verdict section)
        return [f"{cell} (unreliable)" for cell in cells]
    from cryoet_forge.metrics.reliability import rule_names

    rules = q.get("reliability") or {}  # the per-metric rules, by name (N <= D, all-zero PRDC, IS near 1)
    return [f"{cell} (unreliable: {rule_names(rules[key])})" if rules.get(key) else cell
            for cell, key in zip(cells, RELIABILITY_KEYS)]


def _verdict_section(results: dict[str, Any]) -> list[str]:
    """Chance, the real ceiling, the baseline, the inception network's own scores, the counts, the verdict."""
    verdict, paired = results.get("verdict"), results.get("downstream_paired")
    if not verdict or not paired:
        return []
    inception, baseline = results["inception"], results["baseline"]
    counts = results["counts"]
    lines = ["## What this evaluation can say", "",
             f"**{verdict['sentence']}**", ""]
    lines += [f"- Chance (always the most common test class): {number(results['chance'])}.",
              f"- Ceiling: CB3D trained on the real training split scores {number(inception['real_test']['accuracy'])} "
              f"on the real test split; its Inception Score there is {number(inception['is_mean'])} "
              f"± {number(inception['is_std'])}. FID, PRDC and IS are "
              + ("reliable" if verdict["metrics_reliable"] else "**unreliable**")
              + f" (the rule: the ceiling must be at least {number(verdict['margin'])} above chance).",
              f"- Baseline: a radial-profile logistic regression trained on the same real split scores "
              f"{number(baseline['accuracy'])} (train {number(baseline['train_accuracy'])}).",
              "- GAN minus traditional accuracy per seed (same seed, same classifier initialisation): "
              + ", ".join(number(d) for d in paired["differences"])
              + f"; mean {number(paired['mean'])}, paired interval [{number(paired['ci_low'])}, "
              f"{number(paired['ci_high'])}]; the GAN wins {paired['gan_wins']} of {paired['n']} seeds."]
    lines += [f"- Warning: {note}." for note in verdict["notes"]]
    names = list(counts["real_test"])
    lines += ["", "Volumes per class:", ""]
    lines += _table(["Set", *names], [[label, *(str(counts[key][n]) for n in names)] for key, label in
                                      (("real_train", "real train"), ("real_test", "real test"),
                                       ("traditional", "traditional"), ("cryoetgan", "CryoETGAN"))])
    return lines + [""]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render_report(results: dict[str, Any]) -> str:
    data = results["data"]
    quality = results["quality"]
    downstream = results["downstream"]
    inception = results["inception"]
    confidence = downstream["cryoetgan"]["confidence"]
    n_seeds = len(downstream["cryoetgan"]["seeds"])
    ci = f"{round(confidence * 100)}% CI over {n_seeds} seeds"
    lines = [f"# {results['title']}", ""]
    lines += [
        f"Data: {data['description']}.",
        f"Classes: {', '.join(data['class_names'])}; box {data['box']}^3 voxels at {number(data['voxel_size'])} Å.",
        f"Real train split: {data['n_real_train']} subtomograms; real test split: {data['n_real_test']}; "
        + ("traditional volumes (domain D: the GAN refines traditional simulation) for GAN training: "
           if results["config"]["gan"].get("input") == "traditional" else
           "density maps (domain D) for GAN training: ")
        + f"{data['n_density_train']}; "
        f"traditional and GAN sets: {data['n_traditional']} and {data['n_generated']} volumes.",
        "",
        "All metrics use the features (fc7, the last dense layer) and class probabilities of a CB3D "
        "trained on the real training split (the \"Inception network\"); FID and PRDC compare each "
        "set with the real test split.",
        "",
    ]
    lines += _verdict_section(results)
    lines += ["## Table 2: simulated data against the real test split", ""]
    chance = results.get("chance")
    beside = (f"; chance {number(chance)}, train-on-real ceiling {number(inception['real_test']['accuracy'])}"
              if chance is not None else "")
    header = ["Method", *METRIC_COLUMNS, f"Accuracy ({ci}{beside})"]
    rows = [
        ["Real test split (reference)", f"{number(inception['is_mean'])} ± {number(inception['is_std'])}",
         "", "", "", "", "", f"{number(inception['real_test']['accuracy'])} (train on real)"],
        ["Traditional simulation", *_metric_cells(quality["traditional"]), _interval(downstream["traditional"])],
        ["CryoETGAN", *_metric_cells(quality["cryoetgan"]), _interval(downstream["cryoetgan"])],
    ]
    lines += _table(header, rows)
    gain = results["downstream_difference"]
    gan = results.get("gan")
    trained = (f" The GAN ({gan['generator']} generator, {gan['critic']} critic, {gan['loss']} loss) was trained "
               f"for {gan['steps']} steps of batch {gan['batch_size']}." if gan else "")
    chosen = results.get("gan_checkpoint")
    if chosen and chosen.get("rule") == "best-fid-train":
        trained += (f" Its data come from the checkpoint at step {chosen['step']}, the lowest FID against the real "
                    f"training split ({number(chosen['fid_train'][str(chosen['step'])])}).")
    if results.get("verdict"):
        comparison = f"{results['verdict']['sentence']}"
    else:  # results written before the verdict existed
        word = "beats" if downstream["cryoetgan"]["ci_low"] > downstream["traditional"]["ci_high"] else (
            "is ahead of (intervals overlap)" if gain > 0 else "does not beat")
        comparison = (f"The classifier trained on GAN output {word} the one trained on traditional simulation "
                      f"(mean difference {number(gain)}).")
    lines += ["", f"Accuracy is CB3D trained on each set ({downstream['cryoetgan']['n_train']} volumes) and tested "
              f"on the real test split. {comparison}{trained}", ""]

    lines += ["### Per-class accuracy on the real test split", ""]
    per_class_rows = []
    real_pc = inception["real_test"]["per_class_accuracy"]
    for name in data["class_names"]:
        per_class_rows.append([name, number(real_pc[name]),
                               number(downstream["traditional"]["per_class_accuracy_mean"][name]),
                               number(downstream["cryoetgan"]["per_class_accuracy_mean"][name])])
    lines += _table(["Class", "train on real", "train on traditional (mean over seeds)",
                     "train on CryoETGAN (mean over seeds)"], per_class_rows)
    lines += ["", "Per-seed accuracies: traditional "
              + ", ".join(number(a) for a in downstream["traditional"]["accuracies"])
              + "; CryoETGAN " + ", ".join(number(a) for a in downstream["cryoetgan"]["accuracies"]) + ".", ""]

    ablations = results["ablations"]
    noise = [a for a in ablations if a["table"] == "noise"]
    components = [a for a in ablations if a["table"] == "components"]
    if noise:
        lines += ["## Table 3: density-map noise std during training", ""]
        lines += _table(["Noise std", *METRIC_COLUMNS, "Accuracy"],
                        [[a["label"], *_metric_cells(a), _interval(a["downstream"])] for a in noise])
        lines += [""]
    if components:
        lines += ["## Table 4: ablations", ""]
        rows = [["CryoETGAN (full)", *_metric_cells(quality["cryoetgan"]), _interval(downstream["cryoetgan"])]]
        rows += [[a["label"], *_metric_cells(a), _interval(a["downstream"])] for a in components]
        lines += _table(["Variant", *METRIC_COLUMNS, "Accuracy"], rows)
        lines += [""]
    if ablations:
        seeds = ablations[0]["downstream"]["seeds"]
        lines += [f"Ablation accuracies use {len(seeds)} seed(s) each; a single seed gives a zero-width interval.", ""]

    lines += ["## Figures", "",
              "Central slices per class (rows: "
              + ("the traditional volume the GAN refines" if results["config"]["gan"].get("input") == "traditional"
                 else "clean density map")
              + ", real test, traditional, CryoETGAN):", "",
              "![montage](figures/montage.png)", ""]
    curves = results["curves"]
    if curves["steps"]:
        lines += ["Metrics of the GAN at its training checkpoints (dashed: traditional simulation):", "",
                  "![curves](figures/curves.png)", ""]
        lines += _table(["Step", "IS", "FID", "Precision", "Recall", "Density", "Coverage"],
                        [[str(s), number(curves["is_mean"][i]), number(curves["fid"][i]),
                          number(curves["precision"][i]), number(curves["recall"][i]),
                          number(curves["density"][i]), number(curves["coverage"][i])]
                         for i, s in enumerate(curves["steps"])])
        lines += [""]
    lines += ["Confusion matrices on the real test split (first seed):", "",
              "| train on real | train on traditional | train on CryoETGAN |", "|---|---|---|",
              "| ![](figures/confusion_inception.png) | ![](figures/confusion_traditional.png) | "
              "![](figures/confusion_cryoetgan.png) |", "",
              "![accuracy](figures/downstream_accuracy.png)", ""]
    uncertainty = results["uncertainty"]
    if uncertainty.get("status") == "ok":
        lines += [f"Monte-Carlo-dropout uncertainty of the generator ({uncertainty['samples']} samples; mean "
                  "per-voxel std: " + ", ".join(f"{k} {number(v)}" for k, v in
                                                uncertainty["mean_std_per_class"].items()) + "):", "",
                  "![uncertainty](figures/uncertainty.png)", ""]
    else:
        lines += [f"Uncertainty overlay: {uncertainty.get('status')}.", ""]
    timings = results["timings_s"]
    lines += ["## Reproduce", "",
              f"Configuration: `{results['config']['origin']}` (the full resolved configuration is in results.json). "
              f"GAN run folder: `{results['gan_run']}`. Features behind every metric: `features/*.npy`; "
              "the inception CB3D: `models/inception/`.",
              "",
              "Time (s): " + ", ".join(f"{k} {number(float(v))}" for k, v in timings.items()) + ".", ""]
    budget = results.get("budget")
    if budget:
        scaled = budget["scaled"]
        shown = ("; ".join(f"`{key}` {change['from']} -> {change['to']}" for key, change in scaled.items())
                 if scaled else "nothing (the configured run fits)")
        lines += ["## Time budget", "",
                  f"Asked for {number(budget['minutes'])} min. Measured on this machine before the run "
                  f"({number(budget['costs']['calibration_s'])} s): "
                  f"{number(budget['costs']['gan_step_s'])} s per GAN step, "
                  f"{number(budget['costs']['classifier_volume_epoch_s'])} s per classifier volume-epoch. "
                  f"Scaled: {shown}. Predicted {number(budget['predicted_s']['total'])} s "
                  f"(unscaled {number(budget['predicted_unscaled_s'])} s); the run took "
                  f"{number(float(timings['total']))} s.", ""]
        if budget.get("warning"):
            lines += [f"Warning: {budget['warning']}.", ""]
    return "\n".join(lines)

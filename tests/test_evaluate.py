"""`forge evaluate` end to end at toy size: report structure, and every number traced to its source."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cryoet_forge.classify import evaluate_cb3d, load_labelled
from cryoet_forge.cli import main
from cryoet_forge.errors import ConfigError
from cryoet_forge.evaluate.config import config_from_dict, load_evaluation_config
from cryoet_forge.evaluate.downstream import confidence_interval
from cryoet_forge.evaluate.pipeline import run_evaluation
from cryoet_forge.evaluate.report import number
from cryoet_forge.metrics import compute_fid, compute_prdc, inception_score
from cryoet_forge.models.cb3d import load_cb3d

TOY = {
    "data": {"classes": ["barrel", "ring", "membrane"], "box": 16, "n_train_per_class": 10,
             "n_test_per_class": 8, "n_density_per_class": 8},
    "experimental": {"simulator": "tilt-series", "options": {"crowding": 2, "tilt_step": 6.0}},
    "gan": {"curve_points": 2, "select_checkpoint": "best-fid-train", "overrides": {
        "train.steps": 4, "train.batch_size": 2, "train.n_critic": 1, "train.device": "cpu",
        "model.generator_options": {"base": 4, "n_residual": 1, "dropout": 0.1},
        "model.critic_options": {"base": 2, "n_layers": 2},
        "log.every": 2, "log.checkpoint_every": 2, "log.image_every": 0, "log.progress": False}},
    "classifier": {"channels": [4, 8, 8, 8], "fc_width": 16, "epochs": 2, "batch_size": 8},
    # in this process: a pool of worker processes costs seconds to start, more than these toy
    # classifiers take (the evaluation fixture below and test_evaluate_workers use the pool)
    "downstream": {"n_per_class": 8, "seeds": [0, 1], "workers": 0},
    "metrics": {"k": 3, "is_splits": 2},
    "ablations": {"noise_std": [0.2], "lsgan": True, "patchgan": True, "seeds": [0]},
    "uncertainty": {"samples": 3},
}


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    # the default worker setting: the downstream classifiers in a pool of single-threaded processes
    report = run_evaluation(config_from_dict(TOY, {"downstream.workers": "auto"}, origin="toy"), out,
                            log=lambda line: None)
    return out, report, json.loads((out / "results.json").read_text())


def test_report_structure(evaluation):
    out, report, results = evaluation
    text = report.read_text()
    for heading in ("## Table 2: simulated data against the experimental test split",
                    "## Table 3: density-map noise std during training", "## Table 4: ablations",
                    "### Per-class accuracy on the experimental test split", "## Figures", "## Reproduce"):
        assert heading in text
    for row in ("| experimental (simulated by tilt-series) test split (reference) |", "| traditional (fourier) |",
                "| CryoETGAN |",
                "| without Wasserstein (lsgan) |", "| without spectral norm (patchgan critic) |", "| 0.2 |"):
        assert row in text
    # the traditional simulation's acquisition, each value with its source (here the fourier defaults)
    line = next(line for line in text.splitlines() if line.startswith("Traditional simulation (fourier) acquisition:"))
    assert f"tilt range {number(-60.0)} to {number(60.0)}° (the fourier default)" in line
    assert results["traditional_acquisition"]["sources"]["tilt_range_deg"] == "the fourier default"
    # each classifier kind's row
    assert re.search(r"\| radial \| [0-9.]+ \[", text)
    for image in re.findall(r"\]\((figures/[^)]+\.png)\)", text):
        assert (out / image).stat().st_size > 1000, image
    for name in ("montage", "curves", "confusion_inception", "confusion_traditional", "confusion_cryoetgan",
                 "downstream_accuracy", "uncertainty"):
        assert f"figures/{name}.png" in text
    assert results["data"]["n_real_train"] == 30 and results["data"]["n_real_test"] == 24
    assert results["data"]["n_generated"] == results["data"]["n_traditional"] == 24


def _formatted_numbers(node, found):
    if isinstance(node, bool):
        return found
    if isinstance(node, (int, float)):
        found.update({number(node), number(float(node)), str(node)})
    elif isinstance(node, str):
        found.add(node)
    elif isinstance(node, dict):
        for value in node.values():
            _formatted_numbers(value, found)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _formatted_numbers(value, found)
    return found


def test_every_number_in_the_report_is_in_results_json(evaluation):
    _, report, results = evaluation
    known = _formatted_numbers(results, set())
    decimals = re.findall(r"-?\d+\.\d+(?:e[-+]\d+)?", report.read_text())
    assert len(decimals) > 40
    missing = [d for d in decimals if d not in known]
    assert not missing, missing


def test_quality_metrics_are_the_metrics_engine_values(evaluation):
    out, _, results = evaluation
    real = np.load(out / "features" / "real_test.features.npy")
    for key, stem in (("traditional", "traditional"), ("cryoetgan", "cryoetgan")):
        fake = np.load(out / "features" / f"{stem}.features.npy")
        probs = np.load(out / "features" / f"{stem}.probabilities.npy")
        q = results["quality"][key]
        assert q["fid"] == compute_fid(real, fake)
        prdc = compute_prdc(real, fake, k=3)
        for metric in ("precision", "recall", "density", "coverage"):
            assert q[metric] == prdc[metric]
        assert (q["is_mean"], q["is_std"]) == inception_score(probs, splits=2)
    real_probs = np.load(out / "features" / "real_test.probabilities.npy")
    assert (results["inception"]["is_mean"], results["inception"]["is_std"]) == inception_score(real_probs, splits=2)
    # the selected checkpoint is the one with the lowest FID against the real training split, and its
    # point on the curves (same generator, same noise) has the same scores as the main table
    chosen = results["gan_checkpoint"]
    assert chosen["rule"] == "best-fid-train" and set(chosen["fid_train"]) == {"2", "4"}
    assert chosen["fid_train"][str(chosen["step"])] == min(chosen["fid_train"].values())
    assert results["curves"]["steps"] == [2, 4]
    at = results["curves"]["steps"].index(chosen["step"])
    assert results["curves"]["fid"][at] == pytest.approx(results["quality"]["cryoetgan"]["fid"], rel=1e-6)
    # the uncertainty overlay is of the same (selected) generator
    assert chosen["checkpoint"].endswith(f"step-{chosen['step']:08d}")
    assert results["uncertainty"]["checkpoint"] == chosen["checkpoint"]


def test_forge_metrics_on_the_saved_features_gives_the_reported_values(evaluation, tmp_path):
    """`forge metrics` and `forge evaluate` compute one metric bundle: the command on the features
    the evaluation saved reproduces the report's PRDC and FID exactly."""
    out, _, results = evaluation
    doc_path = tmp_path / "m.json"
    code = main(["metrics", "--real", str(out / "features" / "real_test.features.npy"), "--fake",
                 str(out / "features" / "cryoetgan.features.npy"), "--k", "3", "--json", str(doc_path)])
    assert code == 0
    doc, q = json.loads(doc_path.read_text()), results["quality"]["cryoetgan"]
    for metric in ("precision", "recall", "density", "coverage", "fid"):
        assert doc[metric] == q[metric], metric
    assert sorted({w.split(" (")[0] for w in doc["fid_details"]["warnings"]}) == q["fid_notes"]


def test_accuracies_are_the_classifier_values(evaluation):
    out, _, results = evaluation
    model, meta = load_cb3d(out / "models" / "inception")
    real_test = load_labelled(out / "data" / "real_test" / "particles.star")
    scored = evaluate_cb3d(model, real_test, meta["class_names"])
    assert results["inception"]["real_test"]["accuracy"] == scored.accuracy
    assert results["inception"]["real_test"]["confusion"] == scored.confusion.tolist()
    for key in ("traditional", "cryoetgan"):
        d = results["downstream"][key]
        assert len(d["accuracies"]) == 2
        confusion = np.array(d["confusion_first_seed"])
        assert d["accuracies"][0] == pytest.approx(np.trace(confusion) / confusion.sum())
        assert (d["mean"], d["ci_low"], d["ci_high"]) == pytest.approx(confidence_interval(d["accuracies"], 0.95))
        for name, mean in d["per_class_accuracy_mean"].items():  # the report's per-class table
            assert mean == pytest.approx(np.mean([pc[name] for pc in d["per_class_accuracy"]]))
    assert results["downstream_difference"] == pytest.approx(
        results["downstream"]["cryoetgan"]["mean"] - results["downstream"]["traditional"]["mean"])
    for row in results["ablations"]:
        assert row["downstream"]["ci_low"] == row["downstream"]["ci_high"] == row["downstream"]["mean"]


def test_every_classifier_kind_is_scored_and_judged(evaluation):
    """The default [downstream] classifiers: radial beside cb3d, on the real split, traditional and
    GAN data; each kind's numbers are its classifier's, with its own paired verdict."""
    from cryoet_forge.classify import score_probabilities
    from cryoet_forge.registry import create

    out, _, results = evaluation
    radial = results["downstream_by_classifier"]["radial"]
    assert set(radial) == {"real", "traditional", "cryoetgan"}
    real_test = load_labelled(out / "data" / "real_test" / "particles.star")
    traditional = load_labelled(out / "data" / "traditional" / "particles.star")
    names = results["data"]["class_names"]
    assert len(radial["traditional"]["accuracies"]) == len(radial["real"]["accuracies"]) == 2
    for seed, accuracy in zip(radial["traditional"]["seeds"], radial["traditional"]["accuracies"]):
        classifier = create("classifier", "radial")
        classifier.fit(traditional.relabelled(names), seed)
        scored = score_probabilities(classifier.probabilities(real_test.volumes), real_test, names)
        assert accuracy == pytest.approx(scored.accuracy)
    answers = results["verdict"]["by_classifier"]
    assert set(answers) == {"cb3d", "radial"}
    assert answers["radial"]["real_accuracy"] == pytest.approx(radial["real"]["mean"])
    differences = [g - t for g, t in zip(radial["cryoetgan"]["accuracies"], radial["traditional"]["accuracies"])]
    assert answers["radial"]["paired"]["differences"] == pytest.approx(differences)
    assert answers["cb3d"]["paired"] == results["downstream_paired"]
    assert answers["radial"]["outcome"] in ("does-not-learn", "inconclusive", "gan-ahead", "traditional-ahead",
                                            "no-clear-difference")


def test_config_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown config key 'data.clases'"):
        config_from_dict({"data": {"clases": ["a"]}})
    with pytest.raises(ConfigError, match="data.real_train and data.real_test"):
        config_from_dict({"data": {"source": "folders"}})
    path = tmp_path / "bad.toml"
    path.write_text("[downstream]\nseeds = 3\n")
    with pytest.raises(ConfigError, match="bad.toml: config key 'downstream.seeds' must be of type list"):
        load_evaluation_config(path)
    code = main(["evaluate", "--config", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("forge: error: ") and "downstream.seeds" in err[0]
    code = main(["evaluate", "--config", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "config file not found" in err[0]


def test_unknown_class_without_maps_is_one_clear_error(tmp_path):
    config = config_from_dict({**TOY, "data": {**TOY["data"], "classes": ["barrel", "spaceship"]}})
    with pytest.raises(ConfigError, match="class 'spaceship' is not a phantom"):
        run_evaluation(config, tmp_path, log=lambda line: None)


def test_quickstart_config_file_matches_the_embedded_setting():
    from pathlib import Path

    from cryoet_forge.evaluate.config import quickstart_config

    path = Path(__file__).resolve().parents[1] / "configs" / "evaluate-quickstart.toml"
    from_file = load_evaluation_config(path).to_dict()
    embedded = quickstart_config().to_dict()
    from_file.pop("origin")
    embedded.pop("origin")
    assert from_file == embedded


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    """`forge quickstart` writes a report with tables and pictures (about 5 minutes on 2 cores)."""
    import subprocess
    import sys
    from pathlib import Path

    forge = Path(sys.executable).with_name("forge")
    proc = subprocess.run([str(forge), "quickstart", "--out", str(tmp_path / "qs")], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"report: {tmp_path / 'qs' / 'report.md'}" in proc.stdout
    text = (tmp_path / "qs" / "report.md").read_text()
    assert "## Table 2" in text and "figures/montage.png" in text
    results = json.loads((tmp_path / "qs" / "results.json").read_text())
    assert results["data"]["n_real_test"] == 96


def test_evaluate_on_folders_rejects_classes_present_in_one_split_only(tmp_path, capsys):
    from test_classify_cli import _edit_star, labelled_folder

    train = labelled_folder(tmp_path / "train", 2, seed=0)
    test = labelled_folder(tmp_path / "test", 2, seed=1)
    _edit_star(test, lambda t: t[t["forgeClassName"] != "shell"])
    config = tmp_path / "eval.toml"
    config.write_text(f'[data]\nsource = "folders"\nreal_train = "{train}"\nreal_test = "{test}"\n')
    code = main(["evaluate", "--config", str(config), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert err[0].startswith("forge: error: classes present in one split only: shell only in")


def _evaluate_folders(tmp_path, capsys, train, test):
    config = tmp_path / "eval.toml"
    config.write_text(f'[data]\nsource = "folders"\nreal_train = "{train}"\nreal_test = "{test}"\n')
    code = main(["evaluate", "--config", str(config), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("forge: error: "), err
    return err[0]


def test_evaluate_on_folders_rejects_one_split_given_twice(tmp_path, capsys):
    from test_classify_cli import labelled_folder

    star = labelled_folder(tmp_path / "real", 2, seed=0)
    n = len(load_labelled(star))
    line = _evaluate_folders(tmp_path, capsys, tmp_path / "real", star)  # the folder, then its STAR table
    assert line == (f"forge: error: data.real_train {tmp_path / 'real'} and data.real_test {star} are the same "
                    f"STAR table {star} (all {n} volumes overlap); the train and test splits must be disjoint")


def test_evaluate_on_folders_rejects_volumes_in_both_splits(tmp_path, capsys):
    from test_classify import toy_shapes

    from cryoet_forge.classify import LabelledVolumes
    from cryoet_forge.evaluate.datasets import write_labelled_folder

    train = toy_shapes(2, seed=0, box=16)
    test = toy_shapes(2, seed=1, box=16)
    volumes = test.volumes.copy()
    volumes[[0, 2, 3]] = train.volumes[[5, 1, 4]]  # three train particles leaked into the test split
    train_star = write_labelled_folder(tmp_path / "train", LabelledVolumes(train.volumes, train.labels,
                                                                             train.class_names, 10.0))
    test_star = write_labelled_folder(tmp_path / "test", LabelledVolumes(volumes, test.labels,
                                                                           test.class_names, 10.0))
    line = _evaluate_folders(tmp_path, capsys, train_star, test_star)
    assert line == (f"forge: error: data.real_train {train_star} and data.real_test {test_star} overlap: 3 of "
                    f"the {len(volumes)} test volumes are byte-identical to train volumes; the train and test "
                    "splits must be disjoint")


def test_disjoint_splits_pass_the_overlap_check(tmp_path):
    from test_classify_cli import labelled_folder

    from cryoet_forge.evaluate.datasets import check_disjoint

    train = load_labelled(labelled_folder(tmp_path / "train", 2, seed=0))
    test = load_labelled(labelled_folder(tmp_path / "test", 2, seed=1))
    check_disjoint(train, test, tmp_path / "train", tmp_path / "test")  # no error
    nearly = test.volumes.copy()
    nearly[0] = train.volumes[0]
    nearly[0].flat[0] = np.nextafter(nearly[0].flat[0], np.float32(np.inf))  # one ulp apart: not identical
    check_disjoint(train, type(test)(nearly, test.labels, test.class_names, test.voxel_size, test.source),
                   tmp_path / "train", tmp_path / "test")


def test_quickstart_falls_back_to_the_core_generator_without_the_plugin(monkeypatch):
    from cryoet_forge import registry
    from cryoet_forge.evaluate.config import QUICKSTART, quickstart_config

    with_plugin = quickstart_config()
    assert with_plugin.gan.overrides["model.generator"] == "unet3d"  # the plugin is installed for the tests
    names = registry.names
    monkeypatch.setattr(registry, "names", lambda kind: [n for n in names(kind) if n != "unet3d"])
    lines = []
    core = quickstart_config(log=lines.append)
    assert core.gan.overrides["model.generator"] == "cryoetgan"
    assert core.gan.overrides["model.generator_options"]["skips"] is True
    assert core.gan.overrides["model.inverse_generator_options"] == {"skips": False}
    assert len(lines) == 1 and "'unet3d' is not installed" in lines[0]
    assert QUICKSTART["gan"]["overrides"]["model.generator"] == "unet3d"  # the embedded table is untouched


def test_quickstart_command_reaches_the_run_with_its_options(monkeypatch, tmp_path):
    # the command's options and its function's parameters must agree (the slow end-to-end test is skipped in CI)
    from click.testing import CliRunner

    import cryoet_forge.evaluate.commands as commands

    seen = {}
    monkeypatch.setattr(commands, "_run", lambda config, out_dir, budget, resume: seen.update(
        seed=config.data.seed, out=out_dir, budget=budget, resume=resume))
    result = CliRunner().invoke(commands.quickstart_command, ["--out", str(tmp_path / "q"), "--seed", "3",
                                                              "--budget-minutes", "2", "--resume"])
    assert result.exit_code == 0, result.output
    assert seen == {"seed": 3, "out": tmp_path / "q", "budget": 2.0, "resume": True}

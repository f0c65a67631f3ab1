"""`forge classify train|eval|features` on labelled folders, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_classify import toy_shapes

from cryoet_forge.classify import LabelledVolumes, evaluate_cb3d, load_labelled
from cryoet_forge.cli import main
from cryoet_forge.evaluate.datasets import write_labelled_folder
from cryoet_forge.io.embeddings import load_features
from cryoet_forge.io.mrc import write_mrc
from cryoet_forge.io.star import read_particles, write_particles
from cryoet_forge.models.cb3d import load_cb3d, run_inference
from tests_support import assert_one_line_error

NET = ["--channels", "4,8,8,8", "--fc-width", "32", "--epochs", "10", "--batch-size", "6", "--lr", "3e-3",
       "--validation-fraction", "0",
       "--dropout", "0.1"]


def forge_executable() -> str:
    candidate = Path(sys.executable).with_name("forge")
    return str(candidate) if candidate.exists() else "forge"


def labelled_folder(path, n_per_class, seed, box=16, voxel_size=10.0):
    data = toy_shapes(n_per_class, seed=seed, box=box)
    data = LabelledVolumes(data.volumes, data.labels, data.class_names, voxel_size)
    return write_labelled_folder(path, data)


def run_cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    return {"train": labelled_folder(root / "train", 10, seed=0), "test": labelled_folder(root / "test", 6, seed=1),
            "root": root}


@pytest.fixture(scope="module")
def trained_dir(folders):
    out = folders["root"] / "model"
    assert main(["classify", "train", "--data", str(folders["train"]), "--test", str(folders["test"]),
                 "--out", str(out), *NET]) == 0
    return out


def test_train_writes_a_safetensors_checkpoint_and_scores(trained_dir, folders):
    meta = json.loads((trained_dir / "cb3d.json").read_text())
    assert meta["class_names"] == ["ball", "shell", "rod"]
    assert meta["voxel_size"] == 10.0 and meta["normalize"] == "zscore"
    assert (trained_dir / "confusion.png").stat().st_size > 1000
    scores = json.loads((trained_dir / "scores.json").read_text())
    model, _ = load_cb3d(trained_dir)
    result = evaluate_cb3d(model, load_labelled(folders["test"]), meta["class_names"])
    assert scores["accuracy"] == result.accuracy
    assert scores["confusion"] == result.confusion.tolist()
    assert scores["accuracy"] >= 0.7  # chance is 1/3


def test_train_with_a_validation_part_records_the_kept_epoch(folders, capsys, tmp_path):
    out = tmp_path / "model"
    code, text, err = run_cli(capsys, "classify", "train", "--data", str(folders["train"]), "--out", str(out),
                              *NET, "--validation-fraction", "0.2", "--patience", "2")
    assert code == 0, err
    training = json.loads((out / "cb3d.json").read_text())["training"]
    assert training["n_validation"] == 6  # 2 of each class's 10
    assert len(training["val_accuracy"]) == len(training["loss"])
    assert f"kept epoch {training['best_epoch']} of {len(training['loss'])}" in text


def test_eval_and_features(trained_dir, folders, capsys, tmp_path):
    code, out, _ = run_cli(capsys, "classify", "eval", "--model", str(trained_dir), "--data", str(folders["test"]),
                           "--out", str(tmp_path / "eval"))
    assert code == 0
    scores = json.loads((tmp_path / "eval" / "scores.json").read_text())
    assert f"accuracy {scores['accuracy']:.4f} on 18 volumes" in out
    assert sum(map(sum, scores["confusion"])) == 18
    for name, value in scores["per_class_accuracy"].items():
        assert f"{name}" in out and f"{value:.4f}" in out

    code, _, _ = run_cli(capsys, "classify", "features", "--model", str(trained_dir), "--data",
                         str(folders["test"]), "--out", str(tmp_path / "f.npy"), "--probabilities",
                         str(tmp_path / "p.npy"))
    assert code == 0
    features = load_features(tmp_path / "f.npy")
    model, meta = load_cb3d(trained_dir)
    expected_f, expected_p = run_inference(model, load_labelled(folders["test"]).volumes)
    np.testing.assert_array_equal(features, expected_f)
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), expected_p)
    assert features.shape == (18, 32)


def _edit_star(star, edit):
    table = read_particles(star)
    table = edit(table)
    write_particles(star, table)


def test_labels_missing(tmp_path, capsys):
    star = labelled_folder(tmp_path / "d", 2, seed=0)
    # a folder of MRC files without a STAR table has no labels
    (star).unlink()
    code, _, err = run_cli(capsys, "classify", "train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "m"))
    assert_one_line_error(code, err, "labels missing", str(tmp_path / "d"))


def test_labels_not_matching_the_star_table(tmp_path, capsys):
    star = labelled_folder(tmp_path / "d", 2, seed=0)

    def clash(table):
        table.loc[0, "forgeClassName"] = "shell"  # class number 1 now has two names
        return table

    _edit_star(star, clash)
    code, _, err = run_cli(capsys, "classify", "train", "--data", str(star), "--out", str(tmp_path / "m"))
    assert_one_line_error(code, err, str(star), "1")


def test_classes_present_in_one_split_only(tmp_path, capsys):
    train = labelled_folder(tmp_path / "train", 2, seed=0)
    test = labelled_folder(tmp_path / "test", 2, seed=1)
    _edit_star(test, lambda t: t[t["forgeClassName"] != "rod"])
    code, _, err = run_cli(capsys, "classify", "train", "--data", str(train), "--test", str(test),
                           "--out", str(tmp_path / "m"), *NET)
    assert_one_line_error(code, err, "classes present in one split only", "rod only in", str(train))


def test_mixed_sizes_within_a_folder(tmp_path, capsys):
    star = labelled_folder(tmp_path / "d", 2, seed=0)
    first = read_particles(star)["rlnImageName"].iloc[0]
    write_mrc(tmp_path / "d" / first, np.zeros((12, 12, 12), dtype=np.float32), 10.0)
    code, _, err = run_cli(capsys, "classify", "train", "--data", str(star), "--out", str(tmp_path / "m"))
    assert_one_line_error(code, err)
    assert "size" in err or "12" in err


def test_mixed_voxel_sizes_between_splits(tmp_path, capsys):
    train = labelled_folder(tmp_path / "train", 2, seed=0, voxel_size=10.0)
    test = labelled_folder(tmp_path / "test", 2, seed=1, voxel_size=9.4)
    code, _, err = run_cli(capsys, "classify", "train", "--data", str(train), "--test", str(test),
                           "--out", str(tmp_path / "m"), *NET)
    assert_one_line_error(code, err, "mixed voxel sizes", "10 A", "9.4 A")


def test_mixed_box_sizes_between_splits_through_the_console_script(tmp_path):
    train = labelled_folder(tmp_path / "train", 2, seed=0, box=16)
    test = labelled_folder(tmp_path / "test", 2, seed=1, box=20)
    proc = subprocess.run([forge_executable(), "classify", "train", "--data", str(train), "--test", str(test),
                           "--out", str(tmp_path / "m"), *NET], capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr, "mixed sizes", "16^3", "20^3")

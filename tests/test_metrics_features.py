"""`forge metrics --features NAME`: volumes run through a feature extractor, then PRDC, FID and IS."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from test_classify import toy_shapes

from cryoet_forge import hookimpl, registry
from cryoet_forge.classify import load_labelled, load_volumes
from cryoet_forge.cli import main
from cryoet_forge.data.bundle import save_bundle
from cryoet_forge.evaluate.datasets import write_labelled_folder
from cryoet_forge.io.embeddings import load_features
from cryoet_forge.io.mrc import write_mrc
from cryoet_forge.metrics import compute_fid, compute_prdc, inception_score
from cryoet_forge.models.cb3d import CB3DFeatureExtractor
from tests_support import assert_one_line_error

TRAIN = ["--channels", "4,8,8,8", "--fc-width", "16", "--epochs", "6", "--batch-size", "8", "--lr", "3e-3",
         "--dropout", "0.1"]  # D=16 features, fewer than the 21 and 24 volumes


def run_main(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_plain_folder(folder, volumes, voxel_size=10.0):
    folder.mkdir(parents=True, exist_ok=True)
    for i, volume in enumerate(volumes):
        write_mrc(folder / f"{i:03d}.mrc", volume, voxel_size)
    return folder


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """A 16^3 CB3D trained by `forge classify train`, a labelled real folder (STAR), a plain folder of fakes."""
    root = tmp_path_factory.mktemp("features")
    real = toy_shapes(8, seed=0)  # 24 volumes
    write_labelled_folder(root / "real", real)
    assert main(["classify", "train", "--data", str(root / "real"), "--out", str(root / "clf"), *TRAIN]) == 0
    fake = toy_shapes(7, seed=1, noise=0.8).volumes * 1.5  # 21 noisier volumes
    write_plain_folder(root / "fake", fake)
    return {"root": root, "clf": root / "clf", "real": root / "real", "fake": root / "fake",
            "real_volumes": load_labelled(root / "real").volumes, "fake_volumes": fake}


@pytest.mark.filterwarnings("ignore::cryoet_forge.metrics.fid.FIDWarning")  # few samples: singular covariance
def test_table_json_and_saved_features_equal_the_extractor_and_api(sets, tmp_path, capsys):
    out_json, saved = tmp_path / "m.json", tmp_path / "saved"
    code, out, err = run_main(capsys, "metrics", "--real", sets["real"], "--fake", sets["fake"], "--k", 4,
                              "--features", "cb3d", "--feature-option", f"checkpoint={sets['clf']}",
                              "--save-features", saved, "--json", out_json)
    assert code == 0, err
    extractor = CB3DFeatureExtractor(checkpoint=sets["clf"])
    real = extractor.extract(sets["real_volumes"])
    fake = extractor.extract(sets["fake_volumes"])
    np.testing.assert_array_equal(load_features(saved / "real.features.npy"), real)
    np.testing.assert_array_equal(load_features(saved / "fake.features.npy"), fake)
    fake_probs = extractor.probabilities(sets["fake_volumes"])
    np.testing.assert_array_equal(np.load(saved / "fake.probabilities.npy"), fake_probs)

    doc = json.loads(out_json.read_text())
    want = compute_prdc(real, fake, 4)
    for key in ("precision", "recall", "density", "coverage"):
        assert doc[key] == want[key]
        assert f"{want[key]:.6f}" in out
    assert want["precision"] < 1.0 and want["coverage"] < 1.0  # the sets differ: the numbers say something
    assert doc["fid"] == pytest.approx(compute_fid(real, fake), rel=1e-12)
    assert f"{doc['fid']:.6f}" in out
    is_mean, is_std = inception_score(fake_probs, 10)
    assert doc["inception_score"] == is_mean
    assert doc["inception_score_details"]["fake"] == {"mean": is_mean, "std": is_std, "splits": 10}
    assert doc["inception_score_details"]["real"]["mean"] == inception_score(
        extractor.probabilities(sets["real_volumes"]), 10)[0]
    assert "IS fake" in out and f"{is_mean:.6f}" in out
    assert (doc["n_real"], doc["n_fake"], doc["dim"]) == (24, 21, 16)
    assert doc["features"]["extractor"] == "cb3d" and doc["features"]["box"] == 16
    assert doc["features"]["options"] == {"checkpoint": str(sets["clf"])}
    assert doc["features"]["saved"]["fake_features"] == str(saved / "fake.features.npy")
    assert "features=cb3d" in out and "21 fake volumes of 16^3" in out


def test_inception_splits_are_capped_at_the_set_size(sets, tmp_path, capsys):
    code, _, err = run_main(capsys, "metrics", "--real", sets["real"], "--fake", sets["fake"], "--no-fid",
                            "--features", "cb3d", "--feature-option", f"checkpoint={sets['clf']}",
                            "--is-splits", 50, "--json", tmp_path / "m.json")
    assert code == 0, err
    details = json.loads((tmp_path / "m.json").read_text())["inception_score_details"]
    assert details["fake"]["splits"] == 21 and details["real"]["splits"] == 24


def test_every_volume_source_reads_the_same_volumes(sets, tmp_path):
    real = load_labelled(sets["real"])
    star = sets["real"] / "particles.star"
    save_bundle(tmp_path / "bundle.npz", real.volumes, real.labels, real.class_names, real.voxel_size)
    write_plain_folder(tmp_path / "plain", real.volumes)
    for source in (sets["real"], star, tmp_path / "bundle.npz", tmp_path / "plain"):
        data = load_volumes(source)
        np.testing.assert_array_equal(data.volumes, real.volumes)
        assert data.voxel_size == 10.0
    assert load_volumes(star).class_names == real.class_names
    assert load_volumes(tmp_path / "plain").class_names == ["unlabelled"]
    one = load_volumes(tmp_path / "plain" / "003.mrc")
    assert one.volumes.shape == (1, 16, 16, 16)
    np.testing.assert_array_equal(one.volumes[0], real.volumes[3])


class MomentFeatures:
    """A plugin-style extractor: no box, no probabilities, torch output."""

    def extract(self, volumes):
        flat = torch.as_tensor(np.asarray(volumes)).reshape(len(volumes), -1)
        return torch.stack([flat.mean(1), flat.std(1), flat.abs().mean(1), flat.amax(1)], dim=1)


@hookimpl
def forge_register_feature_extractors(register):
    register("moments", MomentFeatures)


def test_an_extractor_without_probabilities_reports_no_inception_score(sets, tmp_path, capsys, monkeypatch):
    # this module is a plugin too: the same hook as any third-party extractor
    plugged = registry.Registry(load_entry_points=False,
                                builtin_modules=(*registry.BUILTIN_PLUGIN_MODULES, __name__))
    monkeypatch.setattr(registry, "_registry", plugged)
    code, out, err = run_main(capsys, "metrics", "--real", sets["real"], "--fake", sets["fake"], "--features",
                              "moments", "--json", tmp_path / "m.json")
    assert code == 0, err
    doc = json.loads((tmp_path / "m.json").read_text())
    assert "inception_score" not in doc and "IS " not in out
    real = MomentFeatures().extract(sets["real_volumes"]).numpy()
    fake = MomentFeatures().extract(sets["fake_volumes"]).numpy()
    assert doc["dim"] == 4 and doc["coverage"] == compute_prdc(real, fake, 5)["coverage"]


def _small_folder(root):
    return write_plain_folder(root / "small", np.random.default_rng(0).normal(size=(8, 12, 12, 12)))


def _coarse_folder(root):
    return write_plain_folder(root / "coarse", toy_shapes(3, seed=2).volumes, voxel_size=20.0)


@pytest.mark.parametrize(
    ("real", "fake", "extra", "fragments"),
    [
        ("missing", "fake", [], ["missing: no such file or folder"]),
        ("empty", "fake", [], ["empty: no STAR file and no .mrc volumes in this folder"]),
        ("real", "small", [], ["volumes of mixed sizes", "particles.star has 16^3 voxels", "small has 12^3"]),
        ("small", "small", [], ["small: volumes are 12^3 but feature-extractor 'cb3d'", "takes 16^3 volumes only"]),
        ("real", "coarse", [], ["volumes of mixed voxel sizes", "coarse has 20 A"]),
        ("real", "fake", ["--features", "inception"], ["unknown feature-extractor 'inception'; choose from: cb3d"]),
        ("real", "fake", ["--feature-option", "batch_size=abc"], ["batch_size='abc'", "wrong type"]),
        ("real", "fake", ["--feature-option", "batchsize=8"], ["cb3d option(s) batchsize do not apply"]),
        ("real", "fake", ["--feature-option", "no-equals"], ["--feature-option 'no-equals' must look like KEY=VALUE"]),
        ("real", "fake", ["--is-splits", "0"], ["--is-splits must be >= 1, got 0"]),
    ],
)
def test_bad_input_is_one_error_line(sets, tmp_path, capsys, real, fake, extra, fragments):
    (tmp_path / "empty").mkdir()
    _small_folder(tmp_path)
    _coarse_folder(tmp_path)
    paths = {"real": sets["real"], "fake": sets["fake"]}
    args = ["metrics", "--real", paths.get(real, tmp_path / real), "--fake", paths.get(fake, tmp_path / fake),
            "--features", "cb3d", "--feature-option", f"checkpoint={sets['clf']}", *extra]
    code, _, err = run_main(capsys, *args)
    assert_one_line_error(code, err, *fragments)


@pytest.mark.parametrize("options", [["chanels=3"], ["box=16", "device=gpu"]])
def test_options_a_new_network_cannot_take_are_one_line(sets, capsys, options):
    args = ["metrics", "--real", sets["real"], "--fake", sets["fake"], "--features", "cb3d"]
    for option in options:
        args += ["--feature-option", option]
    code, _, err = run_main(capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.match(r"forge: error: feature-extractor 'cb3d' \(.*\) cannot be built: ", err), err


@pytest.mark.parametrize("extra", [["--feature-option", "checkpoint=x"], ["--save-features", "out"],
                                   ["--is-splits", "3"]])
def test_feature_flags_need_features(sets, capsys, extra):
    code, _, err = run_main(capsys, "metrics", "--real", "r.npy", "--fake", "f.npy", *extra)
    assert code == 2
    assert err.strip() == f"forge: error: {extra[0]} needs --features NAME (feature extraction from volumes)"


def test_a_folder_without_features_says_how(sets, capsys):
    code, _, err = run_main(capsys, "metrics", "--real", sets["real"], "--fake", sets["fake"])
    assert code == 2
    assert err.strip() == (f"forge: error: {sets['real']}: a folder, not a feature file (.npy, .npz, .safetensors); "
                           "add --features NAME to extract features from its volumes")

"""The reliability rules `forge metrics` and `forge evaluate` share (N <= D, all-zero PRDC, IS near 1,
near chance), the FID rows and keys of `forge metrics`, and outputs that would replace an input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cryoet_forge import hookimpl, registry
from cryoet_forge.cli import main
from cryoet_forge.evaluate.report import _metric_cells
from cryoet_forge.evaluate.verdict import assess, quality_reliability
from cryoet_forge.io.mrc import write_mrc
from cryoet_forge.metrics.reliability import assess_metrics, near_chance, rule_names
from tests_support import assert_one_line_error

N_LE_D = ("N <= D: real N=10 and fake N=10 <= D=16 samples: the covariance is singular and FID is dominated "
          "by its O(D/N) bias; use more samples than dimensions")
ALL_ZERO = ("all-zero PRDC: precision, recall, density and coverage are all 0, so no sample of either set lies "
            "in a k-NN ball of the other (disjoint sets, or rows repeated more than k times with radius 0); "
            "they cannot rank anything here")


def run_main(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_rules_fire_per_metric_with_their_sentences():
    zeros = dict.fromkeys(("precision", "recall", "density", "coverage"), 0.0)
    got = assess_metrics(n_real=10, n_fake=10, dim=16, fid=True, prdc=zeros, inception={"fake": 1.05})
    assert got == {"fid": [N_LE_D], "precision": [ALL_ZERO], "recall": [ALL_ZERO], "density": [ALL_ZERO],
                   "coverage": [ALL_ZERO],
                   "inception_score": ["IS near 1: IS 1.0500 is within 0.1 of 1, what a classifier at chance "
                                       "gives (the same class probabilities for every volume)"]}
    fine = assess_metrics(n_real=17, n_fake=400, dim=16, fid=True, prdc={**zeros, "coverage": 0.01},
                          inception={"fake": 1.1, "real": 2.0})
    assert fine == {key: [] for key in ("fid", "precision", "recall", "density", "coverage", "inception_score",
                                        "inception_score_real")}
    # near 1 on the real set: the network is near chance, so every metric is marked
    real = assess_metrics(n_real=50, n_fake=50, dim=4, fid=True, prdc={**zeros, "recall": 0.5},
                          inception={"real": 1.02, "fake": 1.5}, margin=0.05)
    assert all(len(sentences) == 1 and sentences[0].startswith("IS near 1 on the real set: IS 1.0200 is within "
                                                               "0.05 of 1") for sentences in real.values())
    assert assess_metrics(n_real=3, dim=8) == {}  # nothing computed, nothing marked
    assert rule_names([N_LE_D, ALL_ZERO, N_LE_D]) == "N <= D, all-zero PRDC"


def test_near_chance_is_the_rule_the_verdict_uses():
    assert near_chance(0.35, 0.25, 0.1) is None
    note = near_chance(0.3, 0.25, 0.1)
    assert note == ("near chance: the inception network (CB3D trained on the real training split) scores 0.300 "
                    "on the real test split, within 0.1 of chance (0.250): FID, PRDC and IS on its features are "
                    "unreliable")
    paired = {"n": 3, "ci_low": -0.1, "ci_high": 0.2, "confidence": 0.95, "mean": 0.05}
    verdict = assess(0.3, 0.25, 0.1, paired, None)
    assert verdict["notes"] == [note] and not verdict["metrics_reliable"]


def test_the_evaluation_report_marks_each_metric_a_rule_marks():
    q = {"is_mean": 1.03, "is_std": 0.01, "fid": 12.5, "precision": 0.0, "recall": 0.0, "density": 0.0,
         "coverage": 0.0, "n_real": 10, "n_fake": 10, "dim": 16, "reliable": True}
    q["reliability"] = quality_reliability(q, 0.1)
    assert q["reliability"]["fid"] == [N_LE_D] and q["reliability"]["precision"] == [ALL_ZERO]
    assert _metric_cells(q) == ["1.030 ± 0.010 (unreliable: IS near 1)", "12.500 (unreliable: N <= D)",
                                "0.000 (unreliable: all-zero PRDC)", "0.000 (unreliable: all-zero PRDC)",
                                "0.000 (unreliable: all-zero PRDC)", "0.000 (unreliable: all-zero PRDC)"]
    # the inception network near chance marks every cell the one way it always did
    assert _metric_cells({**q, "reliable": False})[1] == "12.500 (unreliable)"
    # rows recorded before the sizes were kept: no N <= D rule, the others still apply
    old = {key: value for key, value in q.items() if key not in ("n_real", "n_fake", "dim", "reliability")}
    assert quality_reliability(old, 0.1)["fid"] == []


@pytest.mark.filterwarnings("ignore::cryoet_forge.metrics.fid.FIDWarning")
def test_forge_metrics_prints_and_writes_the_rules_that_fire(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "real.npy", rng.normal(size=(10, 16)).astype(np.float32))
    np.save(tmp_path / "fake.npy", (rng.normal(size=(10, 16)) + 100.0).astype(np.float32))
    code, out, err = run_main(capsys, "metrics", "--real", tmp_path / "real.npy", "--fake", tmp_path / "fake.npy",
                              "--k", 3, "--json", tmp_path / "m.json")
    assert code == 0, err
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["reliability"] == {"fid": [N_LE_D], "precision": [ALL_ZERO], "recall": [ALL_ZERO],
                                  "density": [ALL_ZERO], "coverage": [ALL_ZERO]}
    rows = {line.split("│")[1].strip(): line.split("│")[3].strip() for line in out.splitlines() if "│" in line}
    assert rows["FID"] == "no: N <= D" and rows["coverage"] == "no: all-zero PRDC"
    assert f"unreliable FID: {N_LE_D}" in out.splitlines()
    assert f"unreliable precision, recall, density, coverage: {ALL_ZERO}" in out.splitlines()


class UniformProbabilities:
    """A plugin-style extractor whose class probabilities are the same for every volume (IS = 1)."""

    def extract(self, volumes):
        flat = np.asarray(volumes).reshape(len(volumes), -1)
        return np.stack([flat.mean(1), flat.std(1)], axis=1)

    def probabilities(self, volumes):
        return np.full((len(volumes), 4), 0.25)


@hookimpl
def forge_register_feature_extractors(register):
    register("uniform-probabilities", UniformProbabilities)


def test_forge_metrics_marks_an_inception_score_near_one(tmp_path, capsys, monkeypatch):
    plugged = registry.Registry(load_entry_points=False,
                                builtin_modules=(*registry.BUILTIN_PLUGIN_MODULES, __name__))
    monkeypatch.setattr(registry, "_registry", plugged)
    rng = np.random.default_rng(1)
    for which in ("real", "fake"):
        (tmp_path / which).mkdir()
        for i in range(12):
            write_mrc(tmp_path / which / f"{i:02d}.mrc", rng.normal(size=(8, 8, 8)).astype(np.float32), 10.0)
    code, out, err = run_main(capsys, "metrics", "--real", tmp_path / "real", "--fake", tmp_path / "fake",
                              "--features", "uniform-probabilities", "--k", 3, "--json", tmp_path / "m.json")
    assert code == 0, err
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["inception_score"] == pytest.approx(1.0)
    real_note = ("IS near 1 on the real set: IS 1.0000 is within 0.1 of 1, so the network is near chance on the "
                 "real volumes and its features carry little class information")
    assert doc["reliability"]["inception_score"] == [
        "IS near 1: IS 1.0000 is within 0.1 of 1, what a classifier at chance gives (the same class probabilities "
        "for every volume)", real_note]
    assert all(real_note in sentences for sentences in doc["reliability"].values())
    assert "unreliable FID, precision, recall, density, coverage, IS fake, IS real: " + real_note in out


def _same_distribution(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.normal(size=(400, 16)).astype(np.float32))
    np.save(tmp_path / "b.npy", rng.normal(size=(400, 16)).astype(np.float32))


@pytest.mark.parametrize("fake", ["b.npy", "a.npy"], ids=["same-distribution", "identical-sets"])
def test_forge_metrics_prints_the_corrected_fid_inside_its_own_interval(tmp_path, capsys, fake):
    _same_distribution(tmp_path)
    code, out, err = run_main(capsys, "metrics", "--real", tmp_path / "a.npy", "--fake", tmp_path / fake,
                              "--bootstrap", 200, "--json", tmp_path / "m.json")
    assert code == 0, err
    doc = json.loads((tmp_path / "m.json").read_text())
    low, high = doc["fid_bias_corrected_ci"]
    assert 0.0 <= low <= doc["fid_bias_corrected"] <= high
    assert doc["fid_ci_level"] == 0.95 and doc["fid_bootstrap"] == 200
    assert "ci" not in doc and "ci" not in doc["fid_details"]
    details = doc["fid_details"]
    assert details["fid_bias_corrected_ci"] == [low, high] and details["fid"] == doc["fid"]
    # these sets come from one distribution: the bias exceeds the raw FID, so the corrected one is clipped
    assert doc["fid_bias_corrected"] == 0.0 and details["fid_bias_corrected_clipped"]
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in out.splitlines() if "│" in line}
    assert rows["FID bias-corrected (clipped at 0)"] == "0.000000"
    assert rows["its 95% CI (basic bootstrap, 200)"] == f"[{low:.4f}, {high:.4f}]"
    assert rows["FID"] == f"{doc['fid']:.6f}"
    assert "FID warning: the bias-corrected FID" in out and "reported as 0" in out


def test_json_through_a_symbolic_link_to_an_input_is_refused(tmp_path, capsys):
    _same_distribution(tmp_path)
    os.symlink("b.npy", tmp_path / "out.json")
    before = (tmp_path / "b.npy").read_bytes()
    code, out, err = run_main(capsys, "metrics", "--real", tmp_path / "a.npy", "--fake", tmp_path / "b.npy",
                              "--json", tmp_path / "out.json")
    assert code == 2 and out == ""
    assert_one_line_error(code, err, f"--json {tmp_path / 'out.json'}: is an input of this command (the same file "
                                     f"as {tmp_path / 'b.npy'}); writing there would replace it")
    assert (tmp_path / "b.npy").read_bytes() == before


def test_saved_features_that_would_replace_an_input_are_refused(tmp_path, capsys):
    _same_distribution(tmp_path)
    os.replace(tmp_path / "a.npy", tmp_path / "real.features.npy")
    code, _, err = run_main(capsys, "metrics", "--real", tmp_path / "real.features.npy", "--fake",
                            tmp_path / "b.npy", "--features", "cb3d", "--feature-option", "checkpoint='nowhere'",
                            "--save-features", tmp_path)
    assert_one_line_error(code, err, f"--save-features {tmp_path / 'real.features.npy'}: is an input of this command")

"""`forge evaluate` in stages: a run killed in the downstream stage and rerun with --resume reuses
what was finished (the GAN is not trained again) and ends with the uninterrupted run's results."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from test_evaluate import TOY

from cryoet_forge.classify import ClassificationResult, LabelledVolumes
from cryoet_forge.errors import InputError
from cryoet_forge.evaluate import pipeline
from cryoet_forge.evaluate.config import config_from_dict
from cryoet_forge.evaluate.downstream import DownstreamResult
from cryoet_forge.evaluate.stages import Stages, decode, encode
from tests_support import assert_one_line_error, forge_executable

# the toy evaluation with one ablation variant (its GAN is a stage of its own)
STAGED = copy.deepcopy(TOY)
STAGED["ablations"] = {"noise_std": [], "lsgan": True, "patchgan": False, "seeds": [0]}
# a fixed memory format: "auto" picks one by timing at start-up, and the two sum in different orders
STAGED["gan"]["overrides"]["train.channels_last"] = True
#: what says how a run went rather than what it found
RUN_FIELDS = ("timings_s", "stages_reused")

KILLED_IN_DOWNSTREAM = """
import sys
from pathlib import Path
import cryoet_forge.evaluate.pipeline as pipeline
marker = Path(sys.argv[1])
def stuck(*args, **kwargs):
    marker.write_text("in downstream")
    import time
    time.sleep(600)
pipeline.score_sources = stuck
from cryoet_forge.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _findings(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    for key in RUN_FIELDS:
        results.pop(key)
    # the GAN run folder is named by its place in OUT; the rest must agree value for value
    text = json.dumps(results, sort_keys=True).replace(str(out), "OUT")
    return json.loads(text)


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "staged.toml"
    path.write_bytes(tomli_w.dumps(STAGED).encode())
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, config_file) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    proc = subprocess.run([forge_executable(), "-q", "evaluate", "--config", str(config_file), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, config_file):
    """An evaluation SIGKILLed in its downstream stage, then rerun with --resume (in this process, so
    that the training and scoring calls can be counted)."""
    out = tmp_path_factory.mktemp("killed")
    marker = out.parent / f"{out.name}.marker"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_IN_DOWNSTREAM, str(marker), "-q", "evaluate",
                             "--config", str(config_file), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # `python -c` puts the working folder first on sys.path: run it outside the
                            # source tree so that the installed package (with its compiled extension) loads
                            cwd=out.parent)
    deadline = time.monotonic() + 600
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the downstream stage: {proc.stderr.read()}")
        assert time.monotonic() < deadline, "the run did not reach the downstream stage"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    killed = {"stages": sorted(p.name for p in (out / "stages").iterdir() if not p.name.startswith(".")),
              "gan_files": _mtimes(out / "runs" / "cryoetgan"), "results": (out / "results.json").exists()}

    trained, scored = [], []
    real_train_gan, real_downstream = pipeline.train_gan, pipeline.train_on_synthetic_test_on_real
    real_scores = pipeline.score_sources
    mp = pytest.MonkeyPatch()
    mp.setattr(pipeline, "train_gan", lambda *a, **k: trained.append(Path(a[1]).name) or real_train_gan(*a, **k))
    mp.setattr(pipeline, "score_sources", lambda *a, **k: scored.extend(a[0]) or real_scores(*a, **k))
    mp.setattr(pipeline, "train_on_synthetic_test_on_real",
               lambda *a, **k: scored.append(a[0]) or real_downstream(*a, **k))
    try:
        from cryoet_forge.evaluate.config import load_evaluation_config

        lines: list[str] = []
        pipeline.run_evaluation(load_evaluation_config(config_file), out, log=lines.append, resume=True)
    finally:
        mp.undo()
    # what the run ended with, kept here: a later test changes the folder
    snapshot = {"results": json.loads((out / "results.json").read_text()), "findings": _findings(out),
                "features": {p.name: np.load(p) for p in (out / "features").glob("*.features.npy")}}
    return out, killed, trained, scored, lines, snapshot


def test_killed_run_left_the_finished_stages_and_no_results(resumed):
    _, killed, _, _, _, _ = resumed
    assert killed["stages"] == ["data", "gan", "generation", "inception", "metrics"]
    assert not killed["results"]
    assert any(name.startswith("checkpoints") for name in killed["gan_files"])


def test_resume_does_not_train_the_gan_again(resumed):
    out, killed, trained, scored, lines, snapshot = resumed
    # only the ablation's GAN (a stage the killed run never reached) is trained
    assert trained == ["ablation-1"]
    assert _mtimes(out / "runs" / "cryoetgan") == killed["gan_files"]
    # the downstream stage (killed) runs again: both sources, then the other classifier kind
    # (radial: the real split too), then the ablation variant
    assert scored == ["traditional", "cryoetgan", "real", "traditional", "cryoetgan", "without Wasserstein (lsgan)"]
    assert snapshot["results"]["stages_reused"] == ["data", "inception", "gan", "generation", "metrics"]
    assert any("stage gan: finished before" in line for line in lines)


def test_resumed_results_equal_the_uninterrupted_run(resumed, uninterrupted):
    snapshot = resumed[5]
    assert snapshot["findings"] == _findings(uninterrupted)
    assert json.loads((uninterrupted / "results.json").read_text())["stages_reused"] == []
    names = sorted(snapshot["features"])
    assert names == ["ablation-1.features.npy", "cryoetgan.features.npy", "real_test.features.npy",
                     "traditional.features.npy"]
    for name in names:
        np.testing.assert_array_equal(snapshot["features"][name], np.load(uninterrupted / "features" / name))


def test_a_changed_setting_recomputes_from_the_stage_that_reads_it(resumed):
    out = resumed[0]  # changed in place (the tests above read the fixture's snapshot)
    table = copy.deepcopy(STAGED)
    table["uncertainty"]["samples"] = 2
    table["metrics"]["k"] = 2
    lines: list[str] = []
    pipeline.run_evaluation(config_from_dict(table, origin="changed"), out,
                            log=lines.append, resume=True)
    results = json.loads((out / "results.json").read_text())
    # metrics.k is read by the metrics, curves and ablation stages; uncertainty.samples by uncertainty
    assert results["stages_reused"] == ["data", "inception", "gan", "generation", "downstream", "classifiers",
                                        "verdict"]
    assert results["uncertainty"]["samples"] == 2
    # the ablation's GAN run is kept and continued (it is complete), not trained again
    assert any("continuing the GAN run" in line and "ablation-1" in line for line in lines)


def test_rerun_without_resume_is_one_clear_error(uninterrupted, config_file):
    proc = subprocess.run([forge_executable(), "evaluate", "--config", str(config_file), "--out", str(uninterrupted)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert_one_line_error(proc.returncode, proc.stderr, str(uninterrupted), "--resume", "pick a new --out")


def test_resume_is_refused_with_a_suite(tmp_path):
    proc = subprocess.run([forge_executable(), "evaluate", "--suite", str(tmp_path / "s.toml"), "--out",
                           str(tmp_path / "o"), "--resume"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--resume applies to one evaluation" in proc.stderr


# --- the stage store ------------------------------------------------------------------------------

def _labelled() -> LabelledVolumes:
    rng = np.random.default_rng(0)
    return LabelledVolumes(rng.normal(size=(3, 4, 4, 4)).astype(np.float32), np.array([0, 1, 1]), ["a", "b"],
                           7.5, "toy")


def test_encode_decode_round_trip_is_exact():
    data = _labelled()
    result = ClassificationResult(["a", "b"], 2 / 3, {"a": 1.0, "b": None}, np.eye(2, dtype=np.int64),
                                  np.array([0, 1, 0]), np.array([0, 1, 1]), np.full((3, 2), 0.5), np.zeros((3, 5)))
    down = DownstreamResult("gan", [0, 1], [0.1, 0.2], [{"a": 0.5, "b": None}], 0.15, 0.1, 0.2, 0.95, 8, result)
    value = {"data": data, "down": down, "path": Path("some/where"), "t": (1, 0.1 + 0.2), "x": np.float32(0.5)}
    arrays: dict[str, np.ndarray] = {}
    back = decode(json.loads(json.dumps(encode(value, arrays))), arrays)
    np.testing.assert_array_equal(back["data"].volumes, data.volumes)
    assert back["data"].class_names == ["a", "b"] and back["data"].voxel_size == 7.5
    assert back["down"].first.per_class_accuracy == {"a": 1.0, "b": None}
    np.testing.assert_array_equal(back["down"].first.confusion, np.eye(2))
    assert back["down"].to_dict() == down.to_dict()
    assert back["path"] == Path("some/where") and back["t"] == [1, 0.1 + 0.2] and back["x"] == 0.5


def test_encode_refuses_what_it_cannot_read_back():
    with pytest.raises(TypeError, match="cannot hold a set"):
        encode({"a": {1, 2}}, {})
    with pytest.raises(TypeError, match="plain string keys"):
        encode({1: "x"}, {})


def test_stage_is_reused_only_with_the_same_key_and_intact_files(tmp_path):
    calls = []

    def compute(value):
        def run():
            calls.append(value)
            return {"v": np.arange(3) * value, "where": tmp_path / "exists"}
        return run

    (tmp_path / "exists").write_text("x")
    first = Stages(tmp_path, resume=True, log=lambda line: None)
    first.run("s", {"k": 1}, compute(1))
    again = Stages(tmp_path, resume=True, log=lambda line: None)
    np.testing.assert_array_equal(again.run("s", {"k": 1}, compute(2))["v"], [0, 1, 2])
    assert calls == [1] and again.done["s"]["status"] == "reused"
    # other inputs: computed
    assert list(Stages(tmp_path, True, lambda line: None).run("s", {"k": 2}, compute(2))["v"]) == [0, 2, 4]
    # without resume: computed even with the same key
    Stages(tmp_path, False, lambda line: None).run("s", {"k": 2}, compute(3))
    assert calls == [1, 2, 3]
    # a torn record, or a path the value names that is gone: computed again
    record = tmp_path / "stages" / "s" / "stage.json"
    record.write_text(record.read_text()[:20])
    Stages(tmp_path, True, lambda line: None).run("s", {"k": 2}, compute(4))
    (tmp_path / "exists").unlink()
    lines: list[str] = []
    with pytest.raises(OSError, match="not readable"):  # computed, but its own path is gone
        Stages(tmp_path, True, lines.append).run("s", {"k": 2}, compute(5))
    assert calls == [1, 2, 3, 4, 5] and "exists is gone" in lines[0]


def test_gan_stopped_half_way_continues_bit_exactly(tmp_path):
    """train_gan(resume=True) on a run cut after its first checkpoint ends with the weights of an
    uninterrupted run; a run of another configuration is trained again."""
    import shutil

    from safetensors.numpy import load_file

    from cryoet_forge.evaluate.datasets import prepare_data
    from cryoet_forge.evaluate.gan import train_gan
    from cryoet_forge.train.checkpoint import list_checkpoints

    config = config_from_dict(STAGED, origin="toy")
    data = prepare_data(config, tmp_path / "data", lambda line: None)

    def run(folder: Path, resume: bool = False, **variant) -> Path:
        return train_gan(config, folder, data.density_train, data.real_train, data.density_star,
                         data.real_train_star, variant=variant or None, resume=resume)

    whole = run(tmp_path / "whole")
    cut = run(tmp_path / "cut")
    checkpoints = list_checkpoints(cut)
    assert len(checkpoints) == 2
    shutil.rmtree(checkpoints[-1])  # as if killed between the two checkpoints
    with pytest.raises(InputError, match="already holds checkpoints.*--resume"):
        run(cut)
    lines: list[str] = []
    train_gan(config, cut, data.density_train, data.real_train, data.density_star, data.real_train_star,
              log=lines.append, resume=True)
    assert any("continuing the GAN run" in line for line in lines)

    def weights(folder: Path) -> dict[str, np.ndarray]:
        last = list_checkpoints(folder)[-1]
        return {f.name + k: v for f in sorted(last.glob("*.safetensors")) for k, v in load_file(str(f)).items()}

    a, b = weights(whole), weights(cut)
    assert a.keys() == b.keys() and a
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    lines.clear()
    train_gan(config, cut, data.density_train, data.real_train, data.density_star, data.real_train_star,
              variant={"loss.adversarial": "lsgan"}, log=lines.append, resume=True)
    assert any("trained with another configuration" in line for line in lines)

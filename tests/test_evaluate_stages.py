"""The evaluation as a table of stages: each stage declares what it reads and adds, the table runs
them in order (stored, resumed, skipped when turned off), and a plugin adds a stage through
``forge_register_evaluation_stages``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from test_evaluate import TOY
from test_registry import make_distribution

from cryoet_forge import hookimpl
from cryoet_forge.classify import load_labelled
from cryoet_forge.cli import main
from cryoet_forge.errors import PluginError
from cryoet_forge.evaluate import pipeline
from cryoet_forge.evaluate.config import config_from_dict
from cryoet_forge.evaluate.stages import EvaluationStage, Stages, StageTable, check_flow, insert_stages
from tests_support import assert_one_line_error

# the toy evaluation without ablations (the plugin's stage is what these tests look at)
SMALL = copy.deepcopy(TOY)
SMALL["ablations"] = {"noise_std": [], "lsgan": False, "patchgan": False, "seeds": [0]}


def _quiet(line: str) -> None:
    pass


def _stage(name: str, function=None, inputs: str = "", outputs: str = "", **fields) -> EvaluationStage:
    return EvaluationStage(name, function or (lambda view: name), tuple(inputs.split()), tuple(outputs.split()),
                           **fields)


BUILTIN = (_stage("a", outputs="x"), _stage("b", inputs="x", outputs="y"), _stage("report", inputs="y"))


# --- the table ------------------------------------------------------------------------------------

def test_a_stage_goes_after_the_stage_it_names_or_before_the_report():
    first, second = _stage("p", after="a", inputs="x"), _stage("q", after="a")
    last = _stage("r")
    names = [s.name for s in insert_stages(BUILTIN, [first, second, last])]
    assert names == ["a", "p", "q", "b", "r", "report"]


@pytest.mark.parametrize(("stage", "fragment"), [
    (_stage("b"), "a stage of that name is already in the evaluation"),
    (_stage("p", after="nowhere"), "after='nowhere' names no stage it can follow; choose from: a, b"),
    (_stage("p", after="report"), "after='report' names no stage"),
    (_stage("Bad Name"), "evaluation stage name 'Bad Name': expected lower case"),
    (_stage("ablation-9"), "the name is reserved"),
    (_stage("budget"), "the name is reserved"),
    (_stage("p", outputs="z z"), "outputs must be distinct non-empty names, got ['z', 'z']"),
    ("not a stage", "register() takes an EvaluationStage (cryoet_forge.evaluate.stages), got str"),
])
def test_a_bad_declaration_is_one_clear_plugin_error(stage, fragment):
    with pytest.raises(PluginError) as info:
        insert_stages(BUILTIN, [stage])
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_reading_a_value_nobody_produces_is_refused_before_any_stage_runs():
    with pytest.raises(PluginError) as info:
        check_flow([*BUILTIN[:2], _stage("p", inputs="x nothing"), BUILTIN[2]], ["config"])
    message = str(info.value)
    assert message.startswith("evaluation stage 'p' (test_evaluate_stages) reads 'nothing', which no stage "
                              "before it produces; available: config, x, y")
    # produced, but later: the message says which stage to follow
    with pytest.raises(PluginError, match="reads 'y', which no stage before it produces; stage 'b' produces "
                                          "it later"):
        check_flow([BUILTIN[0], _stage("p", inputs="y"), *BUILTIN[1:]], [])
    with pytest.raises(PluginError, match="outputs 'x', which stage 'a' already provides"):
        check_flow([BUILTIN[0], _stage("p", outputs="x")], [])
    with pytest.raises(PluginError, match="outputs 'config', which the evaluation already provides"):
        check_flow([_stage("p", outputs="config")], ["config"])


def _table(tmp_path: Path, stages, resume: bool = False, lines: list[str] | None = None, **values) -> StageTable:
    log = lines.append if lines is not None else _quiet
    return StageTable(stages, {"setting": 1, "where": "here", **values}, Stages(tmp_path, resume, log),
                      described=["setting"])


def test_stages_run_in_order_stored_and_resumed_by_their_inputs(tmp_path):
    calls: list[str] = []

    def count(name, value):
        def function(view):
            calls.append(name)
            return value(view)
        return function

    stages = [_stage("a", count("a", lambda v: np.arange(3) * v["setting"]), "setting where", "x"),
              _stage("b", count("b", lambda v: {"y": float(v["x"].sum()), "z": "b"}), "x", "y z"),
              _stage("c", count("c", lambda v: v["y"] + 1), "y")]
    values = _table(tmp_path, stages).run()
    assert calls == ["a", "b", "c"] and values["y"] == 3.0 and values["z"] == "b" and values["c"] == 4.0
    assert (tmp_path / "stages" / "b" / "stage.json").is_file()
    # the same inputs: every stage read back; a value that says where, not what, changes nothing
    again = _table(tmp_path, stages, resume=True, where="elsewhere")
    again.run()
    assert calls == ["a", "b", "c"] and [r["status"] for r in again.store.done.values()] == ["reused"] * 3
    # a described base value changed: the stage that reads it and the ones after it are computed
    _table(tmp_path, stages, resume=True, setting=2).run()
    assert calls == ["a", "b", "c", "a", "b", "c"]


def test_a_stage_turned_off_is_skipped_with_every_stage_that_reads_it(tmp_path):
    lines: list[str] = []
    stages = [_stage("a", outputs="x"), _stage("b", inputs="x", outputs="y", enabled=lambda view: False),
              _stage("c", inputs="y"), _stage("d", inputs="x")]
    table = _table(tmp_path, stages, lines=lines)
    values = table.run()
    assert table.ran == ["a", "d"] and "y" not in values and "c" not in values
    assert lines == ["stage b: skipped (turned off by the configuration)", "stage c: skipped (y is off)"]
    assert not (tmp_path / "stages" / "c").exists()


def test_a_stage_reads_only_what_it_declares_and_gives_what_it_declares(tmp_path):
    with pytest.raises(PluginError, match="evaluation stage 'b' .* reads 'setting' without naming it in its "
                                          "inputs"):
        _table(tmp_path, [_stage("a", outputs="x"), _stage("b", lambda view: view["setting"], "x")]).run()
    with pytest.raises(PluginError, match=r"evaluation stage 'b' .* gave \['y'\], not its outputs \['y', 'z'\]"):
        _table(tmp_path, [_stage("b", lambda view: {"y": 1}, outputs="y z")]).run()
    assert not (tmp_path / "stages" / "b").exists()  # refused before it is stored


# --- a plugin's stage in the evaluation ----------------------------------------------------------------

class GapPlugin:
    """Adds a stage after the metrics: the mean voxel of the GAN's volumes and its FID gap."""

    def __init__(self, after: str = "metrics", inputs: tuple[str, ...] = ("gan_volumes", "quality")):
        self.after, self.inputs = after, inputs
        self.calls: list[list[str]] = []

    def gap(self, view) -> dict:
        # the stages that had finished when this one ran
        self.calls.append(list(view.store.done))
        quality = view["quality"]
        return {"gan_mean": float(np.mean(view["gan_volumes"].volumes)),
                "fid_gap": quality["cryoetgan"]["fid"] - quality["traditional"]["fid"]}

    @hookimpl
    def forge_register_evaluation_stages(self, register):
        register(EvaluationStage("fid-gap", self.gap, self.inputs, ("gan_mean", "fid_gap"), after=self.after))


def test_a_plugin_stage_runs_after_its_stage_lands_in_the_results_and_is_resumed(plugin, tmp_path):
    gap = plugin(GapPlugin())
    out = tmp_path / "out"
    pipeline.run_evaluation(config_from_dict(SMALL, origin="toy"), out, log=_quiet)
    assert gap.calls == [["data", "inception", "gan", "generation", "metrics"]]
    results = json.loads((out / "results.json").read_text())
    assert list(results["timings_s"])[:7] == ["data", "inception", "gan", "generation", "metrics", "fid-gap",
                                              "downstream"]
    found = results["plugin_stages"]["fid-gap"]
    assert found["fid_gap"] == results["quality"]["cryoetgan"]["fid"] - results["quality"]["traditional"]["fid"]
    generated = load_labelled(out / "data" / "cryoetgan")
    assert found["gan_mean"] == pytest.approx(float(np.mean(generated.volumes)), rel=1e-6)
    record = json.loads((out / "stages" / "fid-gap" / "stage.json").read_text())
    assert record["value"] == found
    assert set(record["inputs"]["inputs"]) == {"gan_volumes", "quality"}

    lines: list[str] = []
    pipeline.run_evaluation(config_from_dict(SMALL, origin="toy"), out, log=lines.append, resume=True)
    assert len(gap.calls) == 1  # read back, not computed
    again = json.loads((out / "results.json").read_text())
    assert "fid-gap" in again["stages_reused"] and again["plugin_stages"] == results["plugin_stages"]
    assert any(line.startswith("stage fid-gap: finished before") for line in lines)


def test_a_plugin_stage_reading_what_nobody_produces_stops_the_evaluation_first(plugin, tmp_path):
    plugin(GapPlugin(inputs=("gan_volumes", "gan_quality")))
    out = tmp_path / "new" / "out"
    with pytest.raises(PluginError) as info:
        pipeline.run_evaluation(config_from_dict(SMALL, origin="toy"), out, log=_quiet)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("evaluation stage 'fid-gap' (test_evaluate_stages) reads 'gan_quality', which no "
                              "stage before it produces; available: ")
    available = message.split("available: ")[1].split(", ")
    # the base values a plugin's stage may read are the ones the pipeline documents
    assert set(pipeline.BASE_VALUES) <= set(available) and {"quality", "data", "gan_volumes"} <= set(available)
    assert "verdict" not in available  # made after the metrics, where the stage goes
    assert not (tmp_path / "new").exists()  # stopped before the first stage made anything


STAGE_PLUGIN = '''
    from cryoet_forge import hookimpl
    from cryoet_forge.evaluate.stages import EvaluationStage

    @hookimpl
    def forge_register_evaluation_stages(register):
        register({stage})
'''


@pytest.mark.parametrize(("module", "stage", "fragments"), [
    ("forge_stages_input", 'EvaluationStage("count", lambda view: 0, ("nobody_makes_this",))',
     ("evaluation stage 'count' (forge_stages_input) reads 'nobody_makes_this', which no stage before it "
      "produces",)),
    ("forge_stages_object", '"count"', ("register() takes an EvaluationStage (cryoet_forge.evaluate.stages), got str",)),
])
def test_an_installed_plugin_with_a_bad_stage_is_one_error_line(plugin_path, tmp_path, capsys, module, stage,
                                                                 fragments):
    make_distribution(plugin_path, module.replace("_", "-"), module, STAGE_PLUGIN.format(stage=stage))
    config = tmp_path / "toy.toml"
    config.write_bytes(tomli_w.dumps(SMALL).encode())
    code = main(["evaluate", "--config", str(config), "--out", str(tmp_path / "o")])
    assert code == PluginError.exit_code
    assert_one_line_error(code, capsys.readouterr().err, *fragments)
    assert not (tmp_path / "o").exists()

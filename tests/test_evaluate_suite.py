"""`forge evaluate --suite`: every domain x method cell, one table, cells read back, domains skipped."""

from __future__ import annotations

import copy
import json
import subprocess

import pytest
from test_evaluate import TOY

from cryoet_forge.errors import ConfigError
from cryoet_forge.evaluate.suite import (
    any_kind_outcome,
    cell_config,
    load_suite,
    render_suite,
    run_suite,
    suite_from_dict,
    tally,
)
from tests_support import assert_one_line_error, forge_executable

BASE = copy.deepcopy(TOY)
BASE["ablations"] = {}
BASE["uncertainty"] = {"enabled": False}
BASE["gan"]["curve_points"] = 1

SUITE = {
    "title": "toy suite",
    "base": BASE,
    "overrides": {"downstream.seeds": [0, 1]},
    "domains": {
        "low-dose": {"description": "less dose", "overrides": {"experimental.options": {"dose": 40.0, "tilt_step": 6.0}}},
        "absent-maps": {"description": "maps nobody has",
                        "overrides": {"data.maps_dir": "shared:no-such-maps", "data.classes": ["a", "b"]}},
    },
    "methods": {
        "paper": {"description": "clean maps in", "overrides": {}},
        "refine": {"description": "traditional in", "overrides": {"gan.input": "traditional"}},
    },
}


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    lines = []
    record = run_suite(suite_from_dict(copy.deepcopy(SUITE), origin="toy.toml"), out, log=lines.append)
    return out, record, lines


def test_cell_overrides_apply_in_order():
    suite = suite_from_dict(copy.deepcopy(SUITE), origin="toy.toml", extra={"downstream.seeds": [7]})
    config = cell_config(suite, suite.domains[0], suite.methods[1])
    assert config.experimental.options == {"dose": 40.0, "tilt_step": 6.0}
    assert config.gan.input == "traditional"
    assert config.downstream.seeds == [7]  # --set beats the suite's own overrides
    assert config.report.title == "toy suite: low-dose / refine"


def test_suite_table_has_one_row_per_cell_and_skips_absent_data(suite_run):
    out, record, _ = suite_run
    rows = record["rows"]
    assert [(r["domain"], r["method"], r["status"]) for r in rows] == [
        ("low-dose", "paper", "done"), ("low-dose", "refine", "done"),
        ("absent-maps", "paper", "skipped"), ("absent-maps", "refine", "skipped")]
    assert "shared:no-such-maps" in rows[2]["reason"]
    assert json.loads((out / "suite.json").read_text())["rows"] == rows
    table = (out / "suite.md").read_text()
    for r in rows[:2]:
        results = json.loads((out / r["domain"] / r["method"] / "results.json").read_text())
        assert r["real"] == results["inception"]["real_test"]["accuracy"]
        assert r["paired"]["mean"] == pytest.approx(results["downstream_paired"]["mean"])
        assert r["paired"]["n"] == 2
        assert f"| {r['domain']} | {r['method']} | 10 |" in table
    assert "| absent-maps | paper | | | | | | | | | skipped: needs shared:no-such-maps" in table
    # every downstream classifier kind of each cell, with its own verdict
    for r in rows[:2]:
        results = json.loads((out / r["domain"] / r["method"] / "results.json").read_text())
        kinds = [c["classifier"] for c in r["by_classifier"]]
        assert kinds == list(results["verdict"]["by_classifier"]) and kinds
        for c in r["by_classifier"]:
            verdict = results["verdict"]["by_classifier"][c["classifier"]]
            assert c["real"] == verdict["real_accuracy"] and c["paired"]["mean"] == verdict["paired"]["mean"]
            assert f"| {r['domain']} | {r['method']} | {c['classifier']} | " in table
    assert "## Per classifier kind" in table
    per_method = record["tally"]["methods"]
    assert per_method["paper"]["domains"] == per_method["refine"]["domains"] == 1
    assert record["tally"]["best"] in ("paper", "refine")


def test_refinement_trains_on_and_refines_the_traditional_set(suite_run):
    out, _, _ = suite_run
    paper = json.loads((out / "low-dose" / "paper" / "results.json").read_text())
    refine = json.loads((out / "low-dose" / "refine" / "results.json").read_text())
    assert refine["config"]["gan"]["input"] == "traditional" and paper["config"]["gan"]["input"] == "density"
    # the baseline is the same data and seeds in both cells
    assert refine["downstream"]["traditional"]["accuracies"] == paper["downstream"]["traditional"]["accuracies"]
    assert "the GAN refines traditional simulation" in (out / "low-dose" / "refine" / "report.md").read_text()
    assert "density maps (domain D)" in (out / "low-dose" / "paper" / "report.md").read_text()


def test_finished_cells_are_read_back_and_a_changed_config_is_refused(suite_run):
    out, record, _ = suite_run
    results = out / "low-dose" / "paper" / "results.json"
    before = results.stat().st_mtime_ns
    lines = []
    again = run_suite(suite_from_dict(copy.deepcopy(SUITE), origin="toy.toml"), out, log=lines.append)
    assert results.stat().st_mtime_ns == before
    assert sum("done before" in line for line in lines) == 2
    assert again["rows"] == record["rows"]
    changed = copy.deepcopy(SUITE)
    changed["overrides"]["downstream.seeds"] = [0, 1, 2]
    with pytest.raises(ConfigError, match="holds results of a different configuration for domain 'low-dose'"):
        run_suite(suite_from_dict(changed, origin="toy.toml"), out, log=lambda line: None)


def test_a_selection_runs_only_its_cells_and_reads_back_the_rest(suite_run, tmp_path, monkeypatch):
    import cryoet_forge.evaluate.pipeline as pipeline

    out, record, _ = suite_run
    suite = suite_from_dict(copy.deepcopy(SUITE), origin="toy.toml")
    ran = []
    monkeypatch.setattr(pipeline, "run_evaluation", lambda config, cell, **kw: ran.append(cell))
    # a fresh folder: only the chosen domain's cells would run, no other cell appears
    fresh = run_suite(suite, tmp_path / "fresh", log=lambda line: None, domains=["absent-maps"])
    # (the cells that cannot run here are listed as skipped all the same)
    assert ran == [] and [(r["domain"], r["method"]) for r in fresh["rows"]] == [
        ("absent-maps", "paper"), ("absent-maps", "refine")]
    assert fresh["complete"] is False

    def copy_finished(config, cell, **kw):  # "runs" a cell by copying the finished one
        ran.append(cell)
        cell.mkdir(parents=True)
        (cell / "results.json").write_bytes((out / cell.parent.name / cell.name / "results.json").read_bytes())

    monkeypatch.setattr(pipeline, "run_evaluation", copy_finished)
    one = run_suite(suite, tmp_path / "one", log=lambda line: None, domains=["low-dose"], methods=["refine"])
    assert ran == [tmp_path / "one" / "low-dose" / "refine"]
    assert [(r["domain"], r["method"], r["status"]) for r in one["rows"]] == [
        ("low-dose", "refine", "done"), ("absent-maps", "paper", "skipped"), ("absent-maps", "refine", "skipped")]
    ran.clear()
    # the finished folder: the other cells are read back, so the table stays whole
    again = run_suite(suite, out, log=lambda line: None, methods=["refine"])
    assert ran == [] and again["rows"] == record["rows"] and again["complete"] is True
    with pytest.raises(ConfigError, match="toy.toml: no method named 'cut'; the suite has paper, refine"):
        run_suite(suite, out, log=lambda line: None, methods=["cut"])


def test_restating_a_default_is_the_same_cell(suite_run):
    out, record, _ = suite_run
    same = copy.deepcopy(SUITE)
    same["methods"]["refine"]["overrides"]["gan.overrides.loss.identity_weight"] = 0.0  # the default
    lines = []
    again = run_suite(suite_from_dict(same, origin="toy.toml"), out, log=lines.append)
    assert sum("done before" in line for line in lines) == 2 and again["rows"] == record["rows"]
    other = copy.deepcopy(SUITE)
    other["methods"]["refine"]["overrides"]["gan.overrides.loss.identity_weight"] = 5.0  # not the default
    with pytest.raises(ConfigError, match="holds results of a different configuration for domain 'low-dose', "
                                          "method 'refine'"):
        run_suite(suite_from_dict(other, origin="toy.toml"), out, log=lambda line: None)


@pytest.mark.parametrize("change, message", [
    ({"domains": {}}, "\\[domains\\] must name at least one domain"),
    ({"colour": "red"}, "unknown key\\(s\\) colour"),
    ({"methods": {"m": {"overrides": {}, "weight": 1}}}, "\\[methods.m\\] unknown key\\(s\\) weight"),
    ({"methods": {"a/b": {}}}, "method name 'a/b' must not contain '/'"),
    ({"methods": {"bad": {"overrides": {"gan.input": "clean"}}}},
     "domain 'low-dose', method 'bad': gan.input 'clean'; choose from: density, traditional"),
])
def test_bad_suites_are_refused_before_any_work(change, message):
    table = {**copy.deepcopy(SUITE), **change}
    with pytest.raises(ConfigError, match=message):
        suite_from_dict(table, origin="toy.toml")


def test_shipped_suite_has_distinct_domains_and_both_methods():
    from pathlib import Path

    suite = load_suite(Path(__file__).resolve().parents[1] / "configs" / "suite.toml")
    assert len(suite.domains) >= 4 and [m.name for m in suite.methods][:2] == ["paper", "refine"]
    patchnce = cell_config(suite, suite.domains[0], next(m for m in suite.methods if m.name == "patchnce"))
    assert patchnce.gan.overrides["loss.regularizers"] == {"patchnce": {"weight": 1.0}}
    configs = [cell_config(suite, d, suite.methods[0]) for d in suite.domains]
    simulated = [c for c in configs if c.data.source == "embedded"]
    assert len({json.dumps(c.experimental.options, sort_keys=True) for c in simulated}) == len(simulated) >= 5
    assert {15, 50, 200} <= {c.data.n_train_per_class for c in simulated}
    # an independent simulator's tomograms, cut at run time, trained and tested on different tomograms
    parakeet = [c for c in configs if c.data.source == "picks"]
    assert len(parakeet) == 3 and all(c.data.picks.startswith("shared:parakeet_dev") for c in parakeet)
    assert all(not set(c.data.train_tomograms) & set(c.data.test_tomograms) for c in parakeet)
    assert len({(c.data.tomograms, c.data.real_train_per_class) for c in parakeet}) == 3
    assert all(c.traditional.acquisition["defocus"] == 4.0 for c in parakeet)
    assert any(c.data.maps_dir.startswith("shared:") for c in configs)
    assert len({c.data.voxel_size for c in configs}) >= 3
    assert all(c.downstream.seeds == [0, 1, 2, 3, 4] for c in configs)
    # a domain that sets only the options keeps the experimental simulator
    assert all(c.experimental.simulator == "tilt-series" for c in configs)


def test_cli_wants_exactly_one_of_config_and_suite(tmp_path):
    proc = subprocess.run([forge_executable(), "evaluate", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, check=False)
    assert_one_line_error(proc.returncode, proc.stderr, "give exactly one of --config", "--suite")
    bad = tmp_path / "suite.toml"
    bad.write_text('base = "quickstart"\n[domains.a]\noverrides = {}\n')
    proc = subprocess.run([forge_executable(), "evaluate", "--suite", str(bad), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, check=False)
    assert_one_line_error(proc.returncode, proc.stderr, f"{bad}: [methods] must name at least one method")
    proc = subprocess.run([forge_executable(), "evaluate", "--config", str(bad), "--method", "paper",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, check=False)
    assert_one_line_error(proc.returncode, proc.stderr, "--domain and --method choose cells of a --suite")


def test_downstream_scores_are_read_back_from_the_cache(tmp_path, monkeypatch):
    from test_classify import TOY_OPTIONS, toy_shapes

    from cryoet_forge.classify import ClassifierOptions
    from cryoet_forge.evaluate import downstream

    train, test = toy_shapes(4, seed=0), toy_shapes(3, seed=1)
    options = ClassifierOptions(**{**TOY_OPTIONS, "epochs": 2})
    first = downstream.train_on_synthetic_test_on_real("toy", train, test, train.class_names, options, [0, 1],
                                                       cache_dir=tmp_path, workers=0)
    assert len(list(tmp_path.glob("downstream-*.json"))) == 2

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the score is cached")

    monkeypatch.setattr(downstream, "_train_and_score", no_training)
    again = downstream.train_on_synthetic_test_on_real("toy", train, test, train.class_names, options, [0, 1],
                                                       cache_dir=tmp_path, workers=0)
    assert again.accuracies == first.accuracies and again.per_class == first.per_class
    assert (again.first.confusion == first.first.confusion).all()
    # other data, another key: trained (and so refused here)
    with pytest.raises(AssertionError, match="trained although"):
        downstream.train_on_synthetic_test_on_real("toy", toy_shapes(4, seed=2), test, train.class_names, options,
                                                   [0], cache_dir=tmp_path, workers=0)


def test_semantic_method_trains_its_domain_classifier_first(tmp_path):
    from cryoet_forge.config import load_config
    from cryoet_forge.evaluate.config import config_from_dict
    from cryoet_forge.evaluate.pipeline import run_evaluation

    config = config_from_dict(copy.deepcopy(BASE), {"gan.overrides.loss.semantic_weight": 1.0,
                                                    "downstream.seeds": [0]})
    run_evaluation(config, tmp_path, log=lambda line: None)
    classifier = tmp_path / "runs" / "semantic-cb3d"
    assert (classifier / "cb3d.safetensors").is_file()
    assert json.loads((classifier / "cb3d.json").read_text())["class_names"] == BASE["data"]["classes"]
    run_config = load_config(tmp_path / "runs" / "cryoetgan" / "config.toml", {})
    assert run_config.loss.semantic_weight == 1.0 and run_config.loss.semantic_classifier == str(classifier)


def test_an_unreadable_cached_score_is_retrained(tmp_path):
    from test_classify import TOY_OPTIONS, toy_shapes

    from cryoet_forge.classify import ClassifierOptions
    from cryoet_forge.evaluate import downstream

    train, test = toy_shapes(4, seed=0), toy_shapes(3, seed=1)
    options = ClassifierOptions(**{**TOY_OPTIONS, "epochs": 2})
    first = downstream.train_on_synthetic_test_on_real("toy", train, test, train.class_names, options, [0],
                                                       cache_dir=tmp_path, workers=0)
    (cached,) = tmp_path.glob("downstream-*.json")
    cached.write_text("{not json")
    again = downstream.train_on_synthetic_test_on_real("toy", train, test, train.class_names, options, [0],
                                                       cache_dir=tmp_path, workers=0)
    assert again.accuracies == first.accuracies
    assert json.loads(cached.read_text())["accuracy"] == first.accuracies[0]  # rewritten whole


def test_domain_classifier_is_reused_only_for_the_same_data(tmp_path, monkeypatch):
    from test_classify import toy_shapes

    from cryoet_forge.evaluate import gan
    from cryoet_forge.evaluate.config import config_from_dict

    config = config_from_dict(copy.deepcopy(BASE), {"classifier.epochs": 2})
    data = toy_shapes(4, seed=0)
    folder = gan.domain_classifier(config, data, tmp_path / "clf")
    before = (folder / "cb3d.safetensors").stat().st_mtime_ns
    assert gan.domain_classifier(config, data, tmp_path / "clf") == folder
    assert (folder / "cb3d.safetensors").stat().st_mtime_ns == before  # same data: read back
    gan.domain_classifier(config, toy_shapes(4, seed=1), tmp_path / "clf")
    assert (folder / "cb3d.safetensors").stat().st_mtime_ns != before  # other data: trained again


def _row(domain: str, method: str, outcome: str, gain: float, kinds: dict[str, str]) -> dict:
    return {"domain": domain, "method": method, "status": "done", "outcome": outcome, "headroom": True,
            "paired": {"mean": gain}, "by_classifier": [{"classifier": k, "outcome": o} for k, o in kinds.items()]}


@pytest.mark.parametrize(("kinds", "expected"), [
    ({"cb3d": "does-not-learn", "radial": "neither-transfers"}, None),
    ({}, None),
    ({"cb3d": "inconclusive"}, None),
    ({"cb3d": "neither-transfers", "radial": "gan-ahead"}, "gan-ahead"),
    ({"cb3d": "no-clear-difference", "radial": "gan-ahead"}, "gan-ahead"),
    ({"cb3d": "traditional-ahead", "radial": "gan-ahead"}, "traditional-ahead"),
    ({"cb3d": "no-clear-difference", "radial": "does-not-learn"}, "no-clear-difference"),
])
def test_any_kind_outcome_counts_only_kinds_that_answer(kinds, expected):
    assert any_kind_outcome(_row("d", "m", "neither-transfers", 0.0, kinds)) == expected


def test_tally_breaks_cb3d_ties_by_the_domains_any_kind_wins():
    suite = suite_from_dict(copy.deepcopy(SUITE), origin="toy.toml")
    rows = [
        # both methods win one domain by CB3D; only refine also wins the second domain with radial
        _row("low-dose", "paper", "gan-ahead", 0.30, {"cb3d": "gan-ahead", "radial": "no-clear-difference"}),
        _row("absent-maps", "paper", "neither-transfers", 0.05, {"cb3d": "neither-transfers",
                                                               "radial": "neither-transfers"}),
        _row("low-dose", "refine", "gan-ahead", 0.10, {"cb3d": "gan-ahead"}),
        _row("absent-maps", "refine", "neither-transfers", 0.0, {"cb3d": "neither-transfers",
                                                               "radial": "gan-ahead"}),
    ]
    record = tally(rows, suite)
    paper, refine = record["methods"]["paper"], record["methods"]["refine"]
    assert (paper["gan-ahead"], paper["won_by_a_kind"], paper["answered_by_a_kind"]) == (1, 1, 1)
    assert (refine["gan-ahead"], refine["won_by_a_kind"], refine["answered_by_a_kind"]) == (1, 2, 2)
    assert paper["mean_gain"] > refine["mean_gain"]
    assert record["best"] == "refine"  # more domains won by any kind beats the larger mean gain
    text = render_suite({"title": "t", "origin": "toy.toml", "headroom": 0.2, "domains": [], "methods": [],
                         "rows": [], "tally": record})
    assert "| refine | 2 | 1 | 0 | 0 | 1 | 0 | 1 / 2 | 0.050 | 2 / 0 / 2 |" in text
    assert "Most domains won: **refine**" in text
    # a loss for one kind is not outvoted by another kind's win
    rows[3]["by_classifier"].append({"classifier": "third", "outcome": "traditional-ahead"})
    lost = tally(rows, suite)["methods"]["refine"]
    assert (lost["won_by_a_kind"], lost["lost_by_a_kind"]) == (1, 1)
    assert tally(rows, suite)["best"] == "paper"

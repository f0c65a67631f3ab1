"""The picking protocol's plumbing: sources x seeds, scores on held-out tomograms, paired
difference and verdict (with a stand-in picker whose quality is known)."""

from __future__ import annotations

import numpy as np
import pytest

from cryoet_forge.errors import InputError
from cryoet_forge.evaluate.picking import picking_protocol
from cryoet_forge.picking.tomograms import LabelledTomogram

TRUE = np.array([[10.0, 10.0, 10.0], [30.0, 10.0, 10.0], [10.0, 30.0, 10.0], [30.0, 30.0, 10.0]])


def tomogram(name: str, quality: float) -> LabelledTomogram:
    """The volume's constant value carries how well a picker trained on it finds particles."""
    return LabelledTomogram(name, np.full((20, 40, 40), quality, np.float32), 10.0, {"a": TRUE}, {"a": 40.0})


class StandIn:
    """Finds round(quality x 4) of the four particles (plus one false pick per seed parity)."""

    def fit(self, tomograms, seed):
        self.quality = float(np.mean([t.volume.mean() for t in tomograms]))
        self.seed = seed
        return self

    def pick(self, volume, voxel_size):
        found = TRUE[:int(round(self.quality * 4))]
        false = np.array([[1.0, 1.0, 1.0]]) if self.seed % 2 else np.zeros((0, 3))
        return {"a": np.concatenate([found, false])}


def test_sources_are_scored_paired_and_judged():
    test = [tomogram("test", 0.0)]
    sources = {"real": [tomogram("r", 1.0)], "traditional": [tomogram("t", 0.25)], "gan": [tomogram("g", 0.75)]}
    result = picking_protocol(sources, test, StandIn, seeds=[0, 1, 2])
    real = result["sources"]["real"]
    assert real["fbeta"][0] == pytest.approx(1.0)
    # seed 1: 4 found, 1 false: precision 0.8, recall 1
    assert real["fbeta"][1] == pytest.approx(17 * 0.8 / (16 * 0.8 + 1))
    trad = result["sources"]["traditional"]["runs"][0]["classes"]["a"]
    assert (trad["tp"], trad["fp"], trad["fn"]) == (1, 0, 3)
    paired = result["paired"]
    assert paired["n"] == 3 and paired["gan_wins"] == 3 and paired["ci_low"] > 0
    assert result["verdict"]["outcome"] == "gan-ahead"
    share = result["verdict"]["gan_share_of_ceiling"]
    assert share == pytest.approx(result["sources"]["gan"]["mean"] / real["mean"])


def test_a_ceiling_near_zero_cannot_tell():
    sources = {"real": [tomogram("r", 0.0)], "traditional": [tomogram("t", 0.25)], "gan": [tomogram("g", 0.5)]}
    result = picking_protocol(sources, [tomogram("test", 0.0)], StandIn, seeds=[0, 2])
    assert result["verdict"]["outcome"] == "cannot-tell"
    assert "below 0.1" in result["verdict"]["reason"]


def test_two_synthetic_sources_that_find_nothing_are_no_comparison():
    sources = {"real": [tomogram("r", 1.0)], "traditional": [tomogram("t", 0.0)], "gan": [tomogram("g", 0.0)]}
    result = picking_protocol(sources, [tomogram("test", 0.0)], StandIn, seeds=[0, 2])
    assert result["paired"]["mean"] == 0.0
    assert result["verdict"]["outcome"] == "neither-transfers"
    assert "both stay below F-beta 0.1" in result["verdict"]["reason"]


def test_the_protocol_needs_test_tomograms_and_mappings():
    with pytest.raises(InputError, match="at least one held-out real tomogram"):
        picking_protocol({"real": [tomogram("r", 1.0)]}, [], StandIn, seeds=[0])

    class Bad(StandIn):
        def pick(self, volume, voxel_size):
            return [1, 2, 3]

    with pytest.raises(InputError, match="picker Bad returned list; expected a mapping"):
        picking_protocol({"real": [tomogram("r", 1.0)]}, [tomogram("t", 0.0)], Bad, seeds=[0])


#: a third party's picker: picks the brightest voxel of the volume as class "a" (no base class)
BRIGHTEST_PLUGIN = '''
import numpy as np
from cryoet_forge import hookimpl


class Brightest:
    def __init__(self, count=1):
        self.count = count

    def fit(self, tomograms, seed):
        self.names = sorted({c for t in tomograms for c in t.picks})
        return self

    def pick(self, volume, voxel_size):
        order = np.argsort(volume.ravel())[::-1][:self.count]
        zyx = np.stack(np.unravel_index(order, volume.shape), axis=1)
        return {self.names[0]: zyx[:, ::-1].astype(float)}


@hookimpl
def forge_register_pickers(register):
    register("brightest", Brightest)
'''


def test_the_builtin_and_a_third_party_picker_register_with_their_protocol(plugin_path):
    from test_registry import make_distribution

    from cryoet_forge import contracts, registry

    make_distribution(plugin_path, "forge-brightest", "forge_brightest", BRIGHTEST_PLUGIN)
    assert isinstance(registry.create("picker", "unet-segmentation", steps=1), contracts.Picker)
    assert registry.get("picker", "brightest").origin == "forge-brightest"
    volume = np.zeros((20, 40, 40), np.float32)
    volume[10, 10, 30] = 5.0  # the particle at (x, y, z) = (30, 10, 10)
    test = [LabelledTomogram("t", volume, 10.0, {"a": np.array([[30.0, 10.0, 10.0]])}, {"a": 40.0})]
    result = picking_protocol({"real": test}, test, lambda: registry.create("picker", "brightest"), seeds=[0, 1])
    assert result["sources"]["real"]["fbeta"] == [1.0, 1.0]


SIMULATE = ["simulate-tomogram", "--structures", "globule,two-lobe", "--size", "32,48,48", "--voxel-size", "20",
            "--n-per-class", "3", "--tilt-step", "10", "--n-tomograms", "2", "--quiet"]
TINY_PICKER = ["--option", "channels=[4,8]", "--option", "patch=16", "--option", "steps=3", "--option", "batch_size=2",
               "--option", "tile=16", "--option", "overlap=4"]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """Two tiny simulate-tomogram outputs: one stands in for the real tomograms, one for the
    traditional synthetic ones (its tomograms copied as the "refined" ones)."""
    import shutil

    from cryoet_forge.cli import main

    root = tmp_path_factory.mktemp("picking")
    for name, seed in (("real", 1), ("synthetic", 2)):
        extra = ["--copick"] if name == "real" else []  # the real domain also as a copick project
        assert main([*SIMULATE, *extra, "--seed", str(seed), "--out", str(root / name)]) == 0
    shutil.copytree(root / "synthetic" / "tomograms", root / "refined")
    return root


def test_evaluate_picking_end_to_end(simulated, tmp_path, capsys):
    import json

    from cryoet_forge.cli import main

    base = ["evaluate-picking", "--picks", str(simulated / "real" / "particles.star"),
            "--tomograms", str(simulated / "real" / "tomograms"), "--train", "TS_01", "--test", "TS_02",
            "--radius-column", "forgeRadiusAngst", "--synthetic", str(simulated / "synthetic"),
            "--refined", str(simulated / "refined"), *TINY_PICKER, "--seeds", "0,1"]
    out = tmp_path / "eval"
    assert main([*base, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["sources"]) == ["real", "traditional", "gan"]
    for source in results["sources"].values():
        assert len(source["fbeta"]) == 2 and all(0.0 <= f <= 1.0 for f in source["fbeta"])
        assert set(source["runs"][0]["classes"]) == {"globule", "two-lobe"}
    assert results["paired"]["n"] == 2 and results["test_tomograms"] == ["TS_02"]
    assert results["verdict"]["outcome"] in {"cannot-tell", "neither-transfers", "gan-ahead", "traditional-ahead",
                                             "no-clear-difference"}
    report = (out / "report.md").read_text()
    assert "**Verdict:" in report and "| gan |" in report
    assert (out / "picks.png").stat().st_size > 1000
    capsys.readouterr()
    assert main([*base, "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a picking evaluation" in err[0] and "--resume" in err[0]
    # each source and seed was kept as it finished: --resume reads them back, the same scores
    stages = sorted(entry.name for entry in (out / "stages").iterdir())
    assert stages == [f"picker-{s}-seed{n}" for s in ("gan", "real", "traditional") for n in (0, 1)]
    (out / "report.md").unlink()
    assert main([*base, "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished before, read back") == 6
    assert json.loads((out / "results.json").read_text()) == results and (out / "report.md").is_file()
    # a changed picker option trains again
    changed = [*base[:-2], "--option", "steps=2", "--seeds", "0"]
    assert main([*changed, "--out", str(out), "--resume"]) == 0
    assert "finished before" not in capsys.readouterr().out


def test_a_resumed_picking_protocol_reuses_only_unchanged_runs(tmp_path):
    from cryoet_forge.evaluate.picking import stage_store

    test = [tomogram("test", 0.0)]
    sources = {"real": [tomogram("r", 1.0)], "traditional": [tomogram("t", 0.25)]}
    first = picking_protocol(sources, test, StandIn, seeds=[0, 1],
                             store=stage_store(tmp_path, False, "stand-in", {}, sources, test, print))
    calls = []

    class Counting(StandIn):
        def fit(self, tomograms, seed):
            calls.append(seed)
            return super().fit(tomograms, seed)

    again = picking_protocol(sources, test, Counting, seeds=[0, 1],
                             store=stage_store(tmp_path, True, "stand-in", {}, sources, test, print))
    assert calls == [] and again["sources"]["real"]["fbeta"] == first["sources"]["real"]["fbeta"]
    np.testing.assert_array_equal(again["sources"]["real"]["runs"][0]["test_picks"]["a"], TRUE)
    # the traditional tomogram changed: only its pickers train again
    sources["traditional"] = [tomogram("t", 0.5)]
    third = picking_protocol(sources, test, Counting, seeds=[0, 1],
                             store=stage_store(tmp_path, True, "stand-in", {}, sources, test, print))
    assert calls == [0, 1] and third["sources"]["traditional"]["runs"][0]["classes"]["a"]["tp"] == 2


@pytest.mark.parametrize("change, message", [
    (["--radius", "globule=0"], "--radius 'globule=0': expected CLASS=RADIUS"),
    (["--radius-column", "nosuch"], "no radius column 'nosuch'"),
    (["--test", "TS_01"], "--train and --test share tomogram(s) TS_01"),
    (["--seeds", "1,1"], "--seeds '1,1': expected distinct"),
    (["--option", "patch=15"], "picker patch must be a positive multiple of 2"),
    (["--picker", "nosuch"], "unknown picker 'nosuch'"),
])
def test_evaluate_picking_bad_input_is_one_line(simulated, tmp_path, capsys, change, message):
    from cryoet_forge.cli import main

    args = ["evaluate-picking", "--picks", str(simulated / "real" / "particles.star"),
            "--tomograms", str(simulated / "real" / "tomograms"), "--train", "TS_01", "--test", "TS_02",
            "--out", str(tmp_path / "e"), *TINY_PICKER]
    if "--radius" not in change and "--radius-column" not in change:
        args += ["--radius-column", "forgeRadiusAngst"]
    if change[0] == "--test":
        args = [a for a in args if a != "TS_02"]
        args.remove("--test")
    capsys.readouterr()
    assert main([*args, *change]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_copick_project_reads_as_the_same_real_tomograms(simulated):
    """The copick project that simulate-tomogram wrote beside its STAR tables gives the same volumes,
    picks (voxels) and radii (from the project's objects) as the tables."""
    pytest.importorskip("copick")
    from cryoet_forge.picking.tomograms import copick_radii, load_copick_tomograms, load_labelled_tomograms, read_radii

    real = simulated / "real"
    config = real / "copick" / "copick.json"
    radii = read_radii(real / "particles.star", "forgeRadiusAngst")
    assert copick_radii(config) == pytest.approx(radii)
    from_tables = load_labelled_tomograms(real / "particles.star", real / "tomograms", ["TS_01", "TS_02"], radii)
    from_copick = load_copick_tomograms(config, ["TS_01", "TS_02"])
    for a, b in zip(from_tables, from_copick):
        assert a.name == b.name and a.voxel_size == b.voxel_size
        np.testing.assert_allclose(b.volume, a.volume, atol=1e-3 * float(np.abs(a.volume).max()))
        assert sorted(a.picks) == sorted(b.picks) == ["globule", "two-lobe"]
        for name in a.picks:
            order = np.lexsort(a.picks[name].T), np.lexsort(b.picks[name].T)
            np.testing.assert_allclose(b.picks[name][order[1]], a.picks[name][order[0]], atol=1e-4)
        assert b.radii_A == pytest.approx(a.radii_A)


def test_evaluate_picking_on_a_copick_project(simulated, tmp_path, capsys):
    pytest.importorskip("copick")
    import json

    from cryoet_forge.cli import main

    config = str(simulated / "real" / "copick" / "copick.json")
    out = tmp_path / "eval"
    args = ["evaluate-picking", "--copick", config, "--train", "TS_01", "--test", "TS_02", *TINY_PICKER,
            "--seeds", "0", "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["sources"]) == ["real"] and results["test_tomograms"] == ["TS_02"]
    assert set(results["sources"]["real"]["runs"][0]["classes"]) == {"globule", "two-lobe"}
    for change, message in ((["--picks", str(simulated / "real" / "particles.star")], "drop --picks"),
                            (["--train", "TS_09"], "--train 'TS_09': no run of that name in")):
        capsys.readouterr()
        assert main([*args[:-2], *change, "--out", str(tmp_path / "bad")]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    capsys.readouterr()
    assert main(["evaluate-picking", "--train", "TS_01", "--test", "TS_02", "--out", str(tmp_path / "none")]) != 0
    assert "give the real tomograms by --picks FILE and --tomograms DIR, or by --copick" in capsys.readouterr().err

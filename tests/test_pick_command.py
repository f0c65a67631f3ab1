"""forge pick train / apply: a picker trained on labelled tomograms, saved, loaded and applied to
new tomograms; picks as a RELION particle STAR and as a copick project's picks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import starfile
from test_evaluate_picking import SIMULATE, simulated  # noqa: F401  (the module's tiny tomograms)

from cryoet_forge.cli import main

TINY = ["--option", "channels=[4,8]", "--option", "patch=16", "--option", "steps=3", "--option", "batch_size=2",
        "--option", "tile=16", "--option", "overlap=4", "--option", "threshold=0.3"]


def test_a_saved_picker_picks_as_the_trained_one(simulated, tmp_path):  # noqa: F811
    from cryoet_forge.evaluate.picking import synthetic_source
    from cryoet_forge.picking.segmentation import SegmentationPicker

    radii = {"globule": 60.0, "two-lobe": 60.0}
    tomograms = synthetic_source(simulated / "synthetic", radii)
    picker = SegmentationPicker(channels=[4, 8], patch=16, steps=3, batch_size=2, tile=16, overlap=4).fit(tomograms)
    picker.save(tmp_path)
    loaded = SegmentationPicker(channels=[4, 8], patch=16, tile=16, overlap=4).load(tmp_path)
    assert loaded.class_names == ["globule", "two-lobe"] and loaded.radii_A == picker.radii_A
    volume = tomograms[1].volume
    np.testing.assert_array_equal(loaded.probabilities(volume), picker.probabilities(volume))
    with pytest.raises(Exception, match="saved with channels \\[4, 8\\], not \\[4, 8, 16\\]"):
        SegmentationPicker(channels=[4, 8, 16], patch=16, tile=16, overlap=4).load(tmp_path)
    (tmp_path / "weights.safetensors").write_text("not safetensors")  # a damaged file: one clear error
    with pytest.raises(Exception, match="not a saved unet-segmentation picker"):
        SegmentationPicker(channels=[4, 8], patch=16, tile=16, overlap=4).load(tmp_path)


def test_train_then_apply_writes_star_picks(simulated, tmp_path, capsys):  # noqa: F811
    from cryoet_forge.picking.commands import load_picker

    run = tmp_path / "picker"
    assert main(["pick", "train", "--synthetic", str(simulated / "synthetic"), *TINY, "--out", str(run)]) == 0
    record = json.loads((run / "picker.json").read_text())
    assert record["classes"] == ["globule", "two-lobe"] and record["trained_on"] == ["TS_01", "TS_02"]
    assert record["options"]["channels"] == [4, 8] and (run / "model" / "weights.safetensors").is_file()
    out = tmp_path / "picks"
    tomogram = simulated / "real" / "tomograms" / "TS_02.mrc"
    assert main(["pick", "apply", "--run", str(run), "--tomogram", str(tomogram), "--out", str(out)]) == 0
    table = starfile.read(out / "particles.star")
    assert list(table.columns) == ["rlnTomoName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ",
                                   "rlnClassNumber", "forgeClassName", "forgeRadiusAngst", "rlnAutopickFigureOfMerit"]
    # the same picks as the loaded picker gives directly
    import mrcfile

    picker, _ = load_picker(run)
    with mrcfile.open(tomogram) as f:
        found = picker.pick_with_scores(f.data.astype(np.float32), float(f.voxel_size.x))
    assert len(table) == sum(len(p) for p, _ in found.values()) > 0
    for name, (points, scores) in found.items():
        rows = table[table["forgeClassName"] == name]
        if not len(points):
            assert rows.empty
            continue
        np.testing.assert_allclose(rows[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(), points,
                                   atol=1e-5)
        np.testing.assert_allclose(rows["rlnAutopickFigureOfMerit"].to_numpy(), scores, atol=1e-5)
        assert set(rows["rlnClassNumber"]) == {record["classes"].index(name) + 1}
    assert set(table["rlnTomoName"]) == {"TS_02"}
    # picking options replaced at apply time: nothing reaches probability 1
    strict = tmp_path / "strict"
    assert main(["pick", "apply", "--run", str(run), "--tomogram", str(tomogram), "--option", "threshold=1.0",
                 "--out", str(strict)]) == 0
    assert starfile.read(strict / "particles.star").empty
    # picks already there are kept unless --overwrite
    capsys.readouterr()
    assert main(["pick", "apply", "--run", str(run), "--tomogram", str(tomogram), "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds picks" in err[0]


def test_apply_to_a_copick_project_writes_its_picks(simulated, tmp_path, capsys):  # noqa: F811
    import shutil

    copick = pytest.importorskip("copick")
    project = tmp_path / "copick"  # a copy: the picks are written into the project
    shutil.copytree(simulated / "real" / "copick", project)
    config = project / "copick.json"
    data = json.loads(config.read_text())
    data["overlay_root"] = "local://" + str(project / "overlay")
    config.write_text(json.dumps(data))
    run = tmp_path / "picker"
    # trained on the project's own run TS_01 (its picks and radii from the project)
    assert main(["pick", "train", "--copick", str(config), "--train", "TS_01", *TINY, "--out", str(run)]) == 0
    out = tmp_path / "picks"
    apply = ["pick", "apply", "--run", str(run), "--copick", str(config), "--runs", "TS_02", "--out", str(out)]
    assert main(apply) == 0
    table = starfile.read(out / "particles.star")
    root = copick.from_file(str(config))
    written = {p.pickable_object_name: p for p in root.get_run("TS_02").get_picks(user_id="forge-picker")}
    assert set(written) == set(table["forgeClassName"])
    for name, picks in written.items():
        positions = np.array([[p.location.x, p.location.y, p.location.z] for p in picks.points])
        rows = table[table["forgeClassName"] == name][["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]]
        np.testing.assert_allclose(positions, rows.to_numpy() * 20.0, atol=1e-3)
    capsys.readouterr()
    assert main([*apply[:-2], "--out", str(tmp_path / "again")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pick set forge-picker/0 already exists for TS_02/" in err[0]
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize("args, message", [
    (["train", "--synthetic", "{sim}/synthetic", "--picks", "{sim}/real/particles.star", "--out", "{tmp}/r"],
     "exactly one of --synthetic DIR, --picks FILE with --tomograms DIR, or --copick CONFIG (got --synthetic, --picks)"),
    (["train", "--picks", "{sim}/real/particles.star", "--tomograms", "{sim}/real/tomograms",
      "--radius-column", "forgeRadiusAngst", "--out", "{tmp}/r"], "--train NAME: name the tomograms"),
    (["train", "--refined", "{sim}/refined", "--picks", "{sim}/real/particles.star", "--out", "{tmp}/r"],
     "--refined needs --synthetic"),
    (["apply", "--run", "{sim}", "--tomogram", "{sim}/refined/TS_01.mrc", "--out", "{tmp}/p"],
     "not a picker saved by forge pick train"),
    (["apply", "--run", "{run}", "--option", "channels=[4,8,16]", "--tomogram", "{sim}/refined/TS_01.mrc",
      "--out", "{tmp}/p"], "saved with channels [4, 8], not [4, 8, 16]"),
    (["apply", "--run", "{sim}", "--runs", "TS_01", "--tomogram", "{sim}/refined/TS_01.mrc", "--out", "{tmp}/p"],
     "--runs needs --copick"),
])
def test_bad_pick_input_is_one_line(simulated, tmp_path, capsys, args, message):  # noqa: F811
    run = tmp_path / "run"
    if "{run}" in args:
        assert main(["pick", "train", "--synthetic", str(simulated / "synthetic"), *TINY, "--out", str(run)]) == 0
        capsys.readouterr()
    args = [a.replace("{sim}", str(simulated)).replace("{tmp}", str(tmp_path)).replace("{run}", str(run)) for a in args]
    assert main(["pick", *args]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_picker_that_cannot_save_is_refused_by_name(plugin_path, simulated, tmp_path, capsys):  # noqa: F811
    from test_evaluate_picking import BRIGHTEST_PLUGIN
    from test_registry import make_distribution

    make_distribution(plugin_path, "forge-brightest", "forge_brightest", BRIGHTEST_PLUGIN)
    assert main(["pick", "train", "--synthetic", str(simulated / "synthetic"), "--picker", "brightest",
                 "--out", str(tmp_path / "r")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "picker 'brightest' has no save or load method" in err[0]

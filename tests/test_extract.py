"""`forge extract` and the copick dataset on tomograms built here with known particles.

A noise-free tomogram (z 40, y 64, x 72 voxels of 10 A) holds phantom maps inserted at known
sub-voxel positions and rotations, among them one whose 16^3 box leaves the tomogram; a second
copy is the same tomogram Fourier-upsampled to 5 A. Checks, with the tolerances stated:
every particle correlates >= 0.9 with its inserted map and its centre of mass is within 0.5
voxel of the map's; the MRC + RELION 5 STAR, the CSV and the copick paths give the same boxes
(max difference 1e-4 of the boxes' range); extraction from the 2x finer tomogram, rescaled to
10 A, matches extraction from the 10 A one (correlation >= 0.99).
"""

from __future__ import annotations

import json
import subprocess

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from cryoet_forge.errors import InputError
from cryoet_forge.extract import ExtractOptions, extract, region_plan
from cryoet_forge.io.picks import read_picks, relion_matrix
from cryoet_forge.io.tomograms import open_tomogram
from cryoet_forge.simulate.phantoms import make_phantom
from cryoet_forge.simulate.rotations import euler_zyz_to_matrices, rigid_transform
from tests_support import assert_one_line_error, forge_executable

SHAPE = (40, 64, 72)  # z, y, x
VOXEL = 10.0
BOX = 16
CLASSES = ["barrel", "ring"]
# (class, x, y, z) in voxels; the last box leaves the tomogram (x = 3.3)
PICKS = [("barrel", 14.3, 15.6, 12.2), ("ring", 36.0, 14.0, 20.7), ("barrel", 56.8, 17.1, 27.4),
         ("ring", 15.2, 45.5, 26.0), ("barrel", 37.6, 47.3, 15.9), ("ring", 57.1, 46.2, 20.2),
         ("barrel", 3.3, 30.0, 20.0)]
ANGLES = [(10.0 * i, 25.0 + 7 * i, 40.0 * i) for i in range(len(PICKS))]


def fourier_shift(volume: np.ndarray, shift_zyx) -> np.ndarray:
    """out(r) = volume(r - shift): content moved by +shift voxels."""
    spectrum = np.fft.fftn(volume)
    for axis, (n, s) in enumerate(zip(volume.shape, shift_zyx)):
        f = np.fft.fftfreq(n).reshape([-1 if a == axis else 1 for a in range(3)])
        spectrum = spectrum * np.exp(-2j * np.pi * f * s)
    return np.fft.ifftn(spectrum).real


def posed_map(cls: str, angles) -> np.ndarray:
    phantom = torch.from_numpy(make_phantom(cls, BOX, VOXEL, seed=0))[None]
    rot = euler_zyz_to_matrices(*(torch.tensor([a], dtype=torch.float64) for a in angles)).float()
    return rigid_transform(phantom, rot)[0].numpy()


def upsample(volume: np.ndarray, factor: int) -> np.ndarray:
    """Band-limited interpolation: zero-pad the centred spectrum (voxel 0 stays at voxel 0)."""
    spectrum = np.fft.fftshift(np.fft.fftn(volume))
    shape = tuple(n * factor for n in volume.shape)
    out = np.zeros(shape, dtype=complex)
    sl = tuple(slice(m // 2 - n // 2, m // 2 - n // 2 + n) for n, m in zip(volume.shape, shape))
    out[sl] = spectrum
    return (np.fft.ifftn(np.fft.ifftshift(out)).real * factor ** 3).astype(np.float32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tomograms")
    tomo = np.zeros(SHAPE, dtype=np.float64)
    references = []
    pad = 8
    for (cls, x, y, z), angles in zip(PICKS, ANGLES):
        ref = posed_map(cls, angles)
        references.append(ref)
        big = np.pad(ref, pad)  # map centre at index BOX // 2 + pad
        centre = np.round([z, y, x]).astype(int)
        moved = fourier_shift(big, np.array([z, y, x]) - centre)
        start = centre - (BOX // 2 + pad)
        lo = np.maximum(start, 0)
        hi = np.minimum(start + big.shape[0], SHAPE)
        tomo[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] += moved[
            lo[0] - start[0]:hi[0] - start[0], lo[1] - start[1]:hi[1] - start[1], lo[2] - start[2]:hi[2] - start[2]]
    tomo = tomo.astype(np.float32)
    with mrcfile.new(root / "TS_01.mrc") as mrc:
        mrc.set_data(tomo)
        mrc.voxel_size = VOXEL
    fine = root / "fine"
    fine.mkdir()
    with mrcfile.new(fine / "TS_01.mrc") as mrc:
        mrc.set_data(upsample(tomo, 2))
        mrc.voxel_size = VOXEL / 2
    # RELION 5: tilt series at 2.5 A, tomogram binning 4 (10 A); centred coordinates + a refined origin
    ts_px, binning = 2.5, 4
    sizes = [SHAPE[2] * binning, SHAPE[1] * binning, SHAPE[0] * binning]
    origin = np.array([[3.0, -2.0, 1.5]] * len(PICKS))
    rows = {"rlnTomoName": ["TS_01"] * len(PICKS), "rlnClassNumber": [CLASSES.index(p[0]) + 1 for p in PICKS]}
    for k, axis in enumerate("XYZ"):
        absolute = np.array([p[1 + k] for p in PICKS]) * VOXEL
        rows[f"rlnCenteredCoordinate{axis}Angst"] = absolute + origin[:, k] - sizes[k] / 2 * ts_px
        rows[f"rlnOrigin{axis}Angst"] = origin[:, k]
    rows.update({"rlnAngleRot": [a[0] for a in ANGLES], "rlnAngleTilt": [a[1] for a in ANGLES],
                 "rlnAnglePsi": [a[2] for a in ANGLES]})
    starfile.write({"particles": pd.DataFrame(rows)}, root / "particles.star", overwrite=True)
    starfile.write({"global": pd.DataFrame({
        "rlnTomoName": ["TS_01"], "rlnTomoSizeX": [sizes[0]], "rlnTomoSizeY": [sizes[1]], "rlnTomoSizeZ": [sizes[2]],
        "rlnTomoTiltSeriesPixelSize": [ts_px], "rlnTomoTomogramBinning": [binning],
        "rlnTomoReconstructedTomogram": ["TS_01.mrc"]})}, root / "tomograms.star", overwrite=True)
    pd.DataFrame({"tomogram": "TS_01", "x": [p[1] for p in PICKS], "y": [p[2] for p in PICKS],
                  "z": [p[3] for p in PICKS], "class": [p[0] for p in PICKS]}).to_csv(root / "picks.csv", index=False)
    return root, tomo, references


def run_extract(picks, tomograms, **kw):
    options = ExtractOptions(box=BOX, normalize="none", **kw)
    jobs = []
    with open_tomogram(tomograms) as tomo:
        table = picks.table.copy()
        table.attrs["source"] = picks.source
        jobs.append((tomo, table, picks.unit))
        return extract(jobs, options)


def centre_of_mass(v: np.ndarray) -> np.ndarray:
    w = np.clip(v, 0, None)
    grid = np.indices(v.shape).reshape(3, -1)
    return (grid * w.reshape(-1)).sum(1) / w.sum()


def test_extracted_particles_match_the_inserted_maps(data):
    root, _, references = data
    picks = read_picks(root / "picks.csv", unit="px")
    result = run_extract(picks, root / "TS_01.mrc")
    # the box of the pick at x = 3.3 leaves the tomogram: skipped and counted
    assert result.counts["barrel"] == {"extracted": 3, "skipped_edge": 1, "padded_edge": 0}
    assert result.counts["ring"]["extracted"] == 3
    assert len(result.volumes) == 6 and result.volumes.shape[1:] == (BOX,) * 3
    for volume, ref in zip(result.volumes, references[:6]):
        assert np.corrcoef(volume.ravel(), ref.ravel())[0, 1] >= 0.9
        assert np.abs(centre_of_mass(volume) - centre_of_mass(ref)).max() <= 0.5
    # the check can fail: the map of another class correlates less
    assert np.corrcoef(result.volumes[0].ravel(), references[1].ravel())[0, 1] < 0.9
    assert list(result.table["forgeClassName"]) == ["barrel", "ring"] * 3
    assert result.table["rlnAngleRot"].isna().all() if "rlnAngleRot" in result.table else True


def test_relion5_csv_and_copick_paths_give_the_same_particles(data, tmp_path):
    root, tomo, _ = data
    csv = run_extract(read_picks(root / "picks.csv", unit="px"), root / "TS_01.mrc")
    star = run_extract(read_picks(root / "particles.star", tomograms_star=root / "tomograms.star"),
                       root / "TS_01.mrc")
    span = float(csv.volumes.max() - csv.volumes.min())
    assert np.abs(star.volumes - csv.volumes).max() <= 1e-4 * span
    assert list(star.class_names) == ["class1", "class2"]
    assert list(star.table["rlnAngleTilt"]) == [ANGLES[i][1] for i in range(6)]  # orientations carried over

    # a Warp / RELION 4 table: pixel coordinates, the tomogram named by rlnMicrographName
    warp = tmp_path / "warp.star"
    starfile.write({"particles": pd.DataFrame({
        "rlnMicrographName": ["TS_01.tomostar"] * len(PICKS), "rlnCoordinateX": [p[1] for p in PICKS],
        "rlnCoordinateY": [p[2] for p in PICKS], "rlnCoordinateZ": [p[3] for p in PICKS],
        "rlnClassNumber": [CLASSES.index(p[0]) + 1 for p in PICKS]})}, warp, overwrite=True)
    from_warp = run_extract(read_picks(warp), root / "TS_01.mrc")
    assert np.abs(from_warp.volumes - csv.volumes).max() <= 1e-4 * span
    # one class per file when the files have no class column
    for name in CLASSES:
        rows = [p for p in PICKS if p[0] == name]
        pd.DataFrame({"tomogram": "TS_01", "x": [p[1] for p in rows], "y": [p[2] for p in rows],
                      "z": [p[3] for p in rows]}).to_csv(tmp_path / f"{name}.csv", index=False)
    from cryoet_forge.data.extract_command import jobs_from_tables

    jobs = jobs_from_tables([tmp_path / f"{name}.csv" for name in CLASSES], [root / "TS_01.mrc"], "px", None,
                            None, "0", None)
    per_file = extract(jobs, ExtractOptions(box=BOX, normalize="none"))
    assert per_file.class_names == CLASSES and per_file.counts["barrel"]["skipped_edge"] == 1
    for name in CLASSES:
        got = per_file.volumes[(per_file.table["forgeClassName"] == name).to_numpy()]
        assert np.abs(got - csv.volumes[(csv.table["forgeClassName"] == name).to_numpy()]).max() <= 1e-4 * span
    jobs[0][0].close()

    from cryoet_forge import registry

    config = copick_project(tmp_path, tomo, ["TS_01"])
    dataset = registry.create("dataset", "copick", config=str(config), objects=CLASSES, voxel_spacing=VOXEL,
                              box=BOX, extract_normalize="none", normalize="none")
    assert len(dataset) == 6 and dataset.class_names == CLASSES and dataset.runs == ["TS_01"]
    by_class = {name: [dataset[i]["volume"][0].numpy() for i in range(len(dataset)) if dataset.labels[i] == c]
                for c, name in enumerate(CLASSES)}
    for c, name in enumerate(CLASSES):
        expected = csv.volumes[(csv.table["forgeClassName"] == name).to_numpy()]
        assert np.abs(np.stack(by_class[name]) - expected).max() <= 1e-4 * span
    # the run's OME-Zarr tomogram read directly (level 0) gives them too
    zarr_path = next((tmp_path / "overlay").rglob("wbp.zarr"))
    direct = run_extract(read_picks(root / "picks.csv", unit="px"), zarr_path)
    assert np.abs(direct.volumes - csv.volumes).max() <= 1e-4 * span and direct.voxel_size == VOXEL
    # forge extract reads the same project
    out = tmp_path / "from-copick"
    proc = subprocess.run([forge_executable(), "-q", "extract", "--copick", str(config), "--box", str(BOX),
                           "--normalize", "none", "--out", str(out)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "barrel: 3 extracted, 1 skipped (box leaves the tomogram" in proc.stdout
    assert len(starfile.read(out / "particles.star")) == 6


def copick_project(folder, tomo, runs):
    """A copick project (copick's own API) with ``tomo`` and the known picks in every run."""
    copick = pytest.importorskip("copick", reason="copick is not installed (pip install 'cryoet-forge[copick]')")
    from copick.models import PickableObject

    config = folder / "copick.json"
    project = copick.ops.open.new_config(str(config), str(folder / "overlay"), pickable_objects=[
        PickableObject(name=name, is_particle=True, label=i + 1) for i, name in enumerate(CLASSES)])
    for name in runs:
        run = project.new_run(name)
        run.new_voxel_spacing(VOXEL).new_tomogram("wbp").from_numpy(tomo, levels=1)
        for cls in CLASSES:
            points = np.array([[x, y, z] for c, x, y, z in PICKS if c == cls]) * VOXEL
            picks = run.new_picks(object_name=cls, session_id="0", user_id="test")
            picks.from_numpy(points)
            picks.store()
    return config


def test_copick_splits_by_run_for_evaluate_and_feeds_train(data, tmp_path):
    from cryoet_forge.config import load_config
    from cryoet_forge.data.copick import split_runs
    from cryoet_forge.evaluate.config import config_from_dict, quickstart_table
    from cryoet_forge.evaluate.datasets import load_copick_splits
    from cryoet_forge.train.loop import build_datasets

    _, tomo, _ = data
    config = copick_project(tmp_path, tomo, ["TS_01", "TS_02", "TS_03", "TS_04"])
    train_runs, test_runs = split_runs(config, 0.25, seed=0)
    assert len(test_runs) == 1 and sorted(train_runs + test_runs) == ["TS_01", "TS_02", "TS_03", "TS_04"]
    evaluation = config_from_dict(quickstart_table(), {
        "data.source": "copick", "data.copick": {"config": str(config), "objects": CLASSES},
        "data.classes": CLASSES, "data.box": BOX, "data.test_runs": ["TS_02"]})
    real_train, real_test, train_runs, test_runs = load_copick_splits(evaluation.data)
    assert (train_runs, test_runs) == (["TS_01", "TS_03", "TS_04"], ["TS_02"])
    assert len(real_train) == 18 and len(real_test) == 6 and real_train.class_names == CLASSES
    assert real_train.volumes.shape[1:] == (BOX,) * 3 and real_train.voxel_size == VOXEL
    with pytest.raises(InputError, match="data.test_runs: no run 'TS_09'"):
        evaluation.data.test_runs = ["TS_09"]
        load_copick_splits(evaluation.data)
    # the whole evaluation on the copick project's runs
    import copy

    from test_evaluate import TOY

    from cryoet_forge.evaluate.pipeline import run_evaluation

    table = copy.deepcopy(TOY)
    table.update({"ablations": {}, "uncertainty": {"enabled": False}})
    table["gan"]["curve_points"] = 1
    # the toy tomograms show protein bright (maps added in): invert = true, as for a user's inverted tomograms
    table["data"] = {"source": "copick", "copick": {"config": str(config), "objects": CLASSES, "invert": True},
                     "box": BOX,
                     "test_runs": ["TS_04"], "n_density_per_class": 4}
    out = tmp_path / "evaluation"
    run_evaluation(config_from_dict(table, origin="copick toy"), out, log=lambda line: None)
    results = json.loads((out / "results.json").read_text())
    # split by run: 3 particles per class and run (one barrel box leaves the tomogram), test = TS_04
    assert results["counts"]["real_test"] == {"barrel": 3, "ring": 3}
    assert results["counts"]["real_train"] == {"barrel": 9, "ring": 9}
    assert "copick project" in (out / "report.md").read_text() and "TS_04 (test)" in (out / "report.md").read_text()
    # domain S of forge train
    cfg = load_config(None, {"data.subtomograms.dataset": "copick", "data.subtomograms.options": {
        "config": str(config), "box": BOX, "runs": ["TS_01"]}})
    _, subtomograms = build_datasets(cfg)
    assert len(subtomograms) == 6 and subtomograms[0]["volume"].shape == (1, BOX, BOX, BOX)
    with pytest.raises(InputError, match="no run 'TS_09'; the project has TS_01, TS_02, TS_03, TS_04"):
        build_datasets(load_config(None, {"data.subtomograms.dataset": "copick",
                                          "data.subtomograms.options": {"config": str(config), "runs": ["TS_09"]}}))


def test_rescaling_a_2x_finer_tomogram_gives_the_same_subtomogram(data):
    root, _, _ = data
    assert region_plan(BOX, 5.0, 10.0) == (44, 22)  # 2 x (16 + 2 x 3) fine voxels -> 22 output voxels
    picks = read_picks(root / "picks.csv", unit="angstrom")
    picks.table[["x", "y", "z"]] *= VOXEL  # the same picks in Angstrom
    coarse = run_extract(picks, root / "TS_01.mrc")
    fine = run_extract(picks, root / "fine" / "TS_01.mrc", voxel_size=VOXEL)
    assert fine.voxel_size == VOXEL and fine.volumes.shape == coarse.volumes.shape
    for a, b in zip(fine.volumes, coarse.volumes):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.99
    # without rescaling the fine boxes are 16 voxels of 5 A: half the field of view, not the same
    same_px = run_extract(picks, root / "fine" / "TS_01.mrc")
    assert same_px.voxel_size == VOXEL / 2
    assert np.corrcoef(same_px.volumes[0].ravel(), coarse.volumes[0].ravel())[0, 1] < 0.9


def test_pad_edge_invert_zscore_and_background(data):
    root, _, _ = data
    picks = read_picks(root / "picks.csv", unit="px")
    padded = run_extract(picks, root / "TS_01.mrc", edge="pad")
    assert padded.counts["barrel"] == {"extracted": 4, "skipped_edge": 0, "padded_edge": 1}
    assert list(padded.table["forgeEdge"]) == [0, 0, 0, 0, 0, 0, 1]
    options = ExtractOptions(box=BOX, invert=True, normalize="zscore", background=3, min_distance=120.0, seed=1)
    with open_tomogram(root / "TS_01.mrc") as tomo:
        table = picks.table.copy()
        result = extract([(tomo, table, "px")], options)
    assert result.class_names == ["barrel", "ring", "background"]
    assert result.counts["background"]["extracted"] == 3
    bg = result.table[result.table["forgeClassName"] == "background"]
    xyz = bg[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()
    picked = np.array([p[1:] for p in PICKS])
    assert (np.linalg.norm(xyz[:, None] - picked[None], axis=-1) * VOXEL >= 120.0).all()
    from cryoet_forge.extract import background_mask

    mask = background_mask(BOX)
    for v in result.volumes:
        assert abs(v[mask].mean()) < 1e-4 and abs(v[mask].std() - 1) < 1e-3
    first = result.volumes[0]
    assert first[BOX // 2, BOX // 2, BOX // 2] < 0  # inverted: the particle is dark


def test_relion_euler_matrix_is_a_rotation_matching_relion():
    m = relion_matrix(np.array([30.0]), np.array([0.0]), np.array([0.0]))[0]
    # RELION's A(0,1) = cos(psi) cos(tilt) sin(rot) + sin(psi) cos(rot) = sin(30)
    assert m[0, 1] == pytest.approx(0.5) and m[1, 0] == pytest.approx(-0.5)
    r = relion_matrix(np.array([12.0]), np.array([55.0]), np.array([-70.0]))[0]
    assert np.allclose(r @ r.T, np.eye(3)) and np.linalg.det(r) == pytest.approx(1.0)


def _forge(*args):
    return subprocess.run([forge_executable(), "-q", "extract", *map(str, args)], capture_output=True, text=True,
                          check=False)


def test_cli_writes_a_labelled_folder_that_forge_reads(data, tmp_path):
    root, _, _ = data
    out = tmp_path / "out"
    proc = _forge("--picks", root / "particles.star", "--tomograms-star", root / "tomograms.star",
                  "--box", BOX, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "class1: 3 extracted, 1 skipped" in proc.stdout and "wrote 6 subtomograms (16^3 at 10 A)" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["class1"]["skipped_edge"] == 1
    from cryoet_forge import registry

    dataset = registry.create("dataset", "volume-folder", root=str(out / "particles.star"))
    assert len(dataset) == 6 and dataset.box == BOX and dataset.voxel_size == VOXEL
    bundle = tmp_path / "b.npz"
    proc = _forge("--picks", root / "picks.csv", "--unit", "px", "--tomograms", root, "--box", BOX,
                  "--bundle", "--out", bundle)
    assert proc.returncode == 0, proc.stderr
    assert len(registry.create("dataset", "volume-folder", root=str(bundle))) == 6
    # pixel coordinates picked on a 2x finer tomogram (Warp at 5 A) land on the same particles
    fine_px = tmp_path / "fine.csv"
    table = pd.read_csv(root / "picks.csv")
    table[["x", "y", "z"]] *= 2
    table.to_csv(fine_px, index=False)
    other = tmp_path / "c.npz"
    proc = _forge("--picks", fine_px, "--unit", "px", "--coords-pixel-size", 5, "--tomograms", root, "--box", BOX,
                  "--bundle", "--out", other)
    assert proc.returncode == 0, proc.stderr
    a, b = np.load(bundle)["volumes"], np.load(other)["volumes"]
    assert a.shape == b.shape and np.abs(a - b).max() <= 1e-5 * np.abs(a).max()


def test_a_second_extract_into_the_same_out_is_refused_unless_overwrite(data, tmp_path):
    root, _, _ = data
    out, bundle = tmp_path / "out", tmp_path / "b.npz"
    first = ("--picks", root / "picks.csv", "--unit", "px", "--tomograms", root, "--box", BOX)
    assert _forge(*first, "--out", out).returncode == 0
    assert _forge(*first, "--bundle", "--out", bundle).returncode == 0
    before = {p.name: p.read_bytes() for p in (out / "volumes").iterdir()}
    star, npz = (out / "particles.star").read_bytes(), bundle.read_bytes()
    one = ("--picks", root / "picks.csv", "--unit", "px", "--tomograms", root, "--box", BOX // 2)
    proc = _forge(*one, "--out", out)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"forge: error: {out} already holds extracted particles (volumes, particles.star, summary.json); "
        "choose another --out or pass --overwrite"]
    proc = _forge(*one, "--bundle", "--out", bundle)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"forge: error: {bundle} already exists; choose another --out or pass --overwrite"]
    # nothing replaced
    assert {p.name: p.read_bytes() for p in (out / "volumes").iterdir()} == before
    assert (out / "particles.star").read_bytes() == star and bundle.read_bytes() == npz
    # --overwrite replaces the whole result
    assert _forge(*one, "--out", out, "--overwrite").returncode == 0
    assert _forge(*one, "--bundle", "--out", bundle, "--overwrite").returncode == 0
    assert len(list((out / "volumes").iterdir())) == 6 and np.load(bundle)["volumes"].shape[1:] == (BOX // 2,) * 3


def test_bad_input_one_line_each_and_nothing_written(data, tmp_path):
    root, _, _ = data
    out = tmp_path / "out"
    base = ["--box", BOX, "--out", out]
    csv = tmp_path / "other.csv"
    csv.write_text("tomogram,x,y,z\nTS_02,10,10,10\n")
    other = tmp_path / "TS_03.mrc"
    other.write_bytes((root / "TS_01.mrc").read_bytes())
    proc = _forge("--picks", csv, "--unit", "px", "--tomograms", root / "TS_01.mrc", "--tomograms", other, *base)
    assert_one_line_error(proc.returncode, proc.stderr, "tomogram 'TS_02' named in the picks has no tomogram file",
                          "(tomograms: TS_01, TS_03)")
    far = tmp_path / "far.csv"
    far.write_text("tomogram,x,y,z\nTS_01,10,10,10\nTS_01,500,10,10\n")
    proc = _forge("--picks", far, "--unit", "px", "--tomograms", root / "TS_01.mrc", *base)
    assert_one_line_error(proc.returncode, proc.stderr, "pick 2", "x=500.0", "is outside tomogram")
    proc = _forge("--picks", far, "--unit", "nm", "--tomograms", root / "TS_01.mrc", *base)
    assert_one_line_error(proc.returncode, proc.stderr, "--unit 'nm'", "px, angstrom")
    truncated = tmp_path / "TS_01.mrc"
    truncated.write_bytes((root / "TS_01.mrc").read_bytes()[:-5000])
    proc = _forge("--picks", root / "picks.csv", "--unit", "px", "--tomograms", truncated, *base)
    assert_one_line_error(proc.returncode, proc.stderr, f"{truncated}: not a readable MRC tomogram")
    empty = tmp_path / "empty.csv"
    empty.write_text("tomogram,x,y,z\n")
    proc = _forge("--picks", empty, "--unit", "px", "--tomograms", root / "TS_01.mrc", *base)
    assert_one_line_error(proc.returncode, proc.stderr, f"{empty}: the pick set is empty")
    proc = _forge("--picks", root / "picks.csv", "--unit", "px", "--class-column", "species",
                  "--tomograms", root / "TS_01.mrc", *base)
    assert_one_line_error(proc.returncode, proc.stderr, "no class column 'species'", "tomogram, x, y, z, class")
    proc = _forge("--picks", root / "particles.star", "--tomograms", root / "TS_01.mrc", *base)
    assert_one_line_error(proc.returncode, proc.stderr, "RELION 5 centred coordinates need the tomograms STAR")
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))
    # an existing output survives a failed run untouched
    good = _forge("--picks", root / "picks.csv", "--unit", "px", "--tomograms", root / "TS_01.mrc", *base)
    assert good.returncode == 0, good.stderr
    before = (out / "particles.star").read_bytes()
    proc = _forge("--picks", far, "--unit", "px", "--tomograms", root / "TS_01.mrc", *base)
    assert proc.returncode != 0 and (out / "particles.star").read_bytes() == before


def test_options_are_checked():
    for bad, text in [({"box": 2}, "--box 2: expected an integer >= 4"),
                      ({"normalize": "minmax"}, "--normalize 'minmax': expected one of none, zscore"),
                      ({"background": 4}, "--background needs --min-distance > 0"),
                      ({"voxel_size": -1.0}, "--voxel-size -1.0: expected Angstrom > 0")]:
        with pytest.raises(InputError, match=text):
            ExtractOptions(**bad).check()
    # an awkward ratio: the nearest exact plan is within 0.5% (the voxel size written is that one)
    m, ell = region_plan(16, 13.48, 10.0)
    assert ell >= 16 + 6 and abs(m * 13.48 / ell - 10.0) / 10.0 <= 5e-3


def test_class_names_name_relion_class_numbers_and_every_class_must_be_named(data, tmp_path):
    root, _, _ = data
    star_args = ("--picks", root / "particles.star", "--tomograms-star", root / "tomograms.star", "--box", BOX)
    mapping = ",".join(f"{i + 1}={name}" for i, name in enumerate(CLASSES))
    proc = _forge(*star_args, "--class-names", mapping, "--out", tmp_path / "named")
    assert proc.returncode == 0, proc.stderr
    from cryoet_forge.classify import load_labelled

    named = load_labelled(tmp_path / "named" / "particles.star")
    plain = _forge(*star_args, "--out", tmp_path / "plain")
    assert plain.returncode == 0, plain.stderr
    unnamed = load_labelled(tmp_path / "plain" / "particles.star")
    assert sorted(named.class_names) == sorted(CLASSES) and sorted(unnamed.class_names) == ["class1", "class2"]
    # the same particles, class k named CLASSES[k - 1]
    assert [named.class_names[i] for i in named.labels] == \
        [CLASSES[int(unnamed.class_names[i][5:]) - 1] for i in unnamed.labels]
    np.testing.assert_array_equal(named.volumes, unnamed.volumes)
    proc = _forge(*star_args, "--class-names", f"1={CLASSES[0]}", "--out", tmp_path / "half")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"forge: error: --class-names '1={CLASSES[0]}' does not name the picks' class(es) class2; name every class"]
    assert not (tmp_path / "half").exists()
    proc = _forge(*star_args, "--class-names", "1=a b", "--out", tmp_path / "bad")
    assert proc.returncode == 2 and "expected VALUE=NAME pairs" in proc.stderr

"""``forge simulate-tomogram``: labelled synthetic tomograms (64^3 voxels of 20 A, two phantom classes).

Checked: no two particles' spheres overlap; the label map holds each pick's class number at the
pick and nothing far from every particle and membrane; the particles STAR reads back through
the project's pick reader and ``forge extract`` cuts boxes there, which show protein dark (the
project's convention); the tomograms STAR serves as an acquisition; the OME-Zarr copy and the
copick project hold the same tomogram and picks; noise-free imaging puts every particle where its
pick says; the same seed gives the same files; bad input is one line; an earlier result is kept
unless --overwrite.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import starfile
import torch

from cryoet_forge.cli import main
from cryoet_forge.io.mrc import read_mrc
from tests_support import assert_one_line_error

VOXEL = 20.0
CLASSES = "globule,two-lobe"  # both dense at their centre, so the label at a pick is the class
BASE = ["simulate-tomogram", "--structures", CLASSES, "--size", "64", "--voxel-size", VOXEL, "--quiet"]


def forge(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One simulation with every output: 8 particles of each class, a vesicle, a 1000 A ice slab."""
    out = tmp_path_factory.mktemp("simulated") / "run"
    code = main([str(a) for a in BASE + ["--n-per-class", 8, "--ice-thickness", 1000, "--membranes", 1,
                                         "--membrane-radius", "150,220", "--tilt-step", 6, "--seed", 5, "--zarr",
                                         "--copick", "--tilt-series", "--out", out]])
    assert code == 0
    return out


def test_particles_do_not_overlap_and_the_labels_sit_at_the_picks(run):
    from cryoet_forge.io.picks import read_picks

    summary = json.loads((run / "simulation.json").read_text())
    picks = read_picks(run / "particles.star", class_column="forgeClassName")
    table = picks.table
    assert picks.unit == "px" and len(table) == 16
    assert sorted(table["class_name"].value_counts().items()) == [("globule", 8), ("two-lobe", 8)]
    star = starfile.read(run / "particles.star")
    xyz = star[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()
    np.testing.assert_allclose(table[["x", "y", "z"]].to_numpy(), xyz)
    radius = star["forgeRadiusAngst"].to_numpy() / VOXEL
    gap = summary["gap_A"] / VOXEL
    d = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    limit = radius[:, None] + radius[None] + gap
    off = ~np.eye(len(xyz), dtype=bool)
    assert (d[off] >= limit[off] - 1e-6).all()
    # every sphere lies inside the ice slab and the volume
    z_lo, z_hi = summary["slab_z_voxels"]
    assert (z_hi - z_lo) * VOXEL == pytest.approx(1000) and summary["ice_thickness_A"] == pytest.approx(1000)
    assert (xyz[:, 2] - radius >= z_lo).all() and (xyz[:, 2] + radius <= z_hi - 1).all()
    assert ((xyz - radius[:, None] >= 0) & (xyz + radius[:, None] <= 63)).all()

    labels, voxel = read_mrc(run / "labels" / "TS_01.mrc")
    assert voxel == VOXEL and labels.shape == (64, 64, 64)
    numbers = star["rlnClassNumber"].to_numpy()
    at = np.round(xyz).astype(int)
    assert (labels[at[:, 2], at[:, 1], at[:, 0]] == numbers).all()
    # class labels only inside the particles' spheres, the membrane label only on the vesicle's shell
    grid = np.stack(np.meshgrid(*(np.arange(64),) * 3, indexing="ij"), axis=-1)[..., ::-1]  # (z, y, x) -> x y z
    near = np.zeros(labels.shape, dtype=bool)
    for p, r in zip(xyz, radius):
        near |= np.linalg.norm(grid - p, axis=-1) <= r
    assert summary["labels"] == {"globule": 1, "two-lobe": 2, "membrane": 3}
    assert set(np.unique(labels[near])) <= {0, 1, 2} and set(np.unique(labels[~near])) <= {0, 3}
    (vesicle,) = summary["tomograms"][0]["vesicles"]
    centre = np.asarray(vesicle["centre_zyx_voxels"])[::-1]
    off_shell = np.abs(np.linalg.norm(grid - centre, axis=-1) - vesicle["radius_A"] / VOXEL)
    half = 0.5 * 40 / VOXEL  # half the bilayer thickness
    assert (labels[off_shell <= half - 1e-3] == 3).all() and not (labels[off_shell > half + 1e-3] == 3).any()
    assert (labels[(off_shell > half + 1e-3) & ~near] == 0).all()
    assert (labels == 1).sum() > 8 * 100 and (labels == 2).sum() > 8 * 100  # each particle labels its body


def test_forge_extract_cuts_the_picks_and_they_show_protein_dark(run, tmp_path, capsys):
    from cryoet_forge.data.polarity import measure_polarity

    out = tmp_path / "boxes"
    code, stdout, err = forge(capsys, "-q", "extract", "--picks", run / "particles.star", "--tomograms",
                              run / "tomograms", "--class-column", "forgeClassName", "--box", 14, "--normalize",
                              "none", "--out", out)
    assert code == 0, err
    table = starfile.read(out / "particles.star")
    skipped = sum(int(part.split(", ")[1].split(" ")[0]) for part in stdout.splitlines() if "skipped" in part)
    assert len(table) + skipped == 16 and len(table) >= 10
    assert set(table["forgeClassName"]) == {"globule", "two-lobe"}
    boxes = np.stack([read_mrc(out / name)[0] for name in table["rlnImageName"]])
    assert boxes.shape[1:] == (14, 14, 14)
    polarity = measure_polarity(boxes)
    assert polarity.contrast == "dark", polarity.describe()
    tomogram, _ = read_mrc(run / "tomograms" / "TS_01.mrc")
    assert tomogram.dtype == np.float32 and tomogram.shape == (64, 64, 64)


def test_the_tables_zarr_and_copick_describe_the_same_tomogram(run):
    from cryoet_forge.data.copick import copick_jobs
    from cryoet_forge.io.tomograms import open_tomogram
    from cryoet_forge.simulate.acquisition import read_star_acquisition

    summary = json.loads((run / "simulation.json").read_text())
    acquisition = read_star_acquisition(run / "tomograms.star")
    assert acquisition.missing == [] and acquisition.voxel_size == VOXEL
    values = acquisition.values
    assert values["tilt_range"] == (-60.0, 60.0) and values["tilt_step"] == pytest.approx(6.0)
    assert values["dose"] == pytest.approx(120.0) and values["voltage_kv"] == 300.0
    underfocus = summary["tomograms"][0]["underfocus_um"]
    assert 2.0 <= underfocus <= 6.0 and values["defocus_um"] == pytest.approx((underfocus, underfocus))
    tomogram, _ = read_mrc(run / "tomograms" / "TS_01.mrc")
    with open_tomogram(run / "tomograms" / "TS_01.zarr") as zarr_tomogram:
        assert zarr_tomogram.voxel_size == VOXEL
        np.testing.assert_array_equal(np.asarray(zarr_tomogram.data[:]), tomogram)
    images, _ = read_mrc(run / "tilt_series" / "TS_01.mrcs")
    assert images.shape[0] == 21 and images.shape[1] == 64
    star = starfile.read(run / "particles.star")
    jobs = copick_jobs(run / "copick" / "copick.json", None, None)
    (tomo, picks, unit), = jobs
    assert unit == "angstrom" and tomo.name == "TS_01" and tomo.voxel_size == VOXEL
    np.testing.assert_allclose(np.asarray(tomo.data[:]), tomogram, atol=1e-6)
    got = picks.sort_values(["class_name", "x"])[["x", "y", "z"]].to_numpy()
    want = star.assign(class_name=star["forgeClassName"]).sort_values(["class_name", "rlnCoordinateX"])
    np.testing.assert_allclose(got, want[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy() * VOXEL,
                               atol=1e-3)
    tomo.close()


def test_noise_free_imaging_puts_each_particle_at_its_pick():
    """Without noise and CTF (plain negative contrast) the reconstruction is the clean density of the
    layout (its particles posed as the picks say), dark: their cross-correlation peaks at zero shift."""
    from cryoet_forge.simulate.templates import load_template
    from cryoet_forge.simulate.tomogram import (
        TomogramPhysics,
        auto_template_box,
        prepare_template,
        render_particles,
        simulate_tomogram,
        slab_of,
    )

    templates = [prepare_template(*load_template(spec, auto_template_box(spec, VOXEL), VOXEL))
                 for spec in CLASSES.split(",")]
    physics = TomogramPhysics(tilt_step=5, shot_noise="none", ctf=False, ice=0.0, mtf=False)
    shape = (48, 64, 64)
    result = simulate_tomogram("TS_01", templates, shape, VOXEL, physics, [4, 4], slab_of(shape, VOXEL, None),
                               seed=2)
    clean = torch.zeros(shape)
    render_particles(clean, torch.zeros(shape, dtype=torch.int16), templates, result.layout,
                     torch.from_numpy(result.rotations), 0.2)
    clean = clean.numpy()
    tomogram = result.tomogram
    assert np.corrcoef(-tomogram.ravel(), clean.ravel())[0, 1] > 0.6
    cc = np.fft.ifftn(np.fft.fftn(-tomogram) * np.conj(np.fft.fftn(clean))).real
    assert np.unravel_index(np.argmax(cc), cc.shape) == (0, 0, 0)


def test_the_projector_follows_the_tilt_geometry():
    """A blob at (z0, x0) from the centre projects, whole, to column x0 cos a + z0 sin a at depth
    -x0 sin a + z0 cos a along the beam; a column back-projects onto the voxels that project to it."""
    from cryoet_forge.simulate.tomogram import back_projector, ray_projector

    nz, nx, width = 32, 48, 80
    z0, x0 = 7.3, -11.6
    zz, xx = np.meshgrid(np.arange(nz) - nz // 2, np.arange(nx) - nx // 2, indexing="ij")
    blob = np.exp(-((zz - z0) ** 2 + (xx - x0) ** 2) / (2 * 1.5**2))
    plane = torch.from_numpy(blob.reshape(-1, 1)).float()
    for angle in (-60.0, -25.0, 0.0, 40.0):
        a = math.radians(angle)
        matrix, depths = ray_projector((nz, nx), (0, nz), angle, width, 1, "cpu")
        image = (matrix @ plane).reshape(len(depths), width)
        assert float(image.sum()) == pytest.approx(blob.sum(), rel=0.01)  # line integrals keep the mass
        column = float((image.sum(0) * torch.arange(width)).sum() / image.sum()) - width // 2
        depth = float((image.sum(1) * torch.from_numpy(depths).float()).sum() / image.sum())
        assert column == pytest.approx(x0 * math.cos(a) + z0 * math.sin(a), abs=0.05)
        assert depth == pytest.approx(-x0 * math.sin(a) + z0 * math.cos(a), abs=0.05)
        line = torch.zeros(width, 1)
        line[int(round(column)) + width // 2] = 1.0
        spread = (back_projector((nz, nx), angle, width, "cpu") @ line).reshape(nz, nx).numpy()
        on_line = np.abs(xx * math.cos(a) + zz * math.sin(a) - round(column)) < 0.5
        assert spread[on_line].min() > 0.49 and spread[~on_line].max() < 0.51


def test_same_seed_same_files_another_seed_differs(tmp_path, capsys):
    args = BASE + ["--n-per-class", 4, "--tilt-step", 15, "--ice-thickness", 800]
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        code, _, err = forge(capsys, *args, "--seed", seed, "--out", tmp_path / name)
        assert code == 0, err
    star = {n: starfile.read(tmp_path / n / "particles.star") for n in "abc"}
    assert star["a"].equals(star["b"]) and not star["a"].equals(star["c"])
    for folder in ("tomograms", "labels"):
        a, b, c = (read_mrc(tmp_path / n / folder / "TS_01.mrc")[0] for n in "abc")
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
    assert (tmp_path / "a" / "simulation.json").read_text() == (tmp_path / "b" / "simulation.json").read_text()

    # an earlier result stays unless --overwrite; with it the folder holds the new result only
    before = read_mrc(tmp_path / "c" / "tomograms" / "TS_01.mrc")[0]
    code, _, err = forge(capsys, *args, "--seed", 3, "--out", tmp_path / "c")
    assert_one_line_error(code, err, "already holds a tomogram simulation", "--overwrite")
    np.testing.assert_array_equal(read_mrc(tmp_path / "c" / "tomograms" / "TS_01.mrc")[0], before)
    code, _, err = forge(capsys, *args, "--seed", 3, "--out", tmp_path / "c", "--overwrite")
    assert code == 0, err
    np.testing.assert_array_equal(read_mrc(tmp_path / "c" / "tomograms" / "TS_01.mrc")[0],
                                  read_mrc(tmp_path / "a" / "tomograms" / "TS_01.mrc")[0])


@pytest.mark.parametrize("args, fragments", [
    (["--size", "-5"], ["--size '-5'", "Z,Y,X"]),
    (["--size", "64,64"], ["--size '64,64'"]),
    (["--n-per-class", "0"], ["--n-per-class '0'"]),
    (["--n-per-class", "3,4,5"], ["--n-per-class '3,4,5'", "2 comma-separated"]),
    (["--n-per-class", "400"], ["--n-per-class 400", "800 particles would fill", "at most 60%"]),
    (["--n-per-class", "50"], ["crowding too high: placed", "of 100 particles asked"]),
    (["--volume-fraction", "0.9"], ["--volume-fraction 0.9"]),
    (["--ice-thickness", "5000"], ["--ice-thickness 5000 A", "1280 A"]),
    (["--ice-thickness", "200"], ["radius 130 A) does not fit", "sample slab of 200 A"]),
    (["--option", "snr=0.1"], ["--option snr", "no such option"]),
    (["--membranes", "1", "--membrane-radius", "900"], ["--membrane-radius 900"]),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, fragments):
    code, _, err = forge(capsys, *BASE, "--tilt-step", 30, "--out", tmp_path / "run", *args)
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_no_templates_is_one_line(tmp_path, capsys):
    empty = tmp_path / "maps"
    empty.mkdir()
    for structures, fragment in (("", "--structures '' names no structure"), (" , ", "names no structure"),
                                 (str(empty), "no structure (.pdb/.cif[.gz]) or map (.mrc) files")):
        code, _, err = forge(capsys, "simulate-tomogram", "--structures", structures, "--size", 64, "--voxel-size",
                             VOXEL, "--out", tmp_path / "run", "--quiet")
        assert_one_line_error(code, err, fragment)
    code, _, err = forge(capsys, "simulate-tomogram", "--size", 64, "--out", tmp_path / "run")
    assert_one_line_error(code, err, "give exactly one of --phantoms or --structures")

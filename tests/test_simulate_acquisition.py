"""``forge simulate``'s acquisition flags, --acquisition (RELION 5 STARs) and where the voxel size comes from."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import starfile

from cryoet_forge.cli import main
from cryoet_forge.io.mrc import read_mrc, write_mrc
from cryoet_forge.io.star import read_particles


def forge(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def simulate(capsys, out, *extra):
    return forge(capsys, "simulate", "--n-per-class", 1, "--box", 16, "--seed", 1, "--out", out, "--quiet", *extra)


def summary(out) -> dict:
    return json.loads((out / "simulation.json").read_text())


def one_error(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("forge: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_fourier_flags_reach_the_simulator_with_underfocus_positive(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = simulate(capsys, out, "--phantoms", "--voxel-size", 10, "--tilt-range", "-50,45",
                            "--voltage", 200, "--defocus", "2,6")
    assert code == 0, err
    assert err.strip() == ""
    table = read_particles(out / "particles.star")
    assert table["rlnVoltage"].eq(200).all()
    assert table["forgeTiltMin"].eq(-50).all() and table["forgeTiltMax"].eq(45).all()
    assert table["rlnDefocusU"].between(2e4, 6e4).all()  # Angstrom, underfocus positive
    acquisition = summary(out)["acquisition"]
    assert acquisition["defocus_underfocus_um"] == [2.0, 6.0]
    assert acquisition["tilt_range_deg"] == [-50.0, 45.0] and acquisition["voltage_kv"] == 200
    assert acquisition["voxel_size"] == 10.0
    assert acquisition["sources"]["defocus_underfocus_um"] == "--defocus"
    assert acquisition["sources"]["cs_mm"] == "the fourier default"
    assert "dose_e_per_A2" not in acquisition  # fourier has no dose


def test_negative_defocus_is_read_as_underfocus_with_a_note(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = simulate(capsys, out, "--phantoms", "--voxel-size", 10, "--defocus", "-4")
    assert code == 0, err
    assert err.strip().splitlines() == ["forge: note: --defocus -4: read as underfocus 4 um (forge writes "
                                        "underfocus positive, as Warp and RELION)"]
    table = read_particles(out / "particles.star")
    assert np.allclose(table["rlnDefocusU"], 4e4)
    assert summary(out)["acquisition"]["defocus_underfocus_um"] == [4.0, 4.0]


def test_tilt_series_takes_tilt_step_and_dose(tmp_path, capsys):
    out = tmp_path / "ts"
    code, _, err = simulate(capsys, out, "--phantoms", "--voxel-size", 10, "--simulator", "tilt-series",
                            "--tilt-range", "-30,30", "--tilt-step", 10, "--dose", 80, "--defocus", 3,
                            "--option", "crowding=0", "--option", "pad=1")
    assert code == 0, err
    table = read_particles(out / "particles.star")
    assert table["forgeTiltStep"].eq(10).all() and table["forgeDose"].eq(80).all()
    assert table["forgeTiltMin"].eq(-30).all() and table["forgeDefocusUm"].eq(-3).all()
    assert summary(out)["acquisition"]["dose_e_per_A2"] == 80


@pytest.mark.parametrize(("simulator", "args", "expected"), [
    ("fourier", ["--dose", "100"], "--dose: the fourier simulator has no dose"),
    ("fourier", ["--tilt-step", "2"], "--tilt-step: the fourier simulator has no tilt step"),
    ("posed-map", ["--voltage", "300"], "--voltage: the posed-map simulator has no voltage"),
    ("tilt-series", ["--dose", "100", "--option", "dose=50"], "--dose and --option dose=50 both set the dose"),
    ("fourier", ["--defocus", "-2,6"], "--defocus '-2,6': expected underfocus in micrometres, positive"),
    ("fourier", ["--defocus", "0"], "--defocus '0': expected underfocus"),
    ("fourier", ["--tilt-range", "60"], "--tilt-range '60': expected MIN,MAX"),
    ("fourier", ["--tilt-range", "-100,60"], "-90 <= MIN <= MAX <= 90"),
    ("tilt-series", ["--tilt-step", "0"], "--tilt-step 0.0: expected a number > 0"),
])
def test_acquisition_flag_errors_are_one_line(tmp_path, capsys, simulator, args, expected):
    code, _, err = simulate(capsys, tmp_path / "out", "--phantoms", "--simulator", simulator, *args)
    assert expected in one_error(code, err)
    assert not (tmp_path / "out").exists()


def test_pdb_structures_need_a_voxel_size(tmp_path, capsys):
    pdb = tmp_path / "tiny.pdb"
    pdb.write_text("ATOM      1  CA  ALA A   1       0.000   0.000   0.000  1.00  0.00           C\nEND\n")
    code, _, err = simulate(capsys, tmp_path / "out", "--structures", pdb)
    assert "--voxel-size is required: PDB structures carry no voxel size" in one_error(code, err)


def _blob(size: int) -> np.ndarray:
    axis = np.arange(size) - size // 2
    zz, yy, xx = np.meshgrid(axis, axis, axis, indexing="ij")
    return np.exp(-(zz**2 + yy**2 + xx**2) / 8.0).astype(np.float32)


def test_the_voxel_size_is_read_from_the_maps(tmp_path, capsys):
    write_mrc(tmp_path / "maps" / "a.mrc", _blob(20), 7.5)
    write_mrc(tmp_path / "maps" / "b.mrc", _blob(20), 7.5)
    out = tmp_path / "run"
    code, stdout, err = simulate(capsys, out, "--structures", tmp_path / "maps")
    assert code == 0, err
    assert "at 7.5 A/voxel" in stdout
    assert summary(out)["voxel_size"] == 7.5
    assert summary(out)["acquisition"]["sources"]["voxel_size"] == "the MRC map headers"
    assert read_mrc(out / "templates" / "a.mrc")[1] == pytest.approx(7.5)

    write_mrc(tmp_path / "maps" / "b.mrc", _blob(20), 5.0)
    code, _, err = simulate(capsys, tmp_path / "other", "--structures", tmp_path / "maps")
    assert "the maps have different voxel sizes (a.mrc 7.5 A, b.mrc 5 A); give --voxel-size" in one_error(code, err)
    code, _, err = simulate(capsys, tmp_path / "other", "--structures", tmp_path / "maps", "--voxel-size", 6)
    assert code == 0, err
    assert summary(tmp_path / "other")["voxel_size"] == 6


def test_phantoms_keep_a_documented_default_voxel_size(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = simulate(capsys, out, "--phantoms")
    assert code == 0, err
    assert summary(out)["acquisition"]["voxel_size"] == 9.4
    assert summary(out)["acquisition"]["sources"]["voxel_size"] == "the phantom default"


def write_relion5(folder, *, voltage=True, pre_exposure=True, binning=4.0):
    """A tiny RELION 5 tomograms STAR (two tomograms) and the tilt-series STARs it names."""
    (folder / "tilt_series").mkdir(parents=True)
    angles = np.arange(-45.0, 46.0, 15.0)  # 7 tilts
    order = np.argsort(np.argsort(np.abs(angles) + (angles < 0) * 0.1))  # dose-symmetric acquisition order
    for i, name in enumerate(("TS_01", "TS_02")):
        tilts = pd.DataFrame({"rlnMicrographMovieName": [f"frames/{name}_{k:03d}.eer" for k in range(len(angles))],
                              "rlnTomoNominalStageTiltAngle": angles,
                              "rlnDefocusU": 30000.0 + 1000 * i + 100 * np.abs(angles) / 15,
                              "rlnDefocusV": 29800.0 + 1000 * i + 100 * np.abs(angles) / 15})
        if pre_exposure:
            tilts["rlnMicrographPreExposure"] = 3.0 * order
        starfile.write({name: tilts}, folder / "tilt_series" / f"{name}.star")
    table = pd.DataFrame({"rlnTomoName": ["TS_01", "TS_02"], "rlnSphericalAberration": [2.7, 2.7],
                          "rlnAmplitudeContrast": [0.1, 0.1], "rlnMicrographOriginalPixelSize": [0.5, 0.5],
                          "rlnTomoHand": [-1, -1], "rlnTomoTiltSeriesPixelSize": [2.0, 2.0],
                          "rlnTomoTiltSeriesStarFile": ["tilt_series/TS_01.star", "tilt_series/TS_02.star"],
                          "rlnTomoSizeX": [4000, 4000], "rlnTomoSizeY": [4000, 4000], "rlnTomoSizeZ": [1200, 1200],
                          "rlnTomoTomogramBinning": [binning, binning]})
    if voltage:
        table.insert(1, "rlnVoltage", [200.0, 200.0])
    starfile.write({"global": table}, folder / "tomograms.star")
    return folder / "tomograms.star"


def test_acquisition_star_sets_voxel_size_voltage_tilts_dose_and_defocus(tmp_path, capsys):
    star = write_relion5(tmp_path / "project")
    out = tmp_path / "ts"
    code, _, err = simulate(capsys, out, "--phantoms", "--simulator", "tilt-series", "--acquisition", star,
                            "--option", "crowding=0", "--option", "pad=1")
    assert code == 0, err
    assert err.strip() == ""
    acquisition = summary(out)["acquisition"]
    assert acquisition["voxel_size"] == 8.0  # 2.0 A tilt-series pixels x binning 4
    assert summary(out)["voxel_size"] == 8.0
    assert acquisition["voltage_kv"] == 200 and acquisition["amplitude_contrast"] == 0.1
    assert acquisition["tilt_range_deg"] == [-45.0, 45.0] and acquisition["tilt_step_deg"] == 15
    assert acquisition["dose_e_per_A2"] == pytest.approx(21.0)  # 7 tilts x 3 e/A^2
    assert acquisition["defocus_underfocus_um"] == pytest.approx([2.99, 3.12])  # mean of U and V, all tilts
    assert acquisition["sources"]["dose_e_per_A2"] == str(star)
    table = read_particles(out / "particles.star")
    assert table["rlnVoltage"].eq(200).all() and table["forgeTiltStep"].eq(15).all()
    assert table["forgeDefocusUm"].between(-3.12, -2.99).all()
    assert read_mrc(out / "templates" / "barrel.mrc")[1] == pytest.approx(8.0)


def test_flags_win_over_the_acquisition_star(tmp_path, capsys):
    star = write_relion5(tmp_path / "project")
    out = tmp_path / "ts"
    code, _, err = simulate(capsys, out, "--phantoms", "--simulator", "tilt-series", "--acquisition", star,
                            "--voltage", 300, "--defocus", 5, "--voxel-size", 12, "--option", "crowding=0",
                            "--option", "pad=1")
    assert code == 0, err
    acquisition = summary(out)["acquisition"]
    assert acquisition["voltage_kv"] == 300 and acquisition["sources"]["voltage_kv"] == "--voltage"
    assert acquisition["defocus_underfocus_um"] == [5.0, 5.0] and acquisition["voxel_size"] == 12
    assert acquisition["dose_e_per_A2"] == pytest.approx(21.0)  # not given as a flag: from the STAR


def test_what_the_star_lacks_is_one_line_each(tmp_path, capsys):
    star = write_relion5(tmp_path / "project", voltage=False, pre_exposure=False)
    out = tmp_path / "ts"
    code, _, err = simulate(capsys, out, "--phantoms", "--simulator", "tilt-series", "--acquisition", star,
                            "--option", "crowding=0", "--option", "pad=1")
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert lines[0] == f"forge: note: {star}: no rlnVoltage: the voltage is not read from it"
    assert lines[1].startswith(f"forge: note: {star}: no rlnMicrographPreExposure")
    assert lines[1].endswith("the dose is not read")
    acquisition = summary(out)["acquisition"]
    assert acquisition["voltage_kv"] == 300 and acquisition["sources"]["voltage_kv"] == "the tilt-series default"


def test_a_star_value_the_simulator_does_not_take_is_a_note(tmp_path, capsys):
    star = write_relion5(tmp_path / "project")
    out = tmp_path / "f"
    code, _, err = simulate(capsys, out, "--phantoms", "--acquisition", star)
    assert code == 0, err
    assert err.strip().splitlines() == [f"forge: note: {star}: the fourier simulator takes no tilt step, dose; "
                                        "not used"]
    acquisition = summary(out)["acquisition"]
    assert acquisition["tilt_range_deg"] == [-45.0, 45.0] and acquisition["voltage_kv"] == 200


def test_a_file_that_is_not_a_tomograms_star_is_one_line(tmp_path, capsys):
    other = tmp_path / "particles.star"
    starfile.write({"particles": pd.DataFrame({"rlnCoordinateX": [1.0]})}, other)
    code, _, err = simulate(capsys, tmp_path / "out", "--phantoms", "--acquisition", other)
    assert "a RELION 5 tomograms STAR" in one_error(code, err)
    code, _, err = simulate(capsys, tmp_path / "out", "--phantoms", "--acquisition", tmp_path / "missing.star")
    assert "no such STAR file" in one_error(code, err)

"""`forge extract` on table paths as RELION writes them, paths confined to their table's folder,
and bad pick tables: each checked through the reader function and through the CLI (exit code 2,
one `forge: error:` line, no traceback, nothing written)."""

from __future__ import annotations

import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryoet_forge.cli import main as forge
from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.io import files

SHAPE = (24, 32, 40)  # z, y, x voxels of 10 A
VOXEL = 10.0
REC = "Tomograms/job030/tomograms/rec_TS_01.mrc"


@pytest.fixture(autouse=True)
def _paths_confined():
    files.configure_paths(False)
    yield
    files.configure_paths(False)


def write_tomogram(path: Path, shape=SHAPE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.random.default_rng(0).normal(size=shape).astype(np.float32))
        mrc.voxel_size = VOXEL
    return path


def tomograms_star(path: Path, reconstructed: str, size_x="40") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    starfile.write({"global": pd.DataFrame({
        "rlnTomoName": ["TS_01"], "rlnTomoSizeX": [size_x], "rlnTomoSizeY": [SHAPE[1]], "rlnTomoSizeZ": [SHAPE[0]],
        "rlnTomoTiltSeriesPixelSize": [VOXEL], "rlnTomoTomogramBinning": [1.0],
        "rlnTomoReconstructedTomogram": [reconstructed]})}, path, overwrite=True)
    return path


def relion5_picks(path: Path) -> Path:
    """Two picks, one at the tomogram centre, one 50 A off it in x."""
    path.parent.mkdir(parents=True, exist_ok=True)
    starfile.write({"particles": pd.DataFrame({
        "rlnTomoName": ["TS_01", "TS_01"], "rlnCenteredCoordinateXAngst": [0.0, 50.0],
        "rlnCenteredCoordinateYAngst": [0.0, 0.0], "rlnCenteredCoordinateZAngst": [0.0, 0.0],
        "rlnClassNumber": [1, 2]})}, path, overwrite=True)
    return path


def pixel_picks(path: Path, name: str = "TS_01", **columns) -> Path:
    table = {"rlnTomoName": [name], "rlnCoordinateX": [20.0], "rlnCoordinateY": [16.0], "rlnCoordinateZ": [12.0],
             "rlnClassNumber": [1]}
    table.update(columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    starfile.write({"particles": pd.DataFrame({k: v for k, v in table.items() if v is not None})}, path,
                   overwrite=True)
    return path


@pytest.fixture
def project(tmp_path):
    """A RELION-shaped project: Tomograms/job030/{tomograms.star, tomograms/rec_TS_01.mrc}, Picks/particles.star."""
    root = tmp_path / "project"
    write_tomogram(root / REC)
    tomograms_star(root / "Tomograms/job030/tomograms.star", REC)
    relion5_picks(root / "Picks/particles.star")
    (tmp_path / "elsewhere").mkdir()
    return root


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = forge(["-q", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(code: int, err: str, *fragments: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("forge: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def extracted(out: Path) -> pd.DataFrame:
    return starfile.read(out / "particles.star")


# -- 1. RELION 5 tomogram paths as RELION writes them (relative to the project folder) -------------

def test_relion5_tomogram_path_is_found_from_the_project_folder_and_from_elsewhere(project, tmp_path, capsys,
                                                                                   monkeypatch):
    monkeypatch.chdir(project)
    code, stdout, err = run(capsys, "extract", "--picks", "Picks/particles.star", "--tomograms-star",
                            "Tomograms/job030/tomograms.star", "--box", 8, "--out", "out")
    assert code == 0, err
    assert "wrote 2 subtomograms" in stdout
    table = extracted(project / "out")
    assert [Path(p).resolve() for p in table["forgeTomogram"]] == [(project / REC).resolve()] * 2
    assert table["rlnCoordinateX"].tolist() == [20.0, 25.0]
    # from another folder, the STAR files named by absolute paths: found from the project folder
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, _, err = run(capsys, "extract", "--picks", project / "Picks/particles.star", "--tomograms-star",
                       project / "Tomograms/job030/tomograms.star", "--box", 8, "--out", "out2")
    assert code == 0, err
    assert [Path(p).resolve() for p in extracted(tmp_path / "elsewhere/out2")["forgeTomogram"]] == \
        [(project / REC).resolve()] * 2


def test_a_missing_tomogram_names_the_places_tried(project, tmp_path, capsys, monkeypatch):
    from cryoet_forge.io.picks import read_relion_tomograms

    star = tomograms_star(project / "Tomograms/job030/tomograms.star", "Tomograms/job030/tomograms/rec_TS_99.mrc")
    monkeypatch.chdir(tmp_path / "elsewhere")
    path = read_relion_tomograms(star).loc["TS_01", "path"]
    with pytest.raises(InputError) as info:
        path.resolve()
    tried = [tmp_path / "elsewhere", project, project / "Tomograms/job030"]
    message = str(info.value)
    assert message.startswith(f"{star}: row 1: rlnTomoReconstructedTomogram "
                              "'Tomograms/job030/tomograms/rec_TS_99.mrc': no such tomogram (tried ")
    assert message.endswith(", ".join(str(t / "Tomograms/job030/tomograms/rec_TS_99.mrc") for t in tried) + ")")
    code, _, err = run(capsys, "extract", "--picks", project / "Picks/particles.star", "--tomograms-star", star,
                       "--box", 8, "--out", tmp_path / "out")
    assert one_line(code, err) == f"forge: error: {message}"
    assert not (tmp_path / "out").exists()


def test_relion4_table_naming_tomogram_files_is_read_from_the_project_folder(project, tmp_path, capsys, monkeypatch):
    star = pixel_picks(project / "Picks/job010/particles.star", rlnTomoName=None, rlnMicrographName=[REC])
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, _, err = run(capsys, "extract", "--picks", star, "--box", 8, "--out", "out")
    assert code == 0, err
    assert extracted(tmp_path / "elsewhere/out")["rlnTomoName"].tolist() == ["rec_TS_01"]
    # a plain name (Warp's TS_01.tomostar) still needs --tomograms
    warp = pixel_picks(tmp_path / "warp.star", rlnTomoName=None, rlnMicrographName=["TS_01.tomostar"])
    code, _, err = run(capsys, "extract", "--picks", warp, "--box", 8, "--out", "out3")
    one_line(code, err, "tomogram 'TS_01' named in the picks has no tomogram file", "none given (--tomograms)")


# -- 2. paths from tables confined by their resolved path -----------------------------------------

@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "linked-folder"])
def test_table_paths_leading_outside_the_project_are_refused(project, tmp_path, capsys, monkeypatch, kind):
    from cryoet_forge.io.picks import read_relion_tomograms

    outside = write_tomogram(tmp_path / "outside/rec_TS_01.mrc")
    value = {"dotdot": "../outside/rec_TS_01.mrc", "absolute": str(outside),
             "symlink": "Tomograms/job030/tomograms/link.mrc",
             "linked-folder": "Tomograms/job030/linked/rec_TS_01.mrc"}[kind]
    if kind == "symlink":
        (project / value).symlink_to(outside)
    if kind == "linked-folder":
        (project / "Tomograms/job030/linked").symlink_to(tmp_path / "outside")
    star = tomograms_star(project / "Tomograms/job030/tomograms.star", value)
    monkeypatch.chdir(project)
    with pytest.raises(InputError) as info:
        read_relion_tomograms(star).loc["TS_01", "path"].resolve()
    message = str(info.value)
    assert message.startswith(f"{star}: row 1: rlnTomoReconstructedTomogram {value!r} leads outside the "
                              f"project folder {project.resolve()} (to {outside.resolve()}")
    assert message.endswith("or allow it with forge --allow-outside-paths")
    assert ("through a symbolic link" in message) == (kind in ("symlink", "linked-folder"))
    args = ["extract", "--picks", "Picks/particles.star", "--tomograms-star", star, "--box", 8]
    code, _, err = run(capsys, *args, "--out", "out")
    assert one_line(code, err) == f"forge: error: {message}" and not (project / "out").exists()
    code, _, err = run(capsys, "--allow-outside-paths", *args, "--out", "out")
    assert code == 0, err
    assert len(extracted(project / "out")) == 2


def test_csv_tomogram_paths_are_confined_to_the_table_folder(tmp_path, capsys, monkeypatch):
    from cryoet_forge.io.picks import read_picks

    write_tomogram(tmp_path / "outside/TS_01.mrc")
    write_tomogram(tmp_path / "picks/tomos/TS_02.mrc")
    csv = tmp_path / "picks/picks.csv"
    csv.write_text("tomogram,x,y,z\n../outside/TS_01.mrc,20,16,12\ntomos/TS_02.mrc,20,16,12\n")
    monkeypatch.chdir(tmp_path / "outside")
    paths = read_picks(csv, unit="px").table["tomogram_path"]
    assert paths[1].resolve() == tmp_path / "picks/tomos/TS_02.mrc"  # from the table's folder
    expected = (f"{csv}: row 1: tomogram '../outside/TS_01.mrc' leads outside the table's folder "
                f"{(tmp_path / 'picks').resolve()} (to {(tmp_path / 'outside/TS_01.mrc').resolve()})")
    with pytest.raises(InputError) as info:
        paths[0].resolve()
    assert str(info.value).startswith(expected)
    code, _, err = run(capsys, "extract", "--picks", csv, "--unit", "px", "--box", 8, "--out", tmp_path / "out")
    one_line(code, err, expected)
    code, _, err = run(capsys, "--allow-outside-paths", "extract", "--picks", csv, "--unit", "px", "--box", 8,
                       "--out", tmp_path / "out")
    assert code == 0, err
    assert extracted(tmp_path / "out")["rlnTomoName"].tolist() == ["TS_01", "TS_02"]


def test_star_rows_through_symbolic_links_out_of_the_folder_are_refused(tmp_path):
    from cryoet_forge.data.folders import VolumeFolderDataset
    from cryoet_forge.io.mrc import write_mrc
    from cryoet_forge.io.star import write_particles

    vols, other = tmp_path / "vols", tmp_path / "other"
    vols.mkdir()
    other.mkdir()
    for folder, name in ((vols, "a.mrc"), (other, "b.mrc")):
        write_mrc(folder / name, np.zeros((8, 8, 8), np.float32), 10.0)
    (vols / "link.mrc").symlink_to(other / "b.mrc")
    (vols / "sub").symlink_to(other)
    (vols / "inside.mrc").symlink_to(vols / "a.mrc")  # a link that stays inside is fine
    for name, row in (("link.mrc", "link.mrc"), ("sub", "sub/b.mrc")):
        star = write_particles(vols / f"{name}.star", pd.DataFrame(
            [{"rlnImageName": n, "rlnClassNumber": 1, "forgeClassName": "c", "rlnImagePixelSize": 10.0}
             for n in ("inside.mrc", row)]))
        with pytest.raises(InputError) as info:
            VolumeFolderDataset(star)
        assert str(info.value) == (
            f"{star}: rlnImageName {row!r} (row 2) leads outside the STAR file's folder (to "
            f"{(other / 'b.mrc').resolve()}, through a symbolic link); move the volumes under it, or allow it "
            "with forge --allow-outside-paths")
        files.configure_paths(True)
        assert len(VolumeFolderDataset(star)) == 2
        files.configure_paths(False)


def test_copick_tomogram_through_a_symbolic_link_out_of_the_project_is_refused(tmp_path, capsys):
    copick = pytest.importorskip("copick", reason="copick is not installed (pip install 'cryoet-forge[copick]')")
    import shutil

    from copick.models import PickableObject

    from cryoet_forge.data.copick import copick_jobs

    config = tmp_path / "copick.json"
    project = copick.ops.open.new_config(str(config), str(tmp_path / "overlay"), pickable_objects=[
        PickableObject(name="ribosome", is_particle=True, label=1)])
    run_ = project.new_run("TS_01")
    run_.new_voxel_spacing(VOXEL).new_tomogram("wbp").from_numpy(np.zeros(SHAPE, np.float32), levels=1)
    picks = run_.new_picks(object_name="ribosome", session_id="0", user_id="test")
    picks.from_numpy(np.array([[200.0, 160.0, 120.0]]))
    picks.store()
    zarr_path = next((tmp_path / "overlay").rglob("wbp.zarr"))
    shutil.move(zarr_path, tmp_path / "elsewhere.zarr")
    zarr_path.symlink_to(tmp_path / "elsewhere.zarr")
    with pytest.raises(InputError, match=r"run 'TS_01': tomogram .*wbp\.zarr leads outside the project's roots"):
        copick_jobs(config, None, VOXEL)
    code, _, err = run(capsys, "extract", "--copick", config, "--box", 8, "--out", tmp_path / "out")
    one_line(code, err, "leads outside the project's roots", "--allow-outside-paths")
    code, _, err = run(capsys, "--allow-outside-paths", "extract", "--copick", config, "--box", 8,
                       "--out", tmp_path / "out")
    assert code == 0, err


# -- 3. a pick whose tomogram has no file --------------------------------------------------------

def test_a_pick_for_a_tomogram_not_given_is_an_error_even_with_one_tomogram(tmp_path, capsys):
    from cryoet_forge.data.extract_command import jobs_from_tables

    tomogram = write_tomogram(tmp_path / "TS_01.mrc")
    csv = tmp_path / "picks.csv"
    csv.write_text("tomogram,x,y,z\nTS_99,20,16,12\n")
    with pytest.raises(InputError, match=r"tomogram 'TS_99' named in the picks has no tomogram file "
                                         r"\(tomograms: TS_01\)"):
        jobs_from_tables([csv], [tomogram], "px", None, None, "0", None)
    code, _, err = run(capsys, "extract", "--picks", csv, "--unit", "px", "--tomograms", tomogram, "--box", 8,
                       "--out", tmp_path / "out")
    one_line(code, err, f"{csv}: tomogram 'TS_99' named in the picks has no tomogram file (tomograms: TS_01)")
    assert not (tmp_path / "out").exists()
    # Warp's TS_01_10.00Apx.mrc is TS_01's file; RELION's rec_TS_01.mrc when the tomograms STAR names it
    warp = write_tomogram(tmp_path / "warp/TS_01_10.00Apx.mrc")
    csv.write_text("tomogram,x,y,z\nTS_01,20,16,12\n")
    jobs = jobs_from_tables([csv], [warp.parent], "px", None, None, "0", None)
    assert jobs[0][0].source == str(warp)
    jobs[0][0].close()
    rec = write_tomogram(tmp_path / "relion/rec_TS_01.mrc")
    star = tomograms_star(tmp_path / "tomograms.star", "relion/rec_TS_01.mrc")
    jobs = jobs_from_tables([relion5_picks(tmp_path / "particles.star")], [rec], None, star, None, "0", None)
    assert jobs[0][0].source == str(rec)
    jobs[0][0].close()


# -- 4. tracebacks that are one line now ---------------------------------------------------------

def test_tomograms_star_size_that_is_not_a_number(tmp_path, capsys):
    from cryoet_forge.io.picks import read_relion_tomograms

    star = tomograms_star(tmp_path / "tomograms.star", "TS_01.mrc", size_x="abc")
    with pytest.raises(InputError) as info:
        read_relion_tomograms(star)
    assert str(info.value) == f"{star}: row 1: rlnTomoSizeX 'abc' is not a number > 0; expected pixels"
    code, _, err = run(capsys, "extract", "--picks", relion5_picks(tmp_path / "particles.star"), "--tomograms-star",
                       star, "--box", 8, "--out", tmp_path / "out")
    one_line(code, err, f"{star}: row 1: rlnTomoSizeX 'abc' is not a number > 0")


@pytest.mark.parametrize("columns, expected", [
    ({"rlnCoordinateZ": None}, "no rlnCoordinateZ column; RELION 4 / Warp / M picks need rlnCoordinateX, "
                               "rlnCoordinateY, rlnCoordinateZ (tomogram pixels)"),
    ({"rlnClassNumber": [1.5]}, "row 1: rlnClassNumber '1.5' is not an integer; class numbers must be integers"),
    ({"rlnClassNumber": ["x"]}, "row 1: rlnClassNumber 'x' is not an integer; class numbers must be integers"),
])
def test_bad_pixel_pick_tables(tmp_path, capsys, columns, expected):
    from cryoet_forge.io.picks import read_picks

    star = pixel_picks(tmp_path / "picks.star", **columns)
    with pytest.raises(InputError) as info:
        read_picks(star)
    assert str(info.value).startswith(f"{star}: {expected}")
    tomogram = write_tomogram(tmp_path / "TS_01.mrc")
    code, _, err = run(capsys, "extract", "--picks", star, "--tomograms", tomogram, "--box", 8,
                       "--out", tmp_path / "out")
    one_line(code, err, f"{star}: {expected}")


def test_a_box_larger_than_the_tomogram_is_refused_before_allocating(tmp_path, capsys):
    from cryoet_forge.extract import ExtractOptions, Extractor
    from cryoet_forge.io.tomograms import open_tomogram

    tomogram = write_tomogram(tmp_path / "TS_01.mrc", shape=(64, 64, 64))
    expected = (f"--box 4096 is larger than every dimension of tomogram {tomogram} (x, y, z size 64, 64, 64); "
                "expected a box that fits in it")
    with open_tomogram(tomogram) as tomo:
        with pytest.raises(InputError) as info:
            Extractor(tomo, ExtractOptions(box=4096).check())
        assert str(info.value) == expected
        with pytest.raises(InputError, match=r"--box 2048 \(4096 tomogram voxels\) is larger"):
            Extractor(tomo, ExtractOptions(box=2048, voxel_size=2 * VOXEL).check())
        assert Extractor(tomo, ExtractOptions(box=64).check()).opt.box == 64  # as large as the tomogram: fine
    csv = tmp_path / "picks.csv"
    csv.write_text("tomogram,x,y,z\nTS_01,32,32,32\n")
    code, _, err = run(capsys, "extract", "--picks", csv, "--unit", "px", "--tomograms", tomogram, "--box", 4096,
                       "--out", tmp_path / "out")
    assert one_line(code, err) == f"forge: error: {expected}"


def test_ome_zarr_without_the_zarr_package_names_the_install_command(tmp_path, capsys, monkeypatch):
    from cryoet_forge.io.tomograms import open_tomogram

    folder = tmp_path / "TS_01.zarr"
    folder.mkdir()
    monkeypatch.setitem(sys.modules, "zarr", None)  # import zarr raises ImportError
    with pytest.raises(ConfigError) as info:
        open_tomogram(folder)
    assert str(info.value) == (f"{folder}: an OME-Zarr tomogram needs the zarr library: "
                               "pip install 'cryoet-forge[copick]'")
    csv = tmp_path / "picks.csv"
    csv.write_text("tomogram,x,y,z\nTS_01,20,16,12\n")
    code, _, err = run(capsys, "extract", "--picks", csv, "--unit", "px", "--tomograms", folder, "--box", 8,
                       "--out", tmp_path / "out")
    one_line(code, err, "an OME-Zarr tomogram needs the zarr library: pip install 'cryoet-forge[copick]'")

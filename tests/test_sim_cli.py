"""``forge simulate`` end to end, and the one-line errors of the simulation commands."""

from __future__ import annotations

import gzip
import time

import numpy as np
import pandas as pd
import pytest

from cryoet_forge import registry
from cryoet_forge.cli import main
from cryoet_forge.io.mrc import read_mrc, write_mrc
from cryoet_forge.io.star import read_particles


def forge(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def simulate(capsys, out, *extra):
    return forge(capsys, "simulate", "--phantoms", "--n-per-class", 2, "--box", 16, "--voxel-size", 9.4,
                 "--seed", 3, "--out", out, "--quiet", *extra)


def test_simulate_phantoms_writes_layout_that_reloads(tmp_path, capsys):
    code, out, err = simulate(capsys, tmp_path / "run", "--bundle")
    assert code == 0, err
    assert "wrote 10 particles of 5 classes" in out
    run = tmp_path / "run"
    classes = ["barrel", "two-lobe", "ring", "globule", "membrane"]
    assert sorted(p.stem for p in (run / "templates").glob("*.mrc")) == sorted(classes)
    assert (run / "montage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = read_particles(run / "particles.star")
    density = read_particles(run / "density.star")
    assert len(table) == len(density) == 10
    for column in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "forgeShiftXAngst", "rlnDefocusU", "forgeSnr"):
        assert column in table.columns
    # each clean map shares the pose of its subtomogram
    np.testing.assert_allclose(table["rlnAngleRot"], density["rlnAngleRot"])
    ds = registry.create("dataset", "volume-folder", root=run / "particles.star", normalize="none")
    assert ds.class_names == classes and ds.voxel_size == pytest.approx(9.4) and ds.box == 16
    item = ds[5]
    assert item["class_name"] == "ring" and item["label"] == 2
    volume, voxel = read_mrc(run / table.loc[5, "rlnImageName"])
    assert voxel == pytest.approx(9.4)
    np.testing.assert_array_equal(item["volume"][0].numpy(), volume)
    assert ds.parameters(5)["rlnAngleTilt"] == pytest.approx(table.loc[5, "rlnAngleTilt"])
    bundle = registry.create("dataset", "volume-folder", root=run / "particles.npz", normalize="none")
    np.testing.assert_array_equal(bundle[5]["volume"].numpy(), item["volume"].numpy())
    assert bundle.voxel_size == pytest.approx(9.4) and bundle.class_names == classes
    clean = registry.create("dataset", "volume-folder", root=run / "density.star", normalize="none")
    assert clean[5]["volume"].min() >= -1e-3  # clean posed density has no CTF ripples


def test_same_seed_same_output_other_seed_differs(tmp_path, capsys):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        code, _, err = forge(capsys, "simulate", "--phantoms", "--n-per-class", 1, "--box", 16,
                             "--seed", seed, "--out", tmp_path / name, "--quiet")
        assert code == 0, err
    tables = {n: read_particles(tmp_path / n / "particles.star") for n in "abc"}
    pd.testing.assert_frame_equal(tables["a"], tables["b"])
    for name in tables["a"]["rlnImageName"]:
        np.testing.assert_array_equal(read_mrc(tmp_path / "a" / name)[0], read_mrc(tmp_path / "b" / name)[0])
    assert not np.allclose(tables["a"]["rlnAngleRot"], tables["c"]["rlnAngleRot"])


def test_simulate_from_a_folder_of_maps(tmp_path, capsys):
    from cryoet_forge.simulate.phantoms import make_phantom

    maps = tmp_path / "maps"
    write_mrc(maps / "alpha.mrc", make_phantom("ring", 20, 5.0), 5.0)
    write_mrc(maps / "beta.mrc", make_phantom("barrel", 20, 5.0), 5.0)
    code, out, err = forge(capsys, "simulate", "--structures", maps, "--n-per-class", 1, "--box", 16,
                           "--voxel-size", 10, "--out", tmp_path / "run", "--quiet", "--snr", 0.2)
    assert code == 0, err
    table = read_particles(tmp_path / "run" / "particles.star")
    assert table["forgeClassName"].tolist() == ["alpha", "beta"]
    assert table["forgeSnr"].tolist() == [0.2, 0.2]


def write_pdb(path, coordinates):
    lines = [f"ATOM  {i + 1:5d}  CA  ALA A{i + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00 20.00           C"
             for i, (x, y, z) in enumerate(coordinates)]
    text = "\n".join(lines + ["END", ""])
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def bad_inputs(tmp_path):
    garbage = tmp_path / "garbage.mrc"
    garbage.write_bytes(b"\x00garbage" * 10)
    nan_map = tmp_path / "nan.mrc"
    import mrcfile

    data = np.ones((8, 8, 8), np.float32)
    data[2, 2, 2] = np.nan
    with pytest.warns(RuntimeWarning), mrcfile.new(nan_map) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = 10.0
    good_gz = write_pdb(tmp_path / "ok.pdb.gz", [(0, 0, 0), (60, 0, 0), (0, 60, 0)])
    truncated = tmp_path / "truncated.pdb.gz"
    truncated.write_bytes(good_gz.read_bytes()[:-12])
    big = write_pdb(tmp_path / "big.pdb", [(0, 0, 0), (200, 0, 0), (0, 0, 150)])
    not_pdb = tmp_path / "notes.pdb"
    not_pdb.write_text("hello\n")
    return {
        "--voxel-size 0.0 is invalid": ["--phantoms", "--voxel-size", "0"],
        "--voxel-size -2.0 is invalid": ["--phantoms", "--voxel-size", "-2"],
        "garbage.mrc: not a readable MRC file": ["--structures", garbage],
        "nan.mrc: 1 voxel(s) are NaN": ["--structures", nan_map],
        "truncated.pdb.gz: truncated or corrupt gzip file": ["--structures", truncated, "--voxel-size", "10"],
        "notes.pdb: no atoms found": ["--structures", not_pdb, "--voxel-size", "10"],
        "--voxel-size is required: PDB structures carry no voxel size": ["--structures", not_pdb],
        "big.pdb: atoms reach": ["--structures", big, "--box", "16", "--voxel-size", "10"],
        "give exactly one of --phantoms or --structures": ["--phantoms", "--structures", "ring"],
        "--n-per-class 0: expected >= 1": ["--phantoms", "--n-per-class", "0"],
    }


def test_bad_input_gives_one_error_line(tmp_path, capsys):
    for expected, args in bad_inputs(tmp_path).items():
        code, _, err = forge(capsys, "simulate", "--out", tmp_path / "out", "--quiet", *args)
        assert code != 0, expected
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("forge: error: "), (expected, err)
        assert expected in lines[0], (expected, lines[0])
        assert "Traceback" not in err


def test_crop_flag_crops_a_large_structure_with_a_warning(tmp_path, capsys):
    big = write_pdb(tmp_path / "big.pdb", [(0, 0, 0), (200, 0, 0), (0, 0, 150), (10, 10, 10)])
    code, _, err = forge(capsys, "simulate", "--structures", big, "--box", 16, "--voxel-size", 10, "--crop",
                         "--n-per-class", 1, "--out", tmp_path / "out", "--quiet")
    assert code == 0
    assert "forge: warning: " in err and "crops it" in err
    assert read_mrc(tmp_path / "out" / "templates" / "big.mrc")[0].shape == (16, 16, 16)


def test_subprocess_error_has_no_traceback(tmp_path):
    import subprocess

    from tests_support import forge_executable

    result = subprocess.run([forge_executable(), "simulate", "--phantoms", "--voxel-size", "-1", "--out",
                             str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "forge: error: --voxel-size -1.0 is invalid; expected a finite value in Angstrom > 0"]


def test_simulate_tilt_series_with_options(tmp_path, capsys):
    code, out, err = forge(capsys, "simulate", "--phantoms", "--simulator", "tilt-series", "--n-per-class", 1,
                           "--box", 16, "--voxel-size", 10, "--out", tmp_path / "ts", "--quiet",
                           "--option", "crowding=1", "--option", "tilt_range=[-45,45]")
    assert code == 0, err
    table = read_particles(tmp_path / "ts" / "particles.star")
    assert set(table["forgeSimulator"]) == {"tilt-series"}
    assert table["forgeTiltMax"].tolist() == [45.0] * 5 and table["forgeNeighbours"].tolist() == [1] * 5
    code, _, err = forge(capsys, "simulate", "--phantoms", "--simulator", "nope", "--out", tmp_path / "x", "--quiet")
    assert code != 0 and err.strip().startswith("forge: error: unknown simulator 'nope'; choose from: fourier, posed-map, tilt-series")
    code, _, err = forge(capsys, "simulate", "--phantoms", "--option", "loudness=3", "--out", tmp_path / "y", "--quiet")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "loudness" in err


def test_existing_output_needs_overwrite(tmp_path, capsys):
    args = ["simulate", "--phantoms", "--n-per-class", 1, "--box", 16, "--out", tmp_path / "o", "--quiet"]
    assert forge(capsys, *args)[0] == 0
    code, _, err = forge(capsys, *args)
    assert code != 0 and "already holds a simulation" in err and "--overwrite" in err
    code, _, err = forge(capsys, *args, "--overwrite", "--structures", "ring", "--phantoms")
    assert code != 0  # still exactly one source
    assert forge(capsys, *args, "--overwrite")[0] == 0
    # a file forge did not make: nothing is written into that folder, --overwrite or not (issue 31)
    (tmp_path / "o" / "notes.txt").write_text("mine")
    before = sorted(p.name for p in (tmp_path / "o").iterdir())
    for extra in ((), ("--overwrite",)):
        code, _, err = forge(capsys, *args, *extra)
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"{tmp_path / 'o'} holds files that are not a simulation (notes.txt); forge writes only into a new " \
               "or empty folder or one holding its own earlier output: choose another --out" in err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == before
    assert (tmp_path / "o" / "notes.txt").read_text() == "mine"


def test_density_command_writes_map_with_voxel_size(tmp_path, capsys):
    pdb = write_pdb(tmp_path / "m.pdb", [(0, 0, 0), (20, 0, 0), (0, 20, 0)])
    code, out, err = forge(capsys, "density", pdb, "--out", tmp_path / "m.mrc", "--voxel-size", 4, "--box", 24)
    assert code == 0, err
    volume, voxel = read_mrc(tmp_path / "m.mrc")
    assert voxel == pytest.approx(4.0) and volume.shape == (24, 24, 24) and volume.max() > 0
    code, _, err = forge(capsys, "density", pdb, "--out", tmp_path / "n.mrc", "--voxel-size", 4, "--box", 6)
    assert code != 0 and err.strip().splitlines()[0].startswith("forge: error: ") and "use a box >=" in err


def fail_on_third_batch(monkeypatch, out):
    """Make the fourier simulator raise on its third batch, after earlier volumes were written."""
    from cryoet_forge.errors import InputError
    from cryoet_forge.simulate.fourier import FourierSimulator

    real = FourierSimulator.simulate
    calls = []
    started = time.time_ns()

    def simulate(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # two batches of two really were written before the failure
            written = [p for p in out.parent.rglob("subtomograms/*.mrc") if p.stat().st_mtime_ns >= started]
            assert len(written) == 4
            raise InputError("simulator failed on purpose in batch 3")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FourierSimulator, "simulate", simulate)
    return calls


def test_failure_midway_leaves_no_output_folder(tmp_path, capsys, monkeypatch):
    out = tmp_path / "new"
    calls = fail_on_third_batch(monkeypatch, out)
    code, _, err = simulate(capsys, out, "--batch-size", 2)
    assert len(calls) == 3
    assert code == 2 and err.strip().splitlines() == ["forge: error: simulator failed on purpose in batch 3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no OUT, no .new.partial-* folder


def test_failure_midway_keeps_the_previous_simulation(tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    assert simulate(capsys, out, "--bundle")[0] == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = fail_on_third_batch(monkeypatch, out)
    code, _, err = simulate(capsys, out, "--batch-size", 2, "--seed", 4, "--overwrite")
    assert len(calls) == 3 and code == 2 and "failed on purpose" in err
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_overwrite_replaces_only_the_simulation_outputs(tmp_path, capsys):
    import os

    out = tmp_path / "o"
    assert simulate(capsys, out, "--bundle")[0] == 0
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # a normal folder, not mkdtemp's 0700
    old_star = (out / "particles.star").read_bytes()
    assert simulate(capsys, out, "--seed", 4, "--overwrite")[0] == 0
    assert (out / "particles.star").read_bytes() != old_star
    assert not (out / "density.npz").exists() and not (out / "particles.npz").exists()  # stale bundle gone
    assert len(list((out / "subtomograms").glob("*.mrc"))) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no temporary folders left


def test_a_failed_swap_into_an_existing_folder_puts_everything_back(tmp_path, monkeypatch):
    import os

    from cryoet_forge.io import atomic

    out = tmp_path / "o"
    (out / "density").mkdir(parents=True)
    (out / "density" / "old.mrc").write_text("old map")
    (out / "particles.star").write_text("old table")
    (out / "notes.txt").write_text("mine")
    real_replace, moves = os.replace, []

    def replace(src, dst):
        moves.append((src, dst))
        if len(moves) == 4:  # both old entries moved aside, one new entry moved in: then a failure
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"):
        with atomic.atomic_folder(out, stale=("density", "particles.star")) as work:
            (work / "density").mkdir()
            (work / "density" / "new.mrc").write_text("new map")
            (work / "particles.star").write_text("new table")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "density", "density/old.mrc", "notes.txt", "particles.star"]
    assert (out / "particles.star").read_text() == "old table" and (out / "density" / "old.mrc").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]

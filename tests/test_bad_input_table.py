"""Bad input to every command, as one table: the exit code, one `forge: error:` line with the
expected words, no traceback, and nothing written (the folder the command writes into is
byte-for-byte what it was, and the inputs too)."""

from __future__ import annotations

import os
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from test_generate_uncertainty import TINY_RUN, maps_star, run_dir  # noqa: F401 (fixtures)

from cryoet_forge.cli import main as forge
from cryoet_forge.io.mrc import write_mrc
from cryoet_forge.io.star import write_particles


def _volumes_star(folder: Path, name: str, rows: list[tuple[str, int, float]]) -> Path:
    """A STAR table listing (file, class, pixel size) rows; the files are written unless they exist."""
    rng = np.random.default_rng(0)
    out = []
    for file, label, pixel in rows:
        path = folder / file
        if not path.exists() and not file.startswith(".."):
            write_mrc(path, rng.random((16, 16, 16), dtype=np.float32), pixel)
        out.append({"rlnImageName": file, "rlnClassNumber": label, "forgeClassName": f"c{label}",
                    "rlnImagePixelSize": pixel})
    return write_particles(folder / name, pd.DataFrame(out))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Every bad (and a few good) input files, made once."""
    root = tmp_path_factory.mktemp("inputs")
    good = np.random.default_rng(1).normal(size=(30, 4)).astype(np.float32)
    np.save(root / "good.npy", good)
    (root / "text.npy").write_text("0.1 0.2 0.3\n0.4 0.5 0.6\n")
    np.save(root / "big.npy", np.full((30, 4), 1e300))
    os.mkfifo(root / "fifo.npy")
    os.symlink("/dev/zero", root / "zero.npy")
    (root / "folder.npy").mkdir()
    (root / "afile").write_text("not a folder")
    (root / "bad.toml").write_text("[train\nsteps = ")
    (root / "binary.toml").write_bytes(b"\xff\xfe\x00garbage")
    (root / "unknown.toml").write_text("[train]\nstepz = 3\n")
    with mrcfile.new(root / "complex.mrc") as mrc:  # MRC mode 4: a Fourier transform, not a map
        mrc.set_data(np.ones((16, 16, 16), dtype=np.complex64))
        mrc.voxel_size = 10.0
    vols = root / "vols"
    vols.mkdir()
    _volumes_star(vols, "good.star", [("a.mrc", 1, 10.0), ("b.mrc", 2, 10.0), ("c.mrc", 1, 10.0), ("d.mrc", 2, 10.0)])
    _volumes_star(vols, "mixed.star", [("a.mrc", 1, 10.0), ("e.mrc", 2, 12.0)])
    (vols / "sub").mkdir()
    _volumes_star(vols, "to_folder.star", [("sub", 1, 10.0), ("a.mrc", 2, 10.0)])
    outside = root / "outside.mrc"
    write_mrc(outside, np.zeros((16, 16, 16), np.float32), 10.0)
    _volumes_star(vols, "escape.star", [("a.mrc", 1, 10.0), ("../outside.mrc", 2, 10.0)])
    maps12 = root / "maps12"
    maps12.mkdir()
    _volumes_star(maps12, "maps.star", [("m1.mrc", 1, 12.0), ("m2.mrc", 2, 12.0)])
    subs10 = root / "subs10"
    subs10.mkdir()
    _volumes_star(subs10, "subs.star", [("s1.mrc", 1, 10.0), ("s2.mrc", 2, 10.0)])
    (root / "not.mrc").write_text("hello")
    (root / "picks.csv").write_text("x,y,z\n1,2,3\n")
    (vols / "link.mrc").symlink_to(outside)  # rows that leave the folder through symbolic links
    (vols / "linked").symlink_to(maps12)
    _volumes_star(vols, "through_link.star", [("a.mrc", 1, 10.0), ("link.mrc", 2, 10.0)])
    _volumes_star(vols, "linked_folder.star", [("a.mrc", 1, 10.0), ("linked/m1.mrc", 2, 10.0)])
    tomograms = root / "tomograms"
    tomograms.mkdir()
    write_mrc(tomograms / "TS_01.mrc", np.zeros((64, 64, 64), np.float32), 10.0)
    (root / "ts99.csv").write_text("tomogram,x,y,z\nTS_99,32,32,32\n")
    (root / "ts01.csv").write_text("tomogram,x,y,z\nTS_01,32,32,32\n")
    pick = {"rlnTomoName": ["TS_01"], "rlnCoordinateX": [32.0], "rlnCoordinateY": [32.0], "rlnCoordinateZ": [32.0]}
    starfile.write({"particles": pd.DataFrame({k: pick[k] for k in list(pick)[:3]})}, root / "no_z.star")
    starfile.write({"particles": pd.DataFrame({**pick, "rlnClassNumber": [1.5]})}, root / "class_half.star")
    starfile.write({"particles": pd.DataFrame({**pick, "rlnClassNumber": ["x"]})}, root / "class_x.star")
    starfile.write({"particles": pd.DataFrame({"rlnTomoName": ["TS_01"], **{
        f"rlnCenteredCoordinate{a}Angst": [0.0] for a in "XYZ"}})}, root / "relion5.star")
    starfile.write({"global": pd.DataFrame({
        "rlnTomoName": ["TS_01"], "rlnTomoSizeX": ["abc"], "rlnTomoSizeY": [64], "rlnTomoSizeZ": [64],
        "rlnTomoTiltSeriesPixelSize": [10.0], "rlnTomoReconstructedTomogram": ["tomograms/TS_01.mrc"]})},
        root / "bad_size_tomograms.star")
    return root


def _snapshot(*folders: Path) -> dict[str, tuple[int, bytes]]:
    seen = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_symlink() or not p.exists():
                seen[str(p)] = (-1, b"")
            elif p.is_file():
                seen[str(p)] = (p.stat().st_mode, p.read_bytes())
            else:
                seen[str(p)] = (p.stat().st_mode, b"<dir>" if p.is_dir() else b"<special>")
    return seen


I, O, R = "{in}", "{out}", "{run}"  # placeholders: the inputs folder, the (empty) output folder, a trained run  # noqa: E741
TRAIN = ["train", "--out", f"{O}/run", "--steps", "1"]
TRAIN_FOLDERS = ["--set", "data.density.dataset='volume-folder'",
                 "--set", f"data.density.options={{root='{I}/maps12/maps.star'}}",
                 "--set", "data.subtomograms.dataset='volume-folder'",
                 "--set", f"data.subtomograms.options={{root='{I}/subs10/subs.star'}}"]
METRICS = ["metrics", "--fake", f"{I}/good.npy", "--real"]
CLASSIFY = ["classify", "train", "--out", f"{O}/cls", "--epochs", "1", "--channels", "2,2,2,2", "--fc-width", "8",
            "--data"]

CASES = [
    # -- forge metrics: feature files ---------------------------------------------------------
    ("metrics-text-npy", METRICS + [f"{I}/text.npy"], 2, ["text.npy: not a .npy file (starts with text"]),
    ("metrics-float64-beyond-float32", METRICS + [f"{I}/big.npy"], 2,
     ["big.npy: features: value 1e+300 at row 0, column 0 is beyond the float32 range"]),
    ("metrics-fifo", METRICS + [f"{I}/fifo.npy"], 2, ["fifo.npy: a FIFO (named pipe); expected a regular feature file"]),
    ("metrics-dev-zero-link", METRICS + [f"{I}/zero.npy"], 2,
     ["zero.npy: a character device (through a symbolic link); expected a regular feature file"]),
    ("metrics-folder-named-npy", METRICS + [f"{I}/folder.npy"], 2, ["folder.npy: a folder, not a feature file"]),
    ("metrics-missing", METRICS + [f"{I}/gone.npy"], 2, ["gone.npy: no such feature file"]),
    ("metrics-negative-bootstrap", METRICS + [f"{I}/good.npy", "--bootstrap", "-1"], 2, ["--bootstrap must be >= 0"]),
    ("metrics-json-into-file-folder", METRICS + [f"{I}/good.npy", "--json", f"{I}/afile/x.json"], 2,
     ["--json", "afile/x.json", "afile is a file, so nothing can be written under it"]),
    ("metrics-json-is-an-input", METRICS + [f"{I}/good.npy", "--json", f"{I}/vols/../good.npy"], 2,
     ["--json", "vols/../good.npy: is an input of this command", "good.npy); writing there would replace it"]),
    ("metrics-bootstrap-too-few", METRICS + [f"{I}/good.npy", "--bootstrap", "1"], 2,
     ["--bootstrap 1: expected 0 (no interval) or at least 50 resamples"]),
    ("metrics-bootstrap-huge", METRICS + [f"{I}/good.npy", "--bootstrap", "1000000000000"], 2,
     ["--bootstrap must be an integer in [50, 100000], got 1000000000000"]),
    # -- forge classify: STAR tables and outputs ------------------------------------------------
    ("classify-row-is-a-folder", CLASSIFY + [f"{I}/vols/to_folder.star"], 2, ["sub: a folder; expected an MRC file"]),
    ("classify-row-leaves-the-folder", CLASSIFY + [f"{I}/vols/escape.star"], 2,
     ["rlnImageName '../outside.mrc' (row 2) leads outside the STAR file's folder", "--allow-outside-paths"]),
    ("classify-row-in-a-linked-folder", CLASSIFY + [f"{I}/vols/linked_folder.star"], 2,
     ["rlnImageName 'linked/m1.mrc' (row 2) leads outside the STAR file's folder", "through a symbolic link"]),
    ("classify-mixed-pixel-sizes", CLASSIFY + [f"{I}/vols/mixed.star"], 2,
     ["mixed rlnImagePixelSize values (10, 12 A); expected one"]),
    ("classify-out-is-a-file", ["classify", "train", "--data", f"{I}/vols/good.star", "--out", f"{I}/afile"], 2,
     ["--out", "afile: is a file; expected a folder"]),
    ("classify-device", CLASSIFY + [f"{I}/vols/good.star", "--device", "tpu"], 2, ["--device 'tpu'"]),
    ("classify-eval-missing-model", ["classify", "eval", "--model", f"{I}/nomodel", "--data", f"{I}/vols/good.star",
                                     "--out", f"{O}/e"], 2, ["nomodel"]),
    ("classify-features-missing-model", ["classify", "features", "--model", f"{I}/nomodel", "--data",
                                        f"{I}/vols/good.star", "--out", f"{O}/f.npy"], 2,
     ["nomodel/cb3d.safetensors: CB3D checkpoint file not found"]),
    # -- forge simulate ----------------------------------------------------------------------
    ("simulate-seed", ["simulate", "--phantoms", "--box", "16", "--n-per-class", "1", "--seed", "-1", "--out",
                       f"{O}/sim"], 2, ["'--seed': -1 is not in the range"]),
    ("simulate-device", ["simulate", "--phantoms", "--box", "16", "--n-per-class", "1", "--device", "tpu", "--out",
                         f"{O}/sim"], 2, ["--device 'tpu': expected cpu, cuda, cuda:N or auto"]),
    ("simulate-out-is-a-file", ["simulate", "--phantoms", "--box", "16", "--n-per-class", "1", "--out",
                                f"{I}/afile"], 2, ["afile' is a file"]),
    ("simulate-proc", ["simulate", "--phantoms", "--box", "16", "--n-per-class", "1", "--out", "/proc/forge-x"], 1,
     ["cannot write there", "/proc/forge-x"]),
    ("simulate-box-beyond-memory", ["simulate", "--phantoms", "--box", "100000", "--n-per-class", "1", "--out",
                                    f"{O}/sim"], 2,
     ["--box 100000 (1 per batch, volumes of 100000^3 voxels) needs", "expected a smaller --box"]),
    ("simulate-bad-option", ["simulate", "--phantoms", "--box", "16", "--option", "nonsense", "--out", f"{O}/sim"], 2,
     ["--option 'nonsense': expected KEY=VALUE"]),
    # -- forge simulate-tomogram ---------------------------------------------------------------
    ("simulate-tomogram-crowded", ["simulate-tomogram", "--structures", "globule", "--voxel-size", "20", "--size", "32",
                                   "--n-per-class", "12", "--tilt-step", "30", "--out", f"{O}/st"], 2,
     ["crowding too high: placed 7 of 12 particles asked", "32x32x32 volume"]),
    ("simulate-tomogram-size-beyond-memory", ["simulate-tomogram", "--phantoms", "--size", "16384", "--out",
                                              f"{O}/st"], 2,
     ["--size 16384,16384,16384 (4,398,046,511,104 voxels, 41 tilts) needs", "expected a smaller --size"]),
    # -- forge train ---------------------------------------------------------------------------
    ("train-seed", TRAIN + ["--set", "train.seed=99999999999"], 2, ["train.seed 99999999999"]),
    ("train-batch-size-beyond-int64", TRAIN + ["--set", "train.batch_size=99999999999999999999"], 2,
     ["train.batch_size must be an integer in [1, 9223372036854775807], got 99999999999999999999"]),
    ("train-batch-size-beyond-memory", TRAIN + ["--set", "train.batch_size=999999999"], 2,
     ["train.batch_size 999999999 (at least 8 volumes of 32^3 voxels per item) needs",
      "expected a smaller train.batch_size"]),
    ("train-negative-seed", TRAIN + ["--set", "train.seed=-1"], 2, ["train.seed -1"]),
    ("train-nan-noise", TRAIN + ["--set", "data.density_noise_std=nan"], 2, ["data.density_noise_std"]),
    ("train-negative-residuals", TRAIN + ["--set", "model.generator_options={n_residual=-1}"], 2,
     ["n_residual must be an integer >= 0, got -1"]),
    ("train-voxel-sizes-differ", TRAIN + TRAIN_FOLDERS, 2,
     ["domain voxel sizes differ: density maps are at 12 A, subtomograms at 10 A"]),
    ("train-bad-toml", ["train", "--config", f"{I}/bad.toml", "--out", f"{O}/run"], 2, ["bad.toml: not valid TOML"]),
    ("train-binary-toml", ["train", "--config", f"{I}/binary.toml", "--out", f"{O}/run"], 2,
     ["binary.toml: not valid TOML (not UTF-8 text"]),
    ("train-unknown-key", ["train", "--config", f"{I}/unknown.toml", "--out", f"{O}/run"], 2, ["stepz"]),
    ("train-config-is-a-fifo", ["train", "--config", f"{I}/fifo.npy", "--out", f"{O}/run"], 2,
     ["fifo.npy: a FIFO (named pipe); expected a regular config file"]),
    ("train-resume-missing", ["train", "--resume", f"{O}/absent"], 2, ["no such run folder"]),
    # -- forge generate / uncertainty ------------------------------------------------------------
    ("generate-no-run", ["generate", "--run", f"{O}/norun", "--structures", "ring", "--out", f"{O}/g"], 2,
     ["norun"]),
    ("generate-both-sources", ["generate", "--run", R, "--structures", "ring", "--maps", f"{I}/vols",
                               "--out", f"{O}/g"], 2, ["give exactly one of --maps"]),
    ("generate-maps-at-another-voxel-size", ["generate", "--run", R, "--maps", f"{I}/maps12/maps.star",
                                             "--out", f"{O}/g"], 2, ["density maps at 12 A, but the run"]),
    ("generate-maps-row-links-outside", ["generate", "--run", R, "--maps", f"{I}/vols/through_link.star",
                                         "--out", f"{O}/g"], 2,
     ["rlnImageName 'link.mrc' (row 2) leads outside the STAR file's folder", "through a symbolic link",
      "--allow-outside-paths"]),
    ("uncertainty-complex-map", ["uncertainty", "--run", R, "--map", f"{I}/complex.mrc", "--out", f"{O}/u"], 2,
     ["complex.mrc: complex voxels (MRC mode 4); expected a real-valued volume"]),
    ("simulate-beyond-the-disk", ["simulate", "--phantoms", "--box", "8", "--n-per-class", "1000000000000",
                                  "--out", f"{O}/s"], 2,
     ["--n-per-class and --box ask for 10,000,000,000,000 volumes of 8^3 voxels", "free under"]),
    ("extract-tiny-voxel-size", ["extract", "--picks", f"{I}/ts01.csv", "--unit", "px", "--tomograms",
                                 f"{I}/tomograms", "--box", "8", "--voxel-size", "1e-95", "--out", f"{O}/x"], 2,
     ["--voxel-size 1e-95 A is outside 0.01-1000 A"]),
    ("simulate-snr-twice", ["simulate", "--phantoms", "--box", "16", "--n-per-class", "1", "--snr", "0.1",
                            "--option", "snr=0.5", "--out", f"{O}/s"], 2,
     ["--snr 0.1 and --option snr=0.5 both set the SNR; give one"]),
    ("simulate-shift-beyond-the-box", ["simulate", "--phantoms", "--box", "16", "--n-per-class", "1",
                                       "--option", "max_shift=1e6", "--out", f"{O}/s"], 2,
     ["max_shift 1e+06 voxels: expected less than half the box (16^3: < 8)"]),
    ("uncertainty-not-mrc", ["uncertainty", "--run", R, "--map", f"{I}/not.mrc", "--out", f"{O}/u"], 2,
     ["not.mrc: not a readable MRC file"]),
    ("uncertainty-map-is-a-folder", ["uncertainty", "--run", R, "--map", f"{I}/vols", "--out", f"{O}/u"], 2,
     ["vols"]),
    ("refine-tomogram-complex", ["refine-tomogram", "--run", R, "--tomogram", f"{I}/complex.mrc", "--out", f"{O}/r"], 2,
     ["complex.mrc: complex voxels (MRC mode 4); expected a real-valued volume"]),
    ("refine-tomogram-overlap-over-tile", ["refine-tomogram", "--run", R, "--tomogram", f"{I}/complex.mrc",
                                           "--tile", "16", "--overlap", "16", "--out", f"{O}/r"], 2,
     ["--overlap 16 must be below --tile 16"]),
    # -- forge evaluate / quickstart / extract / density / list ----------------------------------
    ("evaluate-picking-no-radius", ["evaluate-picking", "--picks", f"{I}/ts01.csv", "--unit", "px", "--tomograms",
                                    f"{I}/tomograms", "--train", "TS_01", "--test", "TS_02", "--out", f"{O}/ep"], 2,
     ["give the particle radii by --radius CLASS=A (per class) or --radius-column NAME"]),
    ("pick-train-two-sources", ["pick", "train", "--synthetic", f"{I}/vols", "--picks", f"{I}/ts01.csv",
                                "--out", f"{O}/pk"], 2,
     ["give the training tomograms by exactly one of --synthetic DIR, --picks FILE with --tomograms DIR, or "
      "--copick CONFIG (got --synthetic, --picks)"]),
    ("pick-apply-not-a-picker", ["pick", "apply", "--run", f"{I}/vols", "--tomogram", f"{I}/tomograms/TS_01.mrc",
                                 "--out", f"{O}/pa"], 2, ["vols: not a picker saved by forge pick train"]),
    ("evaluate-missing-suite", ["evaluate", "--suite", f"{I}/nosuite.toml", "--out", f"{O}/ev"], 2, ["nosuite.toml"]),
    ("evaluate-bad-config", ["evaluate", "--config", f"{I}/bad.toml", "--out", f"{O}/ev"], 2,
     ["bad.toml: not valid TOML"]),
    ("quickstart-seed", ["quickstart", "--seed", "-1", "--out", f"{O}/q"], 2, ["'--seed': -1 is not in the range"]),
    ("extract-missing-picks", ["extract", "--picks", f"{I}/nopicks.star", "--tomograms", f"{I}/vols",
                               "--box", "16", "--out", f"{O}/x"], 2, ["nopicks.star"]),
    ("extract-bad-box", ["extract", "--picks", f"{I}/picks.csv", "--tomograms", f"{I}/vols", "--box", "0",
                         "--out", f"{O}/x"], 2, ["box"]),
    ("extract-pick-for-a-tomogram-not-given", ["extract", "--picks", f"{I}/ts99.csv", "--unit", "px", "--tomograms",
                                               f"{I}/tomograms/TS_01.mrc", "--box", "16", "--out", f"{O}/x"], 2,
     ["ts99.csv: tomogram 'TS_99' named in the picks has no tomogram file (tomograms: TS_01)"]),
    ("extract-tomogram-size-not-a-number", ["extract", "--picks", f"{I}/relion5.star", "--tomograms-star",
                                            f"{I}/bad_size_tomograms.star", "--box", "16", "--out", f"{O}/x"], 2,
     ["bad_size_tomograms.star: row 1: rlnTomoSizeX 'abc' is not a number > 0; expected pixels"]),
    ("extract-pixel-picks-without-z", ["extract", "--picks", f"{I}/no_z.star", "--tomograms", f"{I}/tomograms",
                                       "--box", "16", "--out", f"{O}/x"], 2,
     ["no_z.star: no rlnCoordinateZ column; RELION 4 / Warp / M picks need"]),
    ("extract-class-number-fraction", ["extract", "--picks", f"{I}/class_half.star", "--tomograms",
                                       f"{I}/tomograms", "--box", "16", "--out", f"{O}/x"], 2,
     ["class_half.star: row 1: rlnClassNumber '1.5' is not an integer; class numbers must be integers"]),
    ("extract-class-number-text", ["extract", "--picks", f"{I}/class_x.star", "--tomograms", f"{I}/tomograms",
                                   "--box", "16", "--out", f"{O}/x"], 2,
     ["class_x.star: row 1: rlnClassNumber 'x' is not an integer"]),
    ("extract-box-larger-than-the-tomogram", ["extract", "--picks", f"{I}/ts01.csv", "--unit", "px", "--tomograms",
                                              f"{I}/tomograms", "--box", "4096", "--out", f"{O}/x"], 2,
     ["--box 4096 is larger than every dimension of tomogram", "(x, y, z size 64, 64, 64)"]),
    ("density-missing-structure", ["density", f"{I}/nothing.pdb", "--out", f"{O}/d.mrc"], 2, ["nothing.pdb"]),
    ("fetch-structures-bad-id", ["fetch-structures", "zz!", "--cache", f"{O}/cache"], 2,
     ["'zz!' is not a PDB id; expected 4 characters"]),
    ("list-unknown-kind", ["list", "spaceship"], 3, ["spaceship"]),
    ("unknown-command", ["frobnicate"], 2, ["No such command 'frobnicate'", "Choose from:"]),
]


@pytest.mark.parametrize("args, code, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(inputs, run_dir, tmp_path, capsys, args, code,  # noqa: F811
                                                  fragments):
    out = tmp_path / "out"
    out.mkdir()
    uses_run = R in args
    args = [a.replace(I, str(inputs)).replace(O, str(out)).replace(R, str(run_dir)) for a in args]
    watched = [out, inputs] + ([run_dir] if uses_run else [])
    before = _snapshot(*watched)
    capsys.readouterr()
    got = forge(args)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("note: ")]
    assert "Traceback" not in err
    assert got == code, err
    assert len(lines) == 1 and lines[0].startswith("forge: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert _snapshot(*watched) == before


def test_allow_outside_paths_reads_a_row_outside_the_star_folder(inputs):
    from cryoet_forge.data.folders import VolumeFolderDataset
    from cryoet_forge.errors import InputError
    from cryoet_forge.io import files

    star = inputs / "vols" / "escape.star"
    with pytest.raises(InputError, match="leads outside the STAR file's folder"):
        VolumeFolderDataset(star)
    files.configure_paths(True)
    try:
        dataset = VolumeFolderDataset(star)
        assert len(dataset) == 2 and dataset.files[1].resolve() == (inputs / "outside.mrc").resolve()
    finally:
        files.configure_paths(False)


def test_absolute_rows_are_read_and_reported_once(inputs, tmp_path, capsys):
    from cryoet_forge.data.folders import VolumeFolderDataset

    table = pd.DataFrame([{"rlnImageName": str(inputs / "vols" / n), "rlnClassNumber": 1, "forgeClassName": "c1",
                           "rlnImagePixelSize": 10.0} for n in ("a.mrc", "b.mrc")])
    write_particles(tmp_path / "abs.star", table)
    capsys.readouterr()
    assert len(VolumeFolderDataset(tmp_path / "abs.star")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"note: {tmp_path / 'abs.star'}: 2 rlnImageName entries are absolute path(s), read as given"]


def test_every_command_has_a_row_in_the_table():
    from cryoet_forge.cli import cli
    from cryoet_forge.registry import get_registry

    get_registry().register_commands(cli)
    covered = {args[0] for _, args, _, _ in CASES}
    assert set(cli.commands) - {"plugins"} <= covered, set(cli.commands) - covered  # plugins takes no input

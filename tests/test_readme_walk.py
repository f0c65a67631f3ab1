"""The README's walk "Your own data in five commands", run as written.

The commands and the evaluation config are read from that section of README.md (so this test fails
when the README drifts), made tiny by the explicit substitutions below (a smaller box, a few GAN
steps, classifier epochs and downstream volumes, the classifiers in this process), and run one
after the other as subprocesses in a synthetic RELION 5 project: three tomograms at 10 A (2.5 A
tilt series, binning 4) holding copies of two small maps, protein dark, in noise; particles in
centred Angstrom, class from rlnClassNumber.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryoet_forge.cli import main as forge
from cryoet_forge.io.mrc import write_mrc
from cryoet_forge.simulate.phantoms import make_phantom
from tests_support import forge_executable

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Your own data in five commands"

# -- the only changes made to the README's commands: sizes, and where the classifiers train --------
#: (forge subcommand, text in the command, its replacement): every one must match
REPLACE = [("extract", "--box 32", "--box 16"), ("generate", "--n-per-map 100", "--n-per-map 3")]
#: arguments appended to a forge subcommand: sizes (steps, batch, widths, epochs, counts, seeds)
APPEND = {
    "train": ["--steps", "2", "--set", "train.batch_size=2", "--set", "train.n_critic=1",
              "--set", "model.generator_options={base=4, n_residual=1}", "--set", "model.critic_options={base=4}"],
    "evaluate": ["--set", "classifier.epochs=2", "--set", "downstream.seeds=[0]",
                 "--set", "downstream.n_per_class=4", "--set", "data.n_density_per_class=4",
                 "--set", "uncertainty.samples=2",
                 # not a size: the classifiers in this process, as spawned workers would each import torch
                 # (most of this test's time); workers are tested in tests/test_evaluate_workers.py
                 "--set", "downstream.workers=0"],
}

PIXEL, BINNING, SIZE, BOX = 2.5, 4, 64, 16  # tilt-series pixel (A), binning, tomogram voxels, map box
VOXEL = PIXEL * BINNING
CLASSES = {1: ("proteasome", "barrel"), 2: ("ribosome", "ring")}  # rlnClassNumber: (class name, phantom)
TOMOGRAMS = ("TS_01", "TS_02", "TS_03")
PER_TOMOGRAM = 12


def readme_walk() -> tuple[list[str], str, str]:
    """The section's shell commands (continuation lines joined), and the config file's name and text."""
    text = README.read_text()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    section = re.split(r"\n#{2,3} ", text.split(SECTION, 1)[1], maxsplit=1)[0]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)
    assert [lang for lang, _ in blocks] == ["bash", "toml"], "the walk is one bash block and one toml block"
    commands = [line.strip() for line in blocks[0][1].replace("\\\n", " ").splitlines() if line.strip()]
    toml = blocks[1][1]
    name = re.match(r"# (\S+\.toml)", toml)
    assert name, "the toml block's first line names its file: '# NAME.toml ...'"
    return commands, name[1], toml


def tiny(command: str) -> list[str]:
    """One README command as arguments, with this test's size substitutions."""
    args = shlex.split(command, comments=True)
    assert args[0] == "forge", command
    for sub, old, new in REPLACE:
        if args[1] == sub:
            assert old in command, f"{command!r} no longer holds {old!r}"
            args = shlex.split(command.replace(old, new), comments=True)
    return [forge_executable(), *args[1:], *APPEND.get(args[1], [])]


def relion5_project(root: Path) -> Path:
    """Tomograms/job030/{tomograms.star, tomograms/rec_TS_0N.mrc}, Refine3D/job040/run_data.star and
    maps/<class>.mrc, as a RELION 5 project holds them (tomogram paths relative to the project)."""
    rng = np.random.default_rng(0)
    maps = {number: make_phantom(phantom, BOX, VOXEL, 0) for number, (_, phantom) in CLASSES.items()}
    for number, (name, _) in CLASSES.items():
        write_mrc(root / "maps" / f"{name}.mrc", maps[number], VOXEL)
    slots = [(z, y, x) for z in (12, 32, 52) for y in (12, 32, 52) for x in (12, 32, 52)][:PER_TOMOGRAM]
    half = BOX // 2
    tomograms, picks = [], []
    for t, name in enumerate(TOMOGRAMS):
        volume = np.zeros((SIZE,) * 3, np.float32)
        for i, (z, y, x) in enumerate(slots):
            number = 1 + (i + t) % 2
            volume[z - half:z + half, y - half:y + half, x - half:x + half] -= maps[number]  # protein dark
            centre = SIZE * VOXEL / 2  # RELION 5: Angstrom from the tomogram's centre
            picks.append({"rlnTomoName": name, "rlnCenteredCoordinateXAngst": x * VOXEL - centre,
                          "rlnCenteredCoordinateYAngst": y * VOXEL - centre,
                          "rlnCenteredCoordinateZAngst": z * VOXEL - centre, "rlnClassNumber": number})
        volume += rng.normal(0.0, 0.3, volume.shape).astype(np.float32)
        path = f"Tomograms/job030/tomograms/rec_{name}.mrc"
        write_mrc(root / path, volume, VOXEL)
        tomograms.append({"rlnTomoName": name, "rlnTomoSizeX": SIZE * BINNING, "rlnTomoSizeY": SIZE * BINNING,
                          "rlnTomoSizeZ": SIZE * BINNING, "rlnTomoTiltSeriesPixelSize": PIXEL,
                          "rlnTomoTomogramBinning": float(BINNING), "rlnTomoReconstructedTomogram": path})
    starfile.write({"global": pd.DataFrame(tomograms)}, root / "Tomograms/job030/tomograms.star", overwrite=True)
    (root / "Refine3D/job040").mkdir(parents=True)
    starfile.write({"particles": pd.DataFrame(picks)}, root / "Refine3D/job040/run_data.star", overwrite=True)
    return root


def test_readme_walk_from_a_relion5_project_to_an_evaluation(tmp_path):
    commands, config_name, config_text = readme_walk()
    assert [shlex.split(c)[1] for c in commands] == ["extract", "extract", "train", "generate", "evaluate"]
    project = relion5_project(tmp_path / "project")
    (project / config_name).write_text(config_text)
    outputs = []
    for command in commands:
        done = subprocess.run(tiny(command), cwd=project, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout + done.stderr)

    # forge extract: training particles from TS_01 and TS_02, test particles from TS_03, classes named
    names = {name for name, _ in CLASSES.values()}
    for out, tomograms in (("particles/train", TOMOGRAMS[:2]), ("particles/test", TOMOGRAMS[2:])):
        table = starfile.read(project / out / "particles.star")
        assert len(table) == PER_TOMOGRAM * len(tomograms)
        assert set(table["forgeClassName"]) == names and set(table["rlnTomoName"]) == set(tomograms)
        assert (table["forgeClassName"].value_counts() == len(table) // 2).all()
        assert json.loads((project / out / "summary.json").read_text())["box"] == BOX
    # forge train: a checkpoint of the GAN, trained on the named classes at the particles' size
    assert list((project / "runs/gan/checkpoints").glob("step-*/weights.safetensors"))
    run_data = json.loads((project / "runs/gan/data.json").read_text())
    assert set(run_data["class_names"]) == names and run_data["box"] == BOX
    # forge generate: labelled synthetic particles of the named classes at the particles' box
    generated = starfile.read(project / "generated/particles.star")
    assert len(generated) == 3 * len(CLASSES)
    assert (generated["forgeClassName"].value_counts().to_dict() == {name: 3 for name in names})
    assert len(list((project / "generated").rglob("*.mrc"))) == len(generated)
    # forge evaluate: the user's particles as the real splits, protein dark, the GAN trained above
    assert "protein dark" in outputs[4]
    assert (project / "evaluation/report.md").is_file()
    results = json.loads((project / "evaluation/results.json").read_text())
    for key in ("config", "gan_run", "inception", "quality", "downstream", "chance", "baseline", "verdict"):
        assert results.get(key) is not None, key
    assert results["config"]["data"]["source"] == "folders" and results["gan_run"] == "runs/gan"


def test_tomo_name_keeps_those_tomograms_and_names_a_missing_one(tmp_path, capsys, monkeypatch):
    project = relion5_project(tmp_path / "project")
    monkeypatch.chdir(project)
    picks = ["--picks", "Refine3D/job040/run_data.star", "--tomograms-star", "Tomograms/job030/tomograms.star",
             "--box", str(BOX)]
    assert forge(["-q", "extract", *picks, "--tomo-name", "TS_02", "--out", "one"]) == 0
    assert set(starfile.read(project / "one/particles.star")["rlnTomoName"]) == {"TS_02"}
    capsys.readouterr()
    assert forge(["-q", "extract", *picks, "--tomo-name", "TS_09", "--out", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("forge: error: --tomo-name 'TS_09': no pick in Refine3D/job040/run_data.star names this tomogram "
                   "(tomograms of the picks: TS_01, TS_02, TS_03)")
    assert not (project / "none").exists()

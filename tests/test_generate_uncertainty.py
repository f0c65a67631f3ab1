"""forge generate / forge uncertainty from a tiny trained run, and CLI errors for bad input."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from cryoet_forge.cli import main as forge
from cryoet_forge.config import load_config
from cryoet_forge.io.mrc import read_mrc, write_mrc
from cryoet_forge.io.star import read_particles, write_particles
from tests_support import forge_executable

TINY_RUN = {
    "model.generator_options": {"base": 4, "n_residual": 1, "dropout": 0.2},
    "model.critic_options": {"base": 4},
    "data.density.options": {"simulator": "none", "box": 16, "length": 8, "seed": 1},
    "data.subtomograms.options": {"simulator": "fourier", "box": 16, "length": 8, "seed": 2},
    "train.steps": 2, "train.batch_size": 2, "train.n_critic": 1, "train.device": "cpu",
    "log.every": 1, "log.image_every": 2, "log.checkpoint_every": 1, "log.progress": False,
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from cryoet_forge.train import train

    folder = tmp_path_factory.mktemp("run") / "tiny"
    train(load_config(None, TINY_RUN), folder)
    return folder


@pytest.fixture(scope="module")
def maps_star(tmp_path_factory):
    """Two density maps of two classes, listed by a STAR file."""
    folder = tmp_path_factory.mktemp("maps")
    rng = np.random.default_rng(0)
    rows = []
    for i, name in enumerate(["ring", "barrel"]):
        write_mrc(folder / f"{name}.mrc", rng.random((16, 16, 16), dtype=np.float32), 10.0)
        rows.append({"rlnImageName": f"{name}.mrc", "rlnClassNumber": i + 1, "forgeClassName": name,
                     "rlnImagePixelSize": 10.0})
    return write_particles(folder / "maps.star", pd.DataFrame(rows))


def test_run_folder_layout(run_dir):
    assert (run_dir / "config.toml").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "images" / "step-00000002.png").stat().st_size > 1000
    assert load_config(run_dir / "config.toml", {}).train.steps == 2


def test_generate_same_seed_identical_other_seed_differs(run_dir, maps_star, tmp_path, capsys):
    outs = {}
    for label, seed in (("a", 3), ("b", 3), ("c", 4)):
        code = forge(["generate", "--run", str(run_dir), "--maps", str(maps_star), "--n-per-map", "3",
                      "--out", str(tmp_path / label), "--seed", str(seed)])
        assert code == 0, capsys.readouterr().err
        table = read_particles(tmp_path / label / "particles.star")
        outs[label] = np.stack([read_mrc(tmp_path / label / name)[0] for name in table["rlnImageName"]])
    assert len(table) == 6
    assert table["forgeClassName"].tolist() == ["ring"] * 3 + ["barrel"] * 3
    assert table["rlnClassNumber"].tolist() == [1] * 3 + [2] * 3
    assert (table["rlnImagePixelSize"] == 10.0).all()
    assert outs["a"].shape == (6, 16, 16, 16)
    assert np.array_equal(outs["a"], outs["b"])
    assert np.abs(outs["a"] - outs["c"]).max() > 1e-3
    # different noise draws for the same map give different subtomograms
    assert np.abs(outs["a"][0] - outs["a"][1]).max() > 1e-3
    assert np.abs(outs["a"]).max() <= 1.0


def test_generate_from_maps_api(run_dir):
    from cryoet_forge.generate import generate_from_maps

    maps = np.random.default_rng(1).random((2, 16, 16, 16), dtype=np.float32)
    out = generate_from_maps(run_dir, maps, n_per_map=2, seed=0)
    assert out.shape == (4, 16, 16, 16) and out.dtype == np.float32
    from cryoet_forge.errors import InputError

    with pytest.raises(InputError, match="20\\^3 but the run was trained on 16\\^3"):
        generate_from_maps(run_dir, np.zeros((1, 20, 20, 20), np.float32), 1, 0)


def test_uncertainty_writes_mean_std_overlay(run_dir, maps_star, tmp_path, capsys):
    map_path = maps_star.parent / "ring.mrc"
    code = forge(["uncertainty", "--run", str(run_dir), "--map", str(map_path), "--samples", "6",
                  "--out", str(tmp_path / "u")])
    assert code == 0, capsys.readouterr().err
    mean, voxel = read_mrc(tmp_path / "u" / "mean.mrc")
    std, _ = read_mrc(tmp_path / "u" / "std.mrc")
    assert mean.shape == std.shape == (16, 16, 16) and voxel == pytest.approx(10.0)
    assert std.min() >= 0 and std.max() > 1e-4  # dropout is active at inference
    assert (tmp_path / "u" / "overlay.png").stat().st_size > 1000
    from cryoet_forge.uncertainty import mc_dropout

    m1, s1 = mc_dropout(run_dir, read_mrc(map_path)[0], samples=4, seed=7)
    m2, s2 = mc_dropout(run_dir, read_mrc(map_path)[0], samples=4, seed=7)
    assert np.array_equal(m1, m2) and np.array_equal(s1, s2)


# -- bad input: one 'forge: error: ...' line and a non-zero exit --------------------------------

def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("forge: error: ")
    return err[0]


def test_unknown_component_lists_choices_via_subprocess():
    proc = subprocess.run([forge_executable(), "train", "--generator", "nope", "--steps", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines == ["forge: error: unknown generator 'nope'; choose from: " + ", ".join(
        __import__("cryoet_forge").list_components("generator"))]


@pytest.mark.parametrize("option,kind", [("--critic", "critic"), ("--loss", "loss")])
def test_unknown_critic_or_loss(option, kind, capsys):
    assert forge(["train", option, "nope"]) != 0
    line = _one_error_line(capsys)
    assert f"unknown {kind} 'nope'; choose from:" in line


def test_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[train]\nbatchsize = 4\n")
    assert forge(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) != 0
    line = _one_error_line(capsys)
    assert "unknown config key 'train.batchsize'" in line and "bad.toml" in line
    assert not (tmp_path / "r").exists()


def test_missing_checkpoint(run_dir, maps_star, tmp_path, capsys):
    empty = tmp_path / "nockpt"
    shutil.copytree(run_dir, empty)
    shutil.rmtree(empty / "checkpoints")
    assert forge(["generate", "--run", str(empty), "--maps", str(maps_star), "--out", str(tmp_path / "o")]) != 0
    assert "no checkpoint found" in _one_error_line(capsys)
    # forge train --resume starts such a run from step 0 (tests/test_reliability_second_pass.py)
    assert forge(["train", "--resume", str(tmp_path / "absent")]) != 0
    assert "no such run folder" in _one_error_line(capsys)


def test_corrupt_newest_checkpoint_falls_back_to_the_newest_intact_one(run_dir, maps_star, tmp_path, capsys):
    from cryoet_forge.train.checkpoint import load_weights

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    newest, older = (broken / "checkpoints" / f"step-0000000{i}" for i in (2, 1))
    weights = newest / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    map_path = maps_star.parent / "ring.mrc"
    # generate and uncertainty use step 1 and say so; the result is step 1's
    assert forge(["generate", "--run", str(broken), "--maps", str(maps_star), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "skipped checkpoint step-00000002" in err and "weights.safetensors: corrupt checkpoint" in err
    assert "using the newest intact checkpoint, step-00000001" in err
    only_first = tmp_path / "only-first"  # the same run without its step 2
    shutil.copytree(run_dir, only_first)
    shutil.rmtree(only_first / "checkpoints" / newest.name)
    assert forge(["generate", "--run", str(only_first), "--maps", str(maps_star), "--out", str(tmp_path / "e")]) == 0
    for k in range(2):
        name = f"subtomograms/{k:06d}.mrc"
        assert np.array_equal(read_mrc(tmp_path / "o" / name)[0], read_mrc(tmp_path / "e" / name)[0])
    assert forge(["uncertainty", "--run", str(broken), "--map", str(map_path), "--samples", "3",
                  "--out", str(tmp_path / "u")]) == 0
    assert "using the newest intact checkpoint, step-00000001" in capsys.readouterr().err
    # training resumes from step 1, retrains step 2 and writes an intact step 2
    assert forge(["train", "--resume", str(broken)]) == 0
    assert "using the newest intact checkpoint, step-00000001" in capsys.readouterr().err
    assert load_weights(newest)  # intact again
    # nothing intact: one line naming the newest reason
    for path in (newest, older):
        (path / "weights.safetensors").write_bytes(b"x" * 100)
    assert forge(["generate", "--run", str(broken), "--maps", str(maps_star), "--out", str(tmp_path / "o2")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("forge: error: ") and "no intact checkpoint (2 tried; newest:" in err[-1]
    assert "step-00000002/weights.safetensors: corrupt checkpoint" in err[-1]


def test_domain_size_mismatch(tmp_path, capsys):
    args = ["train", "--out", str(tmp_path / "r"), "--steps", "1",
            "--set", "data.density.options={simulator='none', box=16, length=4}",
            "--set", "data.subtomograms.options={simulator='fourier', box=20, length=4}"]
    assert forge(args) != 0
    line = _one_error_line(capsys)
    assert "domain volumes differ in size: density maps are 16^3, subtomograms 20^3" in line


def test_generator_that_cannot_take_the_box(tmp_path, capsys):
    # unet3d needs sizes divisible by 8: 20^3 must be refused before training, in one line
    args = ["train", "--generator", "unet3d", "--out", str(tmp_path / "r"), "--steps", "1",
            "--set", "model.generator_options={base=4}", "--set", "model.critic_options={base=4}",
            "--set", "data.density.options={simulator='none', box=20, length=4}",
            "--set", "data.subtomograms.options={simulator='fourier', box=20, length=4}"]
    assert forge(args) != 0
    line = _one_error_line(capsys)
    assert "generator 'unet3d' cannot take 20^3 volumes" in line


def test_generate_from_structures_gives_posed_samples(run_dir, tmp_path, capsys):
    code = forge(["generate", "--run", str(run_dir), "--structures", "ring", "--structures", "barrel",
                  "--n-per-map", "2", "--out", str(tmp_path / "s"), "--seed", "1"])
    assert code == 0, capsys.readouterr().err
    table = read_particles(tmp_path / "s" / "particles.star")
    assert table["forgeClassName"].tolist() == ["ring", "ring", "barrel", "barrel"]
    assert {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"} <= set(table.columns)
    assert table["rlnAngleRot"].nunique() == 4  # every sample has its own pose


def test_uncertainty_and_generation_from_a_chosen_checkpoint(run_dir):
    from cryoet_forge.evaluate.gan import generate_from_checkpoint
    from cryoet_forge.generate import generate_from_maps
    from cryoet_forge.train.checkpoint import list_checkpoints
    from cryoet_forge.uncertainty import mc_dropout

    first, last = list_checkpoints(run_dir)[0], list_checkpoints(run_dir)[-1]
    volume = np.random.default_rng(1).random((16, 16, 16), dtype=np.float32) * 2 - 1
    newest = mc_dropout(run_dir, volume, samples=4, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(newest, mc_dropout(run_dir, volume, samples=4, seed=3,
                                                                         checkpoint=last)))
    older = mc_dropout(run_dir, volume, samples=4, seed=3, checkpoint=first)
    assert np.abs(older[0] - newest[0]).max() > 1e-6
    # an intermediate checkpoint generates what the newest would when it is the newest
    assert np.array_equal(generate_from_checkpoint(run_dir, last, volume[None], seed=5),
                          generate_from_maps(run_dir, volume[None], n_per_map=1, seed=5, normalize="none"))


def test_generation_into_a_used_folder_needs_overwrite_and_replaces_it_whole(run_dir, maps_star, tmp_path, capsys):
    out = tmp_path / "gen"
    args = ["generate", "--run", str(run_dir), "--maps", str(maps_star), "--out", str(out)]
    assert forge(args + ["--n-per-map", "3"]) == 0
    assert len(list((out / "subtomograms").glob("*.mrc"))) == 6
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert forge(args) != 0
    line = _one_error_line(capsys)
    assert "already holds a generation (subtomograms, particles.star, montage.png)" in line
    assert "--overwrite" in line
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing written
    assert forge(args + ["--overwrite"]) == 0
    assert len(list((out / "subtomograms").glob("*.mrc"))) == 2 == len(read_particles(out / "particles.star"))
    (out / "notes.txt").write_text("mine")  # not ours: nothing is written beside it (issue 31)
    capsys.readouterr()
    assert forge(args + ["--overwrite"]) != 0
    assert "holds files that are not a generation (notes.txt)" in _one_error_line(capsys)
    assert (out / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".gen.")]  # no work folder left
    # uncertainty: the same rule
    map_path = maps_star.parent / "ring.mrc"
    u = ["uncertainty", "--run", str(run_dir), "--map", str(map_path), "--samples", "3", "--out", str(tmp_path / "u")]
    assert forge(u) == 0
    capsys.readouterr()
    assert forge(u) != 0
    assert "already holds an uncertainty map (mean.mrc, std.mrc, overlay.png)" in _one_error_line(capsys)
    assert forge(u + ["--overwrite"]) == 0


def test_maps_at_another_voxel_size_than_the_run_are_refused(run_dir, maps_star, tmp_path, capsys):
    volume, _ = read_mrc(maps_star.parent / "ring.mrc")
    write_mrc(tmp_path / "ring12.mrc", volume, 12.0)
    assert forge(["uncertainty", "--run", str(run_dir), "--map", str(tmp_path / "ring12.mrc"),
                  "--out", str(tmp_path / "u")]) != 0
    line = _one_error_line(capsys)
    assert "ring12.mrc: density maps at 12 A, but the run" in line and "trained at 10 A" in line
    assert not (tmp_path / "u").exists()
    table = read_particles(maps_star)
    table["rlnImagePixelSize"] = 12.0
    for name in ("ring", "barrel"):
        write_mrc(tmp_path / f"{name}.mrc", read_mrc(maps_star.parent / f"{name}.mrc")[0], 12.0)
    write_particles(tmp_path / "maps12.star", table)
    assert forge(["generate", "--run", str(run_dir), "--maps", str(tmp_path / "maps12.star"),
                  "--out", str(tmp_path / "g")]) != 0
    assert "density maps at 12 A, but the run" in _one_error_line(capsys)
    assert not (tmp_path / "g").exists()


def test_generate_from_a_folder_of_class_maps_keeps_each_class_and_draws_poses(run_dir, tmp_path, capsys):
    from cryoet_forge.simulate.phantoms import make_phantom

    folder = tmp_path / "class-maps"
    folder.mkdir()
    write_mrc(folder / "ring.mrc", make_phantom("ring", 16, 10.0, 0), 10.0)
    write_mrc(folder / "barrel.mrc", make_phantom("barrel", 20, 10.0, 0), 10.0)  # another box: fitted
    code = forge(["generate", "--run", str(run_dir), "--maps", str(folder), "--n-per-map", "3",
                  "--out", str(tmp_path / "g"), "--seed", "5"])
    assert code == 0, capsys.readouterr().err
    table = read_particles(tmp_path / "g" / "particles.star")
    assert table["forgeClassName"].tolist() == ["barrel"] * 3 + ["ring"] * 3  # sorted file names
    assert table["rlnClassNumber"].tolist() == [1] * 3 + [2] * 3
    angles = table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    assert len(np.unique(angles.round(3), axis=0)) == 6  # a random pose per sample
    # the same as naming the files with --structures
    code = forge(["generate", "--run", str(run_dir), "--structures", str(folder / "barrel.mrc"),
                  "--structures", str(folder / "ring.mrc"), "--n-per-map", "3", "--out", str(tmp_path / "s"),
                  "--seed", "5"])
    assert code == 0, capsys.readouterr().err
    for name in table["rlnImageName"]:
        np.testing.assert_array_equal(read_mrc(tmp_path / "g" / name)[0], read_mrc(tmp_path / "s" / name)[0])
    # a folder holding a STAR table keeps the table's classes (posed maps)
    code = forge(["generate", "--run", str(run_dir), "--maps", str(tmp_path / "g"), "--out", str(tmp_path / "t")])
    assert code == 0, capsys.readouterr().err
    assert read_particles(tmp_path / "t" / "particles.star")["forgeClassName"].tolist() == table[
        "forgeClassName"].tolist()

"""Checkpoint folders: pickle-free round trip, keep-last-K, half-written folders, corrupt files."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from cryoet_forge.errors import InputError
from cryoet_forge.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_newest_intact,
    load_weights,
    save_checkpoint,
)


def _state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-4)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return model, {"step": 3, "optimizers": {"g": opt.state_dict()}, "rng": [{"torch": torch.get_rng_state(),
                   "python": (3, tuple(range(5)), None)}], "scaler": {}}


def test_round_trip_without_pickle(tmp_path):
    model, state = _state()
    path = save_checkpoint(tmp_path, 3, {"g." + k: v for k, v in model.state_dict().items()}, state, keep=2)
    step, weights, loaded = load_checkpoint(path)
    assert step == 3 and torch.equal(weights["g.weight"], model.weight.detach())
    opt_state = loaded["optimizers"]["g"]
    assert torch.equal(opt_state["state"][0]["square_avg"], state["optimizers"]["g"]["state"][0]["square_avg"])
    assert opt_state["param_groups"][0]["lr"] == 5e-4
    assert loaded["rng"][0]["python"] == (3, (0, 1, 2, 3, 4), None)
    assert torch.equal(loaded["rng"][0]["torch"], state["rng"][0]["torch"])
    fresh = torch.optim.RMSprop(model.parameters(), lr=1.0)
    fresh.load_state_dict(opt_state)  # the restored dict is what torch expects
    # the folder holds exactly two safetensors files and two JSON documents, no pickle
    from safetensors import safe_open

    assert sorted(p.name for p in path.iterdir()) == ["checksums.json", "state.json", "state.safetensors",
                                                      "weights.safetensors"]
    # one mode for every file, the one open() gives an ordinary output (safetensors alone writes 0600)
    umask = os.umask(0)
    os.umask(umask)
    assert {stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()} == {0o666 & ~umask}
    for name in ("state.safetensors", "weights.safetensors"):
        with safe_open(str(path / name), framework="pt") as fh:
            assert list(fh.keys())
    assert json.loads((path / "state.json").read_text())["step"] == 3


def test_keep_last_k_and_ignore_half_written(tmp_path):
    model, state = _state()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, model.state_dict(), state, keep=2)
    half = tmp_path / "checkpoints" / ".step-00000005.abc"
    half.mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    assert latest_checkpoint(tmp_path).name == "step-00000004"
    save_checkpoint(tmp_path, 5, model.state_dict(), state, keep=2)
    assert not half.exists()


def test_bad_checkpoints_name_the_file(tmp_path):
    with pytest.raises(InputError, match="no such run folder"):
        latest_checkpoint(tmp_path / "missing")
    with pytest.raises(InputError, match="no checkpoint found"):
        latest_checkpoint(tmp_path)
    model, state = _state()
    path = save_checkpoint(tmp_path, 1, model.state_dict(), state, keep=1)
    (path / "state.json").write_text(json.dumps({"format": 1}))
    with pytest.raises(InputError, match=r"state.json: corrupt checkpoint \(SHA-256 differs"):
        load_checkpoint(path)
    (path / "checksums.json").unlink()  # as written before checksums existed: read unverified
    with pytest.raises(InputError, match=r"state.json: corrupt checkpoint \('step'\)"):
        load_checkpoint(path)
    (path / "state.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"state.safetensors: corrupt checkpoint"):
        load_checkpoint(path)
    (path / "weights.safetensors").unlink()
    with pytest.raises(InputError, match=r"weights.safetensors: checkpoint file missing"):
        load_checkpoint(path)


def _garble(file):
    """Overwrite a file with random bytes of the same size (what a checksum has to catch)."""
    file.write_bytes(os.urandom(file.stat().st_size))


@pytest.mark.parametrize("name", ["weights.safetensors", "state.safetensors", "state.json"])
def test_same_size_garbage_is_caught_by_the_checksum(tmp_path, name):
    model, state = _state()
    path = save_checkpoint(tmp_path, 1, model.state_dict(), state, keep=1)
    before = (path / name).read_bytes()
    _garble(path / name)
    assert len((path / name).read_bytes()) == len(before)
    with pytest.raises(InputError, match=rf"{name}: corrupt checkpoint \(SHA-256 differs"):
        load_checkpoint(path)


def test_newest_intact_checkpoint_is_used_and_the_skip_is_said(tmp_path, capsys):
    _, state = _state()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"w": torch.full((2,), float(step))}, state, keep=3)
    root = tmp_path / "checkpoints"
    _garble(root / "step-00000003" / "weights.safetensors")
    (root / "step-00000002" / "state.json").write_bytes(b"{")  # truncated
    path, (step, weights, _) = load_newest_intact(tmp_path, load_checkpoint)
    assert path.name == "step-00000001" and step == 1 and torch.equal(weights["w"], torch.full((2,), 1.0))
    err = capsys.readouterr().err
    assert "skipped checkpoint step-00000003" in err and "skipped checkpoint step-00000002" in err
    assert "using the newest intact checkpoint, step-00000001" in err
    # weights alone (generate, uncertainty): step 2's weights are intact
    path, weights = load_newest_intact(tmp_path, load_weights)
    assert path.name == "step-00000002" and torch.equal(weights["w"], torch.full((2,), 2.0))
    _garble(root / "step-00000001" / "weights.safetensors")
    with pytest.raises(InputError, match=r"no intact checkpoint \(3 tried; newest: .*step-00000003"):
        load_newest_intact(tmp_path, load_checkpoint)


def test_the_checkpoint_manager_saves_keeps_and_resumes_from_the_newest_intact(tmp_path, capsys):
    from cryoet_forge.train.checkpoint import CheckpointManager

    model, state = _state()
    manager = CheckpointManager(tmp_path, keep=2)
    assert manager.paths() == [] and manager.last_good is None
    for step in (1, 2, 3):
        path = manager.save(step, {"w": torch.full((2,), float(step))}, {**state, "step": step})
        assert manager.last_good == path and path.name == f"step-{step:08d}"
    assert [p.name for p in manager.paths()] == ["step-00000002", "step-00000003"]
    # the format save_checkpoint writes, checksums included
    assert sorted(p.name for p in path.iterdir()) == ["checksums.json", "state.json", "state.safetensors",
                                                      "weights.safetensors"]
    _garble(path / "state.safetensors")
    resumed = CheckpointManager(tmp_path, keep=2)
    checkpoint = resumed.load_newest_intact()
    assert checkpoint.path.name == "step-00000002" and checkpoint.step == 2 and resumed.last_good == checkpoint.path
    assert torch.equal(checkpoint.weights["w"], torch.full((2,), 2.0)) and checkpoint.state["step"] == 2
    assert "skipped checkpoint step-00000003" in capsys.readouterr().err

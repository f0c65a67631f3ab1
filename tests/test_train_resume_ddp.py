"""Exact resume after SIGKILL, and 2-process torchrun (Gloo) against 1 process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# A training process on in-memory volumes (no simulator needed): python driver.py RUN [resume] K=V...
DRIVER = r'''
import sys
import torch
from cryoet_forge.config import load_config, parse_override
from cryoet_forge.train import resume_config, train

class Volumes(torch.utils.data.Dataset):
    def __init__(self, n, size, seed):
        g = torch.Generator().manual_seed(seed)
        self.v = torch.rand(n, 1, size, size, size, generator=g) * 2 - 1
        self.box, self.voxel_size, self.class_names = size, 10.0, ["phantom"]
    def __len__(self):
        return len(self.v)
    def __getitem__(self, i):
        return {"volume": self.v[i], "label": 0, "class_name": "phantom", "index": i}

run, args = sys.argv[1], sys.argv[2:]
resume = bool(args) and args[0] == "resume"
overrides = dict(parse_override(a) for a in args[resume:])
cfg = resume_config(run, overrides) if resume else load_config(None, overrides)
train(cfg, run, resume=resume, datasets=(Volumes(12, 16, 0), Volumes(12, 16, 1)))
'''

TINY = [
    "model.generator_options={base=4, n_residual=2, dropout=0.2}",
    "model.critic_options={base=4}",
    "train.batch_size=2", "train.n_critic=2", "train.deterministic=true",
    "data.density_noise_std=0.1", "log.every=5", "log.image_every=0", "log.progress=false",
]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _driver(tmp_path: Path) -> Path:
    path = tmp_path / "driver.py"
    path.write_text(DRIVER)
    return path


def _final_state(run: Path, step: int) -> dict[str, torch.Tensor]:
    folder = run / "checkpoints" / f"step-{step:08d}"
    tensors = load_file(str(folder / "weights.safetensors"))
    tensors.update({f"state.{k}": v for k, v in load_file(str(folder / "state.safetensors")).items()})
    return tensors


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    driver = _driver(tmp_path)
    steps = 40
    common = [*TINY, f"train.steps={steps}", "log.checkpoint_every=1", "log.keep_checkpoints=2"]
    reference = tmp_path / "uninterrupted"
    subprocess.run([sys.executable, str(driver), str(reference), *common], env=_env(), check=True,
                   timeout=300)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(driver), str(killed), *common], env=_env())
    marker = killed / "checkpoints" / "step-00000003"
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the training finished before it could be killed"
    assert not (killed / "checkpoints" / f"step-{steps:08d}").exists()

    subprocess.run([sys.executable, str(driver), str(killed), "resume"], env=_env(), check=True,
                   timeout=300)
    expected, got = _final_state(reference, steps), _final_state(killed, steps)
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    # keep_checkpoints = 2: only the newest two survive
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == [
        f"step-{steps - 1:08d}", f"step-{steps:08d}"]


def _relative_l2(a: dict, b: dict) -> float:
    keys = [k for k in a if a[k].is_floating_point()]
    num = sum(((a[k] - b[k]).double() ** 2).sum() for k in keys) ** 0.5
    den = sum((a[k].double() ** 2).sum() for k in keys) ** 0.5
    return float(num / den)


@pytest.mark.parametrize("extra", [[], ["loss.regularizers={patchnce={layer_names=['down2.0'], patches=64, features=8}}"]],
                         ids=["plain", "patchnce"])
def test_torchrun_two_processes_match_one(tmp_path, extra):
    """2 Gloo processes (global batch 4) vs 1 process (batch 4) after 3 steps of n_critic=2.

    Tolerance: relative L2 distance of all weights < 1e-3 and max |dw| < 1e-3. Plain SGD
    (lr 2e-3) keeps the comparison well conditioned; RMSProp's first steps are nearly
    sign(grad) updates, which turn reduction-order rounding on near-zero gradients into
    lr-sized differences (about 3e-2 relative after 3 steps), so it says little here.
    With PatchNCE on a layer of 4^3 voxels and 64 patches every voxel is a patch, so its value
    does not depend on each rank's random draw; its heads live outside DDP (averaged by hand).
    """
    driver = _driver(tmp_path)
    common = [a for a in TINY if "dropout" not in a] + [
        "model.generator_options={base=4, n_residual=2}", "train.batch_size=4", "train.steps=3",
        "log.checkpoint_every=0", "train.device=cpu", "optim.name=sgd", "optim.lr=0.002", *extra]
    single = tmp_path / "single"
    subprocess.run([sys.executable, str(driver), str(single), *common], env=_env(), check=True, timeout=300)
    double = tmp_path / "double"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    subprocess.run([*torchrun, str(driver), str(double), *common], env=_env(), check=True, timeout=300,
                   capture_output=True)
    last = "step-00000003/weights.safetensors"
    a = load_file(str(single / "checkpoints" / last))
    b = load_file(str(double / "checkpoints" / last))
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    relative = _relative_l2(a, b)
    print(f"torchrun 2 x gloo vs 1 process: max |dw| = {worst:.3g}, relative L2 = {relative:.3g}")
    assert relative < 1e-3 and worst < 1e-3
    heads = [k for k in a if k.startswith("reg.")]
    assert bool(heads) == bool(extra)
    if heads:  # unaveraged head gradients leave them about 7e-4 apart
        assert max((a[k] - b[k]).abs().max().item() for k in heads) < 1e-4
    # the tolerance is meaningful: another seed lands orders of magnitude further away
    other = tmp_path / "other"
    subprocess.run([sys.executable, str(driver), str(other), *common, "train.seed=5"], env=_env(),
                   check=True, timeout=300)
    assert _relative_l2(a, load_file(str(other / "checkpoints" / last))) > 0.1

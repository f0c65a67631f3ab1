"""Training callbacks: a plugin's callback sees every step and stops early, the resume stays
bit-exact; the hooks' order; bad registrations; the step functions on their own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_registry import make_distribution
from test_train_loop import Volumes, tiny
from test_train_resume_ddp import _env

from cryoet_forge import hookimpl, registry
from cryoet_forge.cli import main
from cryoet_forge.errors import PluginError, TrainingError
from cryoet_forge.train import resume_config, train
from cryoet_forge.train.callbacks import Callback
from cryoet_forge.train.checkpoint import list_checkpoints
from tests_support import assert_one_line_error

#: a run that draws dropout masks and density noise: a resume is bit-exact only if every RNG is restored
EXACT = {"model.generator_options": {"base": 4, "n_residual": 1, "dropout": 0.2}, "data.density_noise_std": 0.1,
         "train.deterministic": True, "train.steps": 4, "log.checkpoint_every": 0}


def data():
    return Volumes(), Volumes(seed=1)


class Recorder(Callback):
    """Records each hook call, the losses of every step and what the loop logged; stops at ``stop_at``."""

    def __init__(self, stop_at: int | None = None):
        self.stop_at = stop_at
        self.events: list[tuple] = []
        self.losses: dict[int, dict[str, float]] = {}
        self.logged: dict[int, dict[str, float]] = {}

    def on_train_start(self, state):
        self.events.append(("start", state.step))

    def on_step_end(self, state):
        self.events.append(("step", state.step))
        self.losses[state.step] = {k: float(v) for k, v in state.losses.items()}
        if state.logged is not None:
            self.logged[state.step] = dict(state.logged)
        if state.step == self.stop_at:
            state.stop("the recorder has seen enough")

    def on_checkpoint(self, state):
        self.events.append(("checkpoint", state.step, state.last_checkpoint.name))

    def on_train_end(self, state):
        self.events.append(("end", state.step, type(state.error).__name__ if state.error else None))


class RecorderPlugin:
    """A plugin adding a fresh Recorder to every training run."""

    def __init__(self, stop_at: int | None):
        self.stop_at = stop_at
        self.made: list[Recorder] = []

    @hookimpl
    def forge_register_train_callbacks(self, register):
        self.made.append(Recorder(self.stop_at))
        register(self.made[-1])


def final_state(run, step):
    folder = run / "checkpoints" / f"step-{step:08d}"
    tensors = load_file(str(folder / "weights.safetensors"))
    tensors.update({f"state.{k}": v for k, v in load_file(str(folder / "state.safetensors")).items()})
    return tensors, json.loads((folder / "state.json").read_text())


def test_a_plugin_callback_sees_every_step_stops_early_and_the_resume_is_bit_exact(plugin, tmp_path, capsys):
    reference = Recorder()
    train(tiny(**EXACT), tmp_path / "reference", datasets=data(), callbacks=[reference])
    assert sorted(reference.losses) == [1, 2, 3, 4]

    spy = plugin(RecorderPlugin(stop_at=2))
    cfg = tiny(**EXACT, **{"log.progress": True})
    run = train(cfg, tmp_path / "stopped", datasets=data())
    (first,) = spy.made
    assert first.events == [("start", 0), ("step", 1), ("step", 2), ("checkpoint", 2, "step-00000002"),
                            ("end", 2, None)]
    # every step's losses, as the loop logs them (log.every = 1) and as the uninterrupted run had them
    assert {"loss/critic", "loss/generator", "loss/cycle", "critic_gap/density"} <= set(first.losses[1])
    for step in (1, 2):
        assert first.losses[step] == reference.losses[step]
        assert all(first.logged[step][k] == v for k, v in first.losses[step].items())
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002"]
    assert "training stopped at step 2 of 4: the recorder has seen enough" in capsys.readouterr().err

    spy.stop_at = None
    train(resume_config(run), run, resume=True, datasets=data())
    resumed = spy.made[1]
    assert resumed.events[0] == ("start", 2) and sorted(resumed.losses) == [3, 4]
    assert all(resumed.losses[s] == reference.losses[s] for s in (3, 4))
    (expected, expected_json), (got, got_json) = final_state(tmp_path / "reference", 4), final_state(run, 4)
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert got_json == expected_json


def test_hooks_run_in_order_and_the_end_hook_sees_the_error(tmp_path):
    recorder = Recorder()
    run = train(tiny(**{"train.steps": 3, "log.checkpoint_every": 2, "log.image_every": 2}), tmp_path / "r",
                datasets=data(), callbacks=[recorder])
    assert sorted(p.name for p in (run / "images").iterdir()) == ["step-00000002.png", "step-00000003.png"]
    assert recorder.events == [("start", 0), ("step", 1), ("step", 2), ("checkpoint", 2, "step-00000002"),
                               ("step", 3), ("checkpoint", 3, "step-00000003"), ("end", 3, None)]

    failing = Recorder()
    with pytest.raises(TrainingError, match="non-finite loss at step 2"):
        train(tiny(**{"train.steps": 4}), tmp_path / "nan", datasets=(Volumes(nan_after=6), Volumes(seed=1)),
              callbacks=[failing])
    assert failing.events[-1] == ("end", 2, "TrainingError")


def test_a_callback_error_ends_training_with_that_error(tmp_path):
    class Broken(Callback):
        def on_step_end(self, state):
            raise RuntimeError("the callback broke")

    with pytest.raises(RuntimeError, match="the callback broke"):
        train(tiny(), tmp_path / "r", datasets=data(), callbacks=[Broken()])
    assert list_checkpoints(tmp_path / "r") == []


class ClassRegisteringPlugin:
    @hookimpl
    def forge_register_train_callbacks(self, register):
        register(Recorder)  # the class, not an instance


def test_registering_something_that_is_not_a_callback_stops_before_training(plugin, tmp_path):
    plugin(ClassRegisteringPlugin())
    with pytest.raises(PluginError, match=r"register\(\) takes a callback object, got the class Recorder; "
                                          r"register an instance"):
        train(tiny(), tmp_path / "r", datasets=data())
    assert not (tmp_path / "r").exists()


CALLBACK_PLUGIN = '''
    from cryoet_forge import hookimpl

    @hookimpl
    def forge_register_train_callbacks(register):
        register(42)
'''


def test_an_installed_plugin_with_a_bad_callback_is_one_error_line(plugin_path, tmp_path, capsys):
    make_distribution(plugin_path, "forge-bad-callback", "forge_bad_callback", CALLBACK_PLUGIN)
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), "--steps", "1"])
    assert code == PluginError.exit_code
    assert_one_line_error(code, capsys.readouterr().err, "plugin forge-bad-callback (forge_bad_callback)",
                          "forge_register_train_callbacks: register() takes a training callback (an object with "
                          "one or more of on_train_start, on_step_end, on_checkpoint, on_train_end), got int")
    assert not out.exists()


STOP_ON_ONE_RANK = r'''
import sys
import torch
from cryoet_forge.config import load_config
from cryoet_forge.train import train

class Volumes(torch.utils.data.Dataset):
    def __init__(self, seed):
        self.v = torch.rand(12, 1, 16, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    def __len__(self):
        return len(self.v)
    def __getitem__(self, i):
        return {"volume": self.v[i]}

class StopOnRankOne:
    def on_step_end(self, state):
        if state.trainer.ctx.rank == 1 and state.step == 2:
            state.stop("rank 1 has seen enough")

cfg = load_config(None, {"model.generator_options": {"base": 4, "n_residual": 1}, "model.critic_options": {"base": 4},
                         "train.batch_size": 4, "train.n_critic": 1, "train.steps": 5, "train.device": "cpu",
                         "log.checkpoint_every": 0, "log.image_every": 0, "log.progress": False})
train(cfg, sys.argv[1], datasets=(Volumes(0), Volumes(1)), callbacks=[StopOnRankOne()])
'''


def test_a_stop_on_one_rank_stops_every_rank_of_a_torchrun(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(STOP_ON_ONE_RANK)
    run = tmp_path / "run"
    # ranks that disagree about stopping wait for each other forever: the timeout ends them all
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(driver), str(run)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the ranks did not stop together")
    assert proc.returncode == 0, output.decode()[-2000:]
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002"]


# -- the step functions, with their inputs explicit ------------------------------------------------------

def test_critic_and_generator_steps_update_only_their_own_networks():
    import contextlib

    from cryoet_forge.losses import CycleL1Loss
    from cryoet_forge.train.builder import CriticPass
    from cryoet_forge.train.steps import GeneratorLosses, critic_step, generator_step

    torch.manual_seed(0)
    g_ds, g_sd = torch.nn.Conv3d(1, 1, 1), torch.nn.Conv3d(1, 1, 1)
    c_s, c_d = (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 1)) for _ in range(2))
    critics = {"subtomograms": c_s, "density": c_d}
    adv = registry.create("loss", "lsgan")
    c_opt = torch.optim.SGD([*c_s.parameters(), *c_d.parameters()], lr=0.1)
    g_opt = torch.optim.SGD([*g_ds.parameters(), *g_sd.parameters()], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    d, s = torch.randn(2, 1, 2, 2, 2), torch.randn(2, 1, 2, 2, 2)
    fake_s, fake_d = g_ds(d).detach(), g_sd(s).detach()

    def snapshot():
        return [p.detach().clone() for m in (g_ds, g_sd, c_s, c_d) for p in m.parameters()]

    with torch.no_grad():
        expected = (adv.critic_loss(c_s(s), c_s(fake_s)) + adv.critic_loss(c_d(d), c_d(fake_d))).item()
    before = snapshot()
    stats = critic_step({k: CriticPass(c) for k, c in critics.items()}, critics, c_opt, scaler, adv,
                        {"subtomograms": (s, fake_s), "density": (d, fake_d)}, contextlib.nullcontext,
                        lambda shape: torch.rand(shape))
    after = snapshot()
    assert stats["loss/critic"].item() == pytest.approx(expected, rel=1e-6)
    assert stats["loss/penalty"].item() == 0.0
    assert set(stats) == {"loss/critic", "loss/penalty", "critic_gap/subtomograms", "critic_gap/density"}
    assert all(torch.equal(a, b) for a, b in zip(before[:4], after[:4]))  # the generators: untouched
    assert any(not torch.equal(a, b) for a, b in zip(before[4:], after[4:]))

    outputs = (g_ds(d), g_sd(s), g_sd(g_ds(d)), g_ds(g_sd(s)))
    critic_params = [*c_s.parameters(), *c_d.parameters()]
    critic_grads = [p.grad.clone() for p in critic_params]
    stats = generator_step(outputs, d, s, critics, critic_params, (g_ds, g_sd), g_opt, scaler, adv,
                           GeneratorLosses(CycleL1Loss(10.0), None, None, {}), contextlib.nullcontext)
    assert set(stats) == {"loss/generator", "loss/cycle"}
    final = snapshot()
    assert all(torch.equal(a, b) for a, b in zip(after[4:], final[4:]))  # the critics: frozen
    assert all(p.requires_grad for p in critic_params)  # unfrozen again
    assert all(torch.equal(p.grad, g) for p, g in zip(critic_params, critic_grads))  # no gradient reached them
    assert any(not torch.equal(a, b) for a, b in zip(after[:4], final[:4]))

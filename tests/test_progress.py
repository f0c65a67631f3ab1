"""The progress module: periodic lines with an ETA off a terminal, nothing with --quiet."""

from __future__ import annotations

import re
import subprocess

import pytest

from cryoet_forge import progress
from tests_support import forge_executable


@pytest.fixture(autouse=True)
def defaults(monkeypatch):
    monkeypatch.delenv("FORGE_PROGRESS", raising=False)
    monkeypatch.delenv("FORGE_PROGRESS_INTERVAL", raising=False)
    progress.configure(quiet=False)
    yield
    progress.configure(quiet=False)


def test_mode_follows_the_terminal_the_environment_and_quiet(monkeypatch, capsys):
    assert progress.mode() == "lines"  # pytest's captured stderr is not a terminal
    monkeypatch.setenv("FORGE_PROGRESS", "bar")
    assert progress.mode() == "bar"
    progress.configure(quiet=True)
    assert progress.mode() == "off"


def test_lines_mode_prints_start_periodic_eta_and_done(monkeypatch, capsys):
    clock = iter([100.0, 101.0, 102.0, 112.0, 113.0, 130.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    monkeypatch.setenv("FORGE_PROGRESS_INTERVAL", "10")
    with progress.stage("GAN training", 4, "steps") as bar:   # t=100 (start, last line)
        bar.advance(info="G 1.5")                             # t=101: 1 s since the last line
        bar.advance(info="G 1.2")                             # t=102: too
        bar.advance(info="G 0.9")                             # t=112: 12 s -> a line, eta (4-3) * 12/3 = 4 s
        bar.advance(info="G 0.8")                             # t=113: done; no periodic line
    err = capsys.readouterr().err.splitlines()                # close at t=130
    assert err == ["GAN training: started (4 steps)",
                   "GAN training: 3/4 steps (75%), 0:00:12 elapsed, eta 0:00:04  G 0.9",
                   "GAN training: done, 4 steps in 0:00:30  G 0.8"]


def test_resumed_stage_estimates_from_this_session_only(monkeypatch):
    clock = iter([0.0, 10.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    bar = progress.stage("GAN training", 100, "steps", start=50, enabled=False)
    bar.update(60)
    assert bar.eta(10.0) == pytest.approx(40 * 10.0 / 10)   # 10 steps in 10 s, 40 to go


def test_quiet_and_disabled_stages_print_nothing(capsys):
    progress.configure(quiet=True)
    with progress.stage("x", 3) as bar:
        bar.advance(3)
    progress.log("a stage message")
    with progress.stage("y", 2, enabled=True) as bar:
        bar.advance(2)
    assert capsys.readouterr().err == ""


def test_bar_mode_nests_and_closes_the_live_display(monkeypatch):
    monkeypatch.setenv("FORGE_PROGRESS", "bar")
    with progress.stage("outer", 2) as outer:
        with progress.stage("inner", 3) as inner:
            inner.advance(3)
            assert len(progress._live["progress"].tasks) == 2
        assert len(progress._live["progress"].tasks) == 1  # the nested stage is removed when it ends
        outer.advance(2)
    assert progress._live["progress"] is None and progress._live["open"] == 0


def _train(tmp_path, *global_args, env_extra=None):
    import os

    env = {k: v for k, v in os.environ.items() if k != "FORGE_PROGRESS"}
    env.update({"FORGE_PROGRESS_INTERVAL": "0", **(env_extra or {})})
    args = [forge_executable(), *global_args, "train", "--out", str(tmp_path / "run"),
            "--set", "train.steps=3", "--set", "train.batch_size=2", "--set", "train.n_critic=1",
            "--set", "train.device=cpu", "--set", "log.every=1", "--set", "log.image_every=0",
            "--set", "model.generator_options={base=4, n_residual=1}", "--set", "model.critic_options={base=4}",
            "--set", "data.density.options={simulator='none', box=16, length=8, seed=1}",
            "--set", "data.subtomograms.options={simulator='fourier', box=16, length=8, seed=2}"]
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)


def test_forge_train_off_a_terminal_shows_steps_losses_and_eta(tmp_path):
    result = _train(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "GAN training: started (3 steps)" in lines
    periodic = [line for line in lines if re.match(r"GAN training: [12]/3 steps \(\d+%\), 0:00:\d\d elapsed, eta ", line)]
    assert periodic and all(re.search(r"G -?[\d.e+-]+ cycle [\d.e+-]+ C -?[\d.e+-]+ [\d.]+ pairs/s", p) for p in periodic)
    assert any(line.startswith("GAN training: done, 3 steps in ") for line in lines)


def test_forge_quiet_train_prints_no_progress(tmp_path):
    result = _train(tmp_path, "--quiet")
    assert result.returncode == 0, result.stderr
    assert "GAN training" not in result.stderr
    result = _train(tmp_path / "second", env_extra={"FORGE_PROGRESS": "off"})
    assert result.returncode == 0 and "GAN training" not in result.stderr


def test_lines_mode_keeps_short_nested_stages_quiet(monkeypatch, capsys):
    monkeypatch.setenv("FORGE_PROGRESS_INTERVAL", "1000")
    with progress.stage("downstream", 2, "seeds") as outer:
        for _ in range(2):
            with progress.stage("CB3D", 3, "epochs") as inner:
                inner.advance(3)
            outer.advance()
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "downstream: started (2 seeds)"
    assert len(err) == 2 and err[1].startswith("downstream: done, 2 seeds in ")

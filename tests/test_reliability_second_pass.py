"""Reliability, second pass: unverified checkpoints and --strict, warnings that --quiet does not
silence, resuming a run that stopped before its first checkpoint, plugins raising
KeyboardInterrupt, the generator output contract, forge evaluate checking every key before any
work, and stale work folders of dead processes."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from test_generate_uncertainty import TINY_RUN, maps_star, run_dir  # noqa: F401 (fixtures)
from test_registry import make_distribution, run_forge

from cryoet_forge import registry
from cryoet_forge.cli import main as forge
from cryoet_forge.train import checkpoint as ckpt


@pytest.fixture(autouse=True)
def _defaults(monkeypatch):
    monkeypatch.delenv("FORGE_PROGRESS", raising=False)
    yield
    ckpt.configure(strict=False)


def _copy_run(run_dir, tmp_path, name="run"):  # noqa: F811
    copy = tmp_path / name
    shutil.copytree(run_dir, copy)
    return copy


def _without_checksums(run):
    for step in (run / "checkpoints").iterdir():
        (step / ckpt.CHECKSUMS).unlink()
    return run


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("forge: error: ")]


def _interrupted(err: str) -> bool:
    """What forge says when Ctrl-C stops it (click's Abort, or the interrupt itself)."""
    return err.strip() in ("forge: aborted", "forge: interrupted")


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# -- 1. checkpoints without checksums.json, --strict, warnings under --quiet ----------------------

@pytest.mark.parametrize("quiet", [["--quiet"], []], ids=["quiet", "default"])
def test_a_checkpoint_without_checksums_is_read_with_a_warning_even_when_quiet(
        run_dir, maps_star, tmp_path, capsys, monkeypatch, quiet):  # noqa: F811
    monkeypatch.setenv("FORGE_PROGRESS", "off")
    run = _without_checksums(_copy_run(run_dir, tmp_path))
    code = forge([*quiet, "generate", "--run", str(run), "--maps", str(maps_star), "--out", str(tmp_path / "g")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert (f"warning: {run / 'checkpoints' / 'step-00000002'}: no checksums.json; the checkpoint is read "
            "unverified (--strict refuses it)") in err
    assert (tmp_path / "g" / "particles.star").is_file()


def test_strict_refuses_a_checkpoint_without_checksums(run_dir, maps_star, tmp_path, capsys):  # noqa: F811
    run = _without_checksums(_copy_run(run_dir, tmp_path))
    before = sorted(p.name for p in tmp_path.iterdir())
    commands = {
        "generate": ["generate", "--strict", "--run", str(run), "--maps", str(maps_star), "--out",
                     str(tmp_path / "g")],
        "uncertainty": ["uncertainty", "--strict", "--run", str(run), "--map", str(maps_star.parent / "ring.mrc"),
                        "--samples", "3", "--out", str(tmp_path / "u")],
        "train": ["-q", "train", "--resume", str(run), "--strict", "--steps", "3"],
    }
    for name, args in commands.items():
        code = forge(args)
        err = capsys.readouterr().err
        assert code == 2, (name, err)
        lines = _error_lines(err)
        assert len(lines) == 1 and "Traceback" not in err, err
        assert f"{run}: no intact checkpoint (2 tried; newest: {run / 'checkpoints' / 'step-00000002'}: no " \
               "checksums.json, so the checkpoint cannot be verified (refused under --strict))" in lines[0]
        assert "warning: skipped checkpoint step-00000001" in err  # said under -q too
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
    # --strict is per invocation: the next call without it reads the run (with the warning)
    assert forge(["generate", "--run", str(run), "--maps", str(maps_star), "--out", str(tmp_path / "g")]) == 0
    assert "is read unverified" in capsys.readouterr().err
    # a verified run passes --strict silently
    assert forge(["generate", "--strict", "--run", str(run_dir), "--maps", str(maps_star), "--out",
                  str(tmp_path / "v")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_skipped_corrupt_checkpoints_are_said_under_quiet_and_progress_off(
        run_dir, maps_star, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setenv("FORGE_PROGRESS", "off")
    run = _copy_run(run_dir, tmp_path)
    weights = run / "checkpoints" / "step-00000002" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    for args in (["--quiet", "generate", "--run", str(run), "--maps", str(maps_star), "--out", str(tmp_path / "g")],
                 ["uncertainty", "-q", "--run", str(run), "--map", str(maps_star.parent / "ring.mrc"),
                  "--samples", "3", "--out", str(tmp_path / "u")]):
        assert forge(args) == 0
        err = capsys.readouterr().err
        assert "warning: skipped checkpoint step-00000002: " in err and "corrupt checkpoint" in err
        assert "warning: step-00000002 is not intact; using the newest intact checkpoint, step-00000001" in err


# -- 2. resuming a run that stopped before its first checkpoint, or has nothing left to train ---

def test_resume_without_a_checkpoint_starts_from_step_0_and_a_finished_run_says_nothing_to_train(
        run_dir, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "early"
    run.mkdir()
    for name in ("config.toml", "data.json"):  # what a run that failed before its first checkpoint leaves
        shutil.copy(run_dir / name, run / name)
    code = forge(["train", "--resume", str(run), "--steps", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"{run}: no checkpoint yet (the run stopped before its first one); starting it from step 0" \
        in captured.err
    assert "no checkpoint found" not in captured.err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001"]
    config = (run / "config.toml").read_bytes()
    for steps in ("1", "0"):
        code = forge(["-q", "train", "--resume", str(run), "--steps", steps])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert f"nothing to train: {run} is at step 1 >= {steps}" in captured.err
        assert "done" not in captured.err
    assert (run / "config.toml").read_bytes() == config  # the run folder stays as it was
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001"]


# -- 3. plugins: KeyboardInterrupt at import; the generator output contract --------------------

def test_a_plugin_raising_keyboard_interrupt_on_import_stops_no_command(tmp_path):
    make_distribution(tmp_path, "forge-ctrlc", "forge_ctrlc", '''
        raise KeyboardInterrupt("raised by the plugin itself")
    ''')
    plugins = run_forge("plugins", pythonpath=tmp_path)
    assert plugins.returncode == 0, plugins.stderr
    assert "forge-ctrlc 0.0.1 [error]" in plugins.stdout
    assert "error: KeyboardInterrupt: raised by the plugin itself" in plugins.stdout
    listing = run_forge("list", "generator", pythonpath=tmp_path)
    assert listing.returncode == 0 and "cryoetgan" in listing.stdout, listing.stderr
    assert "interrupted" not in listing.stderr


def test_ctrl_c_still_interrupts_while_plugins_load_and_during_a_command(tmp_path):
    loading, running = tmp_path / "loading", tmp_path / "running"
    loading.mkdir()
    running.mkdir()
    make_distribution(loading, "forge-sigint", "forge_sigint", '''
        import os, signal, time
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends
        time.sleep(5)
    ''')
    result = run_forge("list", pythonpath=loading)
    assert result.returncode == 130 and _interrupted(result.stderr), result.stderr
    make_distribution(running, "forge-slow", "forge_slow", '''
        import os, signal, time
        import click
        from cryoet_forge import hookimpl

        @hookimpl
        def forge_register_commands(cli):
            @cli.command("slow")
            def slow():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
    ''')
    result = run_forge("slow", pythonpath=running)
    assert result.returncode == 130 and _interrupted(result.stderr), result.stderr


BAD_GENERATORS = '''
    import torch
    from cryoet_forge import hookimpl

    class Half(torch.nn.Module):
        """Returns half the input's size."""

        def __init__(self, in_channels=1, out_channels=1):
            super().__init__()
            self.conv = torch.nn.Conv3d(in_channels, out_channels, 3, padding=1)

        def forward(self, x):
            return self.conv(x)[..., ::2, ::2, ::2]

    class DropsBatchOfThree(torch.nn.Module):
        """Fine for batches of one or two (training); drops the batch axis of a batch of three."""

        def __init__(self, in_channels=1, out_channels=1):
            super().__init__()
            self.conv = torch.nn.Conv3d(in_channels, out_channels, 3, padding=1)

        def forward(self, x):
            y = torch.tanh(self.conv(x))
            return y[0] if y.shape[0] == 3 else y

    @hookimpl
    def forge_register_generators(register):
        register("half", Half)
        register("drops-batch-of-three", DropsBatchOfThree)
'''


def test_a_plugin_generator_of_the_wrong_output_shape_is_one_line_under_forge_train(tmp_path):
    make_distribution(tmp_path, "forge-badgen", "forge_badgen", BAD_GENERATORS)
    args = ["train", "--out", str(tmp_path / "run"), "--generator", "half", "--steps", "1",
            "--set", "model.critic_options={base=4}", "--set", "train.batch_size=2", "--set", "train.n_critic=1",
            "--set", "train.device='cpu'",
            "--set", "data.density.options={simulator='none', box=16, length=4, seed=1}",
            "--set", "data.subtomograms.options={simulator='fourier', box=16, length=4, seed=2}"]
    result = run_forge(*args, pythonpath=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    lines = _error_lines(result.stderr)
    assert lines == ["forge: error: generator 'half' from forge-badgen returned shape (1, 1, 8, 8, 8) for an "
                     "input of shape (1, 1, 16, 16, 16); a generator returns its input's shape (N, 1, S, S, S)"]
    assert not (tmp_path / "run").exists()


def test_forge_generate_checks_the_generator_output_at_the_first_batch(plugin_path, maps_star, capsys):  # noqa: F811
    from cryoet_forge.config import load_config
    from cryoet_forge.train import train

    make_distribution(plugin_path, "forge-badgen", "forge_badgen", BAD_GENERATORS)
    run = plugin_path / "run"
    train(load_config(None, {**TINY_RUN, "model.generator": "drops-batch-of-three", "model.generator_options": {},
                             "train.steps": 1}), run)
    out = plugin_path / "gen"
    code = forge(["generate", "--run", str(run), "--maps", str(maps_star), "--n-per-map", "3", "--batch-size", "3",
                  "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 3, err
    assert _error_lines(err) == [
        "forge: error: generator 'drops-batch-of-three' from forge-badgen returned shape (1, 16, 16, 16) for an "
        "input of shape (3, 1, 16, 16, 16); a generator returns its input's shape (N, 1, S, S, S)"]
    assert not out.exists()
    assert forge(["generate", "--run", str(run), "--maps", str(maps_star), "--batch-size", "2", "--out",
                  str(out)]) == 0


def test_the_contract_check_names_dtype_and_non_finite_values():
    import torch

    from cryoet_forge.contracts import run_generator
    from cryoet_forge.errors import PluginError

    class Integer(torch.nn.Module):
        def forward(self, x):
            return x.to(torch.int32)

    class NotFinite(torch.nn.Module):
        def forward(self, x):
            return x / 0.0

    x = torch.zeros(2, 1, 8, 8, 8)
    with pytest.raises(PluginError, match=r"^generator Integer returned dtype int32 for an input of shape "
                                          r"\(2, 1, 8, 8, 8\); a generator returns floating-point volumes$"):
        run_generator(Integer(), x, None)
    with pytest.raises(PluginError, match=r"^generator NotFinite returned NaN or infinite values"):
        run_generator(NotFinite(), x, None)
    built = registry.create("generator", "cryoetgan", base=4, n_residual=1)
    assert run_generator(built.eval(), x, None).shape == x.shape
    assert getattr(built, "_forge_component") == "generator 'cryoetgan' from cryoet-forge"


# -- 4. forge evaluate checks every key before any work ------------------------------------------

@pytest.mark.parametrize("text, extra, fragment", [
    ('[gan]\noverrides = {"train.stepz" = 3}\n', [],
     "{cfg}: gan.overrides.train.stepz: unknown config key 'train.stepz'; valid keys in [train]: steps"),
    ('[gan]\noverrides = {"train.steps" = -1}\n', [], "{cfg}: gan.overrides.train.steps: train.steps must be >= 0, "
                                                      "got -1"),
    ('[data]\nbox = 16\n', ["--set", "gan.overrides.train.steps=-1"],
     "--set gan.overrides.train.steps: train.steps must be >= 0, got -1"),
    ('[data]\nbox = 16\n', ["--set", "gan.overrides.model.critic_optionz={}"],
     "--set gan.overrides.model.critic_optionz: unknown config key 'model.critic_optionz'"),
    ('[gan]\nconfig = "absent.toml"\n', [], "{cfg}: gan.config: "),
    ('[data]\nbox = 16\n', ["--set", "data.voxel_size=nan"],
     "data.voxel_size must be > 0 Angstrom, got nan (from --set, over {cfg})"),
    ('[data]\nbox = 16\n', ["--set", "ablations.noise_std=[nan]"], "ablations.noise_std values must be numbers >= 0"),
], ids=["override-key", "override-value", "set-override-value", "set-override-key", "gan-config", "voxel-nan",
        "noise-nan"])
def test_evaluate_validates_every_key_before_any_work(tmp_path, capsys, text, extra, fragment):
    cfg = tmp_path / "ev.toml"
    cfg.write_text(text)
    out = tmp_path / "out"
    code = forge(["evaluate", "--config", str(cfg), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("forge: error: "), err
    assert fragment.format(cfg=cfg) in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev.toml"]  # no folder skeleton


def test_a_gan_config_beside_the_evaluation_config_is_found_and_checked(tmp_path):
    from cryoet_forge.errors import ConfigError
    from cryoet_forge.evaluate.config import load_evaluation_config

    (tmp_path / "gan.toml").write_text("[train]\nsteps = 7\n")
    cfg = tmp_path / "ev.toml"
    cfg.write_text('[gan]\nconfig = "gan.toml"\noverrides = {"train.batch_size" = 2}\n')
    assert load_evaluation_config(cfg).gan.config == str(tmp_path / "gan.toml")
    (tmp_path / "gan.toml").write_text("[train]\nstepz = 7\n")
    with pytest.raises(ConfigError, match=r"ev.toml: gan.config: .*gan.toml: unknown config key 'train.stepz'"):
        load_evaluation_config(cfg)


def test_a_stage_that_fails_on_bad_input_leaves_no_empty_folder_skeleton(tmp_path, capsys):
    cfg = tmp_path / "ev.toml"
    cfg.write_text("[data]\nbox = 16\n")
    out = tmp_path / "deeper" / "out"
    code = forge(["evaluate", "--config", str(cfg), "--out", str(out), "--set", "data.maps_dir='nowhere'"])
    err = capsys.readouterr().err
    assert code == 2 and "data.maps_dir nowhere: no such folder" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev.toml"]


# -- 5. stale .NAME.partial-PID-* folders of a dead process --------------------------------------

def test_generate_and_uncertainty_remove_a_dead_process_work_folder_and_say_so_when_quiet(
        run_dir, maps_star, tmp_path, capsys):  # noqa: F811
    commands = {
        "g": ["--quiet", "generate", "--run", str(run_dir), "--maps", str(maps_star), "--out"],
        "u": ["uncertainty", "-q", "--run", str(run_dir), "--map", str(maps_star.parent / "ring.mrc"),
              "--samples", "3", "--out"],
    }
    for name, args in commands.items():
        stale = tmp_path / f".{name}.partial-{_dead_pid()}-x1y2"
        stale.mkdir()
        (stale / "half-written.mrc").write_bytes(np.zeros(1024, np.uint8).tobytes())
        code = forge([*args, str(tmp_path / name)])
        err = capsys.readouterr().err
        assert code == 0, err
        assert not stale.exists()
        assert (f"removed 1 unfinished folder(s) that an interrupted earlier run left beside {tmp_path / name} "
                "(0.0 MiB)") in err
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{name}.")] == []
    assert (tmp_path / "g" / "particles.star").is_file() and (tmp_path / "u" / "mean.mrc").is_file()


"""`benchmarks/device/check.sh` stays in step with what it calls: every test file it names exists
and holds tests marked `gpu`, and every option it gives a benchmark script is one that script
accepts (the script itself needs a GPU, so nothing else here can run it)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "benchmarks" / "device" / "check.sh"


def steps() -> list[list[str]]:
    """Each `step NAME LIMIT COMMAND...` line of check.sh (continuations joined), as words."""
    text = CHECK.read_text().replace("\\\n", " ")
    return [shlex.split(line)[1:] for line in text.splitlines() if line.startswith("step ")]


def test_the_steps_fit_one_ten_minute_call():
    found = steps()
    assert [s[0] for s in found] == ["tests", "train", "simulate", "simulate-tomogram", "picking", "quickstart"]
    assert sum(int(s[1]) for s in found) <= 540


def test_the_named_test_files_hold_gpu_tests():
    (tests,) = [s for s in steps() if s[0] == "tests"]
    files = [w for w in tests if w.startswith("tests/")]
    assert files
    for name in files:
        assert "pytest.mark.gpu" in (ROOT / name).read_text(), name


@pytest.mark.parametrize("name", ["train", "simulate", "simulate-tomogram", "picking"])
def test_each_benchmark_accepts_the_options_it_is_given(name):
    (step,) = [s for s in steps() if s[0] == name]
    script = next(w for w in step if w.startswith("benchmarks/"))
    options = [w for w in step[step.index(script) + 1:] if w.startswith("--")]
    assert options
    shown = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                           check=True, cwd=ROOT).stdout
    for option in options:
        assert re.search(rf"{re.escape(option)}\b", shown), f"{script} has no option {option}"


def test_the_quickstart_step_runs_the_shipped_config_on_cuda():
    (step,) = [s for s in steps() if s[0] == "quickstart"]
    assert step[2:5] == ["forge", "evaluate", "--config"] and (ROOT / step[5]).is_file()
    assert "gan.overrides.train.device=cuda" in step and "classifier.device=cuda" in step

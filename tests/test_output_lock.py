"""One writer per output: a second forge run on an output another run is writing stops with one
line; forge classify train refuses an earlier classifier unless --overwrite."""

from __future__ import annotations

import subprocess
import sys
import time

from cryoet_forge.cli import main as forge
from tests_support import forge_executable

HOLD = """
import sys, time
from cryoet_forge.io.atomic import lock_output
lock_output(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def _holder(target):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_on_an_output_being_written_stops_with_one_line(tmp_path):
    out = tmp_path / "sim"
    holder = _holder(out)
    try:
        args = [forge_executable(), "simulate", "--phantoms", "--n-per-class", "1", "--box", "16", "-q",
                "--out", str(out)]
        result = subprocess.run(args, capture_output=True, text=True)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0] == (f"forge: error: {out}: another forge run (process {holder.pid}) is writing this "
                            "output now; wait for it to finish or choose another --out")
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert subprocess.run(args, capture_output=True, text=True).returncode == 0  # the lock went with its holder
    assert (out / "particles.star").is_file()
    # the same process may write the same output again (one command after another)
    assert forge(["simulate", "--phantoms", "--n-per-class", "1", "--box", "16", "-q", "--out", str(out),
                  "--overwrite"]) == 0


def test_classify_train_refuses_an_earlier_classifier_unless_overwrite(tmp_path, capsys):
    data = tmp_path / "sim"
    assert forge(["simulate", "--phantoms", "--n-per-class", "3", "--box", "16", "-q", "--out", str(data)]) == 0
    args = ["classify", "train", "--data", str(data / "particles.star"), "--out", str(tmp_path / "cls"),
            "--epochs", "1", "--channels", "2,2,2,2", "--fc-width", "8", "--validation-fraction", "0"]
    assert forge(args) == 0, capsys.readouterr().err
    weights = (tmp_path / "cls" / "cb3d.safetensors").read_bytes()
    capsys.readouterr()
    assert forge(args + ["--seed", "3"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"forge: error: {tmp_path / 'cls'} already holds a classifier (cb3d.safetensors, cb3d.json); "
        "choose another --out or pass --overwrite")
    assert (tmp_path / "cls" / "cb3d.safetensors").read_bytes() == weights
    assert forge(args + ["--seed", "3", "--overwrite"]) == 0
    assert (tmp_path / "cls" / "cb3d.safetensors").read_bytes() != weights

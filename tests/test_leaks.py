"""What a killed run leaves beside its output is removed by the next run on the same target."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from cryoet_forge.io.atomic import atomic_folder, remove_stale_work
from tests_support import forge_executable


def _leftovers(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}.partial-")
                  or p.name.startswith(f".{name}.old-"))


def test_sigkilled_simulate_leaves_nothing_after_the_next_run(tmp_path):
    out = tmp_path / "sim"
    args = [forge_executable(), "simulate", "--phantoms", "--box", "24", "--n-per-class", "60", "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # kill it once it has started writing its output
            partial = [p for p in tmp_path.glob(".sim.partial-*") if any(p.rglob("*.mrc"))]
            if partial or proc.poll() is not None:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the simulation finished before it could be killed"
    assert _leftovers(tmp_path, "sim")  # the killed run's work folder, with files in it
    assert not out.exists()
    done = subprocess.run(args[:-4] + ["--n-per-class", "1", "--out", str(out)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "removed 1 unfinished folder(s) that an interrupted earlier run left beside" in done.stderr
    assert _leftovers(tmp_path, "sim") == []
    assert (out / "particles.star").is_file()


def test_stale_old_folder_gives_back_what_the_target_lacks(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "kept.txt").write_text("new")
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    old = tmp_path / f".out.old-{dead.pid}-abc"
    old.mkdir()
    (old / "kept.txt").write_text("old, replaced")  # the new one is in place: dropped
    (old / "moved.txt").write_text("only copy")  # killed before the new one came: given back
    partial = tmp_path / f".out.partial-{dead.pid}-def"
    partial.mkdir()
    (partial / "half.mrc").write_bytes(b"x" * 10)
    removed = remove_stale_work(target)
    assert sorted(p.name for p in removed) == sorted([old.name, partial.name])
    assert (target / "moved.txt").read_text() == "only copy" and (target / "kept.txt").read_text() == "new"
    assert _leftovers(tmp_path, "out") == []


def test_a_running_writer_keeps_its_work_folder(tmp_path):
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        busy = tmp_path / f".out.partial-{sleeper.pid}-abc"
        busy.mkdir()
        legacy = tmp_path / ".out.partial-xyz123"  # an older version's name, without a pid
        legacy.mkdir()
        with atomic_folder(tmp_path / "out") as work:
            (work / "a.txt").write_text("a")
        assert busy.is_dir() and not legacy.exists()
        assert (tmp_path / "out" / "a.txt").read_text() == "a"
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("dirs", [False, True])
def test_outputs_get_one_mode(tmp_path, dirs):
    """Files written through atomic_path / atomic_folder get 0666 & ~umask, folders 0777 & ~umask."""
    import stat

    from cryoet_forge.io.atomic import write_bytes_atomic

    umask = os.umask(0o022)
    try:
        if dirs:
            with atomic_folder(tmp_path / "f") as work:
                (work / "x").write_bytes(b"1")
            assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o755
        else:
            write_bytes_atomic(tmp_path / "x.json", b"{}")
            assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o644
    finally:
        os.umask(umask)
